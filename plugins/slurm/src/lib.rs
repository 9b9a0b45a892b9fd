//! The `slurm` plugin: `sbatch --parsable` (script on stdin), one `squeue`
//! for the state of many jobs, `scancel`. Site config: see docs/plugins.md.

use wasmspawner_sdk::batch::{check_exit, formats, Answer, Batch, JobIds, Phase, Scheduler, Seen};
use wasmspawner_sdk::{Host, Job, JobState, Output};

pub static SLURM: Scheduler = Scheduler {
    name: "slurm",
    submit: "sbatch",
    status: "squeue",
    cancel: "scancel",
    submit_fixed: &["--parsable"],
    cancel_fixed: &[],
    template: TEMPLATE,
    queue_field: "partition",
    queue_enabled: true,
    memory: formats::mega,
    runtime: formats::hms,
    cancel_gone: &[
        "already completing or completed",
        "Invalid job id specified",
    ],
    ids: JobIds::Exact,
    status_per_call: 1000,
    extra_programs: &[],
};

const TEMPLATE: &str = r#"#!/bin/bash
#SBATCH --job-name={{ job_name }}
#SBATCH --output={{ homedir or "/tmp" }}/jupyterhub_slurmspawner_%j.log
{% if homedir %}#SBATCH --chdir={{ homedir }}
{% endif %}{% if partition %}#SBATCH --partition={{ partition }}
{% endif %}{% if nodes %}#SBATCH --nodes={{ nodes }}
{% endif %}{% if nprocs %}#SBATCH --cpus-per-task={{ nprocs }}
{% endif %}{% if memory %}#SBATCH --mem={{ memory }}
{% endif %}{% if runtime %}#SBATCH --time={{ runtime }}
{% endif %}{% if ngpus %}#SBATCH --gres=gpu:{{ ngpus }}
{% endif %}{% if account %}#SBATCH --account={{ account }}
{% endif %}{{ prologue }}
{{ cmd }}
{{ epilogue }}
"#;

wasmspawner_sdk::batch_plugin_type!(
    Slurm,
    SLURM,
    "Runs the single-user server as a Slurm batch job.",
    status,
    find: find_jobs
);

// A site plugin built on this crate (examples/site-plugin) turns the export
// off (`default-features = false`) and exports itself.
#[cfg(feature = "export")]
wasmspawner_sdk::export_plugin!(Slurm);

/// `squeue -h -t all -j A,B,C -o %i|%T|%B|%N|%S|%l|%L|%r` (`%S`: a pending
/// job's expected start, shown in its reason; `%l`/`%L`: its time limit and
/// time left, carried as the job's time limit and end): one call per
/// [`SLURM`]`.status_per_call` jobs (1000: about 100 KiB of answer).
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    b.status_by_id(host, jobs, |chunk| status_command(b, chunk), parse)
}

/// The `squeue` command for these jobs.
pub fn status_command(b: &Batch, jobs: &[&Job]) -> wasmspawner_sdk::Command {
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    b.status_command([
        "--noheader".to_string(),
        "--states=all".into(),
        format!("--jobs={}", ids.join(",")),
        "--format=%i|%T|%B|%N|%S|%l|%L|%r".into(),
    ])
}

