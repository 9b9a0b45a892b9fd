"""The spawn page's options form, rendered from the host's form schema.

The host owns the schema and every check (``GET /v1/plugins/{instance}/form``
gives the typed schema: fields with kinds, ranges, units, choices, and
profiles with fixed values and bounds). This module only draws it the way a
JupyterHub user expects: profiles as selectable cards with their
descriptions (like KubeSpawner's ``profile_list``), units beside the box, the
allowed range under it, the host's refusal next to the field it names, and,
where the admin opts in, the user's last choices as the defaults.

Field names are the schema's field ids, so the posted form data is exactly
the raw options the host validates. Every text from the plugin is escaped.
"""

from __future__ import annotations

import json
from typing import Any

PROFILE_FIELD = "profile"

STYLE = """<style>
.wasmspawner-form .ws-profiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(15rem,1fr));gap:.75rem;margin-bottom:1rem}
.wasmspawner-form .ws-profile{display:block;border:1px solid #ced4da;border-radius:.5rem;padding:.75rem 1rem;cursor:pointer;margin:0}
.wasmspawner-form .ws-profile:hover{border-color:#86b7fe}
.wasmspawner-form .ws-profile:has(input:checked){border-color:#0d6efd;box-shadow:0 0 0 .2rem rgba(13,110,253,.25)}
.wasmspawner-form .ws-profile input{margin-right:.5rem}
.wasmspawner-form .ws-profile .ws-profile-desc{color:#6c757d;font-size:.9em;margin-top:.25rem}
.wasmspawner-form .ws-profile .ws-profile-sets{font-size:.85em;margin-top:.35rem}
.wasmspawner-form .ws-field{margin-bottom:.9rem;max-width:36rem}
.wasmspawner-form .ws-field .input-group{max-width:22rem}
.wasmspawner-form .ws-fixed-note{font-size:.85em;color:#0d6efd}
.wasmspawner-form .ws-error{color:#dc3545;font-size:.9em;margin-top:.25rem}
.wasmspawner-form .is-invalid{border-color:#dc3545}
fieldset.wasm-instance-form{margin-top:1rem}
</style>"""


