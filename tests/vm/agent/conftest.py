"""One guest for every test of the agent on a real virtio-serial port (tests/vm/agent/).

The guest boots once per package (TCG: tens of seconds), with a data disk of its own that is
all the agent and qemu-ga ever freeze (tests/helpers/guest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from host.lab.image import GuestImage
from tests.helpers.guest import Guest, booted


@pytest.fixture(scope="package")
def guest(guest_image: GuestImage) -> Iterator[Guest]:
    with booted(guest_image) as g:
        yield g
