"""Start → ready and stop: WasmSpawner against batchspawner's SlurmSpawner,
on the same one-node Slurm, the same JupyterHub and the same single-user
server, runs alternating. Run by `cargo xtask bench-hub` (printed, not
asserted).

Each run: POST the user's server through the hub's REST API, poll the hub
every 50 ms until the server is ready, check it answers through the proxy;
then DELETE it and poll until the hub no longer lists it, and wait until the
Slurm queue is empty before the next run.

Needs what the end-to-end tests need (root, $WASMSPAWNER_BIN,
$WASMSPAWNER_PLUGIN_DIR, $WASMSPAWNER_VENV with batchspawner 1.3.0) and
$WASMSPAWNER_SLURM_CONF.
"""

from __future__ import annotations

import os
import pwd
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


def one_run(hub: Hub, body: dict, conf: str) -> tuple[float, float]:
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
    return ready, stop


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
    try:
        ours.start()
        theirs.start()
        for i in range(runs):
            for name, hub, body in (
                ("WasmSpawner", ours, {"__instance": "slurm"}),
                ("batchspawner 1.3.0", theirs, {}),
            ):
                ready, stop = one_run(hub, body, conf)
                results[name].append((ready, stop))
                print(f"run {i + 1}/{runs} {name:<20} start → ready {ready:6.2f} s   stop {stop:5.2f} s", flush=True)
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
    w, b = med["WasmSpawner"], med["batchspawner 1.3.0"]
    print(f"  ratio (batchspawner / WasmSpawner): start → ready {b[0] / w[0]:.2f}×, stop {b[1] / w[1]:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
