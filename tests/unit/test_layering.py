"""Imports point one way (DESIGN.md "The pieces"), one assertion per rule:

- common imports nothing of ours;
- hooks imports nothing from agent, and nothing from host;
- agent takes from hooks only hooks.base, hooks.errors, hooks.kernel, the writers' settings
  modules and the concrete writers; the settings only in agent/config.py (so loading the
  configuration loads no database driver), the concrete writers only in agent/writers.py
  (the one registry that knows them);
- host uses only agent.protocol (the package and its modules) from the agent, and nothing
  from hooks;
- inside host, each part imports only the parts below it: engine <- serve <- snapshots <-
  lab <- cli (so the engine imports nothing above it, and only host/cli reaches host/lab);
- and nothing on the freeze path imports lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.env import REPO

BASICS = {"hooks.base", "hooks.errors", "hooks.kernel"}  # what any agent module may use
REGISTRY = "agent/writers.py"
CONFIG = "agent/config.py"


def _dotted(path: Path) -> list[str]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imported(path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules one import statement loads: ``from hooks import scripts`` loads
    hooks.scripts, ``from hooks.base import Writer`` loads hooks.base."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if node.level:  # relative: counted from the importing module's package
        package = _dotted(path) if path.name == "__init__.py" else _dotted(path)[:-1]
        package = package[: len(package) - (node.level - 1)]
        module = ".".join(package + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    found = set()
    for alias in node.names:
        sub = f"{module}.{alias.name}"
        found.add(sub if _is_module(sub) else module)
    return found


def _imports(package: str) -> dict[str, set[str]]:
    """Each module of ``package`` (as its path, agent/writers.py) and the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names |= _imported(path, node)
        found[str(path.relative_to(REPO))] = names
    return found


def _settings_modules() -> set[str]:
    """The writers' settings modules: hooks.postgres.settings, ..."""
    return {".".join(_dotted(p)) for p in (REPO / "hooks").rglob("*.py") if p.stem == "settings"}


def _writer_modules() -> set[str]:
    """The modules under hooks/ that define a concrete Writer: hooks.scripts, ..."""
    found = set()
    for path in (REPO / "hooks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "Writer" for b in node.bases
            ):
                found.add(".".join(_dotted(path)))
    return found


def _ours(name: str, *top: str) -> bool:
    return name.split(".")[0] in top


def _listing(found: list[str]) -> str:
    return "; ".join(found)


def test_common_imports_nothing_of_ours() -> None:
    found = [
        f"{module} imports {name}"
        for module, names in _imports("common").items()
        for name in sorted(names)
        if _ours(name, "agent", "hooks", "host")
    ]
    assert not found, _listing(found)


def test_hooks_import_nothing_from_the_agent() -> None:
    found = [
        f"{module} imports {name}"
        for module, names in _imports("hooks").items()
        for name in sorted(names)
        if _ours(name, "agent")
    ]
    assert not found, _listing(found) + ": hooks knows nothing of the daemon"


def test_hooks_import_nothing_from_the_host() -> None:
    found = [
        f"{module} imports {name}"
        for module, names in _imports("hooks").items()
        for name in sorted(names)
        if _ours(name, "host")
    ]
    assert not found, _listing(found) + ": hooks shares nothing with the host"


def test_the_agent_takes_from_hooks_only_the_interface_the_kernel_settings_and_writers() -> None:
    allowed = BASICS | _settings_modules() | _writer_modules()
    found = [
        f"{module} imports {name}"
        for module, names in _imports("agent").items()
        for name in sorted(names)
        if _ours(name, "hooks") and name not in allowed
    ]
    assert not found, (
        _listing(found) + f": the agent may use only {', '.join(sorted(BASICS))}, the settings "
        "modules and the writers; a writer's inner modules are its own"
    )


def test_only_the_config_loads_the_writers_settings() -> None:
    settings = _settings_modules()
    found = [
        f"{module} imports {name}"
        for module, names in _imports("agent").items()
        if module != CONFIG
        for name in sorted(names & settings)
    ]
    assert not found, _listing(found) + f": only {CONFIG} validates into the settings"


def test_only_the_registry_builds_concrete_writers() -> None:
    writers = _writer_modules()
    found = [
        f"{module} imports {name}"
        for module, names in _imports("agent").items()
        if module != REGISTRY
        for name in sorted(names & writers)
    ]
    assert not found, _listing(found) + f": only {REGISTRY} knows the concrete writers"


def test_host_imports_only_the_protocol_from_the_agent() -> None:
    found = [
        f"{module} imports {name}"
        for module, names in _imports("host").items()
        for name in sorted(names)
        if _ours(name, "agent")
        and name != "agent.protocol"
        and not name.startswith("agent.protocol.")
    ]
    assert not found, _listing(found) + ": the host uses only agent.protocol (and its modules)"


def test_host_imports_nothing_from_the_hooks() -> None:
    found = [
        f"{module} imports {name}"
        for module, names in _imports("host").items()
        for name in sorted(names)
        if _ours(name, "hooks")
    ]
    assert not found, _listing(found) + ": the host never loads the guest's writers"


HOST_PARTS = ("engine", "serve", "snapshots", "lab", "cli")  # bottom to top


def _part(name: str) -> str | None:
    """``engine`` for host.engine.disk; None for a module of host/ itself (host/__init__)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "host" else None


def test_each_part_of_the_host_imports_only_the_parts_below_it() -> None:
    found = []
    for module, names in _imports("host").items():
        here = module.split("/")[1] if module.count("/") > 1 else None
        if here not in HOST_PARTS:
            continue
        for name in sorted(names):
            there = _part(name)
            if there in HOST_PARTS and HOST_PARTS.index(there) > HOST_PARTS.index(here):
                found.append(f"{module} imports {name}")
    assert not found, (
        _listing(found) + ": imports point down, engine <- serve <- snapshots <- lab <- cli"
    )


def test_the_agent_uses_no_lazy_imports_on_the_freeze_path() -> None:
    # every import of agent/ and hooks/ sits at module level, so nothing is loaded from a
    # frozen filesystem in the middle of a freeze
    found = [
        f"{path.relative_to(REPO)}: import inside {node.name}()"
        for package in ("agent", "hooks")
        for path in sorted((REPO / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(isinstance(inner, ast.Import | ast.ImportFrom) for inner in ast.walk(node))
    ]
    assert not found, _listing(found)
