//! The `htcondor` plugin: `condor_submit` (submit description on stdin),
//! one `condor_q … -af:j` for the state of many jobs, `condor_rm`. HTCondor
//! has no queues, so the queue field is off unless a site enables it (and
//! uses it in its own template). Site config: see docs/plugins.md.

use wasmspawner_sdk::batch::{check_exit, formats, Answer, Batch, JobIds, Phase, Scheduler, Seen};
use wasmspawner_sdk::{Host, Job, JobState, Output};

pub static HTCONDOR: Scheduler = Scheduler {
    name: "htcondor",
    submit: "condor_submit",
    status: "condor_q",
    cancel: "condor_rm",
    submit_fixed: &[],
    cancel_fixed: &[],
    template: TEMPLATE,
    queue_field: "queue",
    queue_enabled: false,
    memory: formats::bare,
    runtime: formats::seconds,
    cancel_gone: &[
        "Couldn't find/remove all jobs",
        "not found",
        "already marked for removal",
    ],
    ids: JobIds::CondorProc,
    status_per_call: 1000,
    extra_programs: &[],
};

// The server command runs through /usr/bin/env so a bare program name is
// found on the job's PATH; `condor_args` writes HTCondor's quoting.
const TEMPLATE: &str = r#"universe = vanilla
executable = /usr/bin/env
arguments = "{{ cmd_argv | condor_args }}"
getenv = True
batch_name = {{ job_name }}
{% if homedir %}initialdir = {{ homedir }}
{% endif %}output = {{ homedir or "/tmp" }}/jupyterhub_condorspawner.$(ClusterId).log
error = {{ homedir or "/tmp" }}/jupyterhub_condorspawner.$(ClusterId).log
should_transfer_files = IF_NEEDED
{% if nprocs %}request_cpus = {{ nprocs }}
{% endif %}{% if memory %}request_memory = {{ memory }}
{% endif %}{% if ngpus %}request_gpus = {{ ngpus }}
{% endif %}{% if runtime %}periodic_remove = (JobStatus == 2) && (time() - EnteredCurrentStatus > {{ runtime }})
{% endif %}{% if account %}accounting_group = {{ account }}
{% endif %}queue 1
"#;

wasmspawner_sdk::batch_plugin!(
    HtCondor,
    HTCONDOR,
    "Runs the single-user server as an HTCondor job.",
    status,
    find: find_jobs
);

/// `condor_q -allusers A B C -af:j JobStatus RemoteHost ExitCode
/// AllowedJobDuration EnteredCurrentStatus HoldReason`: one call; a job id
/// is a cluster (`301`) or `cluster.proc`. `AllowedJobDuration` (submit
/// command `allowed_job_duration`; `undefined` where a job or an older
/// HTCondor has none) is the job's wall-clock limit, the longest it may
/// stay running before HTCondor holds it: a running job ends at
/// `EnteredCurrentStatus` plus it. A limit kept in the job's
/// `periodic_remove` expression (as the default template does) is no
/// attribute `condor_q` can report: none.
/// One call per [`HTCONDOR`]`.status_per_call` jobs (1000).
pub fn status(b: &Batch, host: &dyn Host, jobs: &[Job]) -> Vec<JobState> {
    b.status_by_id(
        host,
        jobs,
        |chunk| {
            let args = std::iter::once("-allusers".to_string())
                .chain(chunk.iter().map(|j| j.job_id.clone()))
                .chain(
                    [
                        "-af:j",
                        "JobStatus",
                        "RemoteHost",
                        "ExitCode",
                        "AllowedJobDuration",
                        "EnteredCurrentStatus",
                        "HoldReason",
                    ]
                    .map(String::from),
                );
            b.status_command(args)
        },
        parse,
    )
}

pub fn parse(out: &Output) -> Result<Answer, String> {
    let (_, ok) = check_exit(out, |_| None);
    ok.clone()?;
    let mut seen = Vec::new();
    for line in out.stdout_str().lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.splitn(7, ' ').collect();
        let [id, status, remote, exit, allowed, entered, hold] = f[..] else {
            return Err(format!("unexpected line {line:?}"));
        };
        if !id.contains('.') || !id.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("unexpected line {line:?}"));
        }
        let exit: Option<i32> = exit.parse().ok();
        // JobStatus codes (HTCondor manual, "Job ClassAd Attributes").
        let phase = match status {
            "1" => Phase::Pending,
            "2" => Phase::Running,
            "3" => Phase::Cancelled,
            "4" => Phase::Completed,
            "5" => Phase::Held,
            "6" => Phase::Exiting,
            "7" => Phase::Suspended,
            _ => Phase::Unknown,
        };
        // Integers or `undefined` (no limit set).
        let limit: Option<u64> = allowed.parse().ok();
        let mut s = Seen::new(id, phase, status)
            .host(remote)
            .reason(hold)
            .exit_code(exit)
            .time_limit(limit);
        if phase == Phase::Running {
            let entered: Option<u64> = entered.parse().ok();
            let limit = s.time_limit_secs;
            s = s
                .started_at(entered)
                .ends_at(entered.zip(limit).and_then(|(e, l)| e.checked_add(l)));
        }
        seen.push(s);
    }
    Ok(Answer::complete(seen))
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
    find::find_jobs(find::Flavour::HtCondor, b, host, spawns)
}

#[cfg(test)]
mod tests;
