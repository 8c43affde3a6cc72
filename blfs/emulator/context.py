"""What every route handler shares: the store, the token signer, the knobs, and access rules."""

from __future__ import annotations

from dataclasses import dataclass

from .faults import Knobs
from .store import Store
from .tokens import Signer, TokenError
from .web import ApiError, Request


def unauthorized(message: str) -> ApiError:
    """express-jwt's errors reach Express's handler as 500 `UnauthorizedError: ...`."""
    return ApiError(f"UnauthorizedError: {message}")


@dataclass
class App:
    store: Store
    signer: Signer
    knobs: Knobs

    def token(self, request: Request, allow_query: bool = False) -> str | None:
        """`?at=` (where allowed) takes precedence over `Authorization: Bearer`."""
        if allow_query and request.arg("at"):
            return request.arg("at")
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if header and scheme != "Bearer":
            raise unauthorized("Format is Authorization: Bearer [token]")
        return value.strip() or None

    def user(
        self, request: Request, required: bool = True, allow_query: bool = False
    ) -> dict | None:
        """The verified claims, None for an anonymous request on an optional-auth route."""
        token = self.token(request, allow_query)
        if token is None:
            if required:
                raise unauthorized("No authorization token was found")
            return None
        if self.knobs["expire_tokens"]:
            raise unauthorized("jwt expired")
        try:
            return self.signer.verify(token)
        except TokenError as exc:
            raise unauthorized(str(exc)) from exc

    @staticmethod
    def sub(claims: dict | None) -> str | None:
        return None if claims is None else str(claims.get("sub"))

    @staticmethod
    def has_scope(claims: dict | None, service: str, scope: str) -> bool:
        return bool(claims) and scope in (claims.get("scopes") or {}).get(service, [])

    def readable_projects(self, claims: dict | None) -> set[str]:
        """Project ids the user may read: public, or listed as guest/member/admin (removed too)."""
        sub = self.sub(claims)
        query: dict = {"access": "public"}
        if sub is not None:
            query = {"$or": [query, {"members": sub}, {"admins": sub}, {"guests": sub}]}
        return {p["_id"] for p in self.store.find("projects", query, {"_id": 1})}
