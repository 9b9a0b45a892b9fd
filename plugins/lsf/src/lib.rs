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

const FORMAT: &str =
    "jobid stat exec_host exit_code runtimelimit time_left pend_reason delimiter='|'";

/// `bjobs -a -u all -noheader -o "jobid stat exec_host exit_code runtimelimit
/// time_left pend_reason delimiter='|'" A B C`: one call; `-a` keeps recently
/// finished jobs, `-u all` because status does not run as the job's owner.
/// `runtimelimit` is the job's run limit, `time_left` a running job's time
/// left (`H:MM L`); the pending reason comes last, as it is free text.
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
        let f: Vec<&str> = line.splitn(7, '|').collect();
        let [id, stat, exec_host, exit, limit, left, reason] = f[..] else {
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
        let mut s = Seen::new(id.trim(), phase, stat.trim())
            .host(exec_host)
            .reason(reason.trim().trim_end_matches(';'))
            .exit_code(exit)
            .time_limit(run_limit(limit));
        if phase == Phase::Running {
            s = s.time_left(time_left(left));
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

/// `runtimelimit`: minutes with one decimal (`480.0`), followed by
/// `/host` where the site's run limits are absolute (`ABS_RUNLIMIT=Y`), or
/// `HH:MM:SS` under `LSB_HMS_TIME_FORMAT=Y`; `-` (none) and anything else
/// is no limit. Without `ABS_RUNLIMIT` LSF scales the limit by the
/// execution host's CPU factor: this is the limit as LSF prints it.
pub fn run_limit(field: &str) -> Option<u64> {
    let v = field.trim().split('/').next()?.trim();
    if v.contains(':') {
        return wasmspawner_sdk::parse::walltime_secs(v);
    }
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) {
        return None;
    }
    let minutes: f64 = v.parse().ok()?;
    let secs = (minutes * 60.0).round();
    (1.0..1e12).contains(&secs).then_some(secs as u64)
}

/// `time_left` of a running job: `H:MM L` (hours and minutes; `HH:MM:SS L`
/// under `LSB_HMS_TIME_FORMAT=Y`). Only `L` (the run limit, no runtime
/// estimate) is the time to the scheduler's kill; `E` and `X` count down
/// an estimate, and `-` is no limit: none.
pub fn time_left(field: &str) -> Option<u64> {
    let mut words = field.split_whitespace();
    let (value, flag) = (words.next()?, words.next()?);
    if flag != "L" || words.next().is_some() {
        return None;
    }
    let parts: Vec<u64> = value
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (h, m, s) = match parts[..] {
        [h, m] => (h, m, 0),
        [h, m, s] => (h, m, s),
        _ => return None,
    };
    if m >= 60 || s >= 60 {
        return None;
    }
    h.checked_mul(3600)?.checked_add(m * 60 + s)
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
