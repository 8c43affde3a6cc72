"""blfs against its baselines, measured in one run against the bundled emulator.

    python scripts/bench.py [--size BYTES] [--objects N] [--bandwidth BYTES_PER_S] [--dir DIR]
                            [--walks-only]

Prints one table row per measurement, each a ratio to a baseline measured in the same run:
  1. cold `cp -r` of an object, and a cold `cat` of its image, through the mount
                                                   vs  `curl URL | tar -x`
     (they alternate for 3 rounds; each figure is the median of its rounds)
  2. warm sequential read through a new mount      vs  the same bytes read from local disk
     (1 and 2 by both read paths: the kernel reading the cache file itself where it grants that
     to the mount, as to root; and through the mount, as for any other user: -o nopassthrough)
  3. first byte of the first member (throttled)    vs  the whole download
  4. `ls -lR` of an N-object project: requests and seconds, cold and again within the TTL
then the data path against its goals (issue: one cache item at the heart of the data path):
  5. a second mount on the same cache reading an object another mount downloads: how long after
     the first mount each byte reaches it (goal <= 1 s), and downloads made (goal 1)
  6. peak RSS of the mount while `cat` streams a --stream-size archive (goal < 150 MB)
and directory walks against theirs (issue: directory walks at native speed):
  7. `ls -lR` and `find -type f` of the N-object project, every object cached: within the TTL
     (goal <= 2x the same tree on local disk), the first after a remount and with the server
     stopped (goal <= 3x), and the mount's peak RSS holding that metadata (goal < 150 MB)
Generated data is kept in --dir and reused by later runs, except the big streamed archive; the
caches and copies each part makes are removed after it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from blfs import mountinfo
from blfs.auth import TokenStore
from blfs.emulator.control import Emulator, EmulatorProcess, generated_data, start_emulator

ROWS: list[tuple[str, str, str, str]] = []
GOALS: list[tuple[str, str, str, bool]] = []


def timed_shell(command: str) -> float:
    """Seconds a bash command takes, once what earlier steps left dirty is written back (the
    300 MB a step writes would otherwise be flushed during a later one, in its time)."""
    os.sync()
    start = time.perf_counter()
    shell(command)
    return time.perf_counter() - start


def shell(command: str) -> None:
    """Runs a bash command. Its end is waited for without polling: a wait with a timeout polls
    every 50 ms, which rounds every timing up to the next 50 ms (15% of a 0.3 s copy)."""
    process = subprocess.Popen(["bash", "-o", "pipefail", "-c", command])
    watchdog = threading.Timer(3600, process.kill)
    watchdog.start()
    try:
        returncode = process.wait()
    finally:
        watchdog.cancel()
    if returncode:
        raise subprocess.CalledProcessError(returncode, command)


def row(what: str, blfs_value: float, baseline: float, unit: str = "s") -> None:
    ROWS.append(
        (what, f"{blfs_value:.3f} {unit}", f"{baseline:.3f} {unit}", f"{blfs_value / baseline:.2f}")
    )


def goal(what: str, measured: str, wanted: str, met: bool) -> None:
    GOALS.append((what, measured, wanted, met))


def data_dir(root: Path, name: str, **options: int) -> Path:
    if not (root / name).is_dir():
        print(f"generating {name} …", file=sys.stderr)
    return generated_data(root / name, **options)


def user_env(home: Path) -> dict[str, str]:
    """The bench user's environment (PYTHONPATH kept: the blfs under test is the one run)."""
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(home), "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@contextlib.contextmanager
def mounted(
    server: Emulator,
    home: Path,
    cache: Path,
    ttl: float = 300,
    login: bool = True,
    options: tuple[str, ...] = (),
) -> Iterator[Path]:
    point = Path(tempfile.mkdtemp(prefix="mnt", dir=home))
    if login:
        TokenStore(server.url, home=home).save(server.token("demo"))
    env = user_env(home)
    command = [sys.executable, "-m", "blfs", "mount", str(point), "--api", server.url]
    command += ["--cache-dir", str(cache), "--ttl", str(ttl), *options]
    subprocess.run(command, check=True, env=env, timeout=60)
    pid = mount_pid(point)
    try:
        yield point
    finally:
        mountinfo.unmount(point)
        wait_for_exit(pid)
        point.rmdir()


