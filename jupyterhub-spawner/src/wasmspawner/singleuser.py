"""``wasmspawner-singleuser``: run inside the batch job, before the server.

It picks a free port (or one from ``WASMSPAWNER_PORT_RANGE``, e.g.
``9000-9100``), reports it to the host's callback URL with the per-spawn
token (retrying with backoff), puts the port into ``JUPYTERHUB_SERVICE_URL``,
removes the callback secrets from the environment, and execs the server
command given as its arguments (default ``jupyterhub-singleuser``).

Environment it reads (set by the host):
  WASMSPAWNER_CALLBACK_URL    where to POST {"port": N, "host": H}
  WASMSPAWNER_CALLBACK_TOKEN  the per-spawn bearer token (never in argv)
  WASMSPAWNER_PORT_RANGE      optional "LOW-HIGH"
  WASMSPAWNER_REPORT_HOST     optional host name to report; by default none is
                              sent and the host uses the scheduler's execution
                              host (or the caller's address)

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


def pick_port(port_range: str | None) -> int:
    """A port that was free a moment ago, from the range if given."""
    if port_range:
        low, _, high = port_range.partition("-")
        lo, hi = int(low), int(high or low)
        candidates = list(range(lo, hi + 1))
        random.shuffle(candidates)
        for port in candidates:
            with socket.socket() as s:
                try:
                    s.bind(("", port))
                except OSError:
                    continue
                return port
        raise SystemExit(f"wasmspawner-singleuser: no free port in WASMSPAWNER_PORT_RANGE={port_range}")
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def report(url: str, token: str, port: int, host: str | None, retries: int = RETRIES) -> None:
    """POSTs the port to the host, retrying transient failures with backoff.

    A 4xx answer (wrong token, spawn no longer waiting) is final.
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
                    return
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500:
                raise SystemExit(f"wasmspawner-singleuser: the host refused the port report ({e.code}): {e.read()[:500]!r}")
        except (urllib.error.URLError, OSError) as e:
            print(f"wasmspawner-singleuser: report attempt {attempt} failed: {e}", file=sys.stderr)
        time.sleep(delay)
        delay = min(delay * 2, 10)
    raise SystemExit(f"wasmspawner-singleuser: could not report the port to {url} after {retries} attempts")


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
    port = pick_port(env.get("WASMSPAWNER_PORT_RANGE"))
    host = env.get("WASMSPAWNER_REPORT_HOST") or None
    if "JUPYTERHUB_SERVICE_URL" in env:
        env["JUPYTERHUB_SERVICE_URL"] = with_port(env["JUPYTERHUB_SERVICE_URL"], port)
    env["WASMSPAWNER_PORT"] = str(port)
    report(url, token, port, host)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
