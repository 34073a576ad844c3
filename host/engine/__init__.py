"""The delta-disk engine: VMware hosted-disk files, chains, the snapshot tree, disks.

``disk.Disk`` is the public face; ``errors`` holds what it raises. Below it, one concept per
module: ``names``, ``descriptor``, ``flat`` and ``sparse`` (the files), ``chain`` (a chain
read as one disk, and merges), ``tree`` (tree.json), ``planning`` (what a delete merges),
``intents`` (multi-step operations and their roll-forward), ``layers`` (the open files),
``durable`` (atomic files, the lock, the pending log), ``check`` (disk check), ``export``.
``vm.VM`` is a folder of disks with one snapshot tree over them: ``vmtree`` (vm.json),
``vmintents`` (one intent per VM operation), ``vmcheck`` (disks that disagree with vm.json).
docs/internals/disk-format.md has the format and the crash states.

The bottom of the host side: it imports nothing from serve/, snapshots/, lab/ or cli/.
"""
