"""The one rule that keeps secrets out of every record the mount shows (DESIGN §4: no secret in
a file the mount shows).

Records carry credentials where brainlife keeps them: a task's config (an app's token or
password, XNAT's `token` and `secretEnc`, the resource's environment in `_envs`), an output
object's `prov.task.config` (the same config), a project's XNAT settings. A key whose words
name a secret is dropped at any depth, and in every remaining text a JWT-looking value and the
`user:pass@` part of a URL are replaced.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

REDACTED = "[redacted]"
# A key is split into its words (`aws_secret_access_key`, `secretEnc`, `X-Auth-Token`); it is
# secret when one of them is one of these, or when it names an environment or AWS setting.
SECRET_WORDS = frozenset(
    {
        "token",
        "tokens",
        "secret",
        "secrets",
        "pass",
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "key",
        "apikey",
        "jwt",
        "bearer",
        "cookie",
        "private",
        "env",
        "envs",
    }
)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
# Cheap test on a record's lowered JSON text (substring searches, in C): only a record holding
# one of these may hold a secret, and only such a record is walked.
_SUSPECT = ("eyj", "@", "aws", "pass", "pwd", "key", *SECRET_WORDS - {"password", "passwd"})


@functools.lru_cache(maxsize=4096)  # records repeat their keys: each is judged once
def is_secret_key(key: str) -> bool:
    """Whether a record key names a secret: by its words, `aws_*`, or `secretEnc`."""
    words = {word.lower() for word in _WORD.findall(key)}
    return bool(words & SECRET_WORDS) or key.lower().startswith("aws")


def scrub(text: str) -> str:
    """A text without JWT-looking values or the credentials of a URL."""
    if "eyJ" not in text and "@" not in text:
        return text
    return _USERINFO.sub(r"\1" + REDACTED + "@", _JWT.sub(REDACTED, text))


def without_secrets(value: Any, text: str | None = None) -> Any:
    """A record as the API gives it, minus every secret key (at any depth), its texts scrubbed;
    the record itself when it holds nothing to remove (most do: one scan of its JSON text,
    `text` if the caller has it)."""
    if text is None:
        text = json.dumps(value, ensure_ascii=False)
    lowered = text.lower()
    return _walk(value) if any(stem in lowered for stem in _SUSPECT) else value


def _walk(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, (list, tuple)):
        return [_walk(item) for item in value]
    if isinstance(value, str):
        return scrub(value)
    return value
