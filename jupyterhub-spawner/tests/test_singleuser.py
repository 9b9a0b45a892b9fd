"""The in-job wrapper against a stand-in callback endpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
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


# ----- the walltime notice -----


def test_the_notice_is_due_the_lead_before_the_end_and_cut_for_a_short_job():
    end = 10_000.0
    # Default five minutes before the end of a long job.
    assert singleuser.walltime_plan(end, end - 3600, 300, None) == (end - 300, None)
    # A one-minute job with a 50 s lead: 50 s before the end.
    assert singleuser.walltime_plan(end, end - 60, 50, None) == (end - 50, None)
    # A job with less left than the lead: at 90 % of what is left, not at once.
    notice_at, _ = singleuser.walltime_plan(end, end - 100, 300, None)
    assert notice_at == pytest.approx(end - 90)
    # A stop before the end; the notice comes no later than the stop.
    assert singleuser.walltime_plan(end, end - 3600, 300, 60) == (end - 300, end - 60)
    assert singleuser.walltime_plan(end, end - 3600, 30, 60) == (end - 60, end - 60)
    # Off, or the end already past.
    assert singleuser.walltime_plan(end, end - 3600, None, None) == (None, None)
    assert singleuser.walltime_plan(end, end + 1, 300, 60) == (None, None)


def test_the_options_are_read_from_the_environment():
    assert singleuser.seconds_option({}, "X", 300) == 300
    assert singleuser.seconds_option({"X": "45"}, "X", 300) == 45
    assert singleuser.seconds_option({"X": "off"}, "X", 300) is None
    assert singleuser.seconds_option({"X": "0"}, "X", 300) is None
    assert singleuser.seconds_option({"X": "soon"}, "X", 300) == 300
    sig = singleuser.signal_option
    assert sig({}) is None
    assert sig({"WASMSPAWNER_WALLTIME_SIGNAL": "SIGUSR1"}) == signal.SIGUSR1
    assert sig({"WASMSPAWNER_WALLTIME_SIGNAL": "usr2"}) == signal.SIGUSR2
    assert sig({"WASMSPAWNER_WALLTIME_SIGNAL": str(int(signal.SIGHUP))}) == signal.SIGHUP
    assert sig({"WASMSPAWNER_WALLTIME_SIGNAL": "SIGBOGUS"}) is None


def test_the_notice_file_is_per_server_under_the_users_data_dir():
    f = singleuser.walltime_file
    assert f({"XDG_DATA_HOME": "/d"}) == "/d/wasmspawner/walltime.json"
    assert f({"XDG_DATA_HOME": "/d", "JUPYTERHUB_SERVER_NAME": "gpu/1"}) == "/d/wasmspawner/walltime-gpu_1.json"
    assert f({"WASMSPAWNER_WALLTIME_FILE": "/x/y.json"}) == "/x/y.json"


class FakeClock:
    """A clock that moves only when the watcher waits."""

    def __init__(self, t: float, server_exits_at: float | None = None):
        self.t = t
        self.server_exits_at = server_exits_at
        self.waits = []

    def now(self) -> float:
        return self.t

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if self.server_exits_at is not None and self.t + seconds >= self.server_exits_at:
            self.t = self.server_exits_at
            return True
        self.t += seconds
        # After the last event the watcher waits for the server: end it there.
        return seconds >= 3600


def test_the_watcher_gives_the_notice_at_its_time_then_stops_the_server(tmp_path, capsys):
    end = 100_000.0
    clock = FakeClock(end - 1000)
    kills = []
    path = tmp_path / "wasmspawner" / "walltime.json"
    seen_at_stop = {}

    def kill(pid, sig):
        kills.append((clock.t, pid, sig))
        if sig == signal.SIGTERM:
            seen_at_stop.update(json.loads(path.read_text()))

    how = singleuser.watch(4242, end, end - 300, end - 30, signal.SIGUSR1, str(path),
                           clock.wait, now=clock.now, kill=kill, job_id="77")
    assert how == "done"
    # The site's signal at the notice, SIGTERM at the stop, to the server.
    assert kills == [(end - 300, 4242, signal.SIGUSR1), (end - 30, 4242, signal.SIGTERM)]
    # No single wait longer than a minute before the events.
    assert max(clock.waits[:-1]) <= 60
    assert seen_at_stop["end_time"] == int(end)
    assert seen_at_stop["seconds_left"] == 300
    assert seen_at_stop["job_id"] == "77" and seen_at_stop["server_pid"] == 4242
    assert "save your work" in seen_at_stop["message"] and "in 5 min 00 s" in seen_at_stop["message"]
    err = capsys.readouterr().err
    assert "Walltime notice: This server's job ends at" in err and str(path) in err
    assert "stopping the server now (SIGTERM)" in err


def test_the_watcher_sends_no_signal_unless_the_site_chose_one(tmp_path):
    end = 100_000.0
    clock = FakeClock(end - 100)
    kills = []
    path = tmp_path / "walltime.json"
    singleuser.watch(1, end, end - 50, None, None, str(path), clock.wait, now=clock.now,
                     kill=lambda *a: kills.append(a))
    assert kills == []
    assert json.loads(path.read_text())["seconds_left"] == 50


def test_a_server_that_exits_before_the_notice_gets_none(tmp_path):
    end = 100_000.0
    clock = FakeClock(end - 1000, server_exits_at=end - 500)
    kills = []
    path = tmp_path / "walltime.json"
    how = singleuser.watch(1, end, end - 300, end - 30, signal.SIGUSR1, str(path), clock.wait,
                           now=clock.now, kill=lambda *a: kills.append(a))
    assert how == "gone"
    assert kills == [] and not path.exists()


SERVER_THAT_WAITS_FOR_THE_NOTICE = r"""
import json, os, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda *a: got.append(time.time()))
path = os.environ["WASMSPAWNER_WALLTIME_FILE"]
deadline = time.time() + float(sys.argv[1])
while time.time() < deadline and not (got and os.path.exists(path)):
    time.sleep(0.05)
