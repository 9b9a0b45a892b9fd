"""Fixtures for end-to-end tests: a real Wasmspawner host and a real
JupyterHub 6 (with configurable-http-proxy), on loopback ports, started and
stopped by PID.

Needs: root (servers run as a test user through runuser), the host binary
($WASMSPAWNER_BIN), the built plugins ($WASMSPAWNER_PLUGIN_DIR) and the venv
($WASMSPAWNER_VENV) — `cargo xtask test` provides all three. Without them the
end-to-end tests are skipped with a loud message, except under CI=true where
they fail.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
USER = "wshub"

# The slurm plugin's default script with `--hold`: the job pends until
# `scontrol release`.
HELD_TEMPLATE = """#!/bin/bash
#SBATCH --job-name={{ job_name }}
#SBATCH --output=/tmp/jupyterhub_slurmspawner_%j.log
#SBATCH --hold
{% if partition %}#SBATCH --partition={{ partition }}
{% endif %}{% if memory %}#SBATCH --mem={{ memory }}
{% endif %}{% if runtime %}#SBATCH --time={{ runtime }}
{% endif %}{{ prologue }}
{{ cmd }}
{{ epilogue }}
"""


def _slurm_programs(instance: str) -> str:
    """The Slurm programs granted to `instance`: submit as the user (with
    the job's environment), status as the host, cancel."""
    return "\n".join(
        f"[[instances.{instance}.grants.programs]]\n{grant}"
        for grant in (
            'program = "sbatch"\nspawn_env = true\nphases = ["submit"]',
            'program = "squeue"\nphases = ["status"]\nrun_as = "host"',
            'program = "scancel"\nphases = ["cancel"]',
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60, ok=lambda r: r.status_code < 500) -> requests.Response:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            r = requests.get(url, timeout=2)
            if ok(r):
                return r
            last = r.status_code
        except requests.RequestException as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout}s (last: {last})")


def requirements() -> str | None:
    """Why the end-to-end tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (servers run as a test user through runuser)"
    for var in ("WASMSPAWNER_BIN", "WASMSPAWNER_PLUGIN_DIR", "WASMSPAWNER_VENV"):
        if not os.environ.get(var):
            return f"${var} is not set (run the tests with `cargo xtask test`)"
    if not Path(os.environ["WASMSPAWNER_VENV"], "chp/node_modules/.bin/configurable-http-proxy").exists():
        return "configurable-http-proxy is not installed in the venv"
    return None


@pytest.fixture(scope="session")
def e2e_ready():
    why = requirements()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the JupyterHub end-to-end tests, but {why}")
        print(f"\n*** SKIPPED (JupyterHub end-to-end): {why} ***\n", file=sys.stderr)
        pytest.skip(why)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
    return True


class Proc:
    """A child process we started, stopped by PID."""

    def __init__(self, argv, log: Path, env=None, cwd=None):
        self.log = log
        self.p = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()


class Host:
    def __init__(self, base: Path):
        venv = Path(os.environ["WASMSPAWNER_VENV"])
        plugins = Path(os.environ["WASMSPAWNER_PLUGIN_DIR"])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        tok = base / "host-token"
        tok.write_text(self.token)
        tok.chmod(0o600)
        self.token_file = tok
        self.state = base / "host-state"
        self.config = base / "host.toml"
        self.config.write_text(f"""
state_dir = "{self.state}"

[http]
listen = "127.0.0.1:{self.port}"
public_url = "{self.url}"
token_file = "{tok}"

[instances.local]
plugin = "{plugins / 'local.wasm'}"
run_as = ["/usr/sbin/runuser", "-u", "{{user}}", "--"]
[instances.local.lifecycle]
poll_interval_secs = 1
fast_poll_secs = 0.5
start_timeout_secs = 90
[instances.local.grants]
env = ["JUPYTERHUB_DEFAULT_URL", "PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin"]
[[instances.local.grants.detached]]
program = "{venv}/bin/wasmspawner-singleuser"
args = ["**"]
spawn_env = true

{self.slurm_instance(venv, plugins)}
{self.site_instance(plugins)}
# A "scheduler" whose jobs stay queued: for the hub-restart-while-queued test.
[instances.queue]
plugin = "{plugins / 'probe.wasm'}"
[instances.queue.config]
behavior = "bad-status"
[instances.queue.lifecycle]
poll_interval_secs = 1
""")
        self.log = base / "host.log"
        self.proc = None

    @staticmethod
    def slurm_instance(venv: Path, plugins: Path) -> str:
        """A Slurm instance on the real one-node Slurm, when there is one."""
        conf = os.environ.get("WASMSPAWNER_SLURM_CONF")
        if not conf:
            return ""
        return f"""
[instances.slurm]
plugin = "{plugins / 'slurm.wasm'}"
run_as = ["/usr/sbin/runuser", "-u", "{{user}}", "--"]
[instances.slurm.config]
partition = {{ choices = ["debug"], default = "debug" }}
memory = {{ default = 1, max = 2 }}
# min 1: the walltime test's one-minute job.
runtime = {{ default = 30, min = 1 }}
[instances.slurm.grants]
# The walltime notice 50 s before the end (the walltime test's one-minute
# job: ~10 s after its start), through the job's environment (sbatch's).
env = ["SLURM_CONF={conf}", "PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin", "WASMSPAWNER_WALLTIME_NOTICE=50"]
{_slurm_programs("slurm")}
[instances.slurm.lifecycle]
poll_interval_secs = 1
fast_poll_secs = 0.5
start_timeout_secs = 120

# The same, with every job submitted held (`scontrol release` lets it run):
# a job that really pends, for the hub-restart tests.
[instances.slurmheld]
plugin = "{plugins / 'slurm.wasm'}"
run_as = ["/usr/sbin/runuser", "-u", "{{user}}", "--"]
[instances.slurmheld.config]
partition = {{ choices = ["debug"], default = "debug" }}
memory = {{ default = 1, max = 2 }}
runtime = {{ default = 30 }}
template = {json.dumps(HELD_TEMPLATE)}
[instances.slurmheld.grants]
env = ["SLURM_CONF={conf}", "PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin"]
{_slurm_programs("slurmheld")}
[instances.slurmheld.lifecycle]
poll_interval_secs = 1
fast_poll_secs = 0.5
queue_timeout_secs = 600
start_timeout_secs = 120
"""

    @staticmethod
    def site_instance(plugins: Path) -> str:
        """The example site plugin (profiles, projects) on the real Slurm."""
        conf = os.environ.get("WASMSPAWNER_SLURM_CONF")
        if not conf:
            return ""
        venv = Path(os.environ["WASMSPAWNER_VENV"])
        return f"""
[instances.site]
plugin = "{plugins / 'example-site.wasm'}"
run_as = ["/usr/sbin/runuser", "-u", "{{user}}", "--"]
[instances.site.config.partition]
choices = ["debug", "standard"]
default = "debug"
[instances.site.config.memory]
max = 8
default = 2
[instances.site.config.runtime]
max = 480
default = 60
[instances.site.grants]
env = ["SLURM_CONF={conf}", "PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin"]
{_slurm_programs("site")}
[instances.site.lifecycle]
poll_interval_secs = 1
fast_poll_secs = 0.5
start_timeout_secs = 120
"""

    def start(self):
        self.proc = Proc([os.environ["WASMSPAWNER_BIN"], "serve", "--config", str(self.config)], self.log)
        wait_http(self.url + "/healthz", 60, ok=lambda r: r.status_code == 200)

    def api(self, method, path, **kw):
        return requests.request(method, self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=10, **kw)

    def stop(self):
        if self.proc:
            self.proc.stop()


class Hub:
    def __init__(self, base: Path, host: Host):
        venv = Path(os.environ["WASMSPAWNER_VENV"])
        self.venv = venv
        self.port, self.hub_port, self.proxy_api = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        self.dir = base / "hub"
        self.dir.mkdir()
        (self.dir / "jupyterhub_config.py").write_text(f"""
c = get_config()  # noqa
c.JupyterHub.bind_url = "{self.url}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api}"
c.ConfigurableHTTPProxy.command = ["{venv}/chp/node_modules/.bin/configurable-http-proxy"]
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.db_url = "sqlite:///{self.dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{self.dir}/cookie_secret"
c.JupyterHub.pid_file = "{self.dir}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = False
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"{USER}"}}
c.JupyterHub.allow_named_servers = True
c.JupyterHub.spawner_class = "wasm"
c.WasmSpawner.host_url = "{host.url}"
c.WasmSpawner.api_token_file = "{host.token_file}"
c.JupyterHub.load_groups = {{"proj-e2e": {{"users": ["{USER}"]}}}}
c.WasmSpawner.remember_options = ["*"]
c.WasmSpawner.instances = ["local", "queue"] + (["slurm", "slurmheld", "site"] if {bool(os.environ.get("WASMSPAWNER_SLURM_CONF"))} else [])
c.WasmSpawner.wrapper = ["{venv}/bin/wasmspawner-singleuser"]
c.Spawner.cmd = ["{venv}/bin/jupyterhub-singleuser"]
c.Spawner.ip = "127.0.0.1"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 90
# The walltime test's server (named "walltime") opts in to a signal at the
# walltime notice (jupyter-server logs its state on SIGUSR1), through the
# wrapper's option; every other server has the default (no signal).
def _walltime_signal(spawner):
    if spawner.name == "walltime":
        spawner.wrapper = ["{venv}/bin/wasmspawner-singleuser", "--walltime-signal=SIGUSR1"]
