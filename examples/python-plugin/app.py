"""A Wasmspawner plugin in Python: Slurm, built with componentize-py.

The same contract as the Rust plugins (wit/plugin.wit): a typed form, site
rules in `validate`, `sbatch --parsable` with the batch script on stdin (the
hub's secrets reach the job through the host, never this code), one `squeue`
for every job, and `unknown` -- never `done` -- when the scheduler does not
answer.

Site config (`[instances.X.config]`), a subset of the `slurm` plugin's keys:
`[partition]` (or `[queue]`) `choices` and `default`, `[nprocs]` and
`[runtime]` (minutes) `max` and `default`, and `host_suffix`.

Build: `cargo xtask python-plugin` (target/plugins/python-slurm.wasm).
"""

import json
import shlex

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, process, types as t

API_VERSION = "0.1.0"


class Settings:
    """The instance's site config, checked."""

    def __init__(self, config: str):
        try:
            c = json.loads(config or "{}")
        except ValueError as e:
            raise Err(t.PluginError_Config(f"config is not JSON: {e}"))
        queue = c.get("partition", c.get("queue", {}))
        self.partitions = queue.get("choices") or ["standard"]
        self.default_partition = queue.get("default", self.partitions[0])
        if not all(isinstance(p, str) and p.replace("-", "").replace("_", "").isalnum() for p in self.partitions):
            raise Err(t.PluginError_Config("partition.choices: give partition names, e.g. [\"standard\"]"))
        self.max_nprocs, self.nprocs = self.limit(c, "nprocs", 64, 1)
        self.max_minutes, self.minutes = self.limit(c, "runtime", 1440, 60)
        self.host_suffix = c.get("host_suffix", "")

    @staticmethod
    def limit(c: dict, key: str, top: int, default: int) -> tuple[int, int]:
        f = c.get(key, {})
        most, dflt = f.get("max", top), f.get("default", default)
        if not (isinstance(most, int) and isinstance(dflt, int) and 1 <= dflt <= most <= top):
            raise Err(t.PluginError_Config(f"{key}: max and default must be whole numbers with 1 <= default <= max <= {top}"))
        return most, dflt

    def address(self, host: str) -> str | None:
        if host in ("", "n/a", "(null)"):
            return None
        return host + self.host_suffix if "." not in host else host


def command(program: str, args: list[str], stdin: bytes = b"", spawn_env: bool = False) -> process.Command:
    return process.Command(program=program, args=args, stdin=stdin, env=[], spawn_env=spawn_env, timeout_ms=0)


def run(cmd: process.Command) -> process.Output:
    """Runs a program through the host; a denial or timeout becomes a
    scheduler error the spawn shows."""
    try:
        return process.run(cmd)
    except Err as e:
        raise Err(t.PluginError_Capability(f"{cmd.program}: {e.value.value}"))


