"""The command line as a user types it: login, demo, umount."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from mount_fixtures import require_fuse, user_env

from blfs import mountinfo


def blfs(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blfs", *args],
        env=user_env(home),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_login_stores_the_token_where_bl_keeps_it(emulator, tmp_path):
    done = blfs(
        tmp_path, "login", "--api", emulator.url, "--username", "demo", "--password-stdin",
        stdin="demo\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    host = emulator.url.split("//")[1].split("/")[0]
    token_file = tmp_path / ".config" / host / ".jwt"
    token = token_file.read_text()
    assert token.count(".") == 2 and not token.endswith("\n")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert token not in done.stdout + done.stderr


def test_login_with_a_wrong_password_says_so(emulator, tmp_path):
    emulator.set(login_delay=0)
    done = blfs(
        tmp_path, "login", "--api", emulator.url, "--username", "demo", "--password-stdin",
        stdin="wrong\n",
    )  # fmt: skip
    assert done.returncode != 0
    assert "Incorrect" in done.stderr
    assert not list(tmp_path.rglob(".jwt"))


def test_demo_mounts_sample_data_and_umount_stops_everything(tmp_path):
    require_fuse()
    point = tmp_path / "brainlife"
    point.mkdir()
    try:
        done = blfs(tmp_path, "demo", str(point))
        assert done.returncode == 0, done.stderr
        assert "Lab Private" in os.listdir(point / "projects")
        shown = blfs(tmp_path, "status")
        assert str(point) in shown.stdout
        pid = int(shown.stdout.split("(pid ")[1].split(",")[0])
        stopped = blfs(tmp_path, "umount", str(point))
        assert stopped.returncode == 0, stopped.stderr
        assert not mountinfo.is_mounted(point)
        leftovers = subprocess.run(
            ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
        ).stdout.split()
        assert leftovers == [] and not os.path.exists(f"/proc/{pid}")
    finally:
        if mountinfo.is_mounted(point):
            subprocess.run([mountinfo.fusermount(), "-uz", str(point)], timeout=30)


def test_mount_refuses_a_stale_mountpoint_and_umount_clears_it(mount):
    mount.process.kill()
    mount.process.wait(10)
    assert mountinfo.is_stale(mount.path)
    again = mount.blfs("mount", str(mount.path), "--api", "http://127.0.0.1:9/api")
    assert again.returncode != 0
    assert "stale" in again.stderr and "blfs umount" in again.stderr
    cleared = mount.blfs("umount", str(mount.path))
    assert cleared.returncode == 0, cleared.stderr
    assert not mountinfo.is_mounted(mount.path)


def test_umount_of_a_busy_mount_says_what_to_do(mount):
    with open(mount.path / "projects" / "Lab Private" / "project.json", "rb"):
        busy = mount.blfs("umount", str(mount.path))
    assert busy.returncode != 0
    assert "busy" in busy.stderr and "--lazy" in busy.stderr
    assert "Traceback" not in busy.stderr
    assert mountinfo.is_mounted(mount.path)
