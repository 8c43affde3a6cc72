"""Fixtures for every test that needs brainlife: generated data and a served emulator.

`emulator_data` is generated once per session with the CLI defaults (`--seed 1`); `emulator`
is the session's server with knobs reset and its request log cleared before each test.
`scratch_emulator` serves a private copy of that data, for tests that add records or replace
archives; `start_emulator(data_dir, **knobs)` serves any other generated dir.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from blfs.emulator.control import Emulator, EmulatorProcess, generate_data, start_emulator

__all__ = [
    "emulator",
    "emulator_data",
    "emulator_server",
    "generate_data",
    "scratch_emulator",
    "start_emulator",
]


@pytest.fixture(scope="session")
def emulator_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir generated with the defaults (seed 1), shared by the whole session."""
    return generate_data(tmp_path_factory.mktemp("emulator") / "data", seed=1)


@pytest.fixture(scope="session")
def emulator_server(emulator_data: Path) -> Iterator[Emulator]:
    """The session's server over `emulator_data` on a free loopback port."""
    server = EmulatorProcess(emulator_data)
    try:
        yield server.emulator
    finally:
        server.stop()


@pytest.fixture
def emulator(emulator_server: Emulator) -> Emulator:
    """The session's server with default knobs and an empty request log."""
    emulator_server.reset()
    emulator_server.clear_requests()
    return emulator_server


@pytest.fixture
def scratch_emulator(emulator_data: Path, tmp_path: Path) -> Iterator[Emulator]:
    """A server of its own over a copy of `emulator_data`: changes made through it stay there."""
    data = tmp_path / "emulator-data"
    shutil.copytree(emulator_data, data, symlinks=True)
    with start_emulator(data) as emulator:
        yield emulator