def esc(s: Any) -> str:
    return (
        str(s)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def _num(v: Any) -> str:
    """1.0 → "1", 2.5 → "2.5"."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def range_text(kind: dict, bound: dict | None = None) -> str:
    """"1–32 GiB", "at most 8 cores", "at least 10 minutes"; empty without bounds."""
    lo, hi = kind.get("min"), kind.get("max")
    if bound:
        if bound.get("min") is not None:
            lo = bound["min"] if lo is None else max(lo, bound["min"])
        if bound.get("max") is not None:
            hi = bound["max"] if hi is None else min(hi, bound["max"])
    unit = f" {kind['unit']}" if kind.get("unit") else ""
    if lo is not None and hi is not None:
        return f"{_num(lo)}–{_num(hi)}{unit}"
    if hi is not None:
        return f"at most {_num(hi)}{unit}"
    if lo is not None:
        return f"at least {_num(lo)}{unit}"
    return ""


def _form_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return _num(v)


def _value_text(field: dict | None, v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    unit = ((field or {}).get("kind") or {}).get("unit")
    return f"{_num(v)} {unit}" if unit else _num(v)


def render(
    schema: dict,
    *,
    prefix: str = "ws",
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
) -> str:
    """The form as an HTML fragment (styles and a small script included).

    ``values`` replaces the schema's defaults (the user's last choices or
    what they just submitted); ``errors`` maps a field id (or ``profile``,
    or ``""`` for the form as a whole) to the host's message.
    """
    values = values or {}
    errors = errors or {}
    fields = schema.get("fields") or []
    by_id = {f["id"]: f for f in fields}
    profiles = schema.get("profiles") or []
    out = [f'<div class="wasmspawner-form" id="{esc(prefix)}-form">']
    if errors.get(""):
        out.append(f'<div class="ws-error" role="alert">{esc(errors[""])}</div>')

    chosen = values.get(PROFILE_FIELD)
    if profiles and chosen not in {p["id"] for p in profiles}:
        chosen = profiles[0]["id"]
    if profiles:
        out.append('<fieldset class="ws-field"><legend class="form-label">Profile</legend>')
        out.append('<div class="ws-profiles" role="radiogroup">')
        for p in profiles:
            pid = esc(p["id"])
            sets = []
            fixed = p.get("fixed") or {}
            # In the form's order; fields the form does not show are not the user's concern.
            for fid in [f["id"] for f in fields if f["id"] in fixed]:
                label = (by_id.get(fid) or {}).get("label", fid)
                sets.append(f"{esc(label)}: {esc(_value_text(by_id.get(fid), fixed[fid]))}")
            for b in p.get("bounds") or []:
                f = by_id.get(b.get("field"))
                if f and f["kind"]["type"] in ("integer", "number"):
                    r = range_text(f["kind"], b)
                    if r:
                        sets.append(f"{esc(f['label'])}: {esc(r)}")
            out.append(
                f'<label class="ws-profile" for="{esc(prefix)}-profile-{pid}">'
                f'<input type="radio" name="{PROFILE_FIELD}" id="{esc(prefix)}-profile-{pid}" value="{pid}"'
                f'{" checked" if p["id"] == chosen else ""}>'
                f'<strong>{esc(p.get("label") or p["id"])}</strong>'
                + (f'<div class="ws-profile-desc">{esc(p["description"])}</div>' if p.get("description") else "")
                + (f'<div class="ws-profile-sets">{" · ".join(sets)}</div>' if sets else "")
                + "</label>"
            )
        out.append("</div>")
        if errors.get(PROFILE_FIELD):
            out.append(f'<div class="ws-error">{esc(errors[PROFILE_FIELD])}</div>')
        out.append("</fieldset>")

    for f in fields:
        out.append(_field(f, prefix, values, errors))

    if profiles:
        # Which fields each profile fixes (the host applies them, whatever
        # is sent) and bounds: the script greys those fields out and updates
        # the ranges, so the form shows what the job will get.
        data = {
            p["id"]: {
                "fixed": {
                    k: {"text": _value_text(by_id.get(k), v), "raw": _form_value(v)}
                    for k, v in (p.get("fixed") or {}).items()
                    if k in by_id
                },
                "ranges": {
                    b["field"]: {
                        "text": range_text(by_id[b["field"]]["kind"], b),
                        "min": b.get("min"),
                        "max": b.get("max"),
                    }
                    for b in (p.get("bounds") or [])
                    if b.get("field") in by_id and by_id[b["field"]]["kind"]["type"] in ("integer", "number")
                },
            }
            for p in profiles
        }
        base = {
            f["id"]: {"text": range_text(f["kind"]), "min": f["kind"].get("min"), "max": f["kind"].get("max")}
            for f in fields
            if f["kind"]["type"] in ("integer", "number")
        }
        out.append(_PROFILE_SCRIPT.replace("__PREFIX__", json.dumps(prefix)).replace(
            "__DATA__", json.dumps(data).replace("</", "<\\/")
        ).replace("__BASE__", json.dumps(base).replace("</", "<\\/")))
    out.append("</div>")
    return "\n".join(out)


def _field(f: dict, prefix: str, values: dict[str, str], errors: dict[str, str]) -> str:
    fid = esc(f["id"])
    dom = f"{esc(prefix)}-{fid}"
    kind = f.get("kind") or {}
    t = kind.get("type")
    value = values.get(f["id"], f.get("default") or "")
    err = errors.get(f["id"])
    invalid = " is-invalid" if err else ""
    required = " required" if f.get("required") and t != "boolean" else ""
    described = f' aria-describedby="{dom}-help"'
    h = [f'<div class="ws-field" data-field="{fid}">']
    label = f'<label class="form-label" for="{dom}">{esc(f.get("label") or f["id"])}</label>'
    if t == "boolean":
        checked = str(value).lower() in ("true", "on", "yes", "1")
        h.append(
            f'<div class="form-check"><input class="form-check-input{invalid}" type="checkbox" id="{dom}" '
            f'name="{fid}" value="true"{" checked" if checked else ""}{described}> '
            f'<label class="form-check-label" for="{dom}">{esc(f.get("label") or f["id"])}</label></div>'
        )
    elif t == "choice":
        h.append(label)
        opts = []
        choices = kind.get("choices") or []
        if not f.get("required") and not f.get("default"):
            opts.append(f'<option value=""{" selected" if not value else ""}>Site default</option>')
        for c in choices:
            opts.append(
                f'<option value="{esc(c["value"])}"{" selected" if c["value"] == value else ""}>'
                f'{esc(c.get("label") or c["value"])}</option>'
            )
        h.append(f'<select class="form-select form-control{invalid}" id="{dom}" name="{fid}"{required}{described}>{"".join(opts)}</select>')
    elif t in ("integer", "number"):
        h.append(label)
        attrs = ""
        for k in ("min", "max", "step"):
            if kind.get(k) is not None:
                attrs += f' {k}="{esc(_num(kind[k]))}"'
        if t == "number" and kind.get("step") is None:
            attrs += ' step="any"'
        box = (
            f'<input class="form-control{invalid}" type="number" id="{dom}" name="{fid}" '
            f'value="{esc(value)}"{attrs}{required}{described}>'
        )
        if kind.get("unit"):
            box += f'<span class="input-group-text">{esc(kind["unit"])}</span>'
        h.append(f'<div class="input-group">{box}</div>')
    else:
        h.append(label)
        attrs = ""
        if kind.get("max_length"):
            attrs += f' maxlength="{int(kind["max_length"])}"'
        if kind.get("pattern"):
            attrs += f' pattern="{esc(kind["pattern"])}"'
        if kind.get("placeholder"):
            attrs += f' placeholder="{esc(kind["placeholder"])}"'
        h.append(
            f'<input class="form-control{invalid}" type="text" id="{dom}" name="{fid}" '
            f'value="{esc(value)}"{attrs}{required}{described}>'
        )
    helps = []
    if t in ("integer", "number"):
        r = range_text(kind)
        if r:
            helps.append(f'<span class="ws-range">{esc(r)}</span>')
    if f.get("help"):
        helps.append(esc(f["help"]))
    h.append(
        f'<div class="form-text text-muted" id="{dom}-help">{". ".join(helps)}'
        f'<span class="ws-fixed-note"></span></div>'
    )
    if err:
        h.append(f'<div class="ws-error" id="{dom}-error" role="alert">{esc(err)}</div>')
    h.append("</div>")
    return "\n".join(h)


_PROFILE_SCRIPT = """<script>(function(){
var prefix=__PREFIX__, data=__DATA__, base=__BASE__;
var root=document.getElementById(prefix+"-form"); if(!root) return;
function apply(){
  var sel=root.querySelector('input[name=profile]:checked'); if(!sel) return;
  var p=data[sel.value]||{fixed:{},ranges:{}};
  root.querySelectorAll('.ws-field[data-field]').forEach(function(div){
    var id=div.dataset.field, input=div.querySelector('[name="'+id+'"]'), note=div.querySelector('.ws-fixed-note'),
        range=div.querySelector('.ws-range');
    if(!input) return;
    var fixed=Object.prototype.hasOwnProperty.call(p.fixed,id);
    input.disabled=fixed;
    // Show the value the job gets; give the user's own back when unfixed.
    if(fixed){
      if(input.dataset.userValue===undefined) input.dataset.userValue=(input.type==='checkbox')?String(input.checked):input.value;
      if(input.type==='checkbox') input.checked=(p.fixed[id].raw==='true'); else input.value=p.fixed[id].raw;
    } else if(input.dataset.userValue!==undefined){
      if(input.type==='checkbox') input.checked=(input.dataset.userValue==='true'); else input.value=input.dataset.userValue;
      delete input.dataset.userValue;
    }
    if(note) note.textContent=fixed?(' Set by this profile: '+p.fixed[id].text+'.'):'';
    var r=p.ranges[id]||base[id];
    if(r&&input.type==='number'){
      var b=base[id]||{};
      var lo=(p.ranges[id]&&p.ranges[id].min!=null)?p.ranges[id].min:b.min, hi=(p.ranges[id]&&p.ranges[id].max!=null)?p.ranges[id].max:b.max;
      if(lo!=null) input.min=lo; else input.removeAttribute('min');
      if(hi!=null) input.max=hi; else input.removeAttribute('max');
      if(range) range.textContent=r.text;
    }
  });
}
root.querySelectorAll('input[name=profile]').forEach(function(r){r.addEventListener('change',apply);});
apply();
})();</script>"""
