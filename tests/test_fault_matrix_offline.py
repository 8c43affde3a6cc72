"""Offline and with an expired token, through real mounts (issue 8, item 3): data already in the
cache and the last known listings are served whatever the token's state; only what needs the
server gets EACCES, with one line saying to run `blfs login`."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from mount_fixtures import mounted, save_token
from test_mount import shown_objects
from test_walks import PROJECT, walk

from blfs.auth import claims
from blfs.emulator.control import EmulatorProcess

TTL = 0.5


def read_all(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def object_path(listed: str, object_id: str) -> Path:
    """An object's path in a project, from a walk's output."""
    return Path(next(line for line in listed.splitlines() if line.endswith(object_id)))


def assert_only_the_server_is_missed(mount, known: dict, uncached: dict) -> None:
    """Every known listing and cached object as before; the uncached object EACCES."""
    root = mount.path / PROJECT
    assert sorted(os.listdir(mount.path / "projects")) == known["projects"]
    assert walk(root) == known["walk"]
    cached_id = known["object"]
    assert read_all(mount.path / "objects" / cached_id) == known["files"]
    assert read_all(root / object_path(known["walk"], cached_id)) == known["files"]
    with pytest.raises(OSError) as caught:
        os.listdir(mount.path / "objects" / uncached["_id"])
    assert caught.value.errno == errno.EACCES
    log = mount.log()
    assert sum("blfs login" in line for line in log.splitlines()) == 1, log


def learn(mount, cached: dict) -> dict:
    """Lists and reads what the tests expect to be served later."""
    return {
        "projects": sorted(os.listdir(mount.path / "projects")),
        "walk": walk(mount.path / PROJECT),
        "object": cached["_id"],
        "files": read_all(mount.path / "objects" / cached["_id"]),
    }


def test_offline_with_an_expired_token_serves_everything_known(emulator_data, user_home):
    process = EmulatorProcess(emulator_data)
    server = process.emulator
    cached, uncached = shown_objects(server, "Lab Private")[:2]
    try:
        save_token(user_home, server.url, server.token())
        short_lived = server.token(ttl_ms=2000)
        with mounted(server.url, user_home, ttl=TTL) as mount:
            known = learn(mount, cached)
            process.stop()
            save_token(user_home, server.url, short_lived)
            time.sleep(max(0.0, claims(short_lived)["exp"] - time.time()) + TTL)
            assert_only_the_server_is_missed(mount, known, uncached)
    finally:
        process.stop()


def test_online_with_an_expired_token_cached_objects_stay_readable_after_the_ttl(
    emulator, user_home
):
    cached, uncached = shown_objects(emulator, "Lab Private")[:2]
    with mounted(emulator.url, user_home, ttl=TTL) as mount:
        known = learn(mount, cached)
        emulator.set(expire_tokens=True)
        time.sleep(2 * TTL)
        assert_only_the_server_is_missed(mount, known, uncached)


def test_a_restart_offline_with_an_expired_token_serves_everything_known(
    emulator_data, user_home, tmp_path
):
    process = EmulatorProcess(emulator_data)
    server = process.emulator
    cached, uncached = shown_objects(server, "Lab Private")[:2]
    cache = tmp_path / "cache"
    try:
        save_token(user_home, server.url, server.token())
        short_lived = server.token(ttl_ms=2000)
        with mounted(server.url, user_home, cache_dir=cache, ttl=TTL) as mount:
            known = learn(mount, cached)
        process.stop()
        save_token(user_home, server.url, short_lived)
        time.sleep(max(0.0, claims(short_lived)["exp"] - time.time()))
        with mounted(server.url, user_home, cache_dir=cache, ttl=TTL, name="again") as mount:
            assert_only_the_server_is_missed(mount, known, uncached)
    finally:
        process.stop()
