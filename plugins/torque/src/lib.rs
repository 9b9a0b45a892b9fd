//! The `torque` plugin (Torque / PBS-derived resource managers): `qsub`
//! (script on stdin), one `qstat -x` (XML) for the state of many jobs,
//! `qdel`. Site config: see docs/plugins.md.

use wasmspawner_sdk::batch::pbs::{exit_code, gone, phase, walltime};
use wasmspawner_sdk::batch::{check_exit, formats, Answer, Batch, JobIds, Phase, Scheduler, Seen};
use wasmspawner_sdk::{Host, Job, JobState, Output};

pub static TORQUE: Scheduler = Scheduler {
    name: "torque",
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
    cancel_gone: &["Unknown Job Id", "invalid state for job - COMPLETE"],
    ids: JobIds::PbsServer,
    status_per_call: 320,
    extra_programs: &[],
};

const TEMPLATE: &str = r#"#!/bin/bash
#PBS -N {{ job_name }}
#PBS -j oe
#PBS -o {{ homedir or "/tmp" }}/jupyterhub_torquespawner.log
#PBS -V
{% if queue %}#PBS -q {{ queue }}
{% endif %}#PBS -l nodes={{ nodes or 1 }}:ppn={{ nprocs or 1 }}{% if ngpus %}:gpus={{ ngpus }}{% endif %}
{% if memory %}#PBS -l mem={{ memory }}
{% endif %}{% if runtime %}#PBS -l walltime={{ runtime }}
{% endif %}{% if account %}#PBS -A {{ account }}
{% endif %}{% if homedir %}cd {{ homedir | shquote }}
{% endif %}{{ prologue }}
{{ cmd }}
{{ epilogue }}
"#;

wasmspawner_sdk::batch_plugin!(
    Torque,
    TORQUE,
    "Runs the single-user server as a Torque job.",
    status,
    find: find_jobs
);

/// `qstat -x A B C`: Torque's XML for every job in one call (completed
/// jobs stay as `C` while the server keeps them), with each job's
/// `Resource_List` walltime, `Walltime.Remaining` and `start_time`.
/// One call per [`TORQUE`]`.status_per_call` jobs (320).
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    b.status_by_id(
        host,
        jobs,
        |chunk| {
            let args =
                std::iter::once("-x".to_string()).chain(chunk.iter().map(|j| j.job_id.clone()));
            b.status_command(args)
        },
        parse,
    )
}

pub fn parse(out: &Output) -> Result<Answer, String> {
    let (gone_ids, ok) = check_exit(out, gone);
    let text = out.stdout_str();
    let mut seen = Vec::new();
    if !text.trim().is_empty() {
        let doc = roxmltree::Document::parse(&text).map_err(|e| format!("not XML: {e}"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "Data" {
            return Err(format!("unexpected XML root <{}>", root.tag_name().name()));
        }
        for job in root.children().filter(|n| n.has_tag_name("Job")) {
            let get = |tag: &str| {
                job.children()
                    .find(|n| n.has_tag_name(tag))
                    .and_then(|n| n.text())
                    .unwrap_or("")
                    .trim()
            };
            let exit = get("exit_status").parse().ok();
            let (phase, reason) = phase(get("job_state"), exit);
            let reason = if reason.is_empty() {
                get("comment").to_string()
            } else {
                reason
            };
            // `<Resource_List><walltime>`: the limit. A running job's time
            // left is the server's `<Walltime><Remaining>` (seconds, as of
            // this answer), else the limit less `<resources_used><walltime>`;
            // `<start_time>` (epoch seconds) is when it started.
            let nested = |outer: &str, inner: &str| {
                job.children()
                    .find(|n| n.has_tag_name(outer))
                    .and_then(|o| o.children().find(|n| n.has_tag_name(inner)))
                    .and_then(|n| n.text())
                    .map(str::trim)
            };
            let (limit, used_left) = walltime(
                nested("Resource_List", "walltime"),
                nested("resources_used", "walltime"),
            );
            let mut s = Seen::new(get("Job_Id"), phase, get("job_state"))
                .host(get("exec_host"))
                .reason(&reason)
                .exit_code(exit_code(exit))
                .time_limit(limit);
            if phase == Phase::Running {
                let remaining = nested("Walltime", "Remaining")
                    .and_then(|r| r.parse::<i64>().ok())
                    .map(|r| r.max(0).unsigned_abs());
                s = s
                    .time_left(remaining.or(used_left))
                    .started_at(get("start_time").parse().ok());
            }
            seen.push(s);
        }
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
    find::find_jobs(find::Flavour::Torque, b, host, spawns)
}

#[cfg(test)]
mod tests;
