"""``wasmspawner-singleuser``: run inside the batch job, before the server.

It picks a free port (or one from ``WASMSPAWNER_PORT_RANGE``, e.g.
``9000-9100``), reports it to the host's callback URL with the per-spawn
token (retrying with backoff), puts the port into ``JUPYTERHUB_SERVICE_URL``,
removes the callback secrets from the environment, and execs the server
command given as its arguments (default ``jupyterhub-singleuser``): the
server keeps the wrapper's process id, and no interpreter stays behind.

If the host answers 409 because another spawn on this node already uses the
port, it picks another and reports again. It exports ``WASMSPAWNER_END_TIME``
(Unix seconds) to the server when the job's end is known.

**The walltime notice.** When the end is known, a small watcher process
(forked before the exec, so a child of the server; it only sleeps) tells the
server ``--walltime-notice`` / ``WASMSPAWNER_WALLTIME_NOTICE`` seconds
(default 300) before the end: a warning line on the server's log, the notice file
(``WASMSPAWNER_WALLTIME_FILE``, exported to the server; by default
``~/.local/share/wasmspawner/walltime.json``, ``walltime-NAME.json`` for a
named server), and, only if the site sets ``WASMSPAWNER_WALLTIME_SIGNAL``
(e.g. ``SIGUSR1``), that signal to the server. ``WASMSPAWNER_WALLTIME_STOP``
(seconds, off by default) sends the server SIGTERM that long before the end,
so it shuts down on its own terms rather than at the scheduler's kill. A
job shorter than a lead gets the notice (or stop) at 90 % of its remaining
time instead. The watcher ends with the server.

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
And set by the site, as the wrapper's options before the server command
(``c.WasmSpawner.wrapper = ["wasmspawner-singleuser", "--walltime-notice=600",
"--walltime-signal=SIGUSR1"]``) or in the job's environment (the host's
``[instances.NAME.grants] env``, which sbatch passes on; the hub may not
set ``WASMSPAWNER_*`` variables); an option wins over the variable:
  --walltime-notice, WASMSPAWNER_WALLTIME_NOTICE
                              seconds before the end for the notice (default
                              300; 0 or "off": none)
  --walltime-signal, WASMSPAWNER_WALLTIME_SIGNAL
                              a signal for the server at the notice (none by
                              default: SIGUSR1/2 terminate a process that does
                              not handle them)
  --walltime-stop, WASMSPAWNER_WALLTIME_STOP
                              seconds before the end to SIGTERM the server
                              (default: off; the scheduler's own SIGTERM at
                              the end)
  --walltime-file, WASMSPAWNER_WALLTIME_FILE
                              where the notice file goes

Only the standard library is used, so it runs in any Python 3 of a job.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

RETRIES = 8


def pick_port(port_range: str | None, avoid: frozenset[int] = frozenset()) -> int:
    """A port that was free a moment ago, from the range if given, not one in ``avoid``."""
    if port_range:
        low, _, high = port_range.partition("-")
        lo, hi = int(low), int(high or low)
        candidates = [p for p in range(lo, hi + 1) if p not in avoid]
        import random

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


def post_json(url: str, token: str, body: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """POSTs ``body`` with the bearer token: (status, answer body). Plain
    ``http://`` over a socket (urllib would cost the job's start a few
    tens of milliseconds of imports); ``https://`` through urllib. Raises
    OSError when the host cannot be reached."""
    if not url.startswith("http://"):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            url, data=body, method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
    hostport, _, path = url[len("http://"):].partition("/")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 80
    elif ":" in hostport:
        host, _, p = hostport.rpartition(":")
        port = int(p)
    else:
        host, port = hostport, 80
    head = (
        f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(head.encode() + body)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    header, sep, rest = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer: {raw[:80]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out, data = [], rest
        while data:
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out.append(data[:size])
            data = data[size + 2:]
        rest = b"".join(out)
    elif headers.get("content-length", "").isdigit():
        rest = rest[: int(headers["content-length"])]
    return int(parts[1]), rest


def report(url: str, token: str, port: int, host: str | None, retries: int = RETRIES) -> dict:
    """POSTs the port to the host, retrying transient failures with backoff;
    returns the host's answer (JSON object, possibly empty).

    A 409 for the port raises PortTaken; any other 4xx answer (wrong token,
    spawn no longer waiting) is final.
    """
    body = json.dumps({"port": port, **({"host": host} if host else {})}).encode()
    delay = 0.5
    for attempt in range(1, retries + 1):
        try:
            status, raw = post_json(url, token, body)
        except (OSError, ValueError) as e:
            print(f"wasmspawner-singleuser: report attempt {attempt} failed: {e}", file=sys.stderr)
        else:
            if 200 <= status < 300:
                try:
                    answer = json.loads(raw) if raw else {}
                except ValueError:
                    answer = {}
                return answer if isinstance(answer, dict) else {}
            text = raw[:500]
            if status == 409:
                try:
                    code = json.loads(text).get("error", "")
                except (ValueError, AttributeError):
                    code = ""
                if code in PORT_TAKEN_CODES:
                    raise PortTaken(code) from None
            if 400 <= status < 500:
                raise SystemExit(f"wasmspawner-singleuser: the host refused the port report ({status}): {text!r}")
            print(f"wasmspawner-singleuser: report attempt {attempt}: the host answered {status}; retrying", file=sys.stderr)
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


NOTICE_DEFAULT = 300.0
# A lead longer than the job has left is cut to this share of what is left:
# a notice at the server's first second would come before anyone looks.
SHORT_JOB_SHARE = 0.9


def log(level: str, message: str) -> None:
    """One line on the server's log (stderr), in the server's own format."""
    t = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    print(f"[{level} {stamp} wasmspawner-singleuser] {message}", file=sys.stderr, flush=True)


def seconds_option(env: dict, name: str, default: float | None) -> float | None:
    """A number of seconds from the environment: ``default`` when unset or
    unreadable (said on the log), None for 0, "off", "no" or "none"."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("0", "off", "no", "none", "false"):
        return None
    try:
        v = float(raw)
    except ValueError:
        log("W", f"{name}={raw!r} is not a number of seconds; using {default}")
        return default
    return v if v > 0 else None


