//! What each scheduler's programs print, for the fake programs: the real
//! output formats (as recorded from the schedulers, the same the bundled
//! plugins' tests use), filled in for the jobs a scenario needs.

use super::fake::{Record, Reply};
use crate::model::{DeclaredCapabilities, Job};

/// One scheduler's programs and outputs.
pub struct Profile {
    pub name: &'static str,
    pub submit: &'static str,
    pub status: &'static str,
    pub cancel: &'static str,
    /// The program `find-jobs` runs.
    pub find: &'static str,
    /// Other programs a plugin for it may run.
    pub extra_programs: &'static [&'static str],
    /// What submit prints for the job numbered `n`.
    pub submitted: fn(n: &str) -> String,
    /// The job id a plugin must return for the job numbered `n`.
    pub job_id: fn(n: &str) -> String,
    /// The job id `find-jobs` reports for the job numbered `n` (HTCondor
    /// lists `N.0`; the host matches it to `N` by the scheduler's rule).
    pub found_id: fn(n: &str) -> String,
    /// A status listing with these jobs running on node07, a row or
    /// record per job (keyed by what the status command names it by).
    pub running: fn(jobs: &[Job]) -> Reply,
    /// A find-jobs listing of (job id, job name, user), each pending.
    pub tagged: fn(jobs: &[(String, String, String)]) -> Reply,
    /// What cancel of an ended job answers.
    pub gone: fn(id: &str) -> Reply,
}

fn gone(stderr: String, code: i32) -> Reply {
    Reply {
        stderr,
        code,
        ..Default::default()
    }
}

fn same(n: &str) -> String {
    n.to_string()
}

