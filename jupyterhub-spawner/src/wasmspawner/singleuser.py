"""``wasmspawner-singleuser``: run inside the batch job, before the server.

It picks a free port (or one from ``WASMSPAWNER_PORT_RANGE``, e.g.
``9000-9100``), reports it to the host's callback URL with the per-spawn
token (retrying with backoff), puts the port into ``JUPYTERHUB_SERVICE_URL``,
removes the callback secrets from the environment, and execs the server
command given as its arguments (default ``jupyterhub-singleuser``).

If the host answers 409 because another spawn on this node already uses the
port, it picks another and reports again. It exports ``WASMSPAWNER_END_TIME``
(Unix seconds) to the server when the job's end is known.

Environment it reads (set by the host):
  WASMSPAWNER_CALLBACK_URL    where to POST {"port": N, "host": H}
  WASMSPAWNER_CALLBACK_TOKEN  the per-spawn bearer token (never in argv)
  WASMSPAWNER_PORT_RANGE      optional "LOW-HIGH"
  WASMSPAWNER_REPORT_HOST     optional host name to report; by default none is
                              sent and the host uses the scheduler's execution
                              host (or the caller's address)
  WASMSPAWNER_END_TIME        optional: the job's end (Unix seconds); also read
                              from the callback's answer (`end_time`), Slurm's
                              SLURM_JOB_END_TIME or PBS_WALLTIME

Only the standard library is used, so it runs in any Python 3 of a job.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

RETRIES = 8


def pick_port(port_range: str | None, avoid: frozenset[int] = frozenset()) -> int:
    """A port that was free a moment ago, from the range if given, not one in ``avoid``."""
    if port_range:
        low, _, high = port_range.partition("-")
        lo, hi = int(low), int(high or low)
        candidates = [p for p in range(lo, hi + 1) if p not in avoid]
        random.shuffle(candidates)
        for port in candidates:
            with socket.socket() as s:
                try:
                    s.bind(("", port))
                except OSError:
                    continue
                return port
        raise SystemExit(f"wasmspawner-singleuser: no free port in WASMSPAWNER_PORT_RANGE={port_range}")
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise SystemExit("wasmspawner-singleuser: the system keeps giving ports the host refused")


class PortTaken(Exception):
    """The host answered 409: another spawn on this node already uses the port."""


# 409 codes that mean "that port is taken on this host" (any other 409, e.g.
# callback_not_accepted, is final).
PORT_TAKEN_CODES = {"port_in_use", "port_taken", "port_conflict"}


def report(url: str, token: str, port: int, host: str | None, retries: int = RETRIES) -> dict:
    """POSTs the port to the host, retrying transient failures with backoff;
    returns the host's answer (JSON object, possibly empty).

    A 409 for the port raises PortTaken; any other 4xx answer (wrong token,
    spawn no longer waiting) is final.
    """
    body = json.dumps({"port": port, **({"host": host} if host else {})}).encode()
    delay = 0.5
    for attempt in range(1, retries + 1):
        req = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                if 200 <= resp.status < 300:
                    raw = resp.read()
                    try:
                        answer = json.loads(raw) if raw else {}
                    except ValueError:
                        answer = {}
                    return answer if isinstance(answer, dict) else {}
        except urllib.error.HTTPError as e:
            text = e.read()[:500]
            if e.code == 409:
                try:
                    code = json.loads(text).get("error", "")
                except (ValueError, AttributeError):
                    code = ""
                if code in PORT_TAKEN_CODES:
                    raise PortTaken(code) from None
            if 400 <= e.code < 500:
                raise SystemExit(f"wasmspawner-singleuser: the host refused the port report ({e.code}): {text!r}")
        except (urllib.error.URLError, OSError) as e:
            print(f"wasmspawner-singleuser: report attempt {attempt} failed: {e}", file=sys.stderr)
        time.sleep(delay)
        delay = min(delay * 2, 10)
    raise SystemExit(f"wasmspawner-singleuser: could not report the port to {url} after {retries} attempts")


def report_free_port(url: str, token: str, port_range: str | None, host: str | None, attempts: int = 10) -> tuple[int, dict]:
    """Picks a port and reports it; on the host's 409 (taken by another spawn
    on this node), picks another and reports again."""
    refused: set[int] = set()
    for _ in range(attempts):
        port = pick_port(port_range, frozenset(refused))
        try:
            return port, report(url, token, port, host)
        except PortTaken:
            print(f"wasmspawner-singleuser: the host says port {port} is taken on this node; trying another", file=sys.stderr)
            refused.add(port)
    raise SystemExit(f"wasmspawner-singleuser: the host refused {attempts} ports as taken: {sorted(refused)}")


def end_time(env: dict, answer: dict, now: float | None = None) -> int | None:
    """The job's end (Unix seconds) when known: the host's answer
    (``end_time``), else what the host or the scheduler put in the job's
    environment (``WASMSPAWNER_END_TIME``, Slurm's ``SLURM_JOB_END_TIME``,
    PBS/Torque's ``PBS_WALLTIME`` seconds from the job's start ≈ now)."""
    now = time.time() if now is None else now
    for v in (answer.get("end_time"), env.get("WASMSPAWNER_END_TIME"), env.get("SLURM_JOB_END_TIME")):
        try:
            t = int(float(v))
        except (TypeError, ValueError):
            continue
        if t > 0:
            return t
    try:
        walltime = int(env.get("PBS_WALLTIME", ""))
        if walltime > 0:
            return int(now) + walltime
    except ValueError:
        pass
    return None


def with_port(service_url: str, port: int) -> str:
    """``JUPYTERHUB_SERVICE_URL`` with its port replaced."""
    u = urllib.parse.urlsplit(service_url)
    host = u.hostname or "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    return urllib.parse.urlunsplit((u.scheme or "http", f"{host}:{port}", u.path, u.query, u.fragment))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv) or ["jupyterhub-singleuser"]
    env = os.environ
    url = env.pop("WASMSPAWNER_CALLBACK_URL", None)
    token = env.pop("WASMSPAWNER_CALLBACK_TOKEN", None)
    if not url or not token:
        raise SystemExit("wasmspawner-singleuser: WASMSPAWNER_CALLBACK_URL and WASMSPAWNER_CALLBACK_TOKEN must be set (by the Wasmspawner host)")
    host = env.get("WASMSPAWNER_REPORT_HOST") or None
    port, answer = report_free_port(url, token, env.get("WASMSPAWNER_PORT_RANGE"), host)
    if "JUPYTERHUB_SERVICE_URL" in env:
        env["JUPYTERHUB_SERVICE_URL"] = with_port(env["JUPYTERHUB_SERVICE_URL"], port)
    env["WASMSPAWNER_PORT"] = str(port)
    end = end_time(env, answer)
    if end is not None:
        # The server (and the user's code) can read when the job ends.
        env["WASMSPAWNER_END_TIME"] = str(end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
