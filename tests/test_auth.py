"""The token file (shared with `bl`), login and token refresh (DESIGN §5, API §1), real HTTP."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest
from test_api import requests_to

from blfs.api import Client
from blfs.auth import TokenStore, claims, token_host
from blfs.errors import AccessDenied


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://brainlife.io/api", "brainlife.io"),
        ("http://127.0.0.1:8080/api", "127.0.0.1:8080"),
        ("https://user@Brainlife.IO/api/", "brainlife.io"),
    ],
)
def test_token_file_is_where_bl_keeps_it(tmp_path: Path, url: str, host: str) -> None:
    assert token_host(url) == host
    assert TokenStore(url, home=tmp_path).path == tmp_path / ".config" / host / ".jwt"


def test_default_home_is_the_users(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert TokenStore("https://brainlife.io/api").path == tmp_path / ".config/brainlife.io/.jwt"


def test_save_is_private_raw_and_replaces(tmp_path: Path) -> None:
    tokens = TokenStore("http://127.0.0.1:8080/api", home=tmp_path)
    assert tokens.get() is None
    tokens.save("a.b.c")
    tokens.save("d.e.f")
    assert tokens.path.read_bytes() == b"d.e.f"
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in tokens.path.parent.iterdir()] == [".jwt"]
    assert tokens.get() == "d.e.f"


def test_a_token_written_by_bl_with_a_newline_is_read(tmp_path: Path) -> None:
    tokens = TokenStore("https://brainlife.io/api", home=tmp_path)
    tokens.path.parent.mkdir(parents=True)
    tokens.path.write_text("x.y.z\n")
    assert tokens.get() == "x.y.z"


def test_claims_are_decoded_with_a_float_exp(emulator) -> None:
    decoded = claims(emulator.token())
    assert isinstance(decoded["exp"], float)
    assert decoded["exp"] > time.time()
    assert decoded["sub"] == 1
    with pytest.raises(ValueError):
        claims("not-a-token")


def test_login_gets_a_token_that_works(emulator, tmp_path: Path) -> None:
    tokens = TokenStore(emulator.url, home=tmp_path)
    token = Client(emulator.url).login("demo", "demo", ttl_days=2)
    decoded = claims(token)
    assert decoded["profile"]["username"] == "demo"
    assert decoded["exp"] - time.time() == pytest.approx(2 * 86400, abs=60)
    tokens.save(token)
    names = {p["name"] for p in Client(emulator.url, tokens).projects()}
    assert "Lab Private" in names


def test_login_failure_says_why_and_never_echoes_the_password(emulator) -> None:
    with pytest.raises(AccessDenied) as caught:
        Client(emulator.url).login("demo", "wrong-password-123")
    assert "login failed" in str(caught.value)
    assert "wrong-password-123" not in str(caught.value)


def test_no_token_fails_locally_with_the_login_hint(emulator, tmp_path: Path) -> None:
    client = Client(emulator.url, TokenStore(emulator.url, home=tmp_path))
    with pytest.raises(AccessDenied, match="blfs login"):
        list(client.datasets({"removed": False}))
    with pytest.raises(AccessDenied, match="blfs login"):
        client.download_dataset("0" * 24)
    assert requests_to(emulator, "/dataset") == []


def test_an_expired_token_fails_locally_with_the_login_hint(emulator, tmp_path: Path) -> None:
    tokens = TokenStore(emulator.url, home=tmp_path)
    tokens.save(Client(emulator.url).login("demo", "demo", ttl_days=1 / 86400))
    time.sleep(1.2)
    client = Client(emulator.url, tokens)
    with pytest.raises(AccessDenied, match="expired.*blfs login"):
        client.projects()
    assert requests_to(emulator, "/project") == []


def test_a_token_the_server_rejects_asks_for_login(emulator, tmp_path: Path) -> None:
    tokens = TokenStore(emulator.url, home=tmp_path)
    tokens.save(emulator.token())
    emulator.set(expire_tokens=True)
    with pytest.raises(AccessDenied, match="blfs login"):
        list(Client(emulator.url, tokens).datasets({"removed": False}))


def test_a_token_near_expiry_is_refreshed_once_and_saved(emulator, tmp_path: Path) -> None:
    tokens = TokenStore(emulator.url, home=tmp_path)
    old = Client(emulator.url).login("demo", "demo", ttl_days=4 / 86400)
    tokens.save(old)
    time.sleep(2.2)  # less than half of its 4 s left
    client = Client(emulator.url, tokens)
    results: list[int] = []

    def list_projects() -> None:
        results.append(len(client.projects()))

    threads = [threading.Thread(target=list_projects) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 16 and len(set(results)) == 1
    assert len(requests_to(emulator, "/auth/refresh", 1)) == 1
    fresh = tokens.get()
    assert fresh != old
    assert claims(fresh)["exp"] > claims(old)["exp"]


def test_a_young_token_is_not_refreshed(emulator, tmp_path: Path) -> None:
    tokens = TokenStore(emulator.url, home=tmp_path)
    tokens.save(emulator.token())
    Client(emulator.url, tokens).projects()
    assert requests_to(emulator, "/auth/refresh") == []


def test_a_failed_refresh_keeps_the_old_token_working(emulator, tmp_path: Path) -> None:
    tokens = TokenStore(emulator.url, home=tmp_path)
    old = Client(emulator.url).login("demo", "demo", ttl_days=6 / 86400)
    tokens.save(old)
    time.sleep(3.2)
    emulator.set(fail=[{"path": "/refresh", "status": 500, "times": 5}])
    client = Client(emulator.url, tokens)
    assert client.projects()
    assert client.projects()
    assert tokens.get() == old
    assert len(requests_to(emulator, "/auth/refresh", 1)) == 1  # not tried on every call
