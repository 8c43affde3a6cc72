"""Shared fixtures: the emulator (emulator_fixtures.py) and real FUSE mounts (mount_fixtures.py)."""

from emulator_fixtures import *  # noqa: F403
from mount_fixtures import *  # noqa: F403
