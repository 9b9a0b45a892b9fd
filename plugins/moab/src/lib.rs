//! The `moab` plugin (Moab Workload Manager over Torque): `msub` (script on
//! stdin), one `mdiag -j --xml` for the state of every job, `mjobctl -c`.
//! Site config: see docs/plugins.md.

use wasmspawner_sdk::batch::{check_exit, formats, Answer, Batch, JobIds, Phase, Scheduler, Seen};
use wasmspawner_sdk::{Host, Job, JobState, Output};

pub static MOAB: Scheduler = Scheduler {
    name: "moab",
    submit: "msub",
    status: "mdiag",
    cancel: "mjobctl",
    submit_fixed: &[],
    cancel_fixed: &["-c"],
    template: TEMPLATE,
    queue_field: "queue",
    queue_enabled: true,
    memory: formats::mb,
    runtime: formats::hms,
    cancel_gone: &[
        "invalid job specified",
        "does not exist",
        "cannot locate job",
    ],
    ids: JobIds::MoabPrefix,
    status_per_call: 320,
};

const TEMPLATE: &str = r#"#!/bin/bash
#MSUB -N {{ job_name }}
#MSUB -j oe
#MSUB -o {{ homedir or "/tmp" }}/jupyterhub_moabspawner.log
#MSUB -V
{% if queue %}#MSUB -q {{ queue }}
{% endif %}#MSUB -l nodes={{ nodes or 1 }}:ppn={{ nprocs or 1 }}{% if ngpus %}:gpus={{ ngpus }}{% endif %}
{% if memory %}#MSUB -l mem={{ memory }}
{% endif %}{% if runtime %}#MSUB -l walltime={{ runtime }}
{% endif %}{% if account %}#MSUB -A {{ account }}
{% endif %}{% if homedir %}cd {{ homedir | shquote }}
{% endif %}{{ prologue }}
{{ cmd }}
{{ epilogue }}
"#;

wasmspawner_sdk::batch_plugin!(
    Moab,
    MOAB,
    "Runs the single-user server as a Moab job.",
    status
);

/// `mdiag -j --xml`: every job Moab knows (completed ones for a while), in
/// one call; the jobs asked about are picked out of it.
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    let cmd = b.status_command(["-j".to_string(), "--xml".into()]);
    b.status(host, jobs, cmd, parse)
}

pub fn parse(out: &Output) -> Result<Answer, String> {
    let (_, ok) = check_exit(out, |_| None);
    ok.clone()?;
    let text = out.stdout_str();
    let doc = roxmltree::Document::parse(text.trim()).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Data" {
        return Err(format!("unexpected XML root <{}>", root.tag_name().name()));
    }
    let mut seen = Vec::new();
    for job in root.children().filter(|n| n.has_tag_name("job")) {
        let attr = |a: &str| job.attribute(a).unwrap_or("").trim();
        let state = attr("State");
        let exit: Option<i32> = attr("CompletionCode").parse().ok();
        // Moab job states (mdiag -j, showq): Idle, Starting, Running, …
        let phase = match state {
            "Idle" => Phase::Pending,
            "Hold" | "UserHold" | "SystemHold" | "BatchHold" | "Deferred" => Phase::Held,
            "Blocked" | "NotQueued" => Phase::Waiting,
            "Starting" | "Staging" | "Staged" | "Migrated" => Phase::Configuring,
            "Running" => Phase::Running,
            "Suspended" => Phase::Suspended,
            "Completed" => Phase::Completed,
            "Removed" => Phase::Cancelled,
            "Vacated" => Phase::Failed,
            _ => Phase::Unknown,
        };
        let exit = match (phase, exit) {
            (Phase::Completed, None) => Some(0),
            (_, e) => e,
        };
        // Moab writes the allocated nodes on the job's requirement
        // (`<req AllocNodeList="n01:2,n02:2">`); some versions also on the
        // job itself; `MasterHost` is the first node of an active job.
        let req_nodes = job
            .children()
            .filter(|n| n.has_tag_name("req"))
            .find_map(|r| {
                r.attribute("AllocNodeList")
                    .filter(|v| !v.trim().is_empty())
            });
        let host = req_nodes
            .or_else(|| Some(attr("AllocNodeList")).filter(|v| !v.is_empty()))
            .unwrap_or_else(|| attr("MasterHost"));
        seen.push(
            Seen::new(attr("JobID"), phase, state)
                .host(host)
                .reason(attr("BlockReason"))
                .exit_code(exit),
        );
    }
    Ok(Answer::complete(seen))
}

#[cfg(test)]
mod tests;
