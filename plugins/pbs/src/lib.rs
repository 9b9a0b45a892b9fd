//! The `pbs` plugin (PBS Professional, OpenPBS): `qsub` (script on stdin),
//! one `qstat -f -x` for the state of many jobs (finished ones included),
//! `qdel`. Site config: see docs/plugins.md.

use wasmspawner_sdk::batch::pbs::{exit_code, gone, phase, walltime};
use wasmspawner_sdk::batch::{check_exit, formats, Answer, Batch, JobIds, Scheduler, Seen};
use wasmspawner_sdk::parse::qstat_full;
use wasmspawner_sdk::{Host, Job, JobState, Output};

pub static PBS: Scheduler = Scheduler {
    name: "pbs",
    submit: "qsub",
    status: "qstat",
    cancel: "qdel",
    submit_fixed: &[],
    cancel_fixed: &[],
    template: TEMPLATE,
    queue_field: "queue",
    queue_enabled: true,
    memory: formats::mb,
    runtime: formats::hms,
    cancel_gone: &["Unknown Job Id", "Job has finished", "job has finished"],
    ids: JobIds::PbsServer,
    status_per_call: 320,
    extra_programs: &[],
};

const TEMPLATE: &str = r#"#!/bin/bash
#PBS -N {{ job_name }}
#PBS -j oe
#PBS -o {{ homedir or "/tmp" }}/jupyterhub_pbsspawner.log
#PBS -V
{% if queue %}#PBS -q {{ queue }}
{% endif %}#PBS -l select={{ nodes or 1 }}:ncpus={{ nprocs or 1 }}{% if memory %}:mem={{ memory }}{% endif %}{% if ngpus %}:ngpus={{ ngpus }}{% endif %}
{% if runtime %}#PBS -l walltime={{ runtime }}
{% endif %}{% if account %}#PBS -A {{ account }}
{% endif %}{% if homedir %}cd {{ homedir | shquote }}
{% endif %}{{ prologue }}
{{ cmd }}
{{ epilogue }}
"#;

wasmspawner_sdk::batch_plugin!(
    Pbs,
    PBS,
    "Runs the single-user server as a PBS Professional / OpenPBS job.",
    status,
    find: find_jobs
);

/// `qstat -f -x A B C`: one call; `-x` keeps finished jobs (state F). A
/// job's `Resource_List.walltime` is its time limit, and `resources_used.walltime`
/// gives a running job's time left (PBS prints no start time in UTC or
/// epoch seconds: `stime` is the server's local time without a zone).
/// One call per [`PBS`]`.status_per_call` jobs (320: a `qstat -f` block
/// with the job's exported environment is 1–3 KiB).
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    b.status_by_id(
        host,
        jobs,
        |chunk| {
            let args = ["-f".to_string(), "-x".into()]
                .into_iter()
                .chain(chunk.iter().map(|j| j.job_id.clone()));
            b.status_command(args)
        },
        parse,
    )
}

pub fn parse(out: &Output) -> Result<Answer, String> {
    let (gone_ids, ok) = check_exit(out, gone);
    let mut seen = Vec::new();
    for (id, a) in qstat_full(&out.stdout_str())? {
        let st = a.get("job_state").map(String::as_str).unwrap_or("");
        let exit: Option<i32> = a
            .get("Exit_status")
            .or_else(|| a.get("exit_status"))
            .and_then(|v| v.parse().ok());
        let (phase, reason) = phase(st, exit);
        let reason = if reason.is_empty() {
            a.get("comment").cloned().unwrap_or_default()
        } else {
            reason
        };
        let exit = exit_code(exit);
        // `estimated.start_time` (PBS Pro's estimator): a queued job's
        // expected start, as PBS prints it.
        let start = match phase {
            wasmspawner_sdk::batch::Phase::Pending => a
                .get("estimated.start_time")
                .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            _ => String::new(),
        };
        // `Resource_List.walltime`: the limit; `resources_used.walltime`
        // (as the MoM last reported it): the time left of a running job.
        let (limit, left) = walltime(
            a.get("Resource_List.walltime").map(String::as_str),
            a.get("resources_used.walltime").map(String::as_str),
        );
        let mut s = Seen::new(id, phase, st)
            .expected_start_text(&start)
            .host(a.get("exec_host").map(String::as_str).unwrap_or(""))
            .reason(&reason)
            .exit_code(exit)
            .time_limit(limit);
        if phase == wasmspawner_sdk::batch::Phase::Running {
            s = s.time_left(left);
        }
        seen.push(s);
    }
    let mut answer = match ok {
        Ok(()) => Answer::complete(seen),
        Err(why) => Answer::partial(seen, why),
    };
    answer.gone = gone_ids;
    Ok(answer)
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
    find::find_jobs(find::Flavour::Pbs, b, host, spawns)
}

#[cfg(test)]
mod tests;
