"""The auth service: local login and token refresh (`/api/auth`)."""

from __future__ import annotations

import time

from .context import App
from .web import ApiError, Request, Response, json_response, route

DEFAULT_TTL_MS = 7 * 24 * 3600 * 1000


def claims_for(app: App, user: dict) -> dict:
    """Claims recomputed from the database, as auth's createClaim does on login and refresh."""
    sub = str(user["sub"])
    projects = app.store.find("projects", {"group_id": {"$exists": True}})
    admin = [p["group_id"] for p in projects if sub in p["admins"]]
    member = [
        p["group_id"]
        for p in projects
        if sub not in p["admins"] and (sub in p["members"] or sub in p["guests"])
    ]
    return {
        "scopes": user["scopes"],
        "sub": user["sub"],
        "gids": [*admin, 0, *member],
        "profile": {
            "username": user["username"],
            "email": user["email"],
            "fullname": user["fullname"],
            "aup": True,
        },
    }


def _ttl(body: dict, default: float) -> float:
    ttl = body.get("ttl", default)
    return float(ttl) if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) else default


def routes(app: App) -> list:
    def login(request: Request) -> Response:
        body = request.json()
        name = str(body.get("username", ""))
        user = app.store.one("users", {"$or": [{"username": name}, {"email": name}]})
        if user is None or user.get("password") != body.get("password"):
            time.sleep(app.knobs["login_delay"])
            message = "Incorrect email or username" if user is None else "Incorrect user/password"
            raise ApiError(message, 403)
        token = app.signer.issue(claims_for(app, user), _ttl(body, DEFAULT_TTL_MS))
        return json_response({"message": "Login Success", "jwt": token, "sub": user["sub"]})

    def refresh(request: Request) -> Response:
        try:
            claims = app.user(request)
        except ApiError as exc:
            raise ApiError(str(exc), 401) from exc  # the auth service keeps express-jwt's status
        user = app.store.one("users", {"sub": claims["sub"]})
        if user is None:
            raise ApiError("Couldn't find any user with sub:" + str(claims["sub"]))
        fresh = claims_for(app, user)
        body = request.json()
        if isinstance(body.get("scopes"), dict):
            fresh["scopes"] = {
                service: [s for s in wanted if s in fresh["scopes"].get(service, [])]
                for service, wanted in body["scopes"].items()
                if isinstance(wanted, list)
            }
        if isinstance(body.get("gids"), list):
            fresh["gids"] = [g for g in fresh["gids"] if g in body["gids"]]
        if body.get("clearProfile"):
            fresh["profile"] = {}
        return json_response({"jwt": app.signer.issue(fresh, _ttl(body, DEFAULT_TTL_MS))})

    def profile(request: Request) -> Response:
        """The user's own profile (auth's `GET /profile`): the safe fields and the private
        profile, where the data-use agreements the user accepted are kept."""
        try:
            claims = app.user(request)
        except ApiError as exc:
            raise ApiError(str(exc), 401) from exc
        user = app.store.one("users", {"sub": claims["sub"]})
        if user is None:
            return json_response(None)
        private = {"agreements": user.get("agreements") or {}}
        fields = ("sub", "fullname", "email", "username", "active")
        return json_response(
            {**{k: user.get(k) for k in fields}, "profile": {"public": {}, "private": private}}
        )

    return [
        route("GET", "/profile", profile),
        route("POST", "/local/auth", login),
        route("POST", "/ldap/auth", login),
        route("POST", "/refresh", refresh),
    ]
