"""Start → ready and stop: WasmSpawner against batchspawner's SlurmSpawner,
on the same one-node Slurm, the same JupyterHub and the same single-user
server, runs alternating. Run by `cargo xtask bench-hub` (printed, not
asserted).

Each run: POST the user's server through the hub's REST API, poll the hub
every 50 ms until the server is ready, check it answers through the proxy;
then DELETE it and poll until the hub no longer lists it, and wait until the
Slurm queue is empty before the next run. Each run also prints where its
start went, read from the logs afterwards (Slurm's submit, allocation and
launch; the wrapper's start and callback; the server listening; the host's
and the hub's ready).

Needs what the end-to-end tests need (root, $WASMSPAWNER_BIN,
$WASMSPAWNER_PLUGIN_DIR, $WASMSPAWNER_VENV with batchspawner 1.3.0) and
$WASMSPAWNER_SLURM_CONF.
"""

from __future__ import annotations

import os
import pwd
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
from conftest import USER, Host, Hub, requirements  # noqa: E402

POLL = 0.05


def batchspawner_config(venv: Path, conf: str) -> str:
    """What a site admin writes for batchspawner on this Slurm: its default
    batch script, runuser instead of sudo (not installed here), the same
    resources as the WasmSpawner instance (debug partition, 1 GiB, 30 min)."""
    return f"""
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.exec_prefix = "/usr/sbin/runuser -u {{username}} --"
c.SlurmSpawner.batch_submit_cmd = "sbatch --parsable"
c.SlurmSpawner.req_partition = "debug"
c.SlurmSpawner.req_memory = "1G"
c.SlurmSpawner.req_runtime = "30"
c.SlurmSpawner.batchspawner_singleuser_cmd = "{venv}/bin/batchspawner-singleuser"
c.Spawner.environment = {{"SLURM_CONF": "{conf}"}}
c.Spawner.ip = ""
"""


def squeue_empty(conf: str) -> bool:
    out = subprocess.run(
        ["squeue", "--noheader", "--user", USER], env=dict(os.environ, SLURM_CONF=conf),
        capture_output=True, text=True, timeout=30,
    )
    return out.returncode == 0 and not out.stdout.strip()


# ----- where the start's time goes -----
#
# Every clock here is this machine's: the hub's and the server's log lines
# and Slurm's (milliseconds, local time), the host's spawn record, and the
# bench's own polls.

STAMP_SLURM = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})\] (.*)$")
STAMP_JUPYTER = re.compile(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) ([^\]]*)\] (.*)$")


def _local(text: str, ms: str, fmt: str) -> float:
    return time.mktime(time.strptime(text, fmt)) + int(ms) / 1000


def slurm_lines(path: Path, since: float):
    """(time, message) of a Slurm log's lines from ``since`` on."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        m = STAMP_SLURM.match(line)
        if m:
            t = _local(m[1], m[2], "%Y-%m-%dT%H:%M:%S")
            if t >= since:
                yield t, m[3]


def jupyter_lines(path: Path):
    """(time, logger, message) of a JupyterHub or jupyter-server log."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        m = STAMP_JUPYTER.match(line)
        if m:
            yield _local(m[1], m[2], "%Y-%m-%d %H:%M:%S"), m[3], m[4]


def slurm_conf_value(conf: str, key: str) -> str:
    for line in Path(conf).read_text().splitlines():
        if line.strip().startswith(key + "="):
            return line.split("=", 1)[1].strip()
    return ""


