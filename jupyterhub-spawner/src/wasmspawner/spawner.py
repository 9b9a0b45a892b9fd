"""The hub-side spawner: JupyterHub asks, the Wasmspawner host does.

Every decision about jobs (validation, submission, polling, recovery) is the
host's; this class translates JupyterHub's Spawner calls into the host's
HTTP API (``/v1``) and relays its events to the hub's progress page.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any, AsyncIterator
from urllib.parse import quote, urlencode, urlsplit

from jupyterhub.spawner import Spawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Dict, Float, List, Unicode, default

from . import form

# Fields of the hub's spawn page that are not the plugin's options.
HUB_FORM_FIELDS = {"_xsrf"}

# Longest time between two reads of a starting spawn's record (the host's
# event stream says each change at once; this is for a stream that broke).
POLL_MAX = 1.0

# Host states that mean "the job may still be alive".
LIVE_STATES = {"validating", "submitting", "queued", "running", "ready", "stopping"}


class SpawnException(Exception):
    """A spawn failure with a message JupyterHub shows to the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.jupyterhub_message = message


class InvalidOptions(web.HTTPError):
    """The host refused the options: a 400 the hub's API returns as is, with
    the fields named, and a message the spawn page shows."""

    def __init__(self, message: str):
        # The hub's API answers with the HTTPError's log message.
        super().__init__(400, message.replace("%", "%%"))
        self.jupyterhub_message = message


