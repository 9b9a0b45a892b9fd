//! What each scheduler's programs print, for the fake programs: the real
//! output formats (as recorded from the schedulers, the same the bundled
//! plugins' tests use), filled in for the jobs a scenario needs.

use super::fake::Reply;
use crate::model::DeclaredCapabilities;

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
    /// A status listing with these jobs running on node07.
    pub running: fn(ids: &[String]) -> Reply,
    /// A find-jobs listing of (job id, job name, user), each pending.
    pub tagged: fn(jobs: &[(String, String, String)]) -> Reply,
    /// What cancel of an ended job answers.
    pub gone: fn(id: &str) -> Reply,
}

pub static PROFILES: &[Profile] = &[Profile {
    name: "slurm",
    submit: "sbatch",
    status: "squeue",
    cancel: "scancel",
    find: "squeue",
    extra_programs: &[],
    submitted: |n| format!("{n};cluster1\n"),
    job_id: |n| n.to_string(),
    running: |ids| Reply {
        rows: ids
            .iter()
            .map(|i| {
                slurm_row(&[
                    ('i', i),
                    ('T', "RUNNING"),
                    ('t', "R"),
                    ('N', "node07"),
                    ('B', "node07"),
                    ('r', "None"),
                    ('S', "2026-12-01T10:00:00"),
                    ('e', "2026-12-01T11:00:00"),
                    ('l', "1:00:00"),
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
    gone: |id| Reply {
        stderr: format!(
            "scancel: error: Kill job error on job id {id}: Invalid job id specified\n"
        ),
        code: 1,
        ..Default::default()
    },
}];

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