def breakdown(conf: str, hub: Hub, wall0: float, wall_ready: float, host_ready: float | None) -> dict[str, float]:
    """Seconds after the start request: Slurm's submit, allocation and
    launch, the wrapper's start and its callback answered (WasmSpawner),
    the server listening, the host's ready (WasmSpawner), the hub's spawn
    done (its log's "took N seconds to start": the spawner returned and the
    hub's own check of the server passed; the proxy's route comes after)
    and the bench's poll seeing the server ready.""" 
    out: dict[str, float] = {}
    job = None
    for t, msg in slurm_lines(Path(slurm_conf_value(conf, "SlurmctldLogFile")), wall0 - 1):
        m = re.match(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", msg)
        if m and job is None:
            job, out["submitted"] = m[1], t - wall0
        elif job and re.match(rf"(sched|sched/backfill: _start_job|backfill): (Allocate|Started) JobId={job}\b", msg) and "allocated" not in out:
            out["allocated"] = t - wall0
    if job is None:
        return out
    for t, msg in slurm_lines(Path(slurm_conf_value(conf, "SlurmdLogFile")), wall0 - 1):
        if f"Launching batch job {job} " in msg:
            out["job launched"] = t - wall0
            break
    home = Path(pwd.getpwnam(USER).pw_dir)
    for t, who, msg in jupyter_lines(home / f"jupyterhub_slurmspawner_{job}.log"):
        m = re.search(r"answered in (\d+) ms, (\d+) ms after the wrapper's start", msg)
        if who == "wasmspawner-singleuser" and m and "wrapper started" not in out:
            out["wrapper started"] = t - int(m[2]) / 1000 - wall0
            out["callback answered"] = t - wall0
        if "ServerApp" in who and "is running at" in msg and "server listening" not in out:
            out["server listening"] = t - wall0
    if host_ready is not None:
        out["host ready"] = host_ready - wall0
    for t, who, msg in jupyter_lines(hub.log):
        if t >= wall0 and re.search(rf"User {USER} took [\d.]+ seconds to start", msg):
            out["hub spawn done"] = t - wall0
    out["bench saw ready"] = wall_ready - wall0
    return out


STEPS = ["submitted", "allocated", "job launched", "wrapper started", "callback answered",
         "server listening", "host ready", "hub spawn done", "bench saw ready"]


def show(b: dict[str, float]) -> str:
    return "  ".join(f"{k} {b[k]:5.2f}" for k in STEPS if k in b)


def host_ready_time(host: Host) -> float | None:
    """When the host made the user's default server ready (its record)."""
    import datetime

    for s in host.api("GET", f"/v1/spawns?user={USER}").json():
        if s["server_name"] == "" and s["state"] == "ready" and s.get("state_since"):
            return datetime.datetime.fromisoformat(s["state_since"].replace("Z", "+00:00")).timestamp()
    return None


def one_run(hub: Hub, body: dict, conf: str, host: Host | None = None) -> tuple[float, float, dict[str, float]]:
    wall0 = time.time()
    t0 = time.monotonic()
    r = hub.api("POST", f"/users/{USER}/server", json=body)
    assert r.status_code in (201, 202), r.text
    deadline = t0 + 180
    while True:
        s = hub.api("GET", f"/users/{USER}").json().get("servers", {}).get("")
        if s and s.get("ready"):
            break
        if not s and time.monotonic() - t0 > 2:
            raise RuntimeError(f"the spawn failed:\n{hub.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(hub.log.read_text()[-3000:])
        time.sleep(POLL)
    ready = time.monotonic() - t0
    wall_ready = time.time()
    host_ready = host_ready_time(host) if host is not None else None
    r = requests.get(f"{hub.url}/user/{USER}/api", headers={"Authorization": f"token {hub.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    t1 = time.monotonic()
    hub.api("DELETE", f"/users/{USER}/server")
    while "" in hub.api("GET", f"/users/{USER}").json().get("servers", {}):
        if time.monotonic() - t1 > 120:
            raise TimeoutError("stop")
        time.sleep(POLL)
    stop = time.monotonic() - t1
    deadline = time.monotonic() + 60
    while not squeue_empty(conf) and time.monotonic() < deadline:
        time.sleep(0.2)
    return ready, stop, breakdown(conf, hub, wall0, wall_ready, host_ready)


def main() -> int:
    why = requirements()
    conf = os.environ.get("WASMSPAWNER_SLURM_CONF")
    if why or not conf:
        print(f"bench-hub: cannot run: {why or '$WASMSPAWNER_SLURM_CONF is not set'}", file=sys.stderr)
        return 2
    runs = int(os.environ.get("BENCH_HUB_RUNS", "6"))
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
    venv = Path(os.environ["WASMSPAWNER_VENV"])
    base = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    base.chmod(0o755)
    host = Host(base)
    host.start()
    (base / "w").mkdir()
    (base / "b").mkdir()
    ours = Hub(base / "w", host)
    theirs = Hub(base / "b", host)
    cfg = theirs.dir / "jupyterhub_config.py"
    cfg.write_text(cfg.read_text() + batchspawner_config(venv, conf))
    results: dict[str, list[tuple[float, float]]] = {"WasmSpawner": [], "batchspawner 1.3.0": []}
    steps: dict[str, list[dict[str, float]]] = {"WasmSpawner": [], "batchspawner 1.3.0": []}
    try:
        ours.start()
        theirs.start()
        for i in range(runs):
            for name, hub, body, h in (
                ("WasmSpawner", ours, {"__instance": "slurm"}, host),
                ("batchspawner 1.3.0", theirs, {}, None),
            ):
                ready, stop, b = one_run(hub, body, conf, h)
                results[name].append((ready, stop))
                steps[name].append(b)
                print(f"run {i + 1}/{runs} {name:<20} start → ready {ready:6.2f} s   stop {stop:5.2f} s", flush=True)
                print(f"    {show(b)}", flush=True)
    finally:
        for hub in (ours, theirs):
            hub.stop()
            hub.stop_proxy()
        host.stop()
    print()
    print(f"median of {runs} alternating runs, one-node Slurm, JupyterHub, jupyterhub-singleuser:")
    med = {}
    for name, rs in results.items():
        med[name] = (statistics.median(r for r, _ in rs), statistics.median(s for _, s in rs))
        print(f"  {name:<20} start → ready {med[name][0]:5.2f} s   stop {med[name][1]:5.2f} s")
    print("median seconds after the start request:")
    for name, bs in steps.items():
        keys = [k for k in STEPS if all(k in b for b in bs)]
        print(f"  {name:<20} " + "  ".join(f"{k} {statistics.median(b[k] for b in bs):5.2f}" for k in keys))
    w, b = med["WasmSpawner"], med["batchspawner 1.3.0"]
    print(f"  ratio (batchspawner / WasmSpawner): start → ready {b[0] / w[0]:.2f}×, stop {b[1] / w[1]:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
