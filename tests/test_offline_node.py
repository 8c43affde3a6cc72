"""A compute node of a cluster, through real mounts (issue 19, item 5): a login node's mount
prefetches a subject into a cache, and a mount of the same cache in a network namespace that
cannot reach the server serves all of it — data, metadata files, listings, the BIDS view — and
fails fast on everything else. Twice: with no route at all (`unshare -n`), and behind a firewall
that drops the packets (an nft rule in a namespace of its own, joined to the server by veth)."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mount_fixtures import Mount, mounted, save_token
from test_mount import shown_objects
from test_pubs_tasks_mount import lab_tasks
from test_walks import PROJECT

from blfs.emulator.control import Emulator, EmulatorProcess

# What an unreachable server may cost a path not known offline: at most one connect timeout.
FAST = 5.0
KNOWN_LISTING = 2.5  # the refresh of a known listing is waited for 1 s at most


@dataclass
class Snapshot:
    """Everything under the prefetched path and in the BIDS view, as the login node saw it."""

    files: dict[str, bytes]
    listings: dict[str, list[str]]


def snapshot(root: Path, relative: list[Path], view: Path) -> Snapshot:
    files, listings = {}, {}
    for top in relative:
        for directory, dirs, names in os.walk(root / top):
            where = str(Path(directory).relative_to(root))
            listings[where] = sorted(dirs + names)
            for name in names:
                files[f"{where}/{name}"] = (Path(directory) / name).read_bytes()
    for directory, dirs, names in os.walk(root / view):  # listed; its files are the objects'
        listings[str(Path(directory).relative_to(root))] = sorted(dirs + names)
    return Snapshot(files, listings)


def prefetched(
    login: Callable[..., contextlib.AbstractContextManager[Mount]], task: dict
) -> Snapshot:
    """Prefetches the first subject of the lab project and a task's outputs through a login
    node's mount of the compute node's cache; what a mount of another cache shows there and in
    the BIDS view (so that only the prefetch fills the shared cache)."""
    with login(name="login") as mount:
        lab = mount.path / PROJECT
        subject = sorted(name for name in os.listdir(lab) if name.startswith("sub-"))[0]
        outputs = PROJECT / "processes" / task["instance_id"] / task["_id"]
        paths = [PROJECT / subject, outputs]
        done = mount.blfs("prefetch", *(str(mount.path / p) for p in paths), timeout=300)
        assert done.returncode == 0, done.stderr
    with login(name="elsewhere", cache_dir=mount.cache_dir.parent / "elsewhere") as other:
        return snapshot(other.path, [*paths, PROJECT / "bids" / subject], PROJECT / "bids")


def timed(action: Callable[[], object]) -> tuple[float, int | None]:
    """Seconds `action` took, and the errno it failed with (None if it did not)."""
    started = time.monotonic()
    try:
        action()
        failed = None
    except OSError as exc:
        failed = exc.errno
    return time.monotonic() - started, failed


def unknown_paths(server: Emulator, known: Snapshot) -> list[Path]:
    """Paths the login node never looked at: other subjects' objects, publications, tasks."""
    seen = {part for path in known.files for part in path.split("/")}
    uncached = [o for o in shown_objects(server, "Lab Private") if o["_id"] not in seen][:3]
    task = next(t for t in server.db("tasks") if t["_id"] not in seen)
    return [
        *(Path("objects") / o["_id"] / "_product.json" for o in uncached),
        Path("publications"),
        Path("tasks") / task["_id"] / "_task.json",
        PROJECT / "object-states.json",
    ]


def read_or_list(path: Path) -> None:
    if path.name.endswith(".json"):
        path.read_bytes()
    else:
        os.listdir(path)


def served_offline(compute: Mount, known: Snapshot) -> dict[str, float]:
    """Checks that every file and listing known is served as it was; the slowest of each."""
    slowest = {"file": 0.0, "listing": 0.0}
    for relative, listing in known.listings.items():
        spent, failed = timed(lambda r=relative: os.listdir(compute.path / r))
        assert failed is None, f"{relative}: {os.strerror(failed)}"
        assert sorted(os.listdir(compute.path / relative)) == listing, relative
        slowest["listing"] = max(slowest["listing"], spent)
    for relative, data in known.files.items():
        spent, failed = timed(lambda r=relative: (compute.path / r).read_bytes())
        assert failed is None, f"{relative}: {os.strerror(failed)}"
        assert (compute.path / relative).read_bytes() == data, relative
        slowest["file"] = max(slowest["file"], spent)
    return slowest


def fails_fast(compute: Mount, unknown: list[Path]) -> list[float]:
    """Every unknown path fails with EIO within one connect timeout; the time each took."""
    times = []
    for path in unknown:
        spent, failed = timed(lambda p=path: read_or_list(compute.path / p))
        assert failed == errno.EIO, f"{path}: {failed and os.strerror(failed)}"
        assert spent < FAST, f"{path}: {spent:.1f} s"
        times.append(spent)
    return times


