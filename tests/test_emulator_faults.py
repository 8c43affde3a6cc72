"""The emulator's knobs, request log and admin endpoints do what they say."""

from __future__ import annotations

import io
import tarfile
import time

import pytest
import requests

DOWNLOAD = "/warehouse/dataset/download/"


@pytest.fixture
def token(emulator) -> str:
    return emulator.token()


@pytest.fixture
def dataset(emulator) -> dict:
    lab = next(p["_id"] for p in emulator.db("projects") if p["name"] == "Lab Private")
    return next(
        d
        for d in emulator.db("datasets")
        if d["project"] == lab and d["status"] == "stored" and not d["removed"]
    )


def test_knobs_merge_reset_one_and_reset_all(emulator):
    assert emulator.knobs()["latency"] == 0
    assert emulator.set(latency=0.01, bandwidth=1000)["bandwidth"] == 1000
    after = emulator.set(bandwidth=None)
    assert after["bandwidth"] is None and after["latency"] == 0.01
    assert emulator.reset()["latency"] == 0
    with pytest.raises(requests.HTTPError):
        emulator.set(no_such_knob=1)


def test_latency_delays_every_api_response(emulator):
    emulator.set(latency=0.3)
    started = time.monotonic()
    emulator.get("/warehouse/datatype")
    assert time.monotonic() - started >= 0.3


def test_fail_rules_count_down_and_carry_a_message(emulator):
    emulator.set(fail=[{"path": "/datatype$", "status": 503, "times": 2, "message": "down"}])
    replies = [emulator.get("/warehouse/datatype") for _ in range(3)]
    assert [r.status_code for r in replies] == [503, 503, 200]
    assert replies[0].json() == {"message": "down"}
    assert emulator.get("/warehouse/pub").status_code == 200


def test_fail_fraction_one_fails_every_api_request(emulator):
    emulator.set(fail_fraction=1)
    assert emulator.get("/warehouse/pub").status_code == 500
    assert emulator.knobs()["fail_fraction"] == 1


def test_truncate_sends_the_full_length_then_cuts(emulator, token, dataset):
    emulator.set(truncate=[{"path": "/dataset/download/", "at": 1000, "times": 1}])
    reply = emulator.get(DOWNLOAD + dataset["_id"], token, stream=True)
    assert int(reply.headers["Content-Length"]) == dataset["size"]
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for block in reply.iter_content(100):
            received += block
    assert len(received) == 1000
    deadline = time.monotonic() + 10  # the log counts the body once its sending has returned
    while emulator.requests()[-1]["bytes"] != 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulator.requests()[-1]["bytes"] == 1000
    assert len(emulator.get(DOWNLOAD + dataset["_id"], token).content) == dataset["size"]


def test_stall_pauses_the_body_then_completes(emulator, token, dataset):
    emulator.set(stall=[{"path": "/dataset/download/", "after": 5000, "seconds": 0.5}])
    reply = emulator.get(DOWNLOAD + dataset["_id"], token, stream=True)
    first = reply.raw.read(5000)
    started = time.monotonic()
    rest = reply.raw.read()
    assert time.monotonic() - started >= 0.4
    assert len(first) + len(rest) == dataset["size"]


def test_bandwidth_limits_download_rate(emulator, token, dataset):
    emulator.set(bandwidth=dataset["size"] * 2)
    started = time.monotonic()
    reply = emulator.get(DOWNLOAD + dataset["_id"], token)
    assert len(reply.content) == dataset["size"]
    assert 0.4 <= time.monotonic() - started < 3


def test_expire_tokens_treats_every_token_as_expired(emulator, token):
    emulator.set(expire_tokens=True)
    reply = emulator.get("/warehouse/project", token)
    assert reply.status_code == 500
    assert reply.json() == {"message": "UnauthorizedError: jwt expired"}
    assert emulator.get("/warehouse/pub", token).status_code == 200


def test_the_request_log_records_path_query_status_and_bytes(emulator, token, dataset):
    emulator.clear_requests()
    emulator.get(DOWNLOAD + dataset["_id"], params={"at": token})
    emulator.knobs()
    (entry,) = emulator.requests()
    assert entry["method"] == "GET"
    assert entry["path"] == "/api" + DOWNLOAD + dataset["_id"]
    assert entry["query"] == {"at": token}
    assert entry["status"] == 200 and entry["bytes"] == dataset["size"]
    assert isinstance(entry["t"], float)
    emulator.clear_requests()
    assert emulator.requests() == []


def test_a_request_is_logged_with_its_status_before_its_body_is_sent(emulator, token, dataset):
    emulator.set(stall=[{"path": "/dataset/download/", "after": 1000, "seconds": 1.0}])
    emulator.clear_requests()
    with emulator.get(DOWNLOAD + dataset["_id"], token, stream=True) as reply:
        assert len(reply.raw.read(1000)) == 1000
        (entry,) = emulator.requests()
        assert entry["status"] == 200 and entry["bytes"] < dataset["size"]
        assert len(reply.raw.read()) == dataset["size"] - 1000
    deadline = time.monotonic() + 5
    while emulator.requests()[0]["bytes"] != dataset["size"]:
        assert time.monotonic() < deadline, "the body's bytes never reached the log"
        time.sleep(0.05)


def test_records_can_be_added_while_running(scratch_emulator):
    lab = next(p for p in scratch_emulator.db("projects") if p["name"] == "Lab Private")
    base = next(d for d in scratch_emulator.db("datasets") if d["project"] == lab["_id"])
    added = {**base, "_id": "abcdef0123456789abcdef01", "meta": {"subject": "new"}}
    scratch_emulator.put_records("datasets", [added])
    assert any(d["_id"] == added["_id"] for d in scratch_emulator.db("datasets"))
    token = scratch_emulator.token()
    reply = scratch_emulator.get(
        "/warehouse/dataset/distinct",
        token,
        params={"distinct": "meta.subject", "find": {"project": lab["_id"]}},
    )
    assert "new" in reply.json()


def test_an_archive_can_be_replaced_by_hostile_bytes(scratch_emulator):
    target = next(d for d in scratch_emulator.db("datasets") if d["status"] == "stored")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    data = buffer.getvalue()
    scratch_emulator.put_archive(target["_id"], data)
    token = scratch_emulator.token("alice")
    reply = scratch_emulator.get(DOWNLOAD + target["_id"], token)
    assert reply.content == data
    assert reply.headers["Content-disposition"].endswith(".tar.gz")
    stored = next(d for d in scratch_emulator.db("datasets") if d["_id"] == target["_id"])
    assert stored["size"] == len(data)


def test_variants_are_per_route_and_only_the_known_ones(emulator, token):
    """A variant changes its route's answer alone; an unknown route or variant is refused and
    changes nothing; the emulator's own answers are the default."""
    assert emulator.knobs()["variants"] == {}
    study = next(p["_id"] for p in emulator.db("projects") if p["name"] == "BIDS Study")
    assert emulator.get(f"/warehouse/files/{study}", token).json()["folders"]
    emulator.set(variants={"files": "absent"})
    absent = emulator.get(f"/warehouse/files/{study}", token)
    assert absent.status_code == 404 and absent.text.startswith("Cannot GET ")
    assert emulator.get("/warehouse/project", token).status_code == 200
    for wrong in ({"files": "sometimes"}, {"nowhere": "absent"}, ["files"]):
        with pytest.raises(requests.HTTPError):
            emulator.set(variants=wrong)
    assert emulator.knobs()["variants"] == {"files": "absent"}
    assert emulator.set(variants=None)["variants"] == {}
