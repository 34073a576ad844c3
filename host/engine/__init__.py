"""The delta-disk engine: VMware hosted-disk files, chains, the snapshot tree, disks.

The bottom of the host side: it imports nothing from serve/, snapshots/, lab/ or cli/.
"""