def wait_for_exit(pid: int, timeout: float = 120) -> None:
    """Waits for an unmounted mount's process to end: it commits what it downloaded first, and
    that disk work must not fall into the next step's time."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def one_object(server: Emulator) -> dict:
    """The generated big object: the largest t1w of Lab Private."""
    lab = next(p["_id"] for p in server.db("projects") if p["name"] == "Lab Private")
    t1w = next(d["_id"] for d in server.db("datatypes") if d["name"] == "neuro/anat/t1w")
    candidates = [
        d for d in server.db("datasets")
        if d["project"] == lab and d["datatype"] == t1w and d["status"] == "stored"
        and not d.get("removed")
    ]  # fmt: skip
    return max(candidates, key=lambda d: d["size"])


def downloads(server: Emulator) -> int:
    return sum("/dataset/download/" in r["path"] for r in server.requests())


# Cold steps alternate with their baseline this many times; each is the median of its rounds,
# so that one slow round (a busy moment of the machine) decides nothing.
ROUNDS = 3


@contextlib.contextmanager
def scratch_home(work: Path) -> Iterator[Path]:
    """A directory for one part's caches and copies, removed after it (each run writes GBs)."""
    home = Path(tempfile.mkdtemp(prefix="bench", dir=work))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def cold_rounds(server: Emulator, home: Path, object_id: str, curl: str) -> dict[str, float]:
    """Medians of ROUNDS alternations of `curl | tar -x`, a cold `cp -r` of the object by each
    read path, and a cold `cat` of its image. Leaves `home/copy` and the cache `home/cache-0`."""
    times: dict[str, list[float]] = collections.defaultdict(list)
    for n in range(ROUNDS):
        scratch = [home / f"curl-{n}", home / f"cache-first-read-{n}"]
        scratch[0].mkdir()
        times["curl"].append(timed_shell(f"{curl} | tar -x -C {scratch[0]}"))
        for k, (path, options) in enumerate(READ_PATHS.items()):
            first = n == 0 and k == 0
            destination, cache = (home / "copy", home / "cache-0") if first else (
                home / f"copy-{n}-{k}", home / f"cache-{n}-{k}")  # fmt: skip
            with mounted(server, home, cache, options=options) as point:
                source = point / "objects" / object_id
                times[f"cp{path}"].append(timed_shell(f"cp -r {source} {destination}"))
            if not first:
                scratch += [destination, cache]
        relative = next((home / "copy").rglob("*.nii.gz")).relative_to(home / "copy")
        with mounted(server, home, scratch[1]) as point:
            image = point / "objects" / object_id / relative
            times["cat"].append(timed_shell(f"cat {image} >/dev/null"))
        for leftover in scratch:
            shutil.rmtree(leftover, ignore_errors=True)
    return {what: statistics.median(values) for what, values in times.items()}


# How complete files reach readers: read by the kernel itself from the cache file where it grants
# that (a mount run as root, Linux >= 6.9), else through the mount (any other user's mount).
READ_PATHS = {"": (), ", -o nopassthrough": ("-o", "nopassthrough")}


