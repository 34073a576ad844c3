"""The guest image's cache key follows what the guest reads, and only that: a change to the
README or the host's modules must not cost a rebuild, a change to the agent must."""

from __future__ import annotations

import zipfile
from pathlib import Path

from host.lab.image import _content_hash

DIST = "quiesce_agent-0.1.0"
METADATA = "Metadata-Version: 2.1\nName: quiesce-agent\nVersion: {version}\n\n{readme}"


def _wheel(
    path: Path,
    *,
    version: str = "0.1.0",
    readme: str = "# quiesce-agent\n",
    agent: str = "A = 1\n",
    host: str = "H = 1\n",
    config_doc: str = "# config\n",
) -> Path:
    members = {
        "agent/__init__.py": agent,
        "host/__init__.py": host,
        f"{DIST}.dist-info/METADATA": METADATA.format(version=version, readme=readme),
        f"{DIST}.dist-info/RECORD": f"agent/__init__.py,{agent!r}\nhost/__init__.py,{host!r}\n",
        f"{DIST}.data/data/share/doc/quiesce-agent/README.md": readme,
        f"{DIST}.data/data/share/doc/quiesce-agent/config.md": config_doc,
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return path


def test_a_new_readme_or_host_module_keeps_the_key(tmp_path: Path) -> None:
    before = _content_hash(_wheel(tmp_path / "a.whl"))
    readme = _content_hash(_wheel(tmp_path / "b.whl", readme="# quiesce-agent\n\nnew figures\n"))
    host = _content_hash(_wheel(tmp_path / "c.whl", host="H = 2\n"))
    assert readme == before
    assert host == before


def test_what_the_guest_reads_changes_the_key(tmp_path: Path) -> None:
    before = _content_hash(_wheel(tmp_path / "a.whl"))
    assert _content_hash(_wheel(tmp_path / "b.whl", agent="A = 2\n")) != before
    assert _content_hash(_wheel(tmp_path / "c.whl", version="0.2.0")) != before
    assert _content_hash(_wheel(tmp_path / "d.whl", config_doc="# config, new key\n")) != before
