"""A real JupyterHub 6 with WasmSpawner, a real Wasmspawner host and the
`local` plugin: what a hub admin and a user see."""

from __future__ import annotations

import time

import requests

from conftest import USER


def test_spawn_through_rest_reaches_the_server_through_the_proxy_and_stops(stack):
    host, hub = stack
    t0 = time.time()
    r = hub.api("POST", f"/users/{USER}/server", json={"interface": "lab"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("")
    ready_after = time.time() - t0
    print(f"\nlocal plugin: hub start request → ready in {ready_after:.1f} s")

    # The server answers through the hub's proxy.
    r = requests.get(f"{hub.url}/user/{USER}/api", headers={"Authorization": f"token {hub.token}"}, timeout=10)
    assert r.status_code == 200 and "version" in r.json(), r.text

    # The host knows it as ready, running as the user.
    spawns = host.api("GET", f"/v1/spawns?user={USER}").json()
    live = [s for s in spawns if s["state"] == "ready" and s["server_name"] == ""]
    assert len(live) == 1, spawns
    assert live[0]["instance"] == "local"
    assert live[0]["options"]["interface"] == "lab"

    r = hub.api("DELETE", f"/users/{USER}/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_gone("")
    s = host.api("GET", f"/v1/spawns/{live[0]['id']}").json()
    assert s["state"] == "stopped", s


def test_invalid_options_are_refused_with_the_field_named(stack):
    host, hub = stack
    r = hub.api("POST", f"/users/{USER}/servers/bad", json={"interface": "emacs"})
    # The hub's API answers 400 with the host's message, naming the field.
    assert r.status_code == 400, r.text
    assert "interface" in r.text and "emacs" in r.text, r.text
    assert "bad" not in hub.api("GET", f"/users/{USER}").json().get("servers", {})
    # Nothing was submitted for it.
    assert not [s for s in host.api("GET", f"/v1/spawns?user={USER}").json() if s["server_name"] == "bad" and s.get("job_id")]


def test_named_servers_and_hub_restart_while_running(stack):
    host, hub = stack
    r = hub.api("POST", f"/users/{USER}/servers/second", json={"interface": "notebook"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("second")
    url = f"{hub.url}/user/{USER}/second/api"
    assert requests.get(url, headers={"Authorization": f"token {hub.token}"}, timeout=10).status_code == 200

    # Restart the hub (cleanup_servers = False): the server survives, and the
    # hub's poll through the host keeps it.
    hub.stop()
    hub.start()
    time.sleep(3)
    u = hub.api("GET", f"/users/{USER}").json()
    assert u["servers"]["second"]["ready"], u
    assert requests.get(url, headers={"Authorization": f"token {hub.token}"}, timeout=10).status_code == 200

    hub.api("DELETE", f"/users/{USER}/servers/second")
    hub.wait_gone("second")


def test_hub_restart_while_the_job_is_queued_keeps_the_job(stack):
    host, hub = stack
    r = hub.api("POST", f"/users/{USER}/servers/queued", json={"__instance": "queue", "cores": "2"})
    assert r.status_code in (201, 202), r.text
    deadline = time.time() + 30
    spawn = None
    while time.time() < deadline:
        for s in host.api("GET", f"/v1/spawns?user={USER}").json():
            if s["server_name"] == "queued" and s["state"] == "queued":
                spawn = s
        if spawn:
            break
        time.sleep(0.3)
    assert spawn, "the spawn never queued"

    hub.stop()
    hub.start()
    time.sleep(3)
    # The host kept the job queued: not cancelled, not submitted again.
    s = host.api("GET", f"/v1/spawns/{spawn['id']}").json()
    assert s["state"] == "queued" and s["job_id"] == spawn["job_id"], s
    same_server = [x for x in host.api("GET", f"/v1/spawns?user={USER}").json() if x["server_name"] == "queued"]
    assert len(same_server) == 1, same_server

    # Stopping cancels through the plugin; this fake scheduler never confirms
    # the end, so the host keeps the spawn "stopping" rather than guess.
    r = host.api("DELETE", f"/v1/spawns/{spawn['id']}")
    assert r.status_code == 202, r.text
    time.sleep(2)
    assert host.api("GET", f"/v1/spawns/{spawn['id']}").json()["state"] == "stopping"


def test_the_same_flow_through_slurm(stack):
    import os
    import sys

    import pytest

    if not os.environ.get("WASMSPAWNER_SLURM_CONF"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the JupyterHub + Slurm test: WASMSPAWNER_SLURM_CONF is not set")
        print("\n*** SKIPPED (no Slurm): set WASMSPAWNER_SLURM_CONF (tests/slurm/slurm-up.sh) ***\n", file=sys.stderr)
        pytest.skip("no Slurm")
    host, hub = stack
    t0 = time.time()
    r = hub.api("POST", f"/users/{USER}/servers/slurm", json={"__instance": "slurm", "nprocs": "1"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("slurm")
    print(f"\nreal Slurm: hub start request → ready in {time.time() - t0:.1f} s")
    r = requests.get(f"{hub.url}/user/{USER}/slurm/api", headers={"Authorization": f"token {hub.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    s = [x for x in host.api("GET", f"/v1/spawns?user={USER}").json() if x["server_name"] == "slurm" and x["state"] == "ready"]
    assert s and s[0]["job_id"], s
    hub.api("DELETE", f"/users/{USER}/servers/slurm")
    hub.wait_gone("slurm")


def _slurm_or_skip():
    import os
    import sys

    import pytest

    if not os.environ.get("WASMSPAWNER_SLURM_CONF"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the JupyterHub + Slurm tests: WASMSPAWNER_SLURM_CONF is not set")
        print("\n*** SKIPPED (no Slurm): set WASMSPAWNER_SLURM_CONF (tests/slurm/slurm-up.sh) ***\n", file=sys.stderr)
        pytest.skip("no Slurm")


def _slurm(*argv: str) -> str:
    import os
    import subprocess

    env = dict(os.environ, SLURM_CONF=os.environ["WASMSPAWNER_SLURM_CONF"])
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=30, check=True).stdout


def _spawns_of(host, server: str) -> list[dict]:
    return [x for x in host.api("GET", f"/v1/spawns?user={USER}").json() if x["server_name"] == server]


def _wait_spawn(host, server: str, pred, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for s in _spawns_of(host, server):
            if pred(s):
                return s
        time.sleep(0.3)
    raise TimeoutError(f"no spawn of {server!r} matched: {_spawns_of(host, server)}")


def _progress_messages_until(hub, server: str, pred, limit: int = 30) -> list[str]:
    """The hub's progress event stream (what the spawn page shows), up to the
    first message for which pred is true (or the stream's pause)."""
    import json

    out = []
    try:
        with requests.get(
            f"{hub.url}/hub/api/users/{USER}/servers/{server}/progress",
            headers={"Authorization": f"token {hub.token}"}, stream=True, timeout=10,
        ) as r:
            assert r.status_code == 200, r.text
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    out.append(json.loads(line[5:]).get("message", ""))
                    if pred(out[-1]) or len(out) >= limit:
                        break
    except requests.exceptions.RequestException:
        pass  # read timeout: no further event while the job pends
    return out


def _server_answers(hub, server: str) -> bool:
    r = requests.get(f"{hub.url}/user/{USER}/{server}/api", headers={"Authorization": f"token {hub.token}"}, timeout=10)
    return r.status_code == 200 and "version" in r.json()


def test_hub_restart_while_the_slurm_job_pends_keeps_its_place_and_the_server_comes_up(stack):
    _slurm_or_skip()
    host, hub = stack
    r = hub.api("POST", f"/users/{USER}/servers/held", json={"__instance": "slurmheld"})
    assert r.status_code in (201, 202), r.text
    spawn = _wait_spawn(host, "held", lambda s: s["state"] == "queued" and s.get("job_id"))
    job = spawn["job_id"]
    assert _slurm("squeue", "--noheader", "--jobs", job, "--format=%T").strip() == "PENDING"

    # SIGTERM to the hub while the job pends; the hub starts again.
    hub.stop()
    hub.start()
    # The hub follows the spawn again: pending, not stopped, same job.
    u = hub.api("GET", f"/users/{USER}").json()
    assert u["servers"]["held"]["pending"] == "spawn", u
    assert not u["servers"]["held"]["ready"], u
    time.sleep(3)
    u = hub.api("GET", f"/users/{USER}").json()
    assert u["servers"]["held"]["pending"] == "spawn", u
    assert _slurm("squeue", "--noheader", "--jobs", job, "--format=%T").strip() == "PENDING"
    # The spawn page's progress stream works again, with the scheduler's reason.
    first = _progress_messages_until(hub, "held", lambda m: "JobHeldUser" in m)
    assert "JobHeldUser" in first[-1], first

    # Now the job may start: the server comes up through the proxy.
    t0 = time.time()
    _slurm("scontrol", "release", job)
    hub.wait_ready("held", timeout=120)
    print(f"\nheld Slurm job after a hub restart: release → hub ready in {time.time() - t0:.1f} s")
    assert _server_answers(hub, "held")
    # One spawn, one job: the place in the queue was kept.
    spawns = _spawns_of(host, "held")
    assert [(s["job_id"], s["state"]) for s in spawns] == [(job, "ready")], spawns
    hub.api("DELETE", f"/users/{USER}/servers/held")
    hub.wait_gone("held")
    assert _spawns_of(host, "held")[0]["state"] == "stopped"


def test_hub_restart_while_the_slurm_server_runs_keeps_it(stack):
    _slurm_or_skip()
    host, hub = stack
    r = hub.api("POST", f"/users/{USER}/servers/slurmrun", json={"__instance": "slurm"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("slurmrun")
    assert _server_answers(hub, "slurmrun")
    job = _wait_spawn(host, "slurmrun", lambda s: s["state"] == "ready")["job_id"]

    hub.stop()
    hub.start()
    hub.wait_ready("slurmrun", timeout=30)
    assert _server_answers(hub, "slurmrun")
    spawns = _spawns_of(host, "slurmrun")
    assert [(s["job_id"], s["state"]) for s in spawns] == [(job, "ready")], spawns
    assert _slurm("squeue", "--noheader", "--jobs", job, "--format=%T").strip() == "RUNNING"
    hub.api("DELETE", f"/users/{USER}/servers/slurmrun")
    hub.wait_gone("slurmrun")


def test_a_held_job_cancelled_outside_the_hub_after_a_restart_fails_the_spawn(stack):
    _slurm_or_skip()
    host, hub = stack
    r = hub.api("POST", f"/users/{USER}/servers/gone", json={"__instance": "slurmheld"})
    assert r.status_code in (201, 202), r.text
    job = _wait_spawn(host, "gone", lambda s: s["state"] == "queued" and s.get("job_id"))["job_id"]
    hub.stop()
    hub.start()
    assert hub.api("GET", f"/users/{USER}").json()["servers"]["gone"]["pending"] == "spawn"
    _slurm("scancel", job)
    # The hub drops the server as soon as the host says the job ended.
    t0 = time.time()
    hub.wait_gone("gone", timeout=30)
    print(f"\njob cancelled outside the hub after a restart: hub dropped the server in {time.time() - t0:.1f} s")
    s = _spawns_of(host, "gone")[0]
    assert s["state"] == "failed", s


def test_the_spawn_form_posted_with_its_xsrf_field_in_the_body_starts_the_server(stack):
    """A form post as curl or a script sends it: `_xsrf` in the body is the
    hub's own field, not a plugin option."""
    host, hub = stack
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=10)
    xsrf = s.cookies.get("_xsrf")
    r = s.post(f"{hub.url}/hub/login", data={"username": USER, "password": "x", "_xsrf": xsrf}, timeout=10, allow_redirects=False)
    assert r.status_code == 302, r.text
    xsrf = s.cookies.get("_xsrf")
    r = s.post(f"{hub.url}/hub/spawn/{USER}/posted", data={"interface": "lab", "_xsrf": xsrf}, timeout=30, allow_redirects=False)
    assert r.status_code == 302 and "spawn-pending" in r.headers["Location"], r.text[-2000:]
    hub.wait_ready("posted")
    assert _spawns_of(host, "posted")[-1]["options"]["interface"] == "lab"
    hub.api("DELETE", f"/users/{USER}/servers/posted")
    hub.wait_gone("posted")


def test_stopping_a_pending_server_after_a_hub_restart_cancels_its_job(stack):
    _slurm_or_skip()
    host, hub = stack
    r = hub.api("POST", f"/users/{USER}/servers/quit", json={"__instance": "slurmheld"})
    assert r.status_code in (201, 202), r.text
    job = _wait_spawn(host, "quit", lambda s: s["state"] == "queued" and s.get("job_id"))["job_id"]
    hub.stop()
    log_before = hub.log.read_text()
    hub.start()
    assert hub.api("GET", f"/users/{USER}").json()["servers"]["quit"]["pending"] == "spawn"
    # The user stops it from the spawn page (the API the page calls).
    r = hub.api("DELETE", f"/users/{USER}/servers/quit")
    assert r.status_code in (202, 204), r.text
    hub.wait_gone("quit", timeout=60)
    s = _wait_spawn(host, "quit", lambda s: s["state"] in ("stopped", "failed"), timeout=30)
    assert s["state"] == "stopped" and s["job_id"] == job, s
    assert _slurm("squeue", "--noheader", "--jobs", job, "--format=%T").strip() in ("", "CANCELLED", "COMPLETING")
    # The hub stopped it once, cleanly, and can start it again.
    new_log = hub.log.read_text()[len(log_before):]
    assert "Traceback" not in new_log, new_log[-3000:]
    r = hub.api("POST", f"/users/{USER}/servers/quit", json={"__instance": "slurm"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("quit")
    hub.api("DELETE", f"/users/{USER}/servers/quit")
    hub.wait_gone("quit")


def test_a_queued_job_cancelled_outside_the_hub_fails_the_spawn_at_once_with_the_reason(stack):
    _slurm_or_skip()
    host, hub = stack
    r = hub.api("POST", f"/users/{USER}/servers/gone2", json={"__instance": "slurmheld"})
    assert r.status_code in (201, 202), r.text
    job = _wait_spawn(host, "gone2", lambda s: s["state"] == "queued" and s.get("job_id"))["job_id"]
    t0 = time.time()
    _slurm("scancel", job)
    hub.wait_gone("gone2", timeout=20)
    print(f"\nqueued job cancelled outside the hub: spawn failed after {time.time() - t0:.1f} s")
    s = _wait_spawn(host, "gone2", lambda s: s["state"] == "failed")
    # The spawn page's progress says why, in the host's words.
    msgs = _progress_messages_until(hub, "gone2", lambda m: m.startswith("Spawn failed"))
    assert msgs and msgs[-1].startswith("Spawn failed"), msgs
    assert s["reason"] and s["reason"][:40] in msgs[-1], (s["reason"], msgs)


def test_a_one_minute_slurm_job_shows_its_limit_and_its_server_is_told_before_walltime(stack):
    """`--time=1` through the form's runtime; the hub's config gives this
    server a 50 s notice and opts in to SIGUSR1 (conftest.py)."""
    import json
    import re
    from pathlib import Path

    _slurm_or_skip()
    host, hub = stack
    import threading

    t0 = time.time()
    # The hub answers the start request once the server is up (or after
    # 10 s): the spawn page's progress is read meanwhile, as a browser does.
    posted = {}
    poster = threading.Thread(target=lambda: posted.update(r=hub.api(
        "POST", f"/users/{USER}/servers/walltime", json={"__instance": "slurm", "runtime": "1"})))
    poster.start()
    while time.time() - t0 < 10 and not hub.api("GET", f"/users/{USER}").json()["servers"].get("walltime"):
        time.sleep(0.02)
    # The spawn page's progress says the job's end and time limit once it runs.
    msgs = _progress_messages_until(hub, "walltime", lambda m: "time limit" in m)
    poster.join()
    assert posted["r"].status_code in (201, 202), posted["r"].text
    assert msgs and "time limit 0:01:00" in msgs[-1], msgs
    assert re.search(r"ends \d\d:\d\d UTC", msgs[-1]), msgs
    hub.wait_ready("walltime")
    spawn = _wait_spawn(host, "walltime", lambda s: s["state"] == "ready")
    job = spawn["job_id"]
    assert _slurm("squeue", "--noheader", "--jobs", job, "--format=%l").strip() == "1:00"
    assert spawn["time_limit_secs"] == 60 and spawn["end_time"], spawn
    # The server's state in the hub (what an admin's API shows) has them too.
    state = hub.api("GET", f"/users/{USER}").json()["servers"]["walltime"]["state"]
    assert state["job_id"] == job and state["time_limit_secs"] == 60 and state["end_time"] == spawn["end_time"], state

    # The notice: on the server's log and in the notice file, ~10 s after
    # the start, 50 s before the end.
    home = Path(f"~{USER}").expanduser()
    log = home / f"jupyterhub_slurmspawner_{job}.log"
    notice_file = home / ".local/share/wasmspawner/walltime-walltime.json"
    deadline = time.time() + 45
    while time.time() < deadline and "Walltime notice" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.3)
    text = log.read_text()
    assert "Walltime notice: This server's job ends at" in text, text[-3000:]
    print(f"\none-minute Slurm job: walltime notice {time.time() - t0:.1f} s after the start request")
    notice = json.loads(notice_file.read_text())
    assert notice["end_time"] == spawn["end_time"] and notice["job_id"] == job, notice
    # 50 s, or a little less if the server started late in its minute (a
    # lead longer than 90 % of what is left is cut).
    assert 40 <= notice["seconds_left"] <= 52, notice
    assert str(notice_file) in text
    # The signal the site opted in to reached the server, which handles it
    # (jupyter-server logs its state) and keeps serving.
    assert "sent SIGUSR1 to the server" in text, text[-3000:]
    deadline = time.time() + 10
    while time.time() < deadline and "active kernel" not in log.read_text():
        time.sleep(0.3)
    assert "active kernel" in log.read_text(), log.read_text()[-3000:]
    assert _server_answers(hub, "walltime")
    assert _slurm("squeue", "--noheader", "--jobs", job, "--format=%T").strip() == "RUNNING"

    hub.api("DELETE", f"/users/{USER}/servers/walltime")
    hub.wait_gone("walltime")