c.Spawner.pre_spawn_hook = _walltime_signal
c.JupyterHub.services = [{{"name": "e2e-admin", "api_token": "{self.token}"}}]
c.JupyterHub.load_roles = [{{
    "name": "e2e-admin-role",
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "access:servers", "read:users", "servers", "users"],
    "services": ["e2e-admin"],
}}]
""")
        self.log = self.dir / "hub.log"
        self.proc = None

    def start(self):
        env = dict(os.environ, PATH=f"{self.venv}/bin:{os.environ['PATH']}")
        self.proc = Proc([f"{self.venv}/bin/jupyterhub", "-f", "jupyterhub_config.py"], self.log, env=env, cwd=self.dir)
        wait_http(self.url + "/hub/api/", 90, ok=lambda r: r.status_code == 200)

    def stop(self):
        if self.proc:
            self.proc.stop()

    def stop_proxy(self):
        """cleanup_proxy = False keeps the proxy across hub restarts; stop it
        by the PID the hub recorded."""
        pid_file = self.dir / "jupyterhub-proxy.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass

    def api(self, method, path, **kw):
        return requests.request(method, self.url + "/hub/api" + path, headers={"Authorization": f"token {self.token}"}, timeout=30, **kw)

    def wait_ready(self, server: str = "", timeout: float = 150) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            u = self.api("GET", f"/users/{USER}").json()
            s = u.get("servers", {}).get(server)
            if s and s.get("ready"):
                return s
            time.sleep(0.5)
        raise TimeoutError(f"server {server!r} of {USER} not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def wait_gone(self, server: str = "", timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if server not in self.api("GET", f"/users/{USER}").json().get("servers", {}):
                return
            time.sleep(0.5)
        raise TimeoutError(f"server {server!r} still there")


@pytest.fixture(scope="module")
def stack(e2e_ready, tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    base.chmod(0o755)
    host = Host(base)
    host.start()
    hub = Hub(base, host)
    hub.start()
    yield host, hub
    # Stop servers first, so nothing outlives the test.
    try:
        for name in list(hub.api("GET", f"/users/{USER}").json().get("servers", {})):
            hub.api("DELETE", f"/users/{USER}/servers/{name}" if name else f"/users/{USER}/server")
        for s in host.api("GET", f"/v1/spawns?user={USER}").json():
            if s["state"] not in ("stopped", "failed"):
                host.api("DELETE", f"/v1/spawns/{s['id']}")
        time.sleep(2)
    finally:
        hub.stop()
        hub.stop_proxy()
        host.stop()
