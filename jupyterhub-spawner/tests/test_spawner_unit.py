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
