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

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
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
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def callback():
    Callback.received = []
    Callback.fail_first = 0
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