def signal_option(env: dict, name: str = "WASMSPAWNER_WALLTIME_SIGNAL"):
    """The signal a site chose (``SIGUSR1``, ``USR1`` or a number), or None."""
    raw = (env.get(name) or "").strip().upper()
    if not raw or raw in ("0", "OFF", "NO", "NONE"):
        return None
    import signal

    try:
        return signal.Signals(int(raw)) if raw.isdigit() else signal.Signals[raw if raw.startswith("SIG") else "SIG" + raw]
    except (KeyError, ValueError):
        log("W", f"{name}={raw!r} is not a signal; no signal is sent at the walltime notice")
        return None


def clamp_lead(lead: float, remaining: float) -> float:
    """``lead`` seconds before the end, or less for a job shorter than that."""
    return min(lead, SHORT_JOB_SHARE * remaining)


def walltime_plan(end: float, now: float, notice: float | None, stop: float | None) -> tuple[float | None, float | None]:
    """(when the notice is due, when the server is stopped), Unix seconds;
    None for each that is off or too late. The notice comes no later than
    the stop."""
    remaining = end - now
    if remaining <= 0:
        return None, None
    stop_at = end - clamp_lead(stop, remaining) if stop else None
    notice_at = end - clamp_lead(notice, remaining) if notice else None
    if notice_at is not None and stop_at is not None:
        notice_at = min(notice_at, stop_at)
    return notice_at, stop_at


def walltime_file(env: dict) -> str:
    """Where the notice goes: ``WASMSPAWNER_WALLTIME_FILE``, else
    ``$XDG_DATA_HOME`` (``~/.local/share``) ``/wasmspawner/walltime.json``,
    ``walltime-NAME.json`` for a named server."""
    if env.get("WASMSPAWNER_WALLTIME_FILE"):
        return env["WASMSPAWNER_WALLTIME_FILE"]
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    name = env.get("JUPYTERHUB_SERVER_NAME") or ""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return os.path.join(base, "wasmspawner", f"walltime-{safe}.json" if safe else "walltime.json")


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def notice_text(end: float, now: float) -> str:
    left = max(0, int(round(end - now)))
    m, s = divmod(left, 60)
    h, m = divmod(m, 60)
    left_text = f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")
    return f"This server's job ends at {utc(end)} (in {left_text}): save your work; the server stops then."


