//! The `gridengine` plugin (Son of Grid Engine, Univa/Altair Grid Engine,
//! OGS): `qsub -terse` (script on stdin), one `qstat -xml -u USERS` for the
//! state of many jobs, `qdel`. Site config: see docs/plugins.md; the parallel
//! environment for more than one core is the template variable `pe`
//! (`vars = { pe = "smp" }`, the default).

use std::collections::BTreeSet;

use wasmspawner_sdk::batch::{check_exit, formats, Answer, Batch, JobIds, Phase, Scheduler, Seen};
use wasmspawner_sdk::{Host, Job, JobState, Output};

pub static GRIDENGINE: Scheduler = Scheduler {
    name: "gridengine",
    submit: "qsub",
    status: "qstat",
    cancel: "qdel",
    submit_fixed: &["-terse"],
    cancel_fixed: &[],
    template: TEMPLATE,
    queue_field: "queue",
    queue_enabled: true,
    memory: formats::mega,
    runtime: formats::hms,
    cancel_gone: &["does not exist"],
    ids: JobIds::Exact,
    status_per_call: 1000,
};

const TEMPLATE: &str = r#"#!/bin/bash
#$ -N {{ job_name }}
#$ -S /bin/bash
#$ -j y
#$ -o {{ homedir or "/tmp" }}/jupyterhub_sgespawner.log
#$ -V
{% if homedir %}#$ -wd {{ homedir }}
{% endif %}{% if queue %}#$ -q {{ queue }}
{% endif %}{% if nprocs and nprocs != "1" %}#$ -pe {{ pe or "smp" }} {{ nprocs }}
{% endif %}{% if memory %}#$ -l h_vmem={{ memory }}
{% endif %}{% if runtime %}#$ -l h_rt={{ runtime }}
{% endif %}{% if ngpus %}#$ -l gpu={{ ngpus }}
{% endif %}{% if account %}#$ -P {{ account }}
{% endif %}{{ prologue }}
{{ cmd }}
{{ epilogue }}
"#;

wasmspawner_sdk::batch_plugin!(
    GridEngine,
    GRIDENGINE,
    "Runs the single-user server as a Grid Engine job.",
    status
);

/// `qstat -xml -u alice,bob`: every job of the users asked about, in one
/// call (plain `qstat` lists only the caller's own jobs).
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    let users: BTreeSet<&str> = jobs.iter().map(|j| j.user.as_str()).collect();
    let users: Vec<&str> = users.into_iter().collect();
    let args = ["-xml".to_string(), "-u".into(), users.join(",")];
    b.status(host, jobs, b.status_command(args), parse)
}

pub fn parse(out: &Output) -> Result<Answer, String> {
    let (_, ok) = check_exit(out, |_| None);
    ok.clone()?;
    let text = out.stdout_str();
    let doc = roxmltree::Document::parse(&text).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "job_info" {
        return Err(format!("unexpected XML root <{}>", root.tag_name().name()));
    }
    let mut seen = Vec::new();
    for job in root.descendants().filter(|n| n.has_tag_name("job_list")) {
        let get = |tag: &str| {
            job.children()
                .find(|n| n.has_tag_name(tag))
                .and_then(|n| n.text())
                .unwrap_or("")
                .trim()
        };
        let state = get("state");
        seen.push(
            Seen::new(get("JB_job_number"), phase(state), state)
                .host(get("queue_name"))
                .reason(if state.contains('E') {
                    "error state (see qstat -j)"
                } else {
                    ""
                }),
        );
    }
    Ok(Answer::complete(seen))
}

/// Grid Engine state letters (qstat(1)), combined as in `hqw`, `Eqw`, `dr`,
/// `Rr`, `t`, `s`, `S`, `T`: deletion and errors first, then suspension,
/// running, transfer, hold, waiting.
fn phase(state: &str) -> Phase {
    let has = |c| state.contains(c);
    if state.is_empty() {
        Phase::Unknown
    } else if has('E') {
        Phase::Held
    } else if has('d') {
        Phase::Exiting
    } else if has('s') || has('S') || has('T') {
        Phase::Suspended
    } else if has('r') {
        Phase::Running
    } else if has('t') {
        Phase::Configuring
    } else if has('h') {
        Phase::Held
    } else if has('w') && has('q') {
        Phase::Pending
    } else if has('z') {
        Phase::Completed
    } else {
        Phase::Unknown
    }
}

#[cfg(test)]
mod tests;
