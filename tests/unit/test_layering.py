"""Imports point one way: hooks knows nothing of agent; host uses only agent.protocol."""

from __future__ import annotations

import ast

from tests.helpers.env import REPO


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names |= {f"{node.module}.{a.name}" for a in node.names}
        found[str(path.relative_to(REPO))] = names
    return found


def test_common_imports_nothing_of_ours() -> None:
    for module, names in _imports("common").items():
        ours = {n for n in names if n.split(".")[0] in ("agent", "hooks", "host")}
        assert not ours, f"{module} imports {ours}"


def test_hooks_never_import_the_agent() -> None:
    for module, names in _imports("hooks").items():
        assert not any(n == "agent" or n.startswith("agent.") for n in names), module


def test_host_imports_only_the_protocol_from_the_agent() -> None:
    for module, names in _imports("host").items():
        agent = {n for n in names if n.startswith("agent.")}
        beyond = {n for n in agent if n != "agent.protocol" and not n.startswith("agent.protocol.")}
        assert not beyond, f"{module} imports {beyond}"


def test_the_agent_uses_no_lazy_imports_on_the_freeze_path() -> None:
    # every import of agent/ and hooks/ sits at module level, so nothing is loaded from a
    # frozen filesystem in the middle of a freeze
    for package in ("agent", "hooks"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    for inner in ast.walk(node):
                        assert not isinstance(inner, ast.Import | ast.ImportFrom), (
                            f"{path.name}: import inside {node.name}()"
                        )
