"""Shared fixtures: the emulator (emulator_fixtures.py) and real FUSE mounts (mount_fixtures.py)."""

import os
import sys

from emulator_fixtures import *  # noqa: F403
from mount_fixtures import *  # noqa: F403

# The tools the test extra installs (bids-validator-deno) live beside this Python, which
# `.venv/bin/python -m pytest` runs without the environment on PATH: the tests find them there.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