print(json.dumps({"pid": os.getpid(), "signal_at": got[0] if got else None,
                  "notice": json.load(open(path)) if os.path.exists(path) else None,
                  "end": os.environ.get("WASMSPAWNER_END_TIME"), "file": path}))
"""


def _run_wrapper(callback, tmp_path, extra_env, wait_secs):
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "WASMSPAWNER_CALLBACK_URL": callback,
        "WASMSPAWNER_CALLBACK_TOKEN": "tok-123",
        **extra_env,
    }
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "wasmspawner.singleuser", sys.executable, "-c", SERVER_THAT_WAITS_FOR_THE_NOTICE, str(wait_secs)],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    return t0, json.loads(out.stdout), out.stderr


def test_the_server_gets_the_notice_and_the_sites_signal_before_the_end(callback, tmp_path):
    end = int(time.time()) + 4
    Callback.answer = json.dumps({"end_time": end}).encode()
    t0, seen, err = _run_wrapper(callback, tmp_path, {
        "WASMSPAWNER_WALLTIME_NOTICE": "2",
        "WASMSPAWNER_WALLTIME_SIGNAL": "SIGUSR1",
        "JUPYTERHUB_SERVER_NAME": "walltime",
    }, wait_secs=6)
    assert seen["end"] == str(end)
    assert seen["file"] == str(tmp_path / ".local/share/wasmspawner/walltime-walltime.json")
    notice = seen["notice"]
    assert notice and notice["end_time"] == end and notice["server_pid"] == seen["pid"]
    # About two seconds before the end (the clock's seconds are whole).
    assert end - 3.2 <= notice["notice_time"] <= end - 1
    assert seen["signal_at"] is not None and seen["signal_at"] < end
    assert "Walltime notice: This server's job ends at" in err, err
    assert "sent SIGUSR1 to the server" in err, err
    # The watcher went with the server, and took the notice away.
    deadline = time.time() + 5
    while time.time() < deadline and os.path.exists(seen["file"]):
        time.sleep(0.05)
    assert not os.path.exists(seen["file"])


def test_without_the_signal_option_a_server_that_does_not_handle_sigusr1_lives(callback, tmp_path):
    end = int(time.time()) + 3
    Callback.answer = json.dumps({"end_time": end}).encode()
    # SIG_DFL for SIGUSR1: a signal would kill it (and check=True would fail).
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "WASMSPAWNER_CALLBACK_URL": callback,
        "WASMSPAWNER_CALLBACK_TOKEN": "tok-123",
        "WASMSPAWNER_WALLTIME_NOTICE": "2",
    }
    code = ("import os, time, json\n"
            "p = os.environ['WASMSPAWNER_WALLTIME_FILE']\n"
            "d = time.time() + 6\n"
            "while time.time() < d and not os.path.exists(p): time.sleep(0.05)\n"
            "time.sleep(0.5)\n"
            "print(json.dumps(json.load(open(p))))\n")
    out = subprocess.run([sys.executable, "-m", "wasmspawner.singleuser", sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["end_time"] == end
    assert "Walltime notice" in out.stderr and "sent SIG" not in out.stderr


def test_a_stale_notice_of_an_earlier_server_is_removed_at_start(callback, tmp_path):
    stale = tmp_path / ".local/share/wasmspawner/walltime.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"end_time": 1}')
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "WASMSPAWNER_CALLBACK_URL": callback,
        "WASMSPAWNER_CALLBACK_TOKEN": "tok-123",
    }
    out = subprocess.run(
        [sys.executable, "-m", "wasmspawner.singleuser", sys.executable, "-c",
         "import os; print(os.path.exists(os.environ['WASMSPAWNER_WALLTIME_FILE']))"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert out.stdout.strip() == "False"
    assert "the job's end is not known" in out.stderr


def test_the_wrappers_options_come_before_the_server_command():
    split = singleuser.split_options
    assert split(["--walltime-notice=600", "--walltime-signal", "USR1", "jupyterhub-singleuser", "--debug"]) == (
        {"WASMSPAWNER_WALLTIME_NOTICE": "600", "WASMSPAWNER_WALLTIME_SIGNAL": "USR1"},
        ["jupyterhub-singleuser", "--debug"],
    )
    assert split(["--", "--odd-server"]) == ({}, ["--odd-server"])
    assert split([]) == ({}, [])
    with pytest.raises(SystemExit, match="unknown option --walltime-notise"):
        split(["--walltime-notise=5", "jupyterhub-singleuser"])
    with pytest.raises(SystemExit, match="needs a value"):
        split(["--walltime-stop"])


def test_an_option_wins_over_the_jobs_environment(callback, tmp_path):
    Callback.answer = json.dumps({"end_time": int(time.time()) + 3600}).encode()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "WASMSPAWNER_CALLBACK_URL": callback,
        "WASMSPAWNER_CALLBACK_TOKEN": "tok-123",
        "WASMSPAWNER_WALLTIME_NOTICE": "120",
    }
    out = subprocess.run(
        [sys.executable, "-m", "wasmspawner.singleuser", "--walltime-notice=600", sys.executable, "-c", "pass"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert "(600 s before)" in out.stderr, out.stderr


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "[::1]")])
@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_the_wrappers_own_http_reads_every_framing_of_the_hosts_answer(family, host, framing):
    """The wrapper posts over a plain socket (no urllib at start-up): a
    chunked answer, one with Content-Length and one that ends at close."""
    try:
        srv = socket.socket(family)
        srv.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    srv.listen(1)
    port = srv.getsockname()[1]
    seen = {}
    answer = b'{"end_time": 1800000000, "state": "running"}'

    def serve():
        c, _ = srv.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += c.recv(4096)
        head, _, body = data.partition(b"\r\n\r\n")
        n = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")][0].split(b":")[1])
        while len(body) < n:
            body += c.recv(4096)
        seen["head"], seen["body"] = head.decode(), body
        if framing == "chunked":
            c.sendall(b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + b"%x\r\n" % 10 + answer[:10] + b"\r\n" + b"%x\r\n" % (len(answer) - 10) + answer[10:] + b"\r\n0\r\n\r\n")
        elif framing == "length":
            c.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer + b"garbage")
        else:
            c.sendall(b"HTTP/1.0 202 Accepted\r\n\r\n" + answer)
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    status, body = singleuser.post_json(f"http://{host}:{port}/v1/spawns/s1/ready", "tok-9", b'{"port": 9001}')
    t.join(5)
    srv.close()
    assert (status, json.loads(body)) == (202, json.loads(answer))
    assert seen["head"].startswith("POST /v1/spawns/s1/ready HTTP/1.1\r\n")
    assert "Authorization: Bearer tok-9" in seen["head"] and seen["body"] == b'{"port": 9001}'


def test_an_unreachable_host_is_retried_then_given_up(monkeypatch):
    monkeypatch.setattr(singleuser.time, "sleep", lambda s: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit, match="after 3 attempts"):
        singleuser.report(f"http://127.0.0.1:{port}/v1/spawns/s1/ready", "t", 9001, None, retries=3)
