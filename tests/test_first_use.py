"""A newcomer's first hour: the version, a mount that explains why it failed, the output of
long commands, and the ways to mount at login (mount(8) and /etc/fstab, a systemd user unit).

A machine without /dev/fuse, a user without access to it and a fuse.conf without
user_allow_other are made in a private mount namespace (`unshare --mount`), so nothing of the
machine changes.
"""

from __future__ import annotations

import os
import pty
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_fixtures import require_fuse, user_env
from test_cli import one_line_error
from test_fetch import wait_for_commit, wait_until
from test_mount import an_object

import blfs
from blfs import mountinfo, status

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "blfs" / "data" / "blfs@.service"


def blfs_cli(home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blfs", *args],
        env=user_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def require_root() -> None:
    """Private mount namespaces and a second user need root; under CI there is no skipping."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        if os.environ.get("CI") == "true":
            pytest.fail("these tests need root and unshare under CI")
        pytest.skip("needs root and unshare (a private mount namespace)")


def in_private_mounts(
    script: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs a shell script in a mount namespace of its own: what it mounts stays there."""
    require_root()
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


def blfs_command() -> str:
    """`blfs` as a shell would run it, with this checkout's code."""
    return f"{shlex.quote(sys.executable)} -m blfs"


def shim(directory: Path, name: str, code: str) -> Path:
    """An executable `name` in `directory` that runs this checkout's blfs (`code` is Python)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)}"
        f' -c {shlex.quote(code)} "$@"\n'
    )
    path.chmod(0o755)
    return path


# --- metadata ---------------------------------------------------------------------------------


def test_version_is_the_package_version(tmp_path):
    done = blfs_cli(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"blfs {blfs.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", blfs.__version__)
    assert f"## {blfs.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert "MIT License" in (ROOT / "LICENSE").read_text()


# --- a mount that explains itself -------------------------------------------------------------


def test_mount_makes_a_missing_mountpoint(emulator, user_home):
    require_fuse()
    point = user_home / "not" / "yet" / "brainlife"
    try:
        done = blfs_cli(user_home, "mount", str(point), "--api", emulator.url)
        assert done.returncode == 0, done.stderr
        assert "Lab Private" in os.listdir(point / "projects")
    finally:
        blfs_cli(user_home, "umount", str(point))
    assert not mountinfo.is_mounted(point)


def test_a_mountpoint_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "brainlife").write_text("a file\n")
    done = blfs_cli(
        tmp_path, "mount", str(tmp_path / "brainlife"), "--api", "http://127.0.0.1:9/api"
    )
    assert "is a file, not a directory" in one_line_error(done)


def test_a_busy_mountpoint_is_refused_with_what_to_do(mount):
    done = mount.blfs("mount", str(mount.path), "--api", "http://127.0.0.1:9/api")
    line = one_line_error(done)
    assert "is busy" in line and f"blfs umount {mount.path}" in line


def failed_mount(done: subprocess.CompletedProcess[str]) -> tuple[str, Path]:
    """A background mount that failed: its one line, and the log that line names."""
    line = one_line_error(done)
    found = re.search(r"\(log: (.+)\)$", line)
    assert found, line
    return line, Path(found.group(1))


def test_an_unknown_option_is_named_with_the_log(emulator, user_home):
    require_fuse()
    done = blfs_cli(
        user_home, "mount", str(user_home / "mnt"), "--api", emulator.url, "-o", "nosuchoption"
    )
    line, log = failed_mount(done)
    assert "unknown mount option: nosuchoption" in line
    assert "nosuchoption" in log.read_text()  # libfuse's own words are in the log
    assert not mountinfo.is_mounted(user_home / "mnt")


def test_an_option_the_kernel_refuses_is_said_so(emulator, user_home):
    require_fuse()
    # libfuse passes blksize= to the kernel, which takes it for block-device mounts only.
    done = blfs_cli(
        user_home, "mount", str(user_home / "mnt"), "--api", emulator.url, "-o", "blksize=4096"
    )
    line, log = failed_mount(done)
    assert "the kernel refused the mount (Invalid argument): check the -o options" in line
    assert log.is_file()


def test_a_machine_without_dev_fuse_is_told_what_to_do(tmp_path):
    mnt = tmp_path / "mnt"
    done = in_private_mounts(
        "mount -t tmpfs blfs-test /dev; mknod -m 666 /dev/null c 1 3\n"
        f"exec {blfs_command()} mount {shlex.quote(str(mnt))} --api http://127.0.0.1:9/api",
        user_env(tmp_path),
    )
    line = one_line_error(done)
    assert "there is no /dev/fuse here" in line and "--device /dev/fuse" in line


def test_a_user_without_access_to_dev_fuse_is_told_so(tmp_path):
    # The device is there but closed to this user: root without the capability to override
    # file modes stands for a user outside the group that may use it.
    mnt = tmp_path / "mnt"
    done = in_private_mounts(
        "mount -t tmpfs blfs-test /dev; mknod -m 666 /dev/null c 1 3\n"
        "mknod -m 000 /dev/fuse c 10 229\n"
        "exec setpriv --bounding-set -dac_override,-dac_read_search"
        f" {blfs_command()} mount {shlex.quote(str(mnt))} --api http://127.0.0.1:9/api",
        user_env(tmp_path),
    )
    assert "you may not use /dev/fuse (permission denied)" in one_line_error(done)


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A home of the user nobody, holding a copy of blfs that user may read."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="blfs-nobody-"))
    try:
        base.chmod(0o755)
        shutil.copytree(
            ROOT / "blfs", base / "code" / "blfs", ignore=shutil.ignore_patterns("*.pyc")
        )
        home = base / "home"
        home.mkdir()
        shutil.chown(home, "nobody", "nogroup")
        yield home
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_share_without_user_allow_other_is_refused_for_a_user(nobody_home, tmp_path):
    # Debian's own Python: the check comes before anything that needs blfs's dependencies.
    empty_conf = tmp_path / "fuse.conf"
    empty_conf.write_text("# mount_max = 1000\n")
    empty_conf.chmod(0o644)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(nobody_home),
        "PYTHONPATH": str(nobody_home.parent / "code"),
    }
    done = in_private_mounts(
        f"[ ! -e /etc/fuse.conf ] || mount --bind {shlex.quote(str(empty_conf))} /etc/fuse.conf\n"
        # A device every user may open, as distributions ship it (this one may be root's only).
        "mount -t tmpfs blfs-test /dev; mknod -m 666 /dev/null c 1 3\n"
        "mknod -m 666 /dev/fuse c 10 229\n"
        "exec setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/bin/python3 -m blfs"
        f" mount {shlex.quote(str(nobody_home / 'mnt'))} --share --api http://127.0.0.1:9/api",
        env,
    )
    line = one_line_error(done)
    assert "allow_other (--share) needs the line user_allow_other in /etc/fuse.conf" in line


# --- commands with long output ----------------------------------------------------------------


def test_quiet_and_verbose_mounts(emulator, user_home):
    require_fuse()
    point = user_home / "mnt"
    try:
        quiet = blfs_cli(user_home, "mount", str(point), "--api", emulator.url, "--quiet")
        assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet
        blfs_cli(user_home, "umount", str(point))
        loud = blfs_cli(user_home, "mount", str(point), "--api", emulator.url, "-v")
        assert loud.returncode == 0, loud.stderr
        assert f"INFO blfs: mounting {emulator.url}" in loud.stderr
        assert "DEBUG blfs.api: GET" in loud.stderr  # every request, the API check's among them
    finally:
        blfs_cli(user_home, "umount", str(point))
    assert not mountinfo.is_mounted(point)


def test_prefetch_of_a_file_fetches_its_object_and_writes_no_escapes_into_a_pipe(mount, emulator):
    obj = an_object(emulator)
    member = mount.path / "objects" / obj["_id"] / "t1.nii.gz"
    done = mount.blfs("prefetch", str(member))
    assert done.returncode == 0, done.stderr
    wait_for_commit(mount.cache_dir, obj["_id"])
    assert (mount.cache_dir / "objects" / obj["_id"]).is_dir()
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    assert done.stderr.count("\n") == 1 and "1/1 objects" in done.stderr  # the closing line
    loud = mount.blfs("prefetch", "-v", str(member))
    assert f"{mount.path / 'objects' / obj['_id']}  " in loud.stderr and "cached" in loud.stderr
    quiet = mount.blfs("prefetch", "-q", str(member))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_prefetch_draws_its_bar_on_a_terminal(mount, emulator):
    obj = an_object(emulator)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "blfs", "prefetch", str(mount.path / "objects" / obj["_id"])],
            env=mount.env(),
            stderr=follower,
            timeout=120,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert done.returncode == 0
    assert b"\r\x1b[K[" in shown and b"1/1 objects" in shown


def test_prefetch_of_a_file_outside_any_object_is_one_sentence(mount):
    done = mount.blfs("prefetch", str(mount.path / "projects" / "Lab Private" / "project.json"))
    line = one_line_error(done)
    assert "is a file outside any data-object" in line and "Errno" not in line


def test_cache_clear_takes_a_directory_as_prefetch_does(mount, emulator):
    lab = mount.path / "projects" / "Lab Private"
    subject = lab / sorted(p for p in os.listdir(lab) if p.startswith("sub-"))[0]
    fetched = mount.blfs("prefetch", str(subject))
    assert fetched.returncode == 0, fetched.stderr
    cached = set(os.listdir(mount.cache_dir / "objects"))
    assert cached
    cleared = mount.blfs("cache", "clear", str(subject), "--cache-dir", str(mount.cache_dir))
    assert cleared.returncode == 0, cleared.stderr
    assert f"removed {len(cached)} entries" in cleared.stdout
    assert not os.listdir(mount.cache_dir / "objects")


def test_errors_of_the_system_are_sentences(tmp_path):
    done = blfs_cli(tmp_path, "cache", "du", "--cache-dir", "/proc/1/no-such-dir")
    line = one_line_error(done)
    assert line == "blfs: /proc/1/no-such-dir: No such file or directory"


def test_no_time_shown_is_1970(mount, emulator):
    for path in (mount.path, mount.path / "projects", mount.path / "objects"):
        assert path.stat().st_mtime > time.time() - 3600, path
    listed = [mount.path / "projects" / name for name in os.listdir(mount.path / "projects")]
    assert all(path.stat().st_mtime > 86400 * 365 for path in listed)


def test_status_shows_a_stale_mount_and_how_to_clear_it(mount):
    mount.process.kill()
    mount.process.wait(10)
    shown = mount.blfs("status")
    assert "no blfs mounts" not in shown.stdout
    assert f"{mount.path}  stale" in shown.stdout
    assert f"blfs umount {mount.path}" in shown.stdout


def test_mount_registry_records_are_owner_only(mount):
    registry = Path(mount.env()["XDG_RUNTIME_DIR"]) / "blfs" / "mounts"
    wait_until(lambda: list(registry.glob("*.json")), what="the mount's record")
    time.sleep(2 * status.PUBLISH_INTERVAL)  # rewritten since: every version is private
    records = list(registry.glob("*.json"))
    assert records
    for record in records:
        assert stat.S_IMODE(record.stat().st_mode) == 0o600, record


# --- mounting at login ------------------------------------------------------------------------


def helper_bin(home: Path) -> Path:
    """A directory whose `blfs` is this checkout's. mount(8) clears PATH, so mount.fuse3 finds
    `blfs` only in the shell's default PATH: the tests bind this over /usr/local/bin."""
    directory = home / "bin"
    shim(directory, "blfs", "import sys; sys.argv[0] = 'blfs'; from blfs.cli import main; main()")
    return directory


# mount(8) gives a helper no HOME (mount.fuse3 sets /root), so these mounts are root's: as
# guests (no token of root's names the emulator) that show what is public, with the cache dir
# named in the options and nothing written to root's home.


def test_mount_t_fuse_blfs_mounts_through_mount_fuse3(emulator, user_home):
    require_fuse()
    point, cache = user_home / "brainlife", user_home / "cache"
    # mount(8) hands the type fuse.blfs to mount.fuse3, which runs `blfs SOURCE DIR -o OPTIONS`.
    script = (
        f"trap 'fusermount3 -uz {shlex.quote(str(point))} 2>/dev/null || true' EXIT\n"
        f"mount --bind {shlex.quote(str(helper_bin(user_home)))} /usr/local/bin\n"
        f"mkdir -p {shlex.quote(str(point))}\n"
        f"mount -t fuse.blfs -o ttl=5,cache_dir={cache},nodev,noatime {emulator.url} {point}\n"
        f"grep ' {point} ' /proc/self/mounts\n"
        f"ls {shlex.quote(str(point))}/publications\n"
        f"{blfs_command()} umount {shlex.quote(str(point))}\n"
    )
    done = in_private_mounts(script, user_env(user_home))
    assert done.returncode == 0, done.stderr
    line, listing = done.stdout.split("\n", 1)
    assert line.split()[:3] == ["blfs", str(point), "fuse.blfs"]
    options = line.split()[3].split(",")
    assert "ro" in options and "noatime" in options and "nosuid" in options
    *publications, unmounted = listing.splitlines()
    assert publications and unmounted == f"unmounted {point}"
    assert (cache / "metadata.sqlite3").is_file()  # the cache_dir option reached blfs


def test_an_fstab_line_mounts_by_its_mountpoint(emulator, user_home):
    require_fuse()
    point, cache = user_home / "brainlife", user_home / "cache"
    fstab = user_home / "fstab"
    fstab.write_text(
        f"{emulator.url} {point} fuse.blfs noauto,_netdev,cache_dir={cache},ttl=5 0 0\n"
    )
    script = (
        f"trap 'fusermount3 -uz {shlex.quote(str(point))} 2>/dev/null || true' EXIT\n"
        f"mount --bind {shlex.quote(str(helper_bin(user_home)))} /usr/local/bin\n"
        f"mount --bind {shlex.quote(str(fstab))} /etc/fstab\n"
        f"mkdir -p {shlex.quote(str(point))}\n"
        f"mount {shlex.quote(str(point))}\n"
        f"ls {shlex.quote(str(point))}/publications\n"
        f"umount {shlex.quote(str(point))}\n"
        f"grep -c ' {point} ' /proc/self/mounts || true\n"
    )
    done = in_private_mounts(script, user_env(user_home))
    assert done.returncode == 0, done.stderr
    *publications, still_mounted = done.stdout.splitlines()
    assert publications and still_mounted == "0"


def test_mount_fuse_blfs_takes_the_arguments_mount8_gives_a_helper(emulator, user_home):
    require_fuse()
    point = user_home / "brainlife"
    helper = shim(
        user_home / "sbin", "mount.fuse.blfs", "from blfs.cli import mount_helper; mount_helper()"
    )
    try:
        # What mount(8) runs for `mount -t fuse.blfs` once /sbin/mount.fuse.blfs is installed.
        done = subprocess.run(
            [
                str(helper),
                emulator.url,
                str(point),
                "-o",
                "rw,noauto,user,ttl=5",
                "-t",
                "fuse.blfs",
            ],
            env=user_env(user_home),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and done.stdout == "", done.stderr
        assert "Lab Private" in os.listdir(point / "projects")
        refused = subprocess.run(
            [str(helper), str(point)], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode != 0 and refused.stderr.startswith("usage: mount.fuse.blfs")
    finally:
        blfs_cli(user_home, "umount", str(point))
    assert not mountinfo.is_mounted(point)


def unit_commands(home: Path, instance: str) -> dict[str, list[str]]:
    """The unit's ExecStart and ExecStop as systemd runs them for `blfs@<instance>`: specifiers
    replaced, $BLFS_OPTIONS from the instance's environment file split into words."""
    options = ""
    env_file = home / ".config" / "blfs" / f"{instance}.env"
    if env_file.is_file():
        options = env_file.read_text().strip().removeprefix("BLFS_OPTIONS=")
    commands = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("ExecStart", "ExecStop"):
            value = value.replace("%h", str(home)).replace("%I", instance).replace("%i", instance)
            words = shlex.split(value.removeprefix("-"))  # "-": its failure is ignored
            commands[key] = [
                w
                for word in words
                for w in (shlex.split(options) if word == "$BLFS_OPTIONS" else [word])
            ]
    return commands


@pytest.fixture
def unit_service(emulator, user_home) -> Iterator[tuple[subprocess.Popen[bytes], list[str], Path]]:
    """`blfs@brainlife` started as systemd starts it: its ExecStart running, its mount up; the
    ExecStop command; the mountpoint. Whatever a test does, nothing is left mounted."""
    require_fuse()
    code = "import sys; sys.argv[0] = 'blfs'; from blfs.cli import main; main()"
    shim(user_home / ".local" / "bin", "blfs", code)
    env_file = user_home / ".config" / "blfs" / "brainlife.env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(f"BLFS_OPTIONS=--api {emulator.url} --ttl 5\n")
    commands = unit_commands(user_home, "brainlife")
    point = user_home / "brainlife"
    assert commands["ExecStart"][1:4] == ["mount", "--foreground", str(point)]
    with open(user_home / "journal.log", "wb") as journal:
        service = subprocess.Popen(
            commands["ExecStart"], env=user_env(user_home), stdout=journal, stderr=journal
        )
    try:
        wait_until(
            lambda: mountinfo.is_mounted(point) or service.poll() is not None, what="the mount"
        )
        assert "Lab Private" in os.listdir(point / "projects")
        yield service, commands["ExecStop"], point
    finally:
        if mountinfo.is_mounted(point):
            subprocess.run([mountinfo.fusermount(), "-uz", str(point)], timeout=30)
        if service.poll() is None:
            service.kill()
            service.wait(10)
    assert not mountinfo.is_mounted(point)


def test_the_systemd_unit_mounts_at_start_and_unmounts_at_stop(unit_service, user_home):
    service, stop_command, point = unit_service
    stop = blfs_run(stop_command, user_home)
    assert stop.returncode == 0, stop.stderr
    assert service.wait(30) == 0  # the service ends cleanly: systemd sees a stop, not a failure
    assert not mountinfo.is_mounted(point)


def test_the_systemd_units_stop_clears_the_mount_of_a_crashed_service(unit_service, user_home):
    service, stop_command, point = unit_service
    service.kill()
    service.wait(10)
    assert mountinfo.is_stale(point)
    stop = blfs_run(stop_command, user_home)  # systemd runs ExecStop after a crash too
    assert stop.returncode == 0, stop.stderr
    assert not mountinfo.is_mounted(point)


def blfs_run(command: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=user_env(home), capture_output=True, text=True, timeout=60)


def test_systemd_accepts_the_unit(tmp_path):
    if not shutil.which("systemd-analyze"):
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is needed under CI (apt install systemd)")
        pytest.skip("no systemd-analyze")
    home = tmp_path / "home"
    shim(home / ".local" / "bin", "blfs", "from blfs.cli import main; main()")
    (tmp_path / "run").mkdir(mode=0o700)
    instance = tmp_path / "blfs@brainlife.service"
    shutil.copy(UNIT, instance)
    done = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(instance)],
        env={**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "run")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr


# --- installing -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """blfs built as a wheel from this checkout, once per session (from a copy: a build writes
    into the tree it builds)."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    skipped = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skipped))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("blfs-*.whl")
    return found


def test_the_wheel_holds_what_an_install_needs(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "blfs/data/blfs@.service" in names and "blfs/emulator/server.py" in names
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert f"Version: {blfs.__version__}" in text and "License-Expression: MIT" in text
    assert "Provides-Extra: demo" in text and "Provides-Extra: test" in text
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert (
        "blfs = blfs.cli:main" in scripts and "mount.fuse.blfs = blfs.cli:mount_helper" in scripts
    )


def test_demo_names_the_extra_it_lacks_and_runs_once_it_is_installed(wheel, tmp_path):
    require_fuse()
    venv = tmp_path / "venv"
    env = user_env(tmp_path)
    env.pop("PYTHONPATH", None)  # the wheel's blfs, not this checkout's

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout
        )

    made = run(sys.executable, "-m", "venv", str(venv))
    assert made.returncode == 0, made.stderr
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    plain = run(*pip, str(wheel))
    assert plain.returncode == 0, plain.stderr
    point = tmp_path / "brainlife"
    lacking = run(str(venv / "bin" / "blfs"), "demo", str(point))
    line = one_line_error(lacking)
    assert "blfs demo needs the demo extra" in line
    assert line.endswith(f"{venv / 'bin' / 'python'} -m pip install '{wheel}[demo]'"), line
    with_demo = run(*pip, f"{wheel}[demo]")
    assert with_demo.returncode == 0, with_demo.stderr
    try:
        started = run(str(venv / "bin" / "blfs"), "demo", str(point))
        assert started.returncode == 0, started.stderr
        assert "Lab Private" in os.listdir(point / "projects")
    finally:
        stopped = run(str(venv / "bin" / "blfs"), "umount", str(point), timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert not mountinfo.is_mounted(point)


def test_ci_runs_the_readme_quick_start_word_for_word():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick_start, re.DOTALL)
    assert len(commands) == 2 and all("\n" not in command for command in commands), commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    first, second = (ci.index(command) for command in commands)
    assert first < second
    assert "python3 -m venv .venv" in commands[0] and "pip install '.[test]'" in commands[0]
    assert commands[1].startswith(".venv/bin/python -m pytest")
