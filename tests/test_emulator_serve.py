"""`python -m blfs.emulator serve`: URL on the first stdout line, clean stop, admin limits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import requests

from blfs.emulator.control import EmulatorProcess


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prints_its_url_first_and_stops_cleanly_on_signals(emulator_data, signum):
    server = EmulatorProcess(emulator_data)
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/api")
    assert int(server.url.split(":")[2].split("/")[0]) > 0
    assert requests.get(server.url + "/warehouse/health", timeout=10).json()["status"] == "ok"
    server.process.send_signal(signum)
    assert server.process.wait(10) == 0
    server.stop()


def test_knobs_file_sets_knobs_at_start(emulator_data, tmp_path):
    knobs = tmp_path / "knobs.json"
    knobs.write_text(json.dumps({"login_delay": 0.1, "hang_seconds": 3}))
    server = EmulatorProcess(emulator_data, knobs_file=knobs)
    try:
        current = server.emulator.knobs()
        assert (current["login_delay"], current["hang_seconds"]) == (0.1, 3)
    finally:
        server.stop()


def test_unknown_routes_are_express_404s(emulator):
    reply = emulator.get("/warehouse/nothing")
    assert reply.status_code == 404
    assert reply.text == "Cannot GET /api/warehouse/nothing"


def test_cli_refuses_half_a_tls_pair(emulator_data, tmp_path):
    args = [sys.executable, "-m", "blfs.emulator", "serve", str(emulator_data)]
    done = subprocess.run(
        [*args, "--tls-cert", str(tmp_path / "c")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0 and "--tls-key" in done.stderr


def test_routes_take_a_trailing_slash_as_express_does(emulator):
    """brainlife's own group-analysis example calls `/api/warehouse/dataset/`."""
    token = emulator.token()
    plain = emulator.get("/warehouse/dataset", token, params={"limit": 3})
    slashed = emulator.get("/warehouse/dataset/", token, params={"limit": 3})
    assert slashed.status_code == 200 and slashed.json() == plain.json()
    assert plain.json()["datasets"]
    task = emulator.db("tasks")[0]
    assert emulator.get(f"/amaretti/task/{task['_id']}/").json()["_id"] == task["_id"]
    assert emulator.get("/warehouse/health/").json()["status"] == "ok"
    assert emulator.get("/warehouse/dataset//").status_code == 404