def write_notice(path: str, record: dict) -> None:
    """Writes the notice file whole (a reader never sees half of it)."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def server_gone_waiter(pid: int):
    """A function ``wait(seconds) -> True when the server exited`` (a pidfd
    where the kernel has them, else the parent's id checked every 2 s)."""
    import select

    fd = None
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass

    def wait(timeout: float) -> bool:
        if os.getppid() != pid:
            return True
        if fd is not None:
            r, _, _ = select.select([fd], [], [], max(0.0, timeout))
            return bool(r)
        deadline = time.monotonic() + timeout
        while True:
            if os.getppid() != pid:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 2.0))

    return wait


def watch(server_pid: int, end: float, notice_at: float | None, stop_at: float | None, sig, path: str,
          wait, now=time.time, kill=os.kill, job_id: str | None = None) -> str:
    """The watcher: sleeps until the notice (log line, notice file, the
    site's signal) and the stop (SIGTERM), each only while the server runs.
    ``wait(seconds)`` returns True once the server is gone. Returns what
    ended it: "gone" or "done"."""
    events = sorted((t, what) for t, what in ((notice_at, "notice"), (stop_at, "stop")) if t is not None)
    for t, what in events:
        while True:
            left = t - now()
            if left <= 0:
                break
            # At most a minute at a time: a clock that jumps is seen.
            if wait(min(left, 60.0)):
                return "gone"
        if what == "notice":
            message = notice_text(end, now())
            record = {
                "end_time": int(end),
                "end_time_utc": utc(end),
                "seconds_left": max(0, int(round(end - now()))),
                "notice_time": int(now()),
                "stop_time": int(stop_at) if stop_at is not None else None,
                "job_id": job_id,
                "server_pid": server_pid,
                "message": message,
            }
            try:
                write_notice(path, record)
                where = f"notice file {path}"
            except OSError as e:
                where = f"the notice file {path} could not be written: {e}"
            log("W", f"Walltime notice: {message} ({where})")
            if sig is not None:
                try:
                    kill(server_pid, sig)
                    log("I", f"sent {sig.name} to the server (pid {server_pid}) for the walltime notice")
                except OSError as e:
                    log("W", f"could not send {sig.name} to the server: {e}")
        else:
            log("W", f"The job ends at {utc(end)}: stopping the server now (SIGTERM), before the scheduler's kill")
            try:
                import signal

                kill(server_pid, signal.SIGTERM)
            except OSError as e:
                log("W", f"could not stop the server: {e}")
    # Nothing more to do: wait for the server, so this process is never a
    # zombie of it, then take the notice away.
    while not wait(3600.0):
        pass
    return "done"


def start_watcher(env: dict, end: float | None) -> None:
    """Forks the walltime watcher when there is something to watch. The
    parent returns at once (to exec the server, which keeps this pid)."""
    path = walltime_file(env)
    env["WASMSPAWNER_WALLTIME_FILE"] = path
    # A notice from an earlier server of the same name is not this one's.
    remove_quietly(path)
    if end is None:
        log("I", "the job's end is not known (no time limit?): no walltime notice")
        return
    notice = seconds_option(env, "WASMSPAWNER_WALLTIME_NOTICE", NOTICE_DEFAULT)
    stop = seconds_option(env, "WASMSPAWNER_WALLTIME_STOP", None)
    sig = signal_option(env)
    now = time.time()
    notice_at, stop_at = walltime_plan(end, now, notice, stop)
    plan = [f"the job ends at {utc(end)}"]
    if notice_at is not None:
        plan.append(f"walltime notice at {utc(notice_at)} ({int(round(end - notice_at))} s before)"
                    + (f" with {sig.name}" if sig is not None else ""))
    if stop_at is not None:
        plan.append(f"the server is stopped at {utc(stop_at)}")
    log("I", "; ".join(plan))
    if notice_at is None and stop_at is None:
        return
    server_pid = os.getpid()
    job_id = env.get("SLURM_JOB_ID") or env.get("PBS_JOBID") or env.get("LSB_JOBID") or env.get("JOB_ID") or None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        child = os.fork()
    except OSError as e:
        log("W", f"no walltime watcher (fork failed: {e})")
        return
    if child:
        return
    # The watcher: never returns into main() (which would exec a second server).
    code = 0
    try:
        import signal

        try:
            # `top` and `ps -o comm` tell it from the server.
            with open("/proc/self/comm", "w") as f:
                f.write("ws-walltime")
        except OSError:
            pass
        signal.signal(signal.SIGTERM, lambda *_: (remove_quietly(path), os._exit(0)))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        watch(server_pid, end, notice_at, stop_at, sig, path, server_gone_waiter(server_pid), job_id=job_id)
        remove_quietly(path)
    except BaseException as e:  # noqa: BLE001 - the watcher must never get back to main()
        try:
            log("W", f"the walltime watcher stopped: {e!r}")
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    finally:
        os._exit(code)


