//! The `lsf` plugin (IBM Spectrum LSF): `bsub` (script on stdin), one
//! `bjobs -a -o …` for the state of many jobs, `bkill`. Site config: see
//! docs/plugins.md.

use wasmspawner_sdk::batch::{check_exit, formats, Answer, Batch, JobIds, Phase, Scheduler, Seen};
use wasmspawner_sdk::{Host, Job, JobState, Output};

pub static LSF: Scheduler = Scheduler {
    name: "lsf",
    submit: "bsub",
    status: "bjobs",
    cancel: "bkill",
    submit_fixed: &[],
    cancel_fixed: &[],
    template: TEMPLATE,
    queue_field: "queue",
    queue_enabled: true,
    memory: mb_upper,
    runtime: formats::hm,
    cancel_gone: &["Job has already finished", "is not found"],
    ids: JobIds::Exact,
    status_per_call: 1000,
    extra_programs: &[],
};

fn mb_upper(mib: u64) -> String {
    format!("{mib}MB")
}

const TEMPLATE: &str = r#"#!/bin/bash
#BSUB -J {{ job_name }}
#BSUB -o {{ homedir or "/tmp" }}/jupyterhub_lsfspawner.%J.log
{% if homedir %}#BSUB -cwd {{ homedir }}
{% endif %}{% if queue %}#BSUB -q {{ queue }}
{% endif %}{% if nprocs %}#BSUB -n {{ nprocs }}
#BSUB -R "span[hosts=1]"
{% endif %}{% if memory %}#BSUB -M {{ memory }}
#BSUB -R "rusage[mem={{ memory_mib }}]"
{% endif %}{% if runtime %}#BSUB -W {{ runtime }}
{% endif %}{% if ngpus %}#BSUB -gpu "num={{ ngpus }}"
{% endif %}{% if account %}#BSUB -P {{ account }}
{% endif %}{{ prologue }}
{{ cmd }}
{{ epilogue }}
"#;

wasmspawner_sdk::batch_plugin!(
    Lsf,
    LSF,
    "Runs the single-user server as an LSF job.",
    status,
    find: find_jobs
);

const FORMAT: &str = "jobid stat exec_host exit_code pend_reason delimiter='|'";

/// `bjobs -a -u all -noheader -o "jobid stat exec_host exit_code pend_reason
/// delimiter='|'" A B C`: one call; `-a` keeps recently finished jobs, `-u all`
/// because status does not run as the job's owner.
/// One call per [`LSF`]`.status_per_call` jobs (1000).
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    b.status_by_id(
        host,
        jobs,
        |chunk| {
            let args = [
                "-a".to_string(),
                "-u".into(),
                "all".into(),
                "-noheader".into(),
                "-o".into(),
                FORMAT.into(),
            ]
            .into_iter()
            .chain(chunk.iter().map(|j| j.job_id.clone()));
            b.status_command(args)
        },
        parse,
    )
}

/// `Job <123> is not found`.
fn gone(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("Job <")?;
    let (id, tail) = rest.split_once('>')?;
    tail.contains("is not found").then(|| id.to_string())
}

pub fn parse(out: &Output) -> Result<Answer, String> {
    let (gone_ids, ok) = check_exit(out, gone);
    let mut seen = Vec::new();
    for line in out.stdout_str().lines() {
        let line = line.trim();
        if line.is_empty() || gone(line).is_some() {
            continue;
        }
        let f: Vec<&str> = line.splitn(5, '|').collect();
        let [id, stat, exec_host, exit, reason] = f[..] else {
            return Err(format!("unexpected line {line:?}"));
        };
        let exit: Option<i32> = exit.trim().parse().ok();
        let phase = match stat.trim() {
            "PEND" => Phase::Pending,
            "PSUSP" => Phase::Held,
            "WAIT" => Phase::Waiting,
            "PROV" => Phase::Configuring,
            "RUN" => Phase::Running,
            "USUSP" | "SSUSP" => Phase::Suspended,
            "ZOMBI" => Phase::Exiting,
            "DONE" => Phase::Completed,
            // EXIT with a code is a failed script; without one it was killed
            // or could not start.
            "EXIT" if exit.is_some() => Phase::Completed,
            "EXIT" => Phase::Failed,
            _ => Phase::Unknown, // UNKWN: the execution host is unreachable
        };
        let exit = match (phase, exit) {
            (Phase::Completed, None) => Some(0),
            (_, e) => e,
        };
        seen.push(
            Seen::new(id.trim(), phase, stat.trim())
                .host(exec_host)
                .reason(reason.trim().trim_end_matches(';'))
                .exit_code(exit),
        );
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
    find::find_jobs(find::Flavour::Lsf, b, host, spawns)
}

#[cfg(test)]
mod tests;
