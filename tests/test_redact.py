"""The one redaction rule (blfs/redact.py) on records as brainlife writes them, and its use by
every JSON file the mount shows (nodes.json_bytes/json_size)."""

from __future__ import annotations

import json

from blfs.nodes import json_bytes, json_size
from blfs.redact import REDACTED, is_secret_key, without_secrets

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


def test_keys_naming_a_secret_go_at_any_depth_others_stay():
    secret = [
        "token", "access_token", "refreshToken", "X-Auth-Token", "secret", "secretEnc",
        "password", "db_pass", "passwd", "auth", "Authorization", "credentials", "key",
        "api_key", "apiKey", "private_key", "aws_secret_access_key", "AWS_ACCESS_KEY_ID",
        "awsRegion", "_envs", "envs", "jwt", "BRAINLIFE_TOKEN",
    ]  # fmt: skip
    shown = [
        "keys", "keywords", "authors", "author", "passage", "tokenizer_model", "subject",
        "datatype_tags", "publishParticipantsInfo", "_inputs", "hostname", "user_id",
    ]  # fmt: skip
    assert [k for k in secret if not is_secret_key(k)] == []
    assert [k for k in shown if is_secret_key(k)] == []


def test_values_lose_jwts_and_url_credentials():
    record = {
        "prov": {"task": {"config": {"callback": f"https://x.org/n?at={JWT}&v=1"}}},
        "source": "https://reader:hunter2@data.example.org/study",
        "list": [f"Bearer {JWT}", "plain"],
        "n": 3,
    }
    assert without_secrets(record) == {
        "prov": {"task": {"config": {"callback": f"https://x.org/n?at={REDACTED}&v=1"}}},
        "source": f"https://{REDACTED}@data.example.org/study",
        "list": [f"Bearer {REDACTED}", "plain"],
        "n": 3,
    }


def test_a_record_without_secrets_is_shown_as_it_is():
    record = {"_id": "0123456789abcdef01234567", "meta": {"subject": "01"}, "tags": ["a"]}
    assert without_secrets(record) is record


def test_every_json_file_is_shown_redacted_with_its_exact_size():
    record = {
        "name": "t",
        "config": {"_envs": {"HOME": "/h"}, "xnat": {"token": "t0k", "hostname": "h"}},
        "note": "é",
        "url": "ftp://u:p@h/x",
    }
    shown = json_bytes(record)
    assert json.loads(shown) == {
        "name": "t",
        "config": {"xnat": {"hostname": "h"}},
        "note": "é",
        "url": f"ftp://{REDACTED}@h/x",
    }
    assert json_size(record) == len(shown)
