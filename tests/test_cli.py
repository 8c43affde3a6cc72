"""The command line as a user types it: login, demo, umount, status, cache, prefetch, bad input."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mount_fixtures import require_fuse, user_env
from test_cache_mount import MiB, sized_objects
from test_fetch import wait_for_commit
from test_mount import an_object, shown_objects

from blfs import mountinfo, status


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
        # The command the demo says stops it, run as it says (blfs may not be on PATH).
        (hint,) = [line for line in done.stdout.splitlines() if line.strip().startswith("stop:")]
        command = hint.split("stop:", 1)[1].split()
        stopped = subprocess.run(
            command, env=user_env(tmp_path), capture_output=True, text=True, timeout=120
        )
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


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line on stderr and no traceback; that line."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("login", "--api", "notaurl"), "not an API URL"),
        (("mount", "{mnt}", "--api", "notaurl"), "not an API URL"),
        (("mount", "{mnt}", "--cache-dir", "{file}"), "is not a directory"),
        (("mount", "{mnt}", "--cache-dir", "{file}/cache"), "is not a directory"),
        (("cache", "du", "--cache-dir", "{file}"), "is not a directory"),
        (("mount", "{mnt}", "--cache-size", "0"), "could hold nothing"),
        (("mount", "{mnt}", "--cache-size=-1G"), "not a size"),
        (("mount", "{mnt}", "--ttl", "-1"), "not a number of seconds"),
        (("mount", "{mnt}", "--ttl", "nan"), "not a number of seconds"),
        (("demo", "{mnt}", "--ttl", "inf"), "not a number of seconds"),
        (("mount", "{mnt}", "--ahead", "-1"), "not a number from 0 to 128"),
        (("mount", "{mnt}", "--ahead", "many"), "not a number from 0 to 128"),
        (("prefetch", "{mnt}/no/such/path"), "does not exist"),
        (("prefetch", "{mnt}"), "not inside a blfs mount"),
        (("prefetch", "-j", "0", "{mnt}"), "parallel"),
    ],
)
def test_bad_command_line_input_gets_one_clear_line(tmp_path, args, said):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "a-file").write_text("not a directory\n")
    values = {"mnt": tmp_path / "mnt", "file": tmp_path / "a-file"}
    done = blfs(tmp_path, *(arg.format(**values) for arg in args))
    assert said in one_line_error(done)
    assert not mountinfo.is_mounted(tmp_path / "mnt")
    assert not (tmp_path / "a-file" / "cache").exists()


def test_login_without_input_says_what_it_needs(emulator, tmp_path):
    done = blfs(tmp_path, "login", "--api", emulator.url, stdin="")
    assert "needs a username" in done.stderr and "Traceback" not in done.stderr
    assert done.returncode != 0


def cache_figure(text: str, cache_dir: Path) -> str:
    """The `X of Y` a line about `cache_dir` gives."""
    (line,) = [line for line in text.splitlines() if str(cache_dir) in line]
    return re.search(r"([\d.]+ \w+ of [\d.]+ \w+)", line).group(1)


def test_status_and_cache_du_agree_after_a_prefetch_larger_than_the_bound(
    replace_archive, mount_factory, emulator
):
    chosen = sized_objects(replace_archive, emulator, 5, 2 * MiB)
    mount = mount_factory(extra=("--cache-size", "5M"))
    paths = [str(mount.path / "objects" / obj["_id"]) for obj in chosen]
    done = mount.blfs("prefetch", "-j", "1", *paths, timeout=120)
    assert done.returncode == 0, done.stderr
    before, after = done.stderr.split("objects  ", 1)
    assert "do not fit in the cache's bound of 5.0 MiB" in before
    assert "evicted to stay within it: 3 fetched objects (6.0 MiB)" in after, after
    kept = sorted(p.name for p in (mount.cache_dir / "objects").iterdir())
    assert len(kept) == 2 and set(kept) < {obj["_id"] for obj in chosen}
    time.sleep(2 * status.PUBLISH_INTERVAL)
    shown = mount.blfs("status")
    usage = mount.blfs("cache", "du", "--cache-dir", str(mount.cache_dir))
    assert cache_figure(shown.stdout, mount.cache_dir) == "4.0 MiB of 5.0 MiB"
    assert cache_figure(usage.stdout, mount.cache_dir) == "4.0 MiB of 5.0 MiB"


def test_prefetch_within_the_bound_warns_of_nothing(mount, emulator):
    obj = an_object(emulator)
    done = mount.blfs("prefetch", str(mount.path / "objects" / obj["_id"]), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr and "1/1 objects" in done.stderr


def test_a_task_file_download_shows_in_status(mount, emulator):
    task = next(t for t in emulator.db("tasks") if t["status"] == "finished")
    image = mount.path / "tasks" / task["_id"] / "output" / "t1.nii.gz"
    emulator.set(bandwidth=image.stat().st_size / 8)
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(image.read_bytes)
        time.sleep(2)
        shown = mount.blfs("status")
        emulator.reset()  # the rest at full speed
        assert reading.result(60)
    assert f"task {task['_id']} file output/t1.nii.gz" in shown.stdout, shown.stdout


def test_cache_without_cache_dir_covers_the_caches_of_running_mounts(mount, emulator):
    obj = an_object(emulator)
    (mount.path / "objects" / obj["_id"] / "t1.nii.gz").read_bytes()
    wait_for_commit(mount.cache_dir, obj["_id"])
    listing = mount.blfs("cache", "ls")
    assert listing.returncode == 0, listing.stderr
    assert f"objects/{obj['_id']}" in listing.stdout
    usage = mount.blfs("cache", "du")
    assert str(mount.cache_dir) in usage.stdout and "(1 entries)" in usage.stdout


def test_cache_ls_into_a_closed_pipe_ends_quietly(mount, emulator):
    for obj in shown_objects(emulator, "Lab Private")[:3]:
        os.listdir(mount.path / "objects" / obj["_id"])
    command = f"{sys.executable} -m blfs cache ls | head -1"
    piped = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        env=mount.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert len(piped.stdout.splitlines()) == 1
    closed = subprocess.Popen(
        [sys.executable, "-m", "blfs", "cache", "ls"],
        env=mount.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    closed.stdout.close()  # gone before the command writes anything
    assert closed.wait(60) == 0
    assert closed.stderr.read() == b""
    closed.stderr.close()