def bench_object(work: Path, size: int, bandwidth: int) -> None:
    data = data_dir(work, f"big-{size}", subjects=1, objects_per_subject=1, object_size=size)
    with start_emulator(data) as server, scratch_home(work) as home:
        obj = one_object(server)
        token = server.token("demo")
        url = f"{server.url}/warehouse/dataset/download/{obj['_id']}"
        times = cold_rounds(
            server, home, obj["_id"], f"curl -sf -H 'Authorization: Bearer {token}' {url}"
        )
        copy = home / "copy"
        relative = next(copy.rglob("*.nii.gz")).relative_to(copy)
        curl = times["curl"]
        for path in READ_PATHS:
            cold = times[f"cp{path}"]
            row(
                f"cold cp -r of a {obj['size'] / 1e6:.0f} MB object{path} vs curl | tar -x",
                cold,
                curl,
            )
            goal(
                f"cold cp -r / curl | tar -x{path}",
                f"{cold / curl:.2f}x",
                "<= 1.1x",
                cold <= 1.1 * curl,
            )
        first_read = times["cat"]
        row("cold read of its image (cat) vs curl | tar -x", first_read, curl)
        goal("cold cat / curl | tar -x", f"{first_read / curl:.2f}x", "<= 1.0x", first_read <= curl)
        member = copy / relative
        local = timed_shell(f"cat {member} > /dev/null")
        for path, options in READ_PATHS.items():
            with mounted(server, home, home / "cache-0", options=options) as point:
                server.clear_requests()
                image = point / "objects" / obj["_id"] / relative
                warm = timed_shell(f"cat {image} >/dev/null")
                again = timed_shell(f"cat {image} >/dev/null")
                assert downloads(server) == 0
            row(f"warm read through a new mount{path} vs local disk", warm, local)
            row(f"same file read again{path} vs local disk", again, local)
            rate = member.stat().st_size / warm / 1e9
            goal(f"cached first read{path}", f"{rate:.2f} GB/s", ">= 1.4 GB/s class", rate >= 1.4)

        server.set(bandwidth=bandwidth)
        with mounted(server, home, home / "cache-throttled") as point:
            directory = point / "objects" / obj["_id"]
            start = time.perf_counter()
            shell(f"head -c 1 {directory / relative} > /dev/null")
            first = time.perf_counter() - start
            shell(f"ls {directory} > /dev/null")
            whole = time.perf_counter() - start
        with mounted(server, home, home / "cache-throttled-copy") as point:
            source = point / "objects" / obj["_id"]
            throttled_copy = timed_shell(f"cp -r {source} {home / 'copy-throttled'}")
        throttled_curl_dir = home / "curl-throttled"
        throttled_curl_dir.mkdir()
        throttled_curl = timed_shell(
            f"curl -sf -H 'Authorization: Bearer {token}' {url} | tar -x -C {throttled_curl_dir}"
        )
        server.reset()
        row(f"first byte vs whole download at {bandwidth / 1e6:.0f} MB/s", first, whole)
        mbps = f"{bandwidth / 1e6:.0f} MB/s"
        row(f"cold cp -r vs curl | tar -x, both at {mbps}", throttled_copy, throttled_curl)


