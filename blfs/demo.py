"""`blfs demo`: the bundled brainlife-compatible server with sample data, behind an ordinary mount.

The mount process starts the server, logs in as `demo` and serves the mount from it; the server
ends with the mount (even a mount killed with -9). The emulator is imported only from here.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from blfs.errors import BlfsError
from blfs.mounting import MountOptions

USER = "demo"  # the generated data's user (DESIGN §8), whose password is its name
# The emulator's modules that need the `demo` extra's packages (pyproject.toml).
_NEEDS_EXTRA = ("blfs.emulator.nifti", "blfs.emulator.store", "blfs.emulator.tokens")


def require_extra() -> None:
    """Refuses, in one line naming the command that fixes it, a blfs installed without the
    `demo` extra (the emulator's packages)."""
    try:
        for module in _NEEDS_EXTRA:
            importlib.import_module(module)
    except ImportError as exc:
        raise BlfsError(
            f"blfs demo needs the demo extra, which is not installed ({exc}): install it with"
            f" {sys.executable} -m pip install '{installed_from()}[demo]'"
        ) from None


def installed_from() -> str:
    """Where this blfs was installed from (pip records it: PEP 610), to install it again from
    there with an extra; a placeholder when unknown. Never a name on a package index."""
    try:
        recorded = metadata.distribution("blfs").read_text("direct_url.json")
        url = json.loads(recorded or "{}").get("url", "")
    except (metadata.PackageNotFoundError, ValueError):
        url = ""
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.path:
        return unquote(parts.path)
    return "<your blfs checkout or wheel>"


def options(mountpoint: Path, cache_dir: Path, ttl: float) -> MountOptions:
    """A demo mount of sample data generated once under `cache_dir`, with a cache of its own."""
    require_extra()
    from blfs.emulator.control import generated_data

    return MountOptions(
        mountpoint=mountpoint,
        api_url="",
        cache_dir=cache_dir / "demo-cache",
        ttl=ttl,
        emulator_data=generated_data(cache_dir / "demo-data", seed=1),
    )


@contextlib.contextmanager
def serving(options: MountOptions) -> Iterator[None]:
    """Serves `options.emulator_data` on a free loopback port for the duration of the block and
    points `options` at it, logged in as the demo user."""
    from blfs.api import Client
    from blfs.auth import TokenStore
    from blfs.emulator.control import EmulatorProcess

    assert options.emulator_data is not None
    server = EmulatorProcess(options.emulator_data, die_with_parent=True)
    try:
        options.api_url = server.url
        options.token_home = options.token_home or options.cache_dir / "demo-home"
        token = Client(server.url).login(USER, USER)
        TokenStore(server.url, home=options.token_home).save(token)
        yield
    finally:
        server.stop()