class WasmSpawner(Spawner):
    """Starts single-user servers through a Wasmspawner host."""

    host_url = Unicode(
        "http://127.0.0.1:8765",
        config=True,
        help="Base URL of the Wasmspawner host's HTTP API.",
    )
    api_token_file = Unicode(
        "",
        config=True,
        help="File holding the host's API token (mode 600). Preferred over api_token_env.",
    )
    api_token_env = Unicode(
        "WASMSPAWNER_TOKEN",
        config=True,
        help="Environment variable holding the host's API token, when no file is set.",
    )
    instance = Unicode(
        "",
        config=True,
        help="The plugin instance to use (a key of [instances] in the host's config).",
    )
    instances = List(
        Unicode(),
        config=True,
        help="Several plugin instances the user may choose from in the form; the first is the default.",
    )
    request_timeout = Float(30, config=True, help="Timeout of one request to the host, in seconds.")
    wrapper = List(
        Unicode(),
        default_value=["wasmspawner-singleuser"],
        config=True,
        help="Command the job runs before the server: reports the port to the host. Empty to disable.",
    )

    remember_options = List(
        Unicode(),
        config=True,
        help="""Fields whose last value a user's form starts with next time, per server and
        instance (e.g. ["profile", "partition", "runtime"], or ["*"] for every field).
        Off by default. The values are the options JupyterHub keeps for each server
        in its database (Spawner.user_options); nothing else is stored.""",
    )

    spawn_id = Unicode("", help="The host's id of the current spawn (persisted in the hub's state).")

    job_info = Dict(help="The job's id, end time and time limit as the host last said (in the hub's state).")

    _resume_error: Exception | None = None
    _stop_without_waiting = False

    @default("ip")
    def _default_ip(self):
        # The server runs on a compute node: it listens on every interface
        # unless the site says otherwise.
        return "0.0.0.0"

    @default("options_form")
    def _default_options_form(self):
        return _fetch_options_form

    # ----- the host's API -----

    def _token(self) -> str:
        if self.api_token_file:
            with open(self.api_token_file) as f:
                return f.read().strip()
        token = os.environ.get(self.api_token_env, "").strip()
        if not token:
            raise SpawnException(
                f"No Wasmspawner API token: set c.WasmSpawner.api_token_file or ${self.api_token_env}"
            )
        return token

    async def _api(self, method: str, path: str, body: Any = None, timeout: float | None = None, ok=(200, 201, 202, 204)):
        req = HTTPRequest(
            self.host_url.rstrip("/") + path,
            method=method,
            headers={"Authorization": f"Bearer {self._token()}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            request_timeout=timeout or self.request_timeout,
            allow_nonstandard_methods=True,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except Exception as e:  # connection refused, timeout
            raise HostUnavailable(f"the Wasmspawner host at {self.host_url} did not answer: {e}") from e
        data = json.loads(resp.body) if resp.body else {}
        if resp.code not in ok:
            raise HostError(resp.code, data)
        return resp.code, data

    def _instance_for(self, options: dict[str, list[str]]) -> str:
        chosen = (options.pop("__instance", None) or [None])[0]
        allowed = self.instances or ([self.instance] if self.instance else [])
        if not allowed:
            raise SpawnException("c.WasmSpawner.instance (or instances) is not set")
        if chosen:
            if chosen not in allowed:
                raise SpawnException(f"Plugin instance {chosen!r} is not offered; choose one of {', '.join(allowed)}")
            return chosen
        return allowed[0]

    def _remembered_choices(self) -> tuple[str | None, dict[str, str]]:
        """(instance, {field: value}) of this server's last start, limited to
        the fields in ``remember_options``."""
        if not self.remember_options:
            return None, {}
        orm = getattr(self, "orm_spawner", None)
        last = dict(getattr(orm, "user_options", None) or {})
        instance = last.pop("__instance", None)
        if isinstance(instance, list):
            instance = instance[0] if instance else None
        keep = set(self.remember_options)
        values = {}
        for k, v in last.items():
            if "*" in keep or k in keep:
                v = v[0] if isinstance(v, list) and v else v
                if not isinstance(v, list):
                    values[k] = _as_form_string(v)
        return instance, values

    # ----- Spawner API -----

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, list[str]]:
        # Raw, as the form sent it: the host checks types, ranges and choices.
        # `_xsrf` is the hub's own (a form may post it in the body).
        return {k: [str(v) for v in vs] for k, vs in formdata.items() if k not in HUB_FORM_FIELDS}

    def _raw_options(self) -> dict[str, list[str]]:
        raw: dict[str, list[str]] = {}
        for k, v in (self.user_options or {}).items():
            if isinstance(v, list):
                raw[k] = [_as_form_string(x) for x in v]
            else:
                raw[k] = [_as_form_string(v)]
        return raw

    async def start(self):
        options = self._raw_options()
        instance = self._instance_for(options)
        cmd = list(self.wrapper) + self.cmd + self.get_args()
        body = {
            "user": {
                "name": self.user.name,
                "groups": [g.name for g in getattr(self.user, "groups", [])],
                "admin": bool(getattr(self.user, "admin", False)),
            },
            "server_name": self.name or "",
            "instance": instance,
            "request_id": uuid.uuid4().hex,
            "options": options,
            "env": self.get_env(),
            "cmd": cmd,
        }
        try:
            _, spawn = await self._api("POST", "/v1/spawns", body)
        except HostError as e:
            if e.code == 409 and e.data.get("error") == "server_active" and e.data.get("spawn_id"):
                # The host still runs a spawn for this server (the hub lost
                # track of it, e.g. a restart while it queued): follow it.
                spawn = {"id": e.data["spawn_id"]}
                self.log.info("adopting Wasmspawner spawn %s for %s", spawn["id"], self._log_name)
            elif e.code == 422:
                if _from_spawn_page(self):
                    _record_refusal(self.user.name, instance, options, e.data.get("fields") or [])
                raise InvalidOptions(e.user_message()) from e
            else:
                raise SpawnException(e.user_message()) from e
        self.spawn_id = spawn["id"]
        self._save_state_now()
        self.log.info("Wasmspawner spawn %s for %s (instance %s)", self.spawn_id, self._log_name, instance)
        url = await self._wait_ready()
        await self._wait_listening(url, self.spawn_id)
        return url

    async def _wait_listening(self, url: str, spawn_id: str) -> None:
        """Waits (50 ms steps, at most ``http_timeout``) until the server
        accepts connections at ``url``, so the hub's own check (which backs
        off up to a second between tries) succeeds at its first try. The
        wrapper reports the port before the server has started listening."""
        u = urlsplit(url)
        host, port = u.hostname, u.port
        if not host or not port:
            return
        deadline = time.monotonic() + float(self.http_timeout)
        next_check = time.monotonic() + 1
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1)
            except (OSError, asyncio.TimeoutError):
                if time.monotonic() >= next_check:
                    # A job that dies while its server starts fails the
                    # spawn now, with the host's reason.
                    next_check = time.monotonic() + 1
                    await self._raise_if_over(spawn_id)
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    async def _raise_if_over(self, spawn_id: str) -> None:
        try:
            _, s = await self._api("GET", f"/v1/spawns/{quote(spawn_id)}")
        except (HostUnavailable, HostError):
            return
        if s.get("state") in ("failed", "stopped", "stopping"):
            raise SpawnException(s.get("reason") or f"the job is {s.get('state')}")

    def _save_state_now(self):
        """Persists the spawn id at once, so a hub restart while the job
        queues still knows it."""
        orm = getattr(self, "orm_spawner", None)
        if orm is None or self.db is None:
            return
        try:
            orm.state = self.get_state()
            self.db.commit()
        except Exception as e:  # best effort; the hub saves state after start too
            self.log.warning("could not save the spawn id early: %s", e)

    def _events_request(self, spawn_id: str, on_chunk) -> HTTPRequest:
        return HTTPRequest(
            self.host_url.rstrip("/") + f"/v1/spawns/{quote(spawn_id)}/events",
            headers={"Authorization": f"Bearer {self._token()}", "Accept": "text/event-stream"},
            streaming_callback=on_chunk,
            request_timeout=0,
        )

    async def _stream_events(self, spawn_id: str, on_chunk) -> None:
        """Reads the spawn's event stream until it ends. Its own HTTP client:
        a stream holds its connection for minutes, and the shared client's
        ten connections are for the short requests of every spawn."""
        client = AsyncHTTPClient(force_instance=True)
        try:
            await client.fetch(self._events_request(spawn_id, on_chunk), raise_error=False)
        finally:
            client.close()

    async def _follow_events(self, spawn_id: str, changed: asyncio.Event) -> None:
        """Sets ``changed`` at each of the host's events for the spawn (the
        stored ones first), so the record is read again at once."""

        def on_chunk(chunk: bytes):
            if b"data:" in chunk:
                changed.set()

        try:
            await self._stream_events(spawn_id, on_chunk)
        except Exception as e:  # the poll goes on without it
            self.log.debug("event stream of %s: %s", spawn_id, e)

    async def _follow(self, spawn_id: str, read, timeout: float | None = None):
        """Calls ``read()`` (one look at the spawn's record) at each of the
        host's events for the spawn (its event stream) and at least every
        ``POLL_MAX`` seconds whatever the stream does, until it returns
        something other than None, which is returned; None after
        ``timeout`` seconds."""
        changed = asyncio.Event()
        follower = asyncio.ensure_future(self._follow_events(spawn_id, changed))
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        try:
            while True:
                # Cleared before the read: an event during it reads again.
                changed.clear()
                result = await read()
                if result is not None:
                    return result
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                try:
                    await asyncio.wait_for(changed.wait(), timeout=delay if left is None else min(delay, left))
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 1.5, POLL_MAX)
        finally:
            follower.cancel()

    async def _wait_ready(self, spawn_id: str | None = None) -> str:
        """Follows the spawn until it is ready (→ URL) or failed (→ error),
        at the host's events (the port reported, ready, failed)."""
        spawn_id = spawn_id or self.spawn_id

        async def read():
            try:
                _, s = await self._api("GET", f"/v1/spawns/{quote(spawn_id)}")
            except HostUnavailable as e:
                self.log.warning("%s; retrying", e)
                return None
            except HostError as e:
                if e.code == 404:
                    raise SpawnException(f"the Wasmspawner host no longer knows spawn {spawn_id}") from e
                self.log.warning("%s; retrying", e)
                return None
            state = s.get("state")
            self._note_record(s)
            if state == "ready":
                return self._url_of(s)
            if state in ("failed", "stopped"):
                raise SpawnException(s.get("reason") or f"the job {state}")
            return None

        return await self._follow(spawn_id, read)

    @staticmethod
    def _url_of(s: dict) -> str:
        return f"http://{_url_host(s['host'])}:{s['port']}"

    # ----- a hub restart during a spawn -----
    #
    # At start-up the hub checks every spawner that has a server row
    # (app.py `init_spawners` → `check_spawner`): `poll()`; if None,
    # `get_url()` and a wait for the server at that URL (`http_timeout`);
    # else the server is stopped. A server row exists from the moment a spawn
    # begins, so a job still queued or starting at the restart is checked
    # too, with the URL of a server that never was (no ip, a random port).
    #
    # So during that check `poll()` follows a spawn the host has not made
    # ready yet, as a spawn: `pending` is "spawn" (the spawn page shows the
    # host's progress events), and `poll()` returns None once the host says
    # ready; `get_url()` then answers the host's host:port, so the hub's wait
    # succeeds at once. A spawn the host fails or stops ends the check (the
    # spawn page says why). The hub routes servers restored at start-up only
    # after every check is done, so this spawner adds its own route once its
    # check passed: a second job still queued does not delay the first.

    async def _poll_at_hub_start(self, spawn_id: str):
        try:
            code, s = await self._api("GET", f"/v1/spawns/{quote(spawn_id)}", ok=(200, 404))
        except (HostUnavailable, HostError) as e:
            # Unknown is not done: the hub then waits for the server at the
            # URL it has, which is right for a server that was ready.
            self.log.warning("start-up check of %s: %s; assuming still running", spawn_id, e)
            return None
        if code == 404:
            return 0
        state = s.get("state")
        if state == "ready":
            return None
        if state not in LIVE_STATES:
            return _exit_status(s)
        self.log.info(
            "%s: the hub restarted while spawn %s was %s (job %s); following it",
            self._log_name, spawn_id, state, s.get("job_id") or "not yet submitted",
        )
        self._resume_error = None
        self._spawn_pending = True
        self._spawn_future = asyncio.ensure_future(self._finish_resumed_spawn())
        ready = asyncio.ensure_future(self._wait_ready(spawn_id))
        await asyncio.wait({ready, self._spawn_future}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            # The user stopped the pending server (the hub cancelled its
            # spawn future and stops it a second later): end the check now
            # as "not running", so the hub's own stop runs at once and
            # cancels the job; that stop does not wait for the scheduler.
            ready.cancel()
            self._stop_without_waiting = True
            return 0
        try:
            await self._wait_listening(ready.result(), spawn_id)
        except SpawnException as e:
            self._resume_error = e
            # A stop the user asked for meanwhile finishes first, so the
            # hub does not stop the server a second time.
            while self._stop_pending:
                await asyncio.sleep(0.1)
            return 1
        return None

    async def _finish_resumed_spawn(self):
        """The spawn future of a spawn resumed at hub start-up: done when the
        hub's check is, with the route added; an error says why it failed."""
        try:
            while self._check_pending:
                await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            # The user stopped the server from the spawn page or the API.
            # Done with an error (not cancelled): the hub keeps the spawner
            # for its stop that follows, and the spawn page says why.
            raise SpawnException("stopped before the server started") from None
        finally:
            self._spawn_pending = False
        if self._resume_error is not None:
            raise self._resume_error
        if self.server is None:
            raise SpawnException("the server did not answer after the hub restarted")
        proxy = (getattr(self.user, "settings", None) or {}).get("proxy")
        if proxy is not None:
            await proxy.add_user(self.user, self.name)

    async def get_url(self):
        """Where the host says the server is (the hub's record can be stale:
        the hub restarted before the server was ready)."""
        known = self.server.url if self.server else ""
        if not self.spawn_id:
            return known
        try:
            _, s = await self._api("GET", f"/v1/spawns/{quote(self.spawn_id)}")
        except (HostUnavailable, HostError) as e:
            self.log.warning("get_url of %s: %s; keeping %s", self.spawn_id, e, known)
            return known
        if s.get("state") != "ready" or not s.get("host") or not s.get("port"):
            return known
        return self._url_of(s) + (self.server.base_url if self.server else "/")

    async def poll(self):
        if not self.spawn_id:
            return 0
        if self._check_pending and not self._spawn_pending:
            return await self._poll_at_hub_start(self.spawn_id)
        try:
            code, s = await self._api("GET", f"/v1/spawns/{quote(self.spawn_id)}", ok=(200, 404))
        except (HostUnavailable, HostError) as e:
            # Unknown is not done: keep the server.
            self.log.warning("poll of %s: %s; assuming still running", self.spawn_id, e)
            return None
        if code == 404:
            return 0
        self._note_record(s)
        if s.get("state") in LIVE_STATES:
            return None
        return _exit_status(s)

    async def stop(self, now: bool = False):
        if not self.spawn_id:
            return
        await self._api("DELETE", f"/v1/spawns/{quote(self.spawn_id)}", ok=(200, 202, 204, 404))
        if now or self._stop_without_waiting:
            self._stop_without_waiting = False
            return
        spawn_id = self.spawn_id

        async def read():
            try:
                code, s = await self._api("GET", f"/v1/spawns/{quote(spawn_id)}", ok=(200, 404))
            except (HostUnavailable, HostError) as e:
                self.log.warning("stop of %s: %s; retrying", spawn_id, e)
                return None
            return True if code == 404 or s.get("state") in ("stopped", "failed") else None

        # The host's `stopped` event ends the wait once the scheduler says
        # the job is gone.
        if await self._follow(spawn_id, read, timeout=self.request_timeout) is None:
            self.log.warning("spawn %s is still stopping", spawn_id)

    async def progress(self) -> AsyncIterator[dict]:
        """Relays the host's event stream (stored events first): queue
        reason, expected start, node, the job's end and time limit."""
        # The spawn page may ask before start() has the host's spawn id.
        deadline = time.monotonic() + self.request_timeout
        while not self.spawn_id and self._spawn_pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not self.spawn_id:
            return
        queue: asyncio.Queue = asyncio.Queue()
        buf = b""

        def on_chunk(chunk: bytes):
            nonlocal buf
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data:"):
                        queue.put_nowait(json.loads(line[5:].strip()))

        fetch = asyncio.ensure_future(self._stream_events(self.spawn_id, on_chunk))
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, fetch}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    ev = get.result()
                    yield await self._progress_event(ev)
                    if ev.get("final"):
                        return
                else:
                    get.cancel()
                    while not queue.empty():
                        ev = queue.get_nowait()
                        yield await self._progress_event(ev)
                    return
        finally:
            fetch.cancel()

    async def _progress_event(self, ev: dict) -> dict:
        """One host event as a hub progress event. The host's message says
        the scheduler's pending reason, queue position and expected start
        where known, then the node; once the job runs, the job's end (from
        the spawn record's ``end_time`` / ``time_limit_secs``) is added."""
        message = ev.get("message", "")
        if ev.get("state") in ("running", "ready"):
            try:
                _, s = await self._api("GET", f"/v1/spawns/{quote(self.spawn_id)}")
                end = describe_end(s)
                if end:
                    message = f"{message} · {end}"
            except (HostUnavailable, HostError):
                pass
        if ev.get("state") == "failed":
            message = f"Spawn failed: {message}"
        return {"progress": int(ev.get("progress", 0)), "message": message}

    def _note_record(self, s: dict) -> None:
        """Keeps what the hub's server model shows of the job (its state,
        for admins): job id and, when the host knows them, end and limit."""
        for key in ("job_id", "end_time", "time_limit_secs"):
            if s.get(key) is not None:
                self.job_info[key] = s[key]

    def get_state(self):
        state = super().get_state()
        if self.spawn_id:
            state["spawn_id"] = self.spawn_id
            state.update(self.job_info)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.spawn_id = state.get("spawn_id", "")
        self.job_info = {k: state[k] for k in ("job_id", "end_time", "time_limit_secs") if k in state}

    def clear_state(self):
        super().clear_state()
        self.spawn_id = ""
        self.job_info = {}


