//! The `gridengine` plugin (Son of Grid Engine, Univa/Altair Grid Engine,
//! OGS): `qsub -terse` (script on stdin), `qstat -xml -r -u OWNERS` for the
//! state of many jobs (their owners' jobs only), `qdel`. Site config: see docs/plugins.md; the parallel
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
    status_per_call: 640,
    extra_programs: &[],
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
    status,
    find: find_jobs
);

/// `qstat -xml -r -u alice,bob`: the jobs of the asked jobs' owners only (Grid
/// Engine's job listing has no job-id filter, and plain `qstat` lists only
/// the caller's own jobs), so a site's other queued jobs, however many, are
/// never printed. The owners of up to [`GRIDENGINE`]`.status_per_call`
/// asked jobs per command (640, as `-r` makes a job's record about 1 KiB;
/// `status_ids_per_call` in the site config), however many owners that is:
/// 10 000 jobs take 16 commands whether they are 10 users' or 10 000's; an
/// answer cut
/// at the host's output cap is asked again for half the owners, and an
/// owner whose own jobs overflow it gets `unknown` naming the cap. `-r`
/// adds each job's requests: its hard `h_rt` is its time limit. No end is
/// reported: `JAT_start_time` is the qmaster's local time without a zone.
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    b.status_in_groups(
        host,
        jobs,
        owner_groups(jobs, b.status_per_call()),
        |jobs, group| {
            let owners = owners(jobs, group);
            (owners.len() > 1).then(|| {
                let half: BTreeSet<&str> = owners[..owners.len() / 2].iter().copied().collect();
                group
                    .iter()
                    .partition(|&&i| half.contains(jobs[i].user.as_str()))
            })
        },
        |chunk| {
            let users: BTreeSet<&str> = chunk.iter().map(|j| j.user.as_str()).collect();
            let users: Vec<&str> = users.into_iter().collect();
            b.status_command([
                "-xml".to_string(),
                "-r".into(),
                "-u".into(),
                users.join(","),
            ])
        },
        parse,
    )
}

/// The distinct owners of these jobs, sorted.
fn owners<'a>(jobs: &'a [Job], group: &[usize]) -> Vec<&'a str> {
    let set: BTreeSet<&str> = group.iter().map(|&i| jobs[i].user.as_str()).collect();
    set.into_iter().collect()
}

/// Job indices grouped by owner, each group the jobs of whole owners and at
/// most `per` jobs (an owner with more is a group of its own).
pub fn owner_groups(jobs: &[Job], per: usize) -> Vec<Vec<usize>> {
    let mut by_owner: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, j) in jobs.iter().enumerate() {
        by_owner.entry(j.user.as_str()).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for owned in by_owner.into_values() {
        if !current.is_empty() && current.len() + owned.len() > per.max(1) {
            groups.push(std::mem::take(&mut current));
        }
        current.extend(owned);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
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
        // `<hard_request name="h_rt" …>3600</hard_request>` (seconds, or
        // `HH:MM:SS` as requested).
        let h_rt = job
            .children()
            .filter(|n| n.has_tag_name("hard_request"))
            .find(|n| n.attribute("name") == Some("h_rt"))
            .and_then(|n| n.text())
            .and_then(wasmspawner_sdk::parse::walltime_secs);
        seen.push(
            Seen::new(get("JB_job_number"), phase(state), state)
                .host(get("queue_name"))
                .reason(if state.contains('E') {
                    "error state (see qstat -j)"
                } else {
                    ""
                })
                .time_limit(h_rt),
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

/// The jobs of these spawns, found by the spawn id every job is named with
/// (`jupyterhub-sp-…`), in one scheduler command: what the plugin API's
/// coming `find-jobs` export answers.
pub fn find_jobs(
    b: &Batch,
    host: &dyn Host,
    spawns: &[wasmspawner_sdk::batch::find::Spawn],
) -> Result<std::collections::BTreeMap<String, Vec<wasmspawner_sdk::batch::find::Found>>, String> {
    use wasmspawner_sdk::batch::find;
    find::find_jobs(find::Flavour::GridEngine, b, host, spawns)
}

#[cfg(test)]
mod tests;