def with_port(service_url: str, port: int) -> str:
    """``JUPYTERHUB_SERVICE_URL`` with its port replaced."""
    import urllib.parse

    u = urllib.parse.urlsplit(service_url)
    host = u.hostname or "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    return urllib.parse.urlunsplit((u.scheme or "http", f"{host}:{port}", u.path, u.query, u.fragment))


# The wrapper's own options (before the server command, e.g. in
# c.WasmSpawner.wrapper), each the same as its environment variable.
OPTIONS = {
    "--walltime-notice": "WASMSPAWNER_WALLTIME_NOTICE",
    "--walltime-signal": "WASMSPAWNER_WALLTIME_SIGNAL",
    "--walltime-stop": "WASMSPAWNER_WALLTIME_STOP",
    "--walltime-file": "WASMSPAWNER_WALLTIME_FILE",
}


def split_options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The wrapper's options (``--walltime-notice=300`` or
    ``--walltime-notice 300``; ``--`` ends them) as environment names, and
    the server command after them."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i].startswith("--"):
        a = args[i]
        if a == "--":
            i += 1
            break
        name, eq, value = a.partition("=")
        if name not in OPTIONS:
            raise SystemExit(f"wasmspawner-singleuser: unknown option {name} (known: {', '.join(OPTIONS)}); the server command comes after them")
        if not eq:
            if i + 1 >= len(args):
                raise SystemExit(f"wasmspawner-singleuser: {name} needs a value")
            i += 1
            value = args[i]
        opts[OPTIONS[name]] = value
        i += 1
    return opts, args[i:]


def process_started() -> float | None:
    """When this process started (Unix seconds, to 10 ms), from /proc."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> None:
    t_main = time.time()
    opts, args = split_options(list(sys.argv[1:] if argv is None else argv))
    args = args or ["jupyterhub-singleuser"]
    env = os.environ
    # The hub's options (its wrapper command) over the job's environment.
    env.update(opts)
    url = env.pop("WASMSPAWNER_CALLBACK_URL", None)
    token = env.pop("WASMSPAWNER_CALLBACK_TOKEN", None)
    if not url or not token:
        raise SystemExit("wasmspawner-singleuser: WASMSPAWNER_CALLBACK_URL and WASMSPAWNER_CALLBACK_TOKEN must be set (by the Wasmspawner host)")
    host = env.get("WASMSPAWNER_REPORT_HOST") or None
    port, answer = report_free_port(url, token, env.get("WASMSPAWNER_PORT_RANGE"), host)
    t_reported = time.time()
    started = process_started()
    since = f", {(t_reported - started) * 1000:.0f} ms after the wrapper's start" if started else ""
    log("I", f"port {port} reported to the host (answered in {(t_reported - t_main) * 1000:.0f} ms{since}); starting {args[0]}")
    if "JUPYTERHUB_SERVICE_URL" in env:
        env["JUPYTERHUB_SERVICE_URL"] = with_port(env["JUPYTERHUB_SERVICE_URL"], port)
    env["WASMSPAWNER_PORT"] = str(port)
    end = end_time(env, answer)
    if end is not None:
        # The server (and the user's code) can read when the job ends.
        env["WASMSPAWNER_END_TIME"] = str(end)
    start_watcher(env, end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
