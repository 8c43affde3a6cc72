"""The brainlife token file, shared with the official `bl` CLI (DESIGN §5, API §1).

The token lives in `~/.config/<host[:port]>/.jwt`, raw, without a newline, in a 0700 directory
as a 0600 file, so `bl login` and `blfs login` each use the other's token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from blfs.errors import AccessDenied


def token_host(api_url: str) -> str:
    """The token file's directory name, as `bl` derives it: `https://brainlife.io/api` →
    `brainlife.io`, `http://127.0.0.1:8080/api` → `127.0.0.1:8080`."""
    netloc = urlsplit(api_url).netloc.rpartition("@")[2]
    if not netloc:
        raise ValueError(f"not an API URL: {api_url!r}")
    return netloc.lower()


def claims(token: str) -> dict[str, Any]:
    """The JWT's claims, decoded without verifying the signature (only the servers can verify).

    Raises ValueError when the token is not a JWT with a JSON object payload.
    """
    try:
        payload = token.split(".")[1]
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error) as exc:
        raise ValueError("not a JSON web token") from exc
    if not isinstance(decoded, dict):
        raise ValueError("not a JSON web token")
    return decoded


class TokenStore:
    """Reads and writes the token file; every call looks at the file, so a `blfs login` while
    mounted takes effect at once (it is read again whenever its inode, size or times change: a
    walk asks for the token at every path). Safe from many threads: a save is an atomic
    rename."""

    def __init__(self, api_url: str, home: Path | None = None) -> None:
        self.path = (home or Path.home()) / ".config" / token_host(api_url) / ".jwt"
        self._read: tuple[tuple[int, ...], str | None] | None = None  # (file's stat, token)

    def get(self) -> str | None:
        try:
            info = os.stat(self.path)
            seen = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            read = self._read
            if read is not None and read[0] == seen:
                return read[1]
            token = self.path.read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessDenied(f"cannot read the token file {self.path}: {exc}") from exc
        self._read = (seen, token)
        return token

    def save(self, jwt: str) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".jwt.")  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(jwt)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