class HostUnavailable(Exception):
    pass


class HostError(Exception):
    def __init__(self, code: int, data: dict):
        super().__init__(f"{code} {data.get('error')}: {data.get('message')}")
        self.code = code
        self.data = data

    def user_message(self) -> str:
        fields = self.data.get("fields") or []
        if fields:
            return "Invalid options: " + "; ".join(
                f"{f.get('field') or 'form'}: {f.get('message')}" for f in fields
            )
        return self.data.get("message") or str(self)


def describe_end(s: dict, now: float | None = None) -> str:
    """"ends 14:32 UTC (time limit 1:00:00)" from a spawn record's
    ``end_time`` (Unix seconds) and ``time_limit_secs``; empty when unknown."""
    parts = []
    end = s.get("end_time")
    if isinstance(end, (int, float)) and end > 0:
        t = time.gmtime(end)
        now = time.time() if now is None else now
        day = "" if time.gmtime(now)[:3] == t[:3] else time.strftime("%Y-%m-%d ", t)
        parts.append(f"ends {day}{time.strftime('%H:%M', t)} UTC")
    limit = s.get("time_limit_secs")
    if isinstance(limit, (int, float)) and limit > 0:
        limit = int(limit)
        parts.append(f"time limit {limit // 3600}:{limit % 3600 // 60:02d}:{limit % 60:02d}")
    if len(parts) == 2:
        return f"{parts[0]} ({parts[1]})"
    return parts[0] if parts else ""


