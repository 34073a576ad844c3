"""End-to-end fixtures shared by the agent's and the host's tests: a real daemon."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agentproc import AgentProcess


@pytest.fixture
def start_agent(short_tmp: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Factory: ``start_agent({...config...})`` starts a daemon; all are stopped afterwards."""
    started: list[AgentProcess] = []

    def factory(config: dict[str, Any], name: str = "a") -> AgentProcess:
        workdir = short_tmp / name
        workdir.mkdir(exist_ok=True)
        agent = AgentProcess(workdir, config)
        started.append(agent)
        return agent.start()

    yield factory
    for agent in started:
        agent.stop()