def bench_listing(work: Path, objects: int) -> None:
    subjects = max(1, objects // 10)
    data = data_dir(work, f"many-{objects}", subjects=subjects, objects_per_subject=10,
                    object_size=1024)  # fmt: skip
    with start_emulator(data) as server, scratch_home(work) as home:
        with mounted(server, home, home / "cache") as point:
            project = point / "projects" / "Lab Private"
            server.clear_requests()
            metadata = timed_shell(
                f"find '{project}' -regextype posix-extended -regex '.*/[0-9a-f]{{24}}' -prune"
                " -ls > /dev/null"
            )
            metadata_requests = len(server.requests())
            server.clear_requests()
            cold = timed_shell(f"ls -lR '{project}' > /dev/null")
            cold_requests, cold_downloads = len(server.requests()), downloads(server)
            server.clear_requests()
            warm = timed_shell(f"ls -lR '{project}' > /dev/null")
            warm_requests = len(server.requests())
        print(
            f"\n{objects}-object project:\n"
            f"  every directory down to the objects (find -ls): {metadata:.2f} s, "
            f"{metadata_requests} requests\n"
            f"  ls -lR, cold (fetches every archive): {cold:.2f} s, {cold_requests} requests "
            f"({cold_downloads} archive downloads)\n"
            f"  ls -lR again within the TTL: {warm:.2f} s, {warm_requests} requests"
        )


def bench_second_mount(work: Path, size: int, bandwidth: int) -> None:
    """Two mounts on one cache read the same byte of an object one of them downloads."""
    data = data_dir(work, f"big-{size}", subjects=1, objects_per_subject=1, object_size=size)
    with start_emulator(data) as server, scratch_home(work) as home:
        obj = one_object(server)
        server.set(bandwidth=bandwidth)
        with (
            mounted(server, home, home / "cache") as first,
            mounted(server, home, home / "cache") as second,
        ):
            relative = image_of(first / "objects" / obj["_id"])
            offsets = [size * k // 8 for k in range(1, 7)]
            arrivals = [byte_times([first, second], obj["_id"], relative, at) for at in offsets]
            made = downloads(server)
        server.reset()
    delays = [abs(b - a) for a, b in arrivals]
    goal("second mount: a byte after the first mount got it", f"{max(delays):.3f} s max",
         "<= 1 s", max(delays) <= 1.0)  # fmt: skip
    goal("second mount: downloads of the shared object", str(made), "1", made == 1)


def image_of(directory: Path) -> Path:
    """The object's image, found by its header (a lookup waits only for that)."""
    for name in ("t1.nii.gz", "t1.nii", "dwi.nii.gz"):
        if (directory / name).exists():
            return Path(name)
    raise SystemExit(f"no image in {directory}")


def byte_times(points: list[Path], object_id: str, relative: Path, offset: int) -> list[float]:
    """Seconds each mount took to return the byte at `offset`, asked of all at once."""
    start = time.perf_counter()
    times = [0.0] * len(points)

    def read(index: int) -> None:
        with open(points[index] / "objects" / object_id / relative, "rb") as file:
            os.pread(file.fileno(), 1, offset)
        times[index] = time.perf_counter() - start

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(points))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def bench_streaming_rss(work: Path, size: int) -> None:
    """Peak RSS of a mount streaming one big archive; its data and cache are removed after."""
    name = f"stream-{size}"
    data = data_dir(work, name, subjects=1, objects_per_subject=1, object_size=size)
    try:
        with (
            start_emulator(data) as server,
            scratch_home(work) as home,
            mounted(server, home, home / "cache") as point,
        ):
            obj = one_object(server)
            directory = point / "objects" / obj["_id"]
            relative = image_of(directory)
            peak = streamed_peak_rss(mount_pid(point), directory / relative)
    finally:
        shutil.rmtree(work / name, ignore_errors=True)
    goal(f"peak RSS of the mount streaming {size / 1e9:.1f} GB", f"{peak / 1e6:.0f} MB",
         "< 150 MB", peak < 150e6)  # fmt: skip


def mount_pid(point: Path) -> int:
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"mount" in argv and str(point).encode() in argv:
                return int(proc.name)
    raise SystemExit(f"no mount process for {point}")


def streamed_peak_rss(pid: int, path: Path) -> int:
    """The mount's peak RSS (VmHWM, bytes) once `cat` has read `path` to the end."""
    shell(f"cat '{path}' > /dev/null")
    return peak_rss(pid)


def peak_rss(pid: int) -> int:
    """A process's peak RSS (VmHWM), bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        * 1024
    )


WALKS = {"ls -lR": ["ls", "-lR", "."], "find -type f": ["find", ".", "-type", "f"]}
WALK_GOALS = {"within the TTL": 2.0, "first after a remount": 3.0, "server stopped": 3.0}


def walk(root: Path, name: str) -> tuple[float, str]:
    """Seconds `name` takes over `root` (run from inside it), and what it printed."""
    start = time.perf_counter()
    done = subprocess.run(
        WALKS[name], cwd=root, check=True, capture_output=True, text=True, timeout=3600
    )
    return time.perf_counter() - start, done.stdout


def best_walk(root: Path, name: str, runs: int = 3) -> float:
    return min(walk(root, name)[0] for _ in range(runs))


def walk_goal(when: str, name: str, blfs_seconds: float, local_seconds: float) -> None:
    ratio, wanted = blfs_seconds / local_seconds, WALK_GOALS[when]
    goal(f"{name}, {when}", f"{blfs_seconds:.3f} s = {ratio:.2f}x local",
         f"<= {wanted:g}x {local_seconds:.3f} s", ratio <= wanted)  # fmt: skip


def bench_walks(work: Path, objects: int) -> None:
    """Walks of an N-object project with every object cached, against the same tree copied to
    local disk: warm within the TTL, the first after a remount, and with the server stopped.
    The cache and the local copy are kept in --dir and reused by later runs."""
    data = data_dir(work, f"many-{objects}", subjects=max(1, objects // 10),
                    objects_per_subject=10, object_size=1024)  # fmt: skip
    home = work / f"walks-{objects}"
    cache, local = home / "cache", home / "local"
    home.mkdir(exist_ok=True)
    project = Path("projects") / "Lab Private"
    server = EmulatorProcess(data)
    try:
        with mounted(server.emulator, home, cache) as point:
            if not local.is_dir():
                print("caching every object of the project …", file=sys.stderr)
                env = user_env(home)
                prefetch = [
                    sys.executable,
                    "-m",
                    "blfs",
                    "prefetch",
                    "-j",
                    "8",
                    str(point / project),
                ]
                subprocess.run(
                    prefetch, check=True, env=env, timeout=3600, stderr=subprocess.DEVNULL
                )
                shell(f"cp -r '{point / project}' '{local}.tmp' && mv '{local}.tmp' '{local}'")
            online = {name: walk(point / project, name)[1] for name in WALKS}
            warm = {name: best_walk(point / project, name) for name in WALKS}
            rss = peak_rss(mount_pid(point))
        for name in WALKS:
            walk_goal("within the TTL", name, warm[name], best_walk(local, name))
        directories = sum(1 for _ in os.walk(local))
        for name in WALKS:
            with mounted(server.emulator, home, cache) as point:
                seconds = walk(point / project, name)[0]
                walk_goal("first after a remount", name, seconds, best_walk(local, name))
            # The kernel's caches start empty: each directory costs it two round trips into the
            # mount (its listing, then the empty page that ends it), whatever the daemon.
            print(f"{name}, first after a remount: {seconds * 1e6 / directories:.0f} us for each"
                  f" of {directories} directories")  # fmt: skip
        server.stop()
        for name in WALKS:
            with mounted(server.emulator, home, cache, login=False) as point:
                seconds, printed = walk(point / project, name)
                assert printed == online[name], f"{name} with the server stopped lists otherwise"
                walk_goal("server stopped", name, seconds, best_walk(local, name))
    finally:
        server.stop()
    goal(f"peak RSS of the mount holding metadata for {objects} objects", f"{rss / 1e6:.0f} MB",
         "< 150 MB", rss < 150e6)  # fmt: skip


def print_goals() -> None:
    print(f"\n{'goal':<52} {'measured':>22} {'wanted':>24}")
    for what, measured, wanted, met in GOALS:
        print(f"{what:<52} {measured:>22} {wanted:>24}  {'met' if met else 'NOT MET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300_000_000, help="big object bytes")
    parser.add_argument("--objects", type=int, default=10_000, help="objects for ls -lR")
    parser.add_argument("--bandwidth", type=int, default=50_000_000, help="throttle, bytes/s")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "blfs-bench")
    parser.add_argument(
        "--stream-size", type=int, default=5_000_000_000, help="archive for the RSS case, bytes"
    )
    parser.add_argument("--walks-only", action="store_true", help="only the directory walks")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.walks_only:
        bench_walks(args.dir, args.objects)
        print_goals()
        return

    bench_object(args.dir, args.size, args.bandwidth)
    print(f"{'measurement':<58} {'blfs':>10} {'baseline':>10} {'ratio':>6}")
    for what, value, baseline, ratio in ROWS:
        print(f"{what:<58} {value:>10} {baseline:>10} {ratio:>6}")
    bench_listing(args.dir, args.objects)
    bench_second_mount(args.dir, args.size, args.bandwidth)
    bench_streaming_rss(args.dir, args.stream_size)
    bench_walks(args.dir, args.objects)
    print_goals()


if __name__ == "__main__":
    main()
