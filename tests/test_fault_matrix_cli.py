"""Faults around a mount's start and its users, through real mounts and the emulator's knobs: a URL
that is not brainlife, TLS without the CA, a token the server refuses, a server that cannot be
reached, a slow server, and another user of a shared machine."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_fixtures import mounted, require_fuse, save_token, user_env
from test_emulator_tls import self_signed
from test_mount import an_object

from blfs import mountinfo
from blfs.emulator.control import EmulatorProcess

REQUEST_TIMEOUT = 30.0  # api.Client's default
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def blfs_mount(
    home: Path, api_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`blfs mount` in the background as a user would type it, with CA bundles only from `env`;
    the caller unmounts."""
    (home / "mnt").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "blfs", "mount", str(home / "mnt"), "--api", api_url]
    environment = {k: v for k, v in user_env(home).items() if k not in CA_VARIABLES}
    return subprocess.run(
        [*command, "--cache-dir", str(home / "cache"), *args],
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


@contextlib.contextmanager
def unmounted_after(home: Path) -> Iterator[Path]:
    require_fuse()
    try:
        yield home / "mnt"
    finally:
        if mountinfo.is_mounted(home / "mnt"):
            subprocess.run([mountinfo.fusermount(), "-u", str(home / "mnt")], timeout=30)


def refusal(done: subprocess.CompletedProcess[str], home: Path) -> str:
    """The mount was refused with one line and nothing mounted; that line."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not mountinfo.is_mounted(home / "mnt")
    return lines[0]


def test_a_url_that_is_not_brainlife_is_refused(emulator, user_home):
    with unmounted_after(user_home):
        done = blfs_mount(user_home, emulator.root)  # the server, without /api
        assert "is not a brainlife API" in refusal(done, user_home)


def test_a_token_the_server_refuses_is_refused_as_login_needed(emulator, user_home):
    emulator.set(expire_tokens=True)
    with unmounted_after(user_home):
        line = refusal(blfs_mount(user_home, emulator.url), user_home)
        assert "login needed" in line and f"blfs login --api {emulator.url}" in line


def test_without_a_token_the_mount_warns_once_and_shows_public_data(emulator, tmp_path):
    with unmounted_after(tmp_path) as mnt:
        done = blfs_mount(tmp_path, emulator.url)
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("not logged in") == 1, done.stderr
        assert "Open Diffusion" in os.listdir(mnt / "projects")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_server_with_nothing_cached_is_refused(tmp_path):
    with unmounted_after(tmp_path):
        done = blfs_mount(tmp_path, f"http://127.0.0.1:{closed_port()}/api")
        line = refusal(done, tmp_path)
        assert "cannot reach" in line and "nothing to mount offline" in line


@pytest.fixture
def tls_server(emulator_data, tmp_path) -> Iterator[tuple[str, Path]]:
    """The emulator over https with a certificate of its own CA: (API URL, the CA's bundle)."""
    cert, key = self_signed(tmp_path)
    server = EmulatorProcess(emulator_data, tls=(cert, key))
    try:
        yield server.url, cert
    finally:
        server.stop()


def test_tls_failure_is_refused_saying_where_a_ca_bundle_goes(tls_server, tmp_path):
    url, _ = tls_server
    with unmounted_after(tmp_path):
        line = refusal(blfs_mount(tmp_path, url), tmp_path)
        assert "TLS verification failed" in line and "certificate verify failed" in line
        assert "REQUESTS_CA_BUNDLE" in line and "SSL_CERT_FILE" in line


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_a_ca_bundle_from_either_variable_is_honoured(tls_server, tmp_path, variable):
    url, cert = tls_server
    with unmounted_after(tmp_path) as mnt:
        done = blfs_mount(tmp_path, url, env={variable: str(cert)})
        assert done.returncode == 0, done.stderr
        assert "Open Diffusion" in os.listdir(mnt / "projects")


def test_a_listing_under_40_s_latency_ends_within_one_request_timeout(mount, emulator):
    emulator.set(latency=40)
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        # Not projects/: its list was asked for at mount, before the latency.
        os.listdir(mount.path / "publications")
    elapsed = time.monotonic() - started
    print(f"\nlisting under 40 s latency failed after {elapsed:.1f} s")
    assert caught.value.errno in (errno.ETIMEDOUT, errno.EIO)
    assert elapsed < REQUEST_TIMEOUT * 1.6
    asked = [r for r in emulator.requests() if r["path"] == "/api/warehouse/pub"]
    assert len(asked) == 1  # a request that timed out is not tried again


def test_a_server_error_that_comes_fast_is_retried_away(mount, emulator):
    emulator.set(fail=[{"path": "/project$", "status": 502, "times": 2}])
    started = time.monotonic()
    assert "Lab Private" in os.listdir(mount.path / "projects")
    assert time.monotonic() - started < REQUEST_TIMEOUT


# --- another user of a shared machine ----------------------------------------------------------


@pytest.fixture
def shared_home(emulator) -> Iterator[Path]:
    """A HOME (with the demo user's token) that every user can traverse, as /home/<user> is."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the second-user tests need root under CI")
        pytest.skip("switching to another uid needs root")
    with tempfile.TemporaryDirectory(prefix="blfs-shared-") as base:
        home = Path(base) / "home"
        home.mkdir()
        for directory in (Path(base), home):
            directory.chmod(0o755)
        save_token(home, emulator.url, emulator.token("demo"))
        yield home


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    switch = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    return subprocess.run([*switch, *command], capture_output=True, text=True, timeout=60, cwd="/")


def test_another_user_gets_nothing_even_with_allow_other(emulator, shared_home):
    info = Path("objects") / an_object(emulator)["_id"] / "_info.json"
    with mounted(emulator.url, shared_home, extra=("-o", "allow_other")) as mount:
        assert stat.S_IMODE(mount.path.stat().st_mode) == 0o500
        assert stat.S_IMODE((mount.path / info).stat().st_mode) == 0o400
        assert (mount.path / info).read_bytes()  # the owner reads
        listing = as_nobody("ls", str(mount.path / "projects"))
        reading = as_nobody("cat", str(mount.path / info))
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
        assert reading.returncode != 0 and "Permission denied" in reading.stderr


def test_a_shared_mount_lets_another_user_read(emulator, shared_home):
    info = Path("objects") / an_object(emulator)["_id"] / "_info.json"
    with mounted(emulator.url, shared_home, extra=("--share",)) as mount:
        assert stat.S_IMODE(mount.path.stat().st_mode) == 0o555
        reading = as_nobody("cat", str(mount.path / info))
        assert reading.returncode == 0, reading.stderr
        assert reading.stdout.encode() == (mount.path / info).read_bytes()
        assert as_nobody("touch", str(mount.path / "x")).returncode != 0
