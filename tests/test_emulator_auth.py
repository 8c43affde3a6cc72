"""The emulator's auth service and token checks, against brainlife-api.md §1 and §0."""

from __future__ import annotations

import time

import jwt
import pytest

PROJECTS = "/warehouse/project"


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def login(emulator, username: str, password: str, **extra):
    body = {"username": username, "password": password, **extra}
    return emulator.http.post(f"{emulator.url}/auth/local/auth", json=body, timeout=30)


def test_login_returns_an_rs256_token_shaped_like_brainlifes(emulator):
    reply = login(emulator, "demo", "demo")
    assert reply.status_code == 200
    body = reply.json()
    assert body["message"] == "Login Success" and body["sub"] == 1
    assert jwt.get_unverified_header(body["jwt"])["alg"] == "RS256"
    payload = claims(body["jwt"])
    assert isinstance(payload["exp"], float)
    assert payload["sub"] == 1 and isinstance(payload["sub"], int)
    assert payload["scopes"] == {"brainlife": ["user"]}
    assert payload["profile"]["username"] == "demo"
    assert 0 in payload["gids"]
    assert 6.9 * 86400 < payload["exp"] - time.time() < 7.1 * 86400


def test_gids_are_the_groups_of_projects_demo_belongs_to(emulator):
    by_name = {p["name"]: p for p in emulator.db("projects")}
    gids = claims(emulator.token())["gids"]
    for name in ("Lab Private", "Guest Study", "Agreement Study", "Old Project"):
        assert by_name[name]["group_id"] in gids
    for name in ("Hidden Lab", "Listed Lab", "Open Diffusion"):
        assert by_name[name]["group_id"] not in gids


def test_login_accepts_the_email_and_honours_ttl_in_milliseconds(emulator):
    reply = login(emulator, "demo@example.org", "demo", ttl=60_000)
    assert reply.status_code == 200
    assert 50 < claims(reply.json()["jwt"])["exp"] - time.time() < 70


@pytest.mark.parametrize(
    ("username", "message"),
    [("demo", "Incorrect user/password"), ("nobody", "Incorrect email or username")],
)
def test_bad_login_is_403_after_the_login_delay(emulator, username, message):
    emulator.set(login_delay=0.3)
    started = time.monotonic()
    reply = login(emulator, username, "wrong")
    assert time.monotonic() - started >= 0.3
    assert reply.status_code == 403
    assert reply.json() == {"message": message}


def test_login_delay_defaults_to_two_seconds(emulator):
    assert emulator.knobs()["login_delay"] == 2.0


def test_refresh_recomputes_claims_and_can_only_narrow_them(emulator):
    token = emulator.token("alice")
    url = f"{emulator.url}/auth/refresh"
    body = {"ttl": 3_600_000, "scopes": {"warehouse": ["admin", "stage"]}, "gids": [100, 12345]}
    reply = emulator.http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200
    fresh = claims(reply.json()["jwt"])
    assert fresh["scopes"] == {"warehouse": ["admin"]}
    assert fresh["gids"] == [100]
    assert 3500 < fresh["exp"] - time.time() < 3700
    stripped = emulator.http.post(
        url,
        json={"clearProfile": True, "gids": [], "scopes": {}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert claims(stripped.json()["jwt"])["profile"] == {}


def test_an_expired_token_cannot_be_refreshed(emulator):
    token = emulator.token(ttl_ms=1)
    time.sleep(1.1)
    reply = emulator.http.post(
        f"{emulator.url}/auth/refresh", json={}, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 401
    assert reply.json() == {"message": "UnauthorizedError: jwt expired"}


def test_no_token_on_a_required_route_is_a_500_unauthorized(emulator):
    reply = emulator.get("/warehouse/dataset")
    assert reply.status_code == 500
    assert reply.json() == {"message": "UnauthorizedError: No authorization token was found"}


def test_an_expired_token_is_a_500_jwt_expired(emulator):
    token = emulator.token(ttl_ms=1)
    time.sleep(1.1)
    for path in ("/warehouse/dataset", PROJECTS, "/amaretti/instance"):
        reply = emulator.get(path, token)
        assert reply.status_code == 500
        assert reply.json() == {"message": "UnauthorizedError: jwt expired"}


def test_a_token_signed_by_another_key_is_rejected(emulator):
    forged = jwt.encode({"sub": 1, "exp": time.time() + 60}, "s" * 32, algorithm="HS256")
    reply = emulator.get(PROJECTS, forged)
    assert reply.status_code == 500
    assert reply.json()["message"].startswith("UnauthorizedError: ")
    garbage = emulator.get(PROJECTS, "not-a-jwt")
    assert garbage.json() == {"message": "UnauthorizedError: jwt malformed"}
