"""What agent/, hooks/ and host/ all stand on: the error root, the deadline, atomic files.

Standard library only; importing any of it changes nothing in the importing process. Each
part imports from here and from nowhere beside it (DESIGN.md "The pieces").
"""
