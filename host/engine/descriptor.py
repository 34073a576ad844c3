"""The text descriptor of a VMware hosted disk: parsed the way qemu parses it, rendered the
way qemu writes it (``CID=`` first, ``parentCID=`` on the very next line).

The base keeps it in its own file (``disk.vmdk``), a delta embeds it at sector 1. Raises
CorruptFile (not text, no CID/parentCID, a CID that is not hexadecimal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from host.engine.errors import CorruptFile
from host.engine.names import NO_PARENT


@dataclass
class Descriptor:
    cid: int
    parent_cid: int = NO_PARENT
    create_type: str = "monolithicSparse"
    parent_hint: str | None = None
    extents: list[tuple[str, int, str, str, int]] = field(default_factory=list)
    # (access, sectors, type, file name, offset)

    def render(self) -> bytes:
        sectors = self.extents[0][1] if self.extents else 0
        lines = [
            "# Disk DescriptorFile",
            "version=1",
            f"CID={self.cid:08x}",
            f"parentCID={self.parent_cid:08x}",
            f'createType="{self.create_type}"',
        ]
        if self.parent_hint is not None:
            lines.append(f'parentFileNameHint="{self.parent_hint}"')
        lines += ["", "# Extent description"]
        for access, count, kind, name, offset in self.extents:
            tail = f" {offset}" if kind == "FLAT" else ""
            lines.append(f'{access} {count} {kind} "{name}"{tail}')
        cylinders = max(1, min(sectors // (16 * 63), 16383))
        lines += [
            "",
            "# The Disk Data Base",
            "#DDB",
            "",
            'ddb.virtualHWVersion = "4"',
            f'ddb.geometry.cylinders = "{cylinders}"',
            'ddb.geometry.heads = "16"',
            'ddb.geometry.sectors = "63"',
            'ddb.adapterType = "ide"',
            "",
        ]
        return "\n".join(lines).encode()


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]*)"(?:\s+(\d+))?\s*$')


def parse_descriptor(text: bytes, path: Path) -> Descriptor:
    """Parse the descriptor the way qemu does (first ``CID=`` wins, key=value lines)."""
    try:
        s = text.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptFile(f"{path}: the descriptor is not text ({err})", path) from err
    values: dict[str, str] = {}
    extents = []
    for raw in s.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT.match(line)
        if m:
            extents.append((m[1], int(m[2]), m[3], m[4], int(m[5] or 0)))
            continue
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), value.strip().strip('"'))
    if "CID" not in values or "parentCID" not in values:
        raise CorruptFile(f"{path}: the descriptor has no CID/parentCID line", path)
    try:
        cid = int(values["CID"], 16)
        parent_cid = int(values["parentCID"], 16)
    except ValueError as err:
        raise CorruptFile(f"{path}: CID or parentCID is not hexadecimal", path) from err
    return Descriptor(
        cid, parent_cid, values.get("createType", ""), values.get("parentFileNameHint"), extents
    )