def _from_spawn_page(spawner: Spawner) -> bool:
    """Whether this start is the spawn page's form (which the hub re-renders
    on a refusal), not the REST API."""
    req = getattr(getattr(spawner, "handler", None), "request", None)
    path = getattr(req, "path", "") or ""
    return "/spawn/" in path or path.endswith("/spawn")


def _exit_status(s: dict) -> int:
    """The exit status JupyterHub expects of a spawn that is over."""
    if s.get("exit_code") is not None:
        return int(s["exit_code"])
    return 1 if s.get("state") == "failed" else 0


def _as_form_string(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


async def _fetch_options_form(spawner: WasmSpawner) -> str:
    """The plugin's form for this user, drawn from the host's typed schema
    (``form.py``): profile cards, units, ranges, the host's refusal next to
    its field, and the user's last choices where the admin opted in.

    With several instances, the user first picks one; each instance's form is
    in its own fieldset, and all but the chosen one are disabled, so the
    browser submits only the chosen instance's fields.
    """
    allowed = spawner.instances or ([spawner.instance] if spawner.instance else [])
    if not allowed:
        return ""
    groups = ",".join(g.name for g in getattr(spawner.user, "groups", []))
    query = urlencode({"user": spawner.user.name, "groups": groups, "admin": str(bool(spawner.user.admin)).lower()})

    async def schema_of(instance: str) -> dict:
        req = HTTPRequest(
            spawner.host_url.rstrip("/") + f"/v1/plugins/{quote(instance)}/form?{query}",
            headers={"Authorization": f"Bearer {spawner._token()}"},
            request_timeout=spawner.request_timeout,
        )
        resp = await AsyncHTTPClient().fetch(req)
        return json.loads(resp.body)

    schemas = await asyncio.gather(*(schema_of(i) for i in allowed))
    # What the user just submitted and the host refused (this request's
    # re-render), else their remembered choices.
    refusal = _take_refusal(spawner.user.name)
    if refusal is not None:
        chosen_instance, values, errors = refusal
    else:
        (chosen_instance, values), errors = spawner._remembered_choices(), {}
    if chosen_instance not in allowed:
        chosen_instance = allowed[0]

    def form_of(n: int, instance: str) -> str:
        mine = instance == chosen_instance
        return form.render(
            schemas[n],
            prefix=f"ws{n}",
            values=values if mine else {},
            errors=errors if mine else {},
        )

    if len(allowed) == 1:
        return form.STYLE + form_of(0, allowed[0])
    opts = "".join(
        f'<option value="{_esc(i)}"{" selected" if i == chosen_instance else ""}>{_esc(i)}</option>' for i in allowed
    )
    parts = [
        form.STYLE,
        '<div class="ws-field"><label class="form-label" for="wasm-instance">Cluster</label>'
        f'<select class="form-select form-control" name="__instance" id="wasm-instance">{opts}</select></div>',
    ]
    for n, instance in enumerate(allowed):
        disabled = "" if instance == chosen_instance else " disabled hidden"
        parts.append(f'<fieldset class="wasm-instance-form" data-instance="{_esc(instance)}"{disabled}>{form_of(n, instance)}</fieldset>')
    parts.append(
        "<script>(function(){var s=document.getElementById('wasm-instance');"
        "function show(){document.querySelectorAll('fieldset.wasm-instance-form').forEach(function(f){"
        "var on=f.dataset.instance===s.value;f.disabled=!on;f.hidden=!on;});}"
        "s.addEventListener('change',show);show();})();</script>"
    )
    return "\n".join(parts)


# The host's refusal of a form the user just submitted, by hub user, for the
# re-rendered form of the same request (JupyterHub re-renders the form of the
# user's default server, so the refusal cannot live on the spawner).
_REFUSALS: dict[str, tuple[float, str, dict[str, str], dict[str, str]]] = {}
_REFUSAL_TTL = 60.0


def _record_refusal(user: str, instance: str, options: dict[str, list[str]], fields: list[dict]) -> None:
    values = {k: v[0] for k, v in options.items() if v}
    errors: dict[str, str] = {}
    for f in fields:
        key = f.get("field") or ""
        errors[key] = "; ".join(x for x in (errors.get(key), f.get("message") or "refused") if x)
    _REFUSALS[user] = (time.monotonic(), instance, values, errors)


def _take_refusal(user: str):
    r = _REFUSALS.pop(user, None)
    if r is None or time.monotonic() - r[0] > _REFUSAL_TTL:
        return None
    return r[1], r[2], r[3]


def _url_host(h: str) -> str:
    return f"[{h}]" if ":" in h else h


def _esc(s: str) -> str:
    return (
        s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("'", "&#x27;")
    )