def test_an_offline_compute_node_serves_what_the_login_node_prefetched(
    emulator, user_home, tmp_path
):
    """`unshare -n`: a network namespace with nothing but a loopback that is down."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed")
    cache = tmp_path / "cache"
    login = functools.partial(mounted, emulator.url, user_home, cache_dir=cache)
    known = prefetched(login, lab_tasks(emulator, "finished")[0])
    unknown = unknown_paths(emulator, known)
    assert any(name.endswith("/_product.json") for name in known.files)
    assert any("/processes/" in name and "/_" not in name for name in known.files)
    started = time.monotonic()
    with mounted(
        emulator.url, user_home, cache_dir=cache, name="compute", prefix=("unshare", "-n")
    ) as compute:
        came_up = time.monotonic() - started
        slowest = served_offline(compute, known)
        times = fails_fast(compute, unknown)
    print(
        f"\nno route: mounted in {came_up:.1f} s; {len(known.files)} files and"
        f" {len(known.listings)} listings served (slowest {slowest['file']:.2f} s,"
        f" {slowest['listing']:.2f} s); unknown paths {[round(t, 2) for t in times]} s"
    )


@dataclass
class Namespace:
    """A network namespace joined to this one by a veth pair: `host` is this side's address."""

    name: str
    host: str

    def run(self, *command: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *command], check=True, timeout=30)

    def prefix(self) -> tuple[str, ...]:
        """Runs a command in the namespace's network only (`ip netns exec` would also give it a
        mount namespace of its own, where its FUSE mount would stay)."""
        return ("nsenter", f"--net=/run/netns/{self.name}", "--")


@contextlib.contextmanager
def network_namespace() -> Iterator[Namespace]:
    """A namespace and a veth pair on a private /30, removed (with its rules) at the end."""
    for tool in ("ip", "nsenter", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed (iproute2, util-linux, nftables)")
    tag = os.getpid() % 100_000
    name, outside, inside = f"blfs-node-{tag}", f"bh{tag}", f"bn{tag}"
    net = f"10.{200 + tag % 50}.{tag % 250}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)

    ip("netns", "add", name)
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name)
        ip("addr", "add", f"{net}.1/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", name, "addr", "add", f"{net}.2/30", "dev", inside)
        ip("-n", name, "link", "set", inside, "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name, f"{net}.1")
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=30)
        for _ in range(3):  # it may be listed twice (its mount propagated): until it is gone
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            if not Path("/run/netns", name).exists():
                break
        assert not Path("/run/netns", name).exists(), f"network namespace {name} left behind"


def drop_packets_to(namespace: Namespace, port: int) -> None:
    """An nft rule in the namespace: every packet to the server's port is dropped, unanswered."""
    table = "blfs_firewall"
    namespace.run("nft", "add", "table", "inet", table)
    namespace.run("nft", "add", "chain", "inet", table, "out",
                  "{ type filter hook output priority 0 ; }")  # fmt: skip
    namespace.run("nft", "add", "rule", "inet", table, "out", "ip", "daddr", namespace.host,
                  "tcp", "dport", str(port), "drop")  # fmt: skip


def test_a_compute_node_behind_a_dropping_firewall_mounts_fast_and_never_blocks(
    emulator_data, tmp_path
):
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    with network_namespace() as namespace:
        process = EmulatorProcess(emulator_data, host=namespace.host)
        try:
            server = process.emulator
            save_token(home, server.url, server.token())
            login = functools.partial(mounted, server.url, home, cache_dir=cache)
            known = prefetched(login, lab_tasks(server, "finished")[0])
            unknown = unknown_paths(server, known)
            port = int(server.url.split(":")[2].split("/")[0])
            drop_packets_to(namespace, port)
            started = time.monotonic()
            with mounted(
                server.url, home, cache_dir=cache, ttl=1.0, name="compute",
                prefix=namespace.prefix(),
            ) as compute:  # fmt: skip
                came_up = time.monotonic() - started
                times = fails_fast(compute, unknown)
                slowest, listed = 0.0, 0
                until = time.monotonic() + 12  # several TTLs, and the server probed again
                while time.monotonic() < until:
                    served = served_offline(compute, known)
                    slowest = max(slowest, served["listing"], served["file"])
                    listed += 1
                again = fails_fast(compute, unknown)  # the server is tried again, once
                log = compute.log()
        finally:
            process.stop()
    print(
        f"\ndropped packets: mounted in {came_up:.1f} s; unknown paths"
        f" {[round(t, 2) for t in times]} s, 12 s later {[round(t, 2) for t in again]} s;"
        f" known listings and files, {listed} rounds over 12 s with a 1 s TTL: slowest"
        f" {slowest:.2f} s"
    )
    assert came_up < 5.0, log
    assert slowest < KNOWN_LISTING, log