pub static PROFILES: &[Profile] = &[
    Profile {
        name: "slurm",
        submit: "sbatch",
        status: "squeue",
        cancel: "scancel",
        find: "squeue",
        extra_programs: &[],
        submitted: |n| format!("{n};cluster1\n"),
        job_id: same,
        found_id: same,
        running: |jobs| Reply {
            rows: jobs
                .iter()
                .map(|j| {
                    slurm_row(&[
                        ('i', &j.job_id),
                        ('T', "RUNNING"),
                        ('t', "R"),
                        ('N', "node07"),
                        ('B', "node07"),
                        ('r', "None"),
                        ('S', "2026-12-01T10:00:00"),
                        ('e', "2026-12-01T11:00:00"),
                        ('l', "1:00:00"),
                        ('L', "45:00"),
                        ('j', "jupyterhub"),
                    ])
                })
                .collect(),
            ..Default::default()
        },
        tagged: |jobs| Reply {
            rows: jobs
                .iter()
                .map(|(id, name, user)| {
                    slurm_row(&[
                        ('i', id),
                        ('j', name),
                        ('u', user),
                        ('T', "PENDING"),
                        ('t', "PD"),
                        ('r', "Priority"),
                        ('S', "N/A"),
                        ('l', "1:00:00"),
                    ])
                })
                .collect(),
            ..Default::default()
        },
        gone: |id| {
            gone(
                format!(
                    "scancel: error: Kill job error on job id {id}: Invalid job id specified\n"
                ),
                1,
            )
        },
    },
    Profile {
        name: "pbs",
        submit: "qsub",
        status: "qstat",
        cancel: "qdel",
        find: "qstat",
        extra_programs: &[],
        submitted: |n| format!("{n}.pbs01\n"),
        job_id: |n| format!("{n}.pbs01"),
        found_id: |n| format!("{n}.pbs01"),
        running: |jobs| {
            records(
                "",
                jobs,
                false,
                |j| {
                    format!("Job Id: {}.example.org\n    Job_Owner = {}@login1\n    job_state = R\n    exec_host = node07/0*2\n\n", j.job_id, j.user)
                },
                "",
            )
        },
        tagged: |jobs| {
            Reply::ok(format!(
                "\npbs01:\n                                                            Req'd  Req'd   Elap\nJob ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time\n--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----\n{}",
                jobs.iter()
                    .map(|(id, name, user)| format!("{id:<15} {user:<8} workq    {name}    --    1   2    4gb 08:00 Q   --\n"))
                    .collect::<String>()
            ))
        },
        gone: |id| gone(format!("qdel: Unknown Job Id {id}\n"), 153),
    },
    Profile {
        name: "torque",
        submit: "qsub",
        status: "qstat",
        cancel: "qdel",
        find: "qstat",
        extra_programs: &[],
        submitted: |n| format!("{n}.torque01\n"),
        job_id: |n| format!("{n}.torque01"),
        found_id: |n| format!("{n}.torque01"),
        running: |jobs| {
            records(
                "<Data>",
                jobs,
                false,
                |j| {
                    format!("<Job><Job_Id>{}</Job_Id><Job_Owner>{}@login1</Job_Owner><job_state>R</job_state><exec_host>node07/0-1</exec_host></Job>", j.job_id, j.user)
                },
                "</Data>\n",
            )
        },
        tagged: |jobs| {
            Reply::ok(format!(
                "<Data>{}</Data>\n",
                jobs.iter()
                    .map(|(id, name, user)| format!("<Job><Job_Id>{id}</Job_Id><Job_Name>{name}</Job_Name><Job_Owner>{user}@login1</Job_Owner><job_state>Q</job_state></Job>"))
                    .collect::<String>()
            ))
        },
        gone: |id| gone(format!("qdel: Unknown Job Id {id}\n"), 153),
    },
    Profile {
        name: "gridengine",
        submit: "qsub",
        status: "qstat",
        cancel: "qdel",
        find: "qstat",
        extra_programs: &[],
        submitted: |n| format!("Your job {n} (\"jupyterhub\") has been submitted\n"),
        job_id: same,
        found_id: same,
        // `qstat -u OWNERS`: a job's record is named by its owner.
        running: |jobs| {
            records(
                "<?xml version='1.0'?>\n<job_info><queue_info>",
                jobs,
                true,
                |j| {
                    format!("<job_list state=\"running\"><JB_job_number>{}</JB_job_number><JB_name>jupyterhub</JB_name><JB_owner>{}</JB_owner><state>r</state><queue_name>batch@node07</queue_name></job_list>", j.job_id, j.user)
                },
                "</queue_info><job_info></job_info></job_info>\n",
            )
        },
        tagged: |jobs| {
            Reply::ok(format!(
                "<?xml version='1.0'?>\n<job_info><queue_info></queue_info><job_info>{}</job_info></job_info>\n",
                jobs.iter()
                    .map(|(id, name, user)| format!("<job_list state=\"pending\"><JB_job_number>{id}</JB_job_number><JB_name>{name}</JB_name><JB_owner>{user}</JB_owner><state>qw</state></job_list>"))
                    .collect::<String>()
            ))
        },
        gone: |id| gone(format!("denied: job \"{id}\" does not exist\n"), 1),
    },
    Profile {
        name: "lsf",
        submit: "bsub",
        status: "bjobs",
        cancel: "bkill",
        find: "bjobs",
        extra_programs: &[],
        submitted: |n| format!("Job <{n}> is submitted to queue <batch>.\n"),
        job_id: same,
        found_id: same,
        running: |jobs| {
            records(
                "",
                jobs,
                false,
                |j| format!("{}|RUN|2*node07:node08|-|60.0|0:45 L|-\n", j.job_id),
                "",
            )
        },
        tagged: |jobs| {
            Reply::ok(
                jobs.iter()
                    .map(|(id, name, _)| format!("{id}|{name}|PEND\n"))
                    .collect(),
            )
        },
        gone: |id| gone(format!("Job <{id}>: Job has already finished\n"), 255),
    },
    Profile {
        name: "htcondor",
        submit: "condor_submit",
        status: "condor_q",
        cancel: "condor_rm",
        find: "condor_q",
        extra_programs: &[],
        submitted: |n| format!("Submitting job(s).\n1 job(s) submitted to cluster {n}.\n"),
        job_id: same,
        found_id: |n| format!("{n}.0"),
        running: |jobs| {
            records(
                "",
                jobs,
                false,
                |j| {
                    format!(
                        "{}.0 2 slot1@node07 undefined 3600 1764626400 undefined\n",
                        j.job_id
                    )
                },
                "",
            )
        },
        tagged: |jobs| {
            Reply::ok(
                jobs.iter()
                    .map(|(id, name, _)| format!("{id} {name} 1\n"))
                    .collect(),
            )
        },
        gone: |id| {
            gone(
                format!("Couldn't find/remove all jobs in cluster {id}\n"),
                1,
            )
        },
    },
    Profile {
        name: "moab",
        submit: "msub",
        status: "checkjob",
        cancel: "mjobctl",
        find: "mdiag",
        extra_programs: &["mdiag"],
        submitted: |n| format!("\n\n{n}\n\n"),
        job_id: same,
        found_id: same,
        running: |jobs| {
            records(
                "<Data>",
                jobs,
                false,
                |j| {
                    format!("<job JobID=\"{}\" JobName=\"jupyterhub\" State=\"Running\" User=\"{}\"><req AllocNodeList=\"node07:2\" ReqProcPerTask=\"2\"></req></job>", j.job_id, j.user)
                },
                "</Data>\n",
            )
        },
        tagged: |jobs| {
            Reply::ok(format!(
                "<Data>{}</Data>\n",
                jobs.iter()
                    .map(|(id, name, user)| format!("<job JobID=\"{id}\" JobName=\"{name}\" State=\"Idle\" User=\"{user}\"><req/></job>"))
                    .collect::<String>()
            ))
        },
        gone: |id| gone(format!("ERROR:  invalid job specified ({id})\n"), 1),
    },
];

/// A listing: `head`, one record a job — named by its job id, or by its
/// owner (`by_owner`) where the scheduler asks by owner — then `tail`.
fn records(
    head: &str,
    jobs: &[Job],
    by_owner: bool,
    text: impl Fn(&Job) -> String,
    tail: &str,
) -> Reply {
    Reply {
        stdout: head.into(),
        records: jobs
            .iter()
            .map(|j| Record::new(if by_owner { &j.user } else { &j.job_id }, text(j)))
            .collect(),
        tail: tail.into(),
        ..Default::default()
    }
}

/// One `squeue` row by field letter (`%i`, `%T`, …); the rest empty.
fn slurm_row(fields: &[(char, &str)]) -> std::collections::BTreeMap<char, String> {
    fields.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|p| p.name).collect()
}

pub fn by_name(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

/// The profile named like the plugin, else the one whose submit and
/// status programs it declares (when only one fits).
pub fn detect(name: &str, c: &DeclaredCapabilities) -> Option<&'static Profile> {
    if let Some(p) = PROFILES
        .iter()
        .find(|p| name == p.name || name.ends_with(&format!("-{}", p.name)))
    {
        return Some(p);
    }
    let declared = |prog: &str| c.programs.iter().any(|u| u.program == prog);
    let fits: Vec<&'static Profile> = PROFILES
        .iter()
        .filter(|p| declared(p.submit) && declared(p.status))
        .collect();
    match fits.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}
