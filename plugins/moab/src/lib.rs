//! The `moab` plugin (Moab Workload Manager over Torque): `msub` (script on
//! stdin), `checkjob --xml` for the state of the jobs asked about (many per
//! call), `mjobctl -c`.
//! Site config: see docs/plugins.md.

use wasmspawner_sdk::batch::{check_exit, formats, Answer, Batch, JobIds, Phase, Scheduler, Seen};
use wasmspawner_sdk::{Host, Job, JobState, Output};

pub static MOAB: Scheduler = Scheduler {
    name: "moab",
    submit: "msub",
    status: "checkjob",
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
    // `mdiag -j --xml`: find-jobs (jobs by name after a host crash).
    extra_programs: &["mdiag"],
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
    status,
    find: find_jobs
);

/// `checkjob --xml A B C`: the jobs asked about, never every job Moab
/// knows (`mdiag -j --xml` passes the 1 MiB output cap at about 700 jobs);
/// one call per [`MOAB`]`.status_per_call` jobs (320, about 2 KiB each).
/// Moab answers one `<Data>` with a `<job>` per known id (as MathWorks'
/// Moab integration reads `checkjob --xml ID1 ID2 …`, and Ghent's vsc-jobs
/// `checkjob --xml … all`); an id it no longer knows may come as
/// `<Error code="700">server rejected request - invalid job specified:
/// ID</Error>` instead of on stderr. A job's `ReqAWDuration` (seconds) is
/// its time limit; a running one ends at `StartTime` + `SuspendDuration` +
/// `ReqAWDuration` (epoch seconds; else its time left is `ReqAWDuration`
/// less the active time `AWDuration`).
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    b.status_by_id(
        host,
        jobs,
        |chunk| {
            let args =
                std::iter::once("--xml".to_string()).chain(chunk.iter().map(|j| j.job_id.clone()));
            b.status_command(args)
        },
        parse,
    )
}

/// `ERROR:  invalid job specified (42)`, `cannot locate job '42'`, and in
/// XML `<Error code="700">server rejected request - invalid job specified:
/// 42</Error>`: the job has left Moab. Returns the id.
fn gone(line: &str) -> Option<String> {
    let rest = ["invalid job specified", "cannot locate job"]
        .iter()
        .find_map(|p| line.split_once(p).map(|(_, rest)| rest))?;
    let rest = rest.split('<').next().unwrap_or("");
    rest.split_whitespace()
        .map(|w| w.trim_matches(|c: char| "()'\":,.".contains(c)))
        .find(|w| !w.is_empty())
        .map(str::to_string)
}

pub fn parse(out: &Output) -> Result<Answer, String> {
    let (gone_ids, ok) = check_exit(out, gone);
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        // Every asked job unknown to a live Moab: all gone.
        ok.clone()?;
        let mut a = Answer::complete(vec![]);
        a.gone = gone_ids;
        return Ok(a);
    }
    ok.clone()?;
    let text = out.stdout_str();
    let doc = roxmltree::Document::parse(text.trim()).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    // `<Error>` elements: an id Moab no longer knows (gone), or an error
    // that leaves the jobs it did not list unknown.
    let mut gone_ids = gone_ids;
    let mut errors = Vec::new();
    let error_nodes: Vec<roxmltree::Node> = match root.tag_name().name() {
        "Data" => root
            .children()
            .filter(|n| n.has_tag_name("Error"))
            .collect(),
        "Error" => vec![root],
        other => return Err(format!("unexpected XML root <{other}>")),
    };
    for e in error_nodes {
        let text = e.text().unwrap_or("").trim();
        match gone(text) {
            Some(id) => {
                gone_ids.insert(id);
            }
            None => errors.push(text.chars().take(200).collect::<String>()),
        }
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
        // RsvStartTime: when Moab's reservation for an idle job starts.
        let start = match phase {
            Phase::Pending | Phase::Waiting => attr("RsvStartTime").parse().ok(),
            _ => None,
        };
        let secs = |a: &str| attr(a).parse::<u64>().ok();
        let mut s = Seen::new(attr("JobID"), phase, state)
            .expected_start(start)
            .host(host)
            .reason(attr("BlockReason"))
            .exit_code(exit)
            .time_limit(secs("ReqAWDuration"));
        if phase == Phase::Running {
            let limit = s.time_limit_secs;
            let end = secs("StartTime")
                .filter(|&t| t > 0)
                .zip(limit)
                .and_then(|(t, l)| {
                    t.checked_add(secs("SuspendDuration").unwrap_or(0))?
                        .checked_add(l)
                });
            let left = limit
                .zip(secs("AWDuration"))
                .map(|(l, used)| l.saturating_sub(used));
            s = s.started_at(secs("StartTime")).ends_at(end).time_left(left);
        }
        seen.push(s);
    }
    let mut answer = if !errors.is_empty() {
        Answer::partial(seen, format!("Moab error: {}", errors.join(" | ")))
    } else if root.has_tag_name("Error") {
        // Only an error for an id it no longer knows: the others asked
        // with it are unknown this round (the next asks without it).
        Answer::partial(seen, "Moab answered only an error for another job")
    } else {
        Answer::complete(seen)
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
    find::find_jobs(find::Flavour::Moab, b, host, spawns)
}

#[cfg(test)]
mod tests;
