"""RS256 JWTs shaped like brainlife's auth service issues them (float `exp`, numeric `sub`)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://brainlife.io/auth"
PRIVATE = "auth.key"
PUBLIC = "auth.pub"
VERIFIED_ENTRIES = 256


class TokenError(Exception):
    """A token express-jwt would reject; str() is the express-jwt message (e.g. "jwt expired")."""


def generate_keys(directory: Path) -> None:
    """Writes a fresh RSA key pair (PEM) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / PRIVATE).write_bytes(private)
    (directory / PRIVATE).chmod(0o600)
    (directory / PUBLIC).write_bytes(public)


class Signer:
    """Issues and verifies tokens with the key pair of a generated data dir.

    An RS256 signature check costs about half a millisecond and clients send the same token with
    every request, so tokens that verified are remembered by their text; only `exp` is checked
    again (nothing else about a verified token can change).
    """

    def __init__(self, directory: Path) -> None:
        self._private = (directory / PRIVATE).read_bytes()
        self._public = (directory / PUBLIC).read_bytes()
        self._lock = threading.Lock()
        self._verified: OrderedDict[str, dict] = OrderedDict()

    def issue(self, claims: dict, ttl_ms: float) -> str:
        payload = {
            "iss": ISSUER,
            "exp": (time.time() * 1000 + ttl_ms) / 1000,
            "iat": int(time.time()),
            **claims,
        }
        return jwt.encode(payload, self._private, algorithm="RS256")

    def verify(self, token: str) -> dict:
        """The token's claims (shared: callers must not modify them)."""
        with self._lock:
            claims = self._verified.get(token)
            if claims is not None:
                self._verified.move_to_end(token)
        if claims is None:
            claims = self._decode(token)
            with self._lock:
                self._verified[token] = claims
                while len(self._verified) > VERIFIED_ENTRIES:
                    self._verified.popitem(last=False)
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and exp <= time.time():
            raise TokenError("jwt expired")
        return claims

    def _decode(self, token: str) -> dict:
        try:
            return jwt.decode(
                token,
                self._public,
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_iat": False, "verify_sub": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("jwt expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("invalid signature") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise TokenError("invalid algorithm") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("jwt malformed") from exc
