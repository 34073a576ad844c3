"""Serving a disk while it is in use: the block-device layer, NBD, FUSE, the control socket."""