class Spawner(exports.Spawner):
    def describe(self) -> t.Descriptor:
        use = lambda p, spawn_env=False: t.ProgramUse(program=p, args=["**"], spawn_env=spawn_env)
        return t.Descriptor(
            name="python-slurm",
            version="0.1.0",
            api_version=API_VERSION,
            description="Slurm, written in Python with componentize-py.",
            capabilities=t.DeclaredCapabilities(
                programs=[use("sbatch", True), use("squeue"), use("scancel")], ssh=[], detached=[]
            ),
        )

    def form(self, config: str, user: t.User) -> t.FormSchema:
        s = Settings(config)
        integer = lambda most, unit: t.FieldKind_Integer(t.IntegerField(min=1, max=most, step=None, unit=unit))
        return t.FormSchema(
            fields=[
                t.Field(
                    id="partition", label="Partition", help="Where the job runs.",
                    default=s.default_partition, required=True,
                    kind=t.FieldKind_Choice([t.Choice(value=p, label=p) for p in s.partitions]),
                ),
                t.Field(id="nprocs", label="CPU cores", help="", default=str(s.nprocs),
                        required=True, kind=integer(s.max_nprocs, None)),
                t.Field(id="runtime", label="Run time", help="How long the server may run.",
                        default=str(s.minutes), required=True, kind=integer(s.max_minutes, "min")),
            ],
            profiles=[],
        )

    def validate(self, config: str, user: t.User, options: list[t.FieldValue]) -> list[t.FieldValue]:
        # The host has checked types, ranges and choices against the form.
        # A site rule: sessions over 4 hours are for staff.
        values = {o.field: o.value.value for o in options}
        if values.get("runtime", 0) > 240 and "staff" not in user.groups:
            raise Err([t.FieldError(field="runtime", message="sessions over 4 hours (240 minutes) are for staff")])
        return options

    def submit(self, config: str, job: t.JobSpec) -> t.Submitted:
        s = Settings(config)
        values = {o.field: o.value.value for o in job.options}
        minutes = int(values.get("runtime", s.minutes))
        script = "\n".join([
            "#!/bin/bash",
            "#SBATCH --job-name=jupyterhub",
            f"#SBATCH --partition={values.get('partition', s.default_partition)}",
            f"#SBATCH --cpus-per-task={int(values.get('nprocs', s.nprocs))}",
            f"#SBATCH --time={minutes // 60}:{minutes % 60:02d}:00",
            " ".join(shlex.quote(a) for a in job.cmd),
            "",
        ])
        out = run(command("sbatch", ["--parsable"], script.encode(), spawn_env=True))
        job_id = out.stdout.decode(errors="replace").strip().split(";")[0]
        if out.exit_code != 0 or not job_id.isdigit():
            raise Err(t.PluginError_Scheduler(
                f"sbatch exited {out.exit_code}: {out.stderr.decode(errors='replace').strip()[:500]}"
            ))
        return t.Submitted(job_id=job_id, state="")

    def status(self, config: str, jobs: list[t.Job]) -> list[t.JobState]:
        if not jobs:
            return []
        s = Settings(config)
        ids = [j.job_id for j in jobs]
        cmd = command("squeue", ["--noheader", "--states=all", f"--jobs={','.join(ids)}", "--format=%i|%T|%B|%r"])
        try:
            out = process.run(cmd)
        except Err as e:
            return [t.JobState_Unknown(f"squeue could not run: {e.value.value}")] * len(jobs)
        if out.exit_code != 0 or out.truncated:
            why = f"squeue exited {out.exit_code}: {out.stderr.decode(errors='replace').strip()[:200]}"
            log.log(log.Level.WARN, why)
            return [t.JobState_Unknown(why)] * len(jobs)
        seen: dict[str, t.JobState] = {}
        for line in out.stdout.decode(errors="replace").splitlines():
            parts = line.strip().split("|")
            if len(parts) != 4:
                why = f"squeue printed an unexpected line {line[:100]!r}"
                return [t.JobState_Unknown(why)] * len(jobs)
            job_id, state, host, reason = parts
            seen[job_id] = job_state(state, s.address(host), reason)
        # squeue answered and parsed: a job it does not list has ended.
        left = t.JobState_Done(t.DoneInfo(exit_code=None, reason="the job has left the queue"))
        return [seen.get(i, left) for i in ids]

    def cancel(self, config: str, job: t.Job) -> None:
        out = run(command("scancel", [job.job_id]))
        err = out.stderr.decode(errors="replace")
        if out.exit_code != 0 and "already completing or completed" not in err and "Invalid job id" not in err:
            raise Err(t.PluginError_Scheduler(f"scancel exited {out.exit_code}: {err.strip()[:500]}"))


def job_state(state: str, host: str | None, reason: str) -> t.JobState:
    if state in ("PENDING", "CONFIGURING", "REQUEUED", "SUSPENDED"):
        return t.JobState_Pending(t.PendingInfo(reason=f"{state.lower()}: {reason}", expected_start=None))
    if state in ("RUNNING", "COMPLETING"):
        if state == "COMPLETING":
            return t.JobState_Done(t.DoneInfo(exit_code=None, reason="completing"))
        return t.JobState_Running(t.RunningInfo(host=host))
    if state == "COMPLETED":
        return t.JobState_Done(t.DoneInfo(exit_code=0, reason="completed"))
    if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"):
        return t.JobState_Done(t.DoneInfo(exit_code=None, reason=f"{state.lower()}: {reason}"))
    return t.JobState_Unknown(f"squeue reported state {state!r}")