pub fn parse(out: &Output) -> Result<Answer, String> {
    let stderr = out.stderr_str();
    // Every id asked about is unknown to a live controller: all gone.
    if out.exit_code == 1
        && stderr.trim_end().ends_with("Invalid job id specified")
        && out.stdout_str().trim().is_empty()
    {
        return Ok(Answer::complete(vec![]));
    }
    let (_, ok) = check_exit(out, |_| None);
    let mut seen = Vec::new();
    for line in out.stdout_str().lines() {
        let line = line.trim();
        // `-M cluster` prints a `CLUSTER: name` line before each cluster's jobs.
        if line.is_empty() || line.starts_with("CLUSTER:") {
            continue;
        }
        // `%i|%T|%B|%N|%S|%l|%L|%r`; lines without the limits or `%S` (a
        // site's own format, older recordings) are read too.
        let f: Vec<&str> = line.splitn(8, '|').collect();
        let (id, state, batch_host, nodes, start, limit, left, reason) = match f[..] {
            [id, state, b, n, start, limit, left, reason] => {
                (id, state, b, n, start, limit, left, reason)
            }
            [id, state, b, n, start, reason] => (id, state, b, n, start, "", "", reason),
            [id, state, b, n, reason] => (id, state, b, n, "", "", "", reason),
            _ => return Err(format!("unexpected line {line:?}")),
        };
        let phase = phase(state, reason);
        let host = if wasmspawner_sdk::parse::first_host(batch_host).is_some() {
            batch_host
        } else {
            nodes
        };
        let exit = match phase {
            Phase::Completed => Some(0),
            _ => None,
        };
        // FAILED says why in the reason (`NonZeroExitCode`); the other
        // failures say it in the state word (`TIMEOUT`, `OUT_OF_MEMORY`).
        let reason = if matches!(phase, Phase::Failed) && state != "FAILED" {
            state.to_lowercase()
        } else {
            reason.to_string()
        };
        let mut s = Seen::new(id, phase, state)
            .host(host)
            .reason(&reason)
            .exit_code(exit)
            .time_limit(wasmspawner_sdk::parse::duration_secs(limit));
        if matches!(phase, Phase::Running) {
            s = s.time_left(wasmspawner_sdk::parse::duration_secs(left));
        }
        if matches!(phase, Phase::Pending | Phase::Waiting) {
            s = s.expected_start_text(start);
        }
        seen.push(s);
    }
    Ok(match ok {
        Ok(()) => Answer::complete(seen),
        Err(why) => Answer::partial(seen, why),
    })
}

/// Slurm's job states (squeue(1), "JOB STATE CODES").
fn phase(state: &str, reason: &str) -> Phase {
    // `CANCELLED by 1000` in some outputs.
    match state.split_whitespace().next().unwrap_or("") {
        "PENDING" | "PD" => match reason {
            r if r.starts_with("JobHeld") => Phase::Held,
            "BeginTime" | "Dependency" | "DependencyNeverSatisfied" => Phase::Waiting,
            _ => Phase::Pending,
        },
        "REQUEUED" | "RQ" | "REQUEUE_FED" | "RF" => Phase::Pending,
        "REQUEUE_HOLD" | "RH" | "SPECIAL_EXIT" | "SE" | "RESV_DEL_HOLD" | "RD" => Phase::Held,
        "CONFIGURING" | "CF" | "POWER_UP_NODE" => Phase::Configuring,
        "RUNNING" | "R" | "RESIZING" | "RS" | "SIGNALING" | "SI" => Phase::Running,
        "SUSPENDED" | "S" | "STOPPED" | "ST" => Phase::Suspended,
        "COMPLETING" | "CG" | "STAGE_OUT" | "SO" => Phase::Completing,
        "COMPLETED" | "CD" => Phase::Completed,
        "CANCELLED" | "CA" | "REVOKED" | "RV" => Phase::Cancelled,
        "FAILED" | "F" | "TIMEOUT" | "TO" | "NODE_FAIL" | "NF" | "BOOT_FAIL" | "BF"
        | "OUT_OF_MEMORY" | "OOM" | "DEADLINE" | "DL" | "PREEMPTED" | "PR" => Phase::Failed,
        _ => Phase::Unknown,
    }
}

/// The jobs of these spawns, found by the spawn id every job is named with
/// (`jupyterhub-sp-…`), in one scheduler command: what the plugin API's
/// coming `find-jobs` export answers.
pub fn find_jobs(
    b: &Batch,
    host: &dyn Host,
    spawns: &[wasmspawner_sdk::batch::find::Spawn],
) -> Result<std::collections::BTreeMap<String, Vec<wasmspawner_sdk::batch::find::Found>>, String> {
    use wasmspawner_sdk::batch::find;
    find::find_jobs(find::Flavour::Slurm, b, host, spawns)
}

#[cfg(test)]
mod tests;
