"""The in-job wrapper against a stand-in callback endpoint."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from wasmspawner import singleuser


class Callback(BaseHTTPRequestHandler):
    received = []
    fail_first = 0
    taken = set()
    conflicts = []
    answer = b""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        port = json.loads(body).get("port")
        if port in Callback.taken or (Callback.taken == {"*"}):
            Callback.conflicts.append(port)
            self.send_response(409)
            self.end_headers()
            code = "callback_not_accepted" if Callback.taken == {"*"} else "port_in_use"
            self.wfile.write(json.dumps({"error": code, "message": "taken"}).encode())
            return
        if Callback.fail_first > 0:
            Callback.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        if self.headers.get("Authorization") != "Bearer tok-123":
            self.send_response(403)
            self.end_headers()
            self.wfile.write(b'{"error":"forbidden"}')
            return
        Callback.received.append(json.loads(body))
        if Callback.answer:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(Callback.answer)
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def callback():
    Callback.received = []
    Callback.fail_first = 0
    Callback.taken = set()
    Callback.conflicts = []
    Callback.answer = b""
    srv = HTTPServer(("127.0.0.1", 0), Callback)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}/v1/spawns/s1/ready"
    srv.shutdown()


def test_port_range_and_free_port():
    p = singleuser.pick_port("20000-20010")
    assert 20000 <= p <= 20010
    assert singleuser.pick_port(None) > 0


def test_service_url_gets_the_port():
    assert singleuser.with_port("http://0.0.0.0:0/user/alice/", 9001) == "http://0.0.0.0:9001/user/alice/"
    assert singleuser.with_port("http://127.0.0.1/user/a/x?y=1", 80) == "http://127.0.0.1:80/user/a/x?y=1"


def test_report_retries_transient_failures(callback, monkeypatch):
    monkeypatch.setattr(singleuser.time, "sleep", lambda s: None)
    Callback.fail_first = 2
    singleuser.report(callback, "tok-123", 9001, "node01")
    assert Callback.received == [{"port": 9001, "host": "node01"}]


def test_a_refused_token_is_final(callback, monkeypatch):
    monkeypatch.setattr(singleuser.time, "sleep", lambda s: None)
    with pytest.raises(SystemExit, match="refused"):
        singleuser.report(callback, "wrong", 9001, "node01")


def test_wrapper_reports_then_execs_without_the_callback_secrets(callback, tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "WASMSPAWNER_CALLBACK_URL": callback,
        "WASMSPAWNER_CALLBACK_TOKEN": "tok-123",
        "WASMSPAWNER_REPORT_HOST": "node07",
        "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:0/user/alice/",
        "JUPYTERHUB_API_TOKEN": "hub-token",
    }
    out = subprocess.run(
        [sys.executable, "-m", "wasmspawner.singleuser", sys.executable, "-c",
         "import os, json; print(json.dumps(dict(os.environ)))"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    child_env = json.loads(out.stdout)
    port = int(child_env["WASMSPAWNER_PORT"])
    assert Callback.received == [{"port": port, "host": "node07"}]
    assert child_env["JUPYTERHUB_SERVICE_URL"] == f"http://0.0.0.0:{port}/user/alice/"
    assert "WASMSPAWNER_CALLBACK_TOKEN" not in child_env
    assert "WASMSPAWNER_CALLBACK_URL" not in child_env
    assert child_env["JUPYTERHUB_API_TOKEN"] == "hub-token"


def test_a_port_the_host_says_is_taken_is_replaced_by_another(callback, monkeypatch):
    monkeypatch.setattr(singleuser.time, "sleep", lambda s: None)
    Callback.taken = {20100, 20101}
    port, answer = singleuser.report_free_port(callback, "tok-123", "20100-20102", None)
    assert port == 20102
    assert Callback.received == [{"port": 20102}]
    # Each taken port was tried at most once.
    assert sorted(Callback.conflicts) == sorted(set(Callback.conflicts))
    assert set(Callback.conflicts) <= {20100, 20101}


def test_a_conflict_that_is_not_about_the_port_is_final(callback, monkeypatch):
    monkeypatch.setattr(singleuser.time, "sleep", lambda s: None)
    Callback.taken = {"*"}
    with pytest.raises(SystemExit, match="409"):
        singleuser.report_free_port(callback, "tok-123", None, None)
    assert len(Callback.conflicts) == 1


def test_the_end_time_comes_from_the_host_or_the_scheduler():
    assert singleuser.end_time({}, {"end_time": 1800000000}) == 1800000000
    assert singleuser.end_time({"SLURM_JOB_END_TIME": "1800000123"}, {}) == 1800000123
    assert singleuser.end_time({"PBS_WALLTIME": "3600"}, {}, now=1000) == 4600
    assert singleuser.end_time({"SLURM_JOB_END_TIME": "bogus"}, {}) is None
    assert singleuser.end_time({}, {}) is None


def test_the_server_gets_the_end_time_the_host_answered(callback, tmp_path):
    Callback.answer = b'{"end_time": 1800000000}'
    env = {
        "PATH": os.environ["PATH"],
        "WASMSPAWNER_CALLBACK_URL": callback,
        "WASMSPAWNER_CALLBACK_TOKEN": "tok-123",
    }
    out = subprocess.run(
        [sys.executable, "-m", "wasmspawner.singleuser", sys.executable, "-c",
         "import os; print(os.environ.get('WASMSPAWNER_END_TIME'))"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert out.stdout.strip() == "1800000000"
