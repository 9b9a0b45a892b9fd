"""Pure pieces of the hub side, without a hub: the form drawn from a schema,
the job's end as the progress page says it."""

from wasmspawner import form
from wasmspawner.spawner import describe_end

SCHEMA = {
    "fields": [
        {"id": "partition", "label": "Partition", "help": "Where the job runs.", "default": None, "required": False,
         "kind": {"type": "choice", "choices": [{"value": "debug", "label": "debug"}, {"value": "gpu", "label": "GPU <fast>"}]}},
        {"id": "memory", "label": "Memory", "help": "", "default": "8", "required": True,
         "kind": {"type": "integer", "min": 1, "max": 128, "step": None, "unit": "GiB"}},
    ],
    "profiles": [
        {"id": "small", "label": "Small", "description": "2 GiB <quick>", "fixed": {"memory": 2}, "bounds": []},
        {"id": "big", "label": "Big", "description": "", "fixed": {}, "bounds": [{"field": "memory", "min": None, "max": 64.0, "choices": []}]},
    ],
}


def test_units_sit_beside_the_box_and_ranges_are_shown():
    h = form.render(SCHEMA)
    assert '<div class="input-group"><input' in h and '<span class="input-group-text">GiB</span></div>' in h
    assert "1–128 GiB" in h
    # A field that is not required and has no default offers the site's default.
    assert '<option value="" selected>Site default</option>' in h


def test_profiles_are_cards_with_descriptions_and_what_they_set():
    h = form.render(SCHEMA)
    assert h.count('class="ws-profile"') == 2
    assert 'value="small" checked' in h
    assert "2 GiB &lt;quick&gt;" in h  # escaped
    assert "Memory: 2 GiB" in h and "Memory: 1–64 GiB" in h
    assert "GPU &lt;fast&gt;" in h and "<fast>" not in h


def test_a_refusal_stands_next_to_its_field_with_the_value_kept():
    h = form.render(SCHEMA, values={"memory": "200", "profile": "big"}, errors={"memory": "at most 64"})
    field = h[h.index('data-field="memory"'):]
    field = field[: field.index('<div class="ws-field"') if '<div class="ws-field"' in field else len(field)]
    assert 'value="200"' in field and "is-invalid" in field and "at most 64" in field
    assert 'value="big" checked' in h


def test_the_end_of_the_job_reads_as_a_person_would_say_it():
    assert describe_end({"end_time": 1800000000, "time_limit_secs": 3600}, now=1800000000 - 60) == "ends 08:00 UTC (time limit 1:00:00)"
    assert describe_end({"time_limit_secs": 5400}) == "time limit 1:30:00"
    assert describe_end({"end_time": 1800000000}, now=1700000000) == "ends 2027-01-15 08:00 UTC"
    assert describe_end({}) == ""


def test_the_hub_state_keeps_the_spawn_and_what_the_host_said_of_the_job():
    from wasmspawner.spawner import WasmSpawner

    w = WasmSpawner()
    w.spawn_id = "sp-1"
    w._note_record({"job_id": "4711", "end_time": 1800000000, "state": "queued"})
    state = w.get_state()
    assert state == {"spawn_id": "sp-1", "job_id": "4711", "end_time": 1800000000}
    # After a hub restart the state is loaded again.
    w2 = WasmSpawner()
    w2.load_state(state)
    assert w2.spawn_id == "sp-1" and w2.get_state() == state
    w2.clear_state()
    assert w2.get_state() == {}


class FakeHost:
    """The host's spawn record and event stream for one spawn, in this
    test's event loop."""

    def __init__(self, stream: bool = True, state: str = "running"):
        import asyncio

        self.record = {"id": "sp-1", "state": state, "host": "node07", "port": 9001 if state == "ready" else None}
        self.changed = asyncio.Event()
        self.stream = stream
        self.reads = 0
        self.deleted = False

    def app(self):
        from tornado import web

        fake = self

        class Record(web.RequestHandler):
            def get(self, _id):
                fake.reads += 1
                self.write(fake.record)

            def delete(self, _id):
                fake.deleted = True
                fake.record = {**fake.record, "state": "stopping"}
                self.set_status(202)
                self.write(fake.record)

        class Events(web.RequestHandler):
            async def get(self, _id):
                if not fake.stream:
                    raise web.HTTPError(503)
                self.set_header("Content-Type", "text/event-stream")
                self.write(f'data: {{"state": "{fake.record["state"]}", "message": "so far"}}\n\n')
                await self.flush()
                await fake.changed.wait()
                self.write(f'data: {{"state": "{fake.record["state"]}", "final": true}}\n\n')
                await self.flush()

        return web.Application([(r"/v1/spawns/([^/]+)", Record), (r"/v1/spawns/([^/]+)/events", Events)])

    def becomes(self, state: str):
        import time

        self.record = {**self.record, "state": state, **({"port": 9001} if state == "ready" else {})}
        self.changed.set()
        return time.monotonic()


async def _against(fake: FakeHost, call, then: str, after: float):
    """Runs ``call(spawner)`` against the fake host; ``after`` seconds in,
    the spawn becomes ``then`` (with its event). Returns (result, seconds
    from that change to the call's end)."""
    import asyncio
    import os
    import time

    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    from wasmspawner.spawner import WasmSpawner

    sock, port = bind_unused_port()
    server = HTTPServer(fake.app())
    server.add_sockets([sock])
    w = WasmSpawner()
    w.host_url = f"http://127.0.0.1:{port}"
    w.api_token_env = "WS_TEST_TOKEN"
    w.spawn_id = "sp-1"
    os.environ["WS_TEST_TOKEN"] = "t"
    try:
        task = asyncio.ensure_future(call(w))
        await asyncio.sleep(after)
        changed = fake.becomes(then)
        result = await asyncio.wait_for(task, 5)
        return result, time.monotonic() - changed
    finally:
        server.stop()


async def test_the_hub_side_sees_ready_at_the_hosts_event_not_at_its_next_poll():
    fake = FakeHost()
    # Between two polls of a backing-off poll (0.1 s growing by 1.5×).
    url, late = await _against(fake, lambda w: w._wait_ready("sp-1"), "ready", after=1.45)
    assert url == "http://node07:9001"
    # The poll alone would be 0.1 s to 1 s late; the event is at once.
    assert late < 0.1, late
    # And the poll backed off meanwhile: few reads of the record.
    assert fake.reads <= 8, fake.reads


async def test_without_the_event_stream_the_poll_still_finds_ready():
    from wasmspawner.spawner import POLL_MAX

    fake = FakeHost(stream=False)
    url, late = await _against(fake, lambda w: w._wait_ready("sp-1"), "ready", after=1.2)
    assert url == "http://node07:9001"
    assert late <= POLL_MAX + 0.2, late


async def test_a_stop_ends_at_the_hosts_stopped_event():
    fake = FakeHost(state="ready")
    # Between two of the old half-second polls, and two of the backing-off ones.
    _, late = await _against(fake, lambda w: w.stop(), "stopped", after=1.2)
    assert fake.deleted
    assert late < 0.1, late
