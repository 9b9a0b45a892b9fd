//! Finding a spawn's jobs again: every batch plugin names the jobs it
//! submits `<job_name>-<spawn id>` (`jupyterhub-sp-0123…`), and for each
//! scheduler one command lists the jobs of many spawns at once, with a
//! parser that says which job carries which spawn id.
//!
//! These are plain functions, ready for the plugin API's coming
//! `find-jobs` export: [`query`] builds the command for a scheduler,
//! [`found`] reads its answer.

use std::collections::{BTreeMap, BTreeSet};

use super::Batch;
use crate::{Command, Output};

/// A spawn to look for: its id and the hub user it runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    pub spawn_id: String,
    pub user: String,
}

/// A job the scheduler reports for a spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub spawn_id: String,
    pub job_id: String,
    /// The scheduler's own state word (`PENDING`, `R`, `qw`, `2`, …).
    pub state: String,
}

/// A spawn's job name: `base-spawnid`. A spawn id the scheduler's name
/// rules would not keep intact (the host's are `[A-Za-z0-9_-]+`) leaves the
/// name untagged.
pub fn job_name(base: &str, spawn_id: &str) -> String {
    let safe = !spawn_id.is_empty()
        && spawn_id.len() <= 64
        && spawn_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if safe {
        format!("{base}-{spawn_id}")
    } else {
        base.to_string()
    }
}

/// The spawn id a job name carries, among `spawns` (exact match only).
pub fn spawn_of<'a>(base: &str, name: &str, spawns: &'a BTreeSet<String>) -> Option<&'a str> {
    let id = name.trim().strip_prefix(base)?.strip_prefix('-')?;
    spawns.get(id).map(String::as_str)
}

fn ids(spawns: &[Spawn]) -> BTreeSet<String> {
    spawns.iter().map(|s| s.spawn_id.clone()).collect()
}

fn users(spawns: &[Spawn]) -> Vec<String> {
    let set: BTreeSet<&str> = spawns.iter().map(|s| s.user.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

fn names(b: &Batch, spawns: &[Spawn]) -> Vec<String> {
    spawns
        .iter()
        .map(|s| job_name(b.job_name_base(), &s.spawn_id))
        .collect()
}

/// Which scheduler's commands to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Slurm,
    Pbs,
    Torque,
    GridEngine,
    Lsf,
    HtCondor,
    Moab,
}

/// One command that lists the jobs of all `spawns`:
///
/// | scheduler | command |
/// |---|---|
/// | Slurm | `squeue --noheader --states=all --name=N1,N2 --format=%i\|%j\|%T` |
/// | PBS Pro | `qstat -x -w -u alice,bob` (the owners' jobs, full names) |
/// | Torque | `qstat -x` (XML; Torque filters the full listing by neither name nor user) |
/// | Grid Engine | `qstat -xml -u alice,bob` |
/// | LSF | `bjobs -a -u "alice bob" -noheader -o "jobid job_name stat delimiter='\|'"` |
/// | HTCondor | `condor_q -allusers -constraint 'member(JobBatchName, {"N1","N2"})' -af:j JobBatchName JobStatus` |
/// | Moab | `mdiag -j --xml` (Moab's per-name lookup takes one name) |
///
/// The site's `extra_args` and `status_args` come first, as for status.
pub fn query(flavour: Flavour, b: &Batch, spawns: &[Spawn]) -> Command {
    let args: Vec<String> = match flavour {
        Flavour::Slurm => vec![
            "--noheader".into(),
            "--states=all".into(),
            format!("--name={}", names(b, spawns).join(",")),
            "--format=%i|%j|%T".into(),
        ],
        Flavour::Pbs => vec![
            "-x".into(),
            "-w".into(),
            "-u".into(),
            users(spawns).join(","),
        ],
        Flavour::Torque => vec!["-x".into()],
        Flavour::GridEngine => vec!["-xml".into(), "-u".into(), users(spawns).join(",")],
        Flavour::Lsf => vec![
            "-a".into(),
            "-u".into(),
            users(spawns).join(" "),
            "-noheader".into(),
            "-o".into(),
            "jobid job_name stat delimiter='|'".into(),
        ],
        Flavour::HtCondor => {
            let list: Vec<String> = names(b, spawns).iter().map(|n| format!("{n:?}")).collect();
            vec![
                "-allusers".into(),
                "-constraint".into(),
                format!("member(JobBatchName, {{{}}})", list.join(",")),
                "-af:j".into(),
                "JobBatchName".into(),
                "JobStatus".into(),
            ]
        }
        Flavour::Moab => vec!["-j".into(), "--xml".into()],
    };
    let program = match flavour {
        Flavour::Moab => "mdiag",
        _ => b.sched.status,
    };
    Command::new(program)
        .args(b.config.extra_args.iter().cloned())
        .args(b.config.status_args.iter().cloned())
        .args(args)
        .timeout_ms(b.config.timeout_ms)
}

/// Reads [`query`]'s answer: the jobs that carry one of `spawns`' ids, in
/// the scheduler's order. `Err` when the answer does not prove anything
/// (an error, output that does not parse, output cut at the cap): a caller
/// must then not conclude that a spawn has no job.
pub fn found(
    flavour: Flavour,
    b: &Batch,
    spawns: &[Spawn],
    out: &Output,
) -> Result<Vec<Found>, String> {
    if out.truncated {
        return Err("the answer was cut at the host's output cap".into());
    }
    let lsf_none = flavour == Flavour::Lsf
        && out.stderr_str().contains("No job found")
        && out.stdout_str().trim().is_empty();
    if !out.success() && !lsf_none {
        return Err(format!(
            "exit status {}: {}",
            out.exit_code,
            out.stderr_str()
                .trim()
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let wanted = ids(spawns);
    let base = b.job_name_base();
    let text = out.stdout_str();
    let mut jobs = Vec::new();
    let mut push = |name: &str, id: &str, state: &str| {
        if let Some(sp) = spawn_of(base, name, &wanted) {
            jobs.push(Found {
                spawn_id: sp.to_string(),
                job_id: id.trim().to_string(),
                state: state.trim().to_string(),
            });
        }
    };
    match flavour {
        Flavour::Slurm | Flavour::Lsf => {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if line.starts_with("CLUSTER:") {
                    continue;
                }
                let f: Vec<&str> = line.splitn(3, '|').collect();
                let [id, name, state] = f[..] else {
                    return Err(format!("unexpected line {line:?}"));
                };
                push(name, id, state);
            }
        }
        Flavour::Pbs => {
            // Job ID  Username Queue Jobname SessID NDS TSK Memory Time S Time
            let mut body = false;
            for line in text.lines() {
                if line.starts_with("---") {
                    body = true;
                    continue;
                }
                let f: Vec<&str> = line.split_whitespace().collect();
                if body && f.len() >= 10 {
                    push(f[3], f[0], f[9]);
                }
            }
        }
        Flavour::HtCondor => {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let f: Vec<&str> = line.split(' ').collect();
                let [id, name, state] = f[..] else {
                    return Err(format!("unexpected line {line:?}"));
                };
                push(name, id, state);
            }
        }
        Flavour::Torque | Flavour::GridEngine | Flavour::Moab => {
            if !text.trim().is_empty() {
                let doc =
                    roxmltree::Document::parse(text.trim()).map_err(|e| format!("not XML: {e}"))?;
                let child = |n: roxmltree::Node, tag: &str| {
                    n.children()
                        .find(|c| c.has_tag_name(tag))
                        .and_then(|c| c.text())
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                for n in doc.descendants() {
                    match (flavour, n.tag_name().name()) {
                        (Flavour::Torque, "Job") => push(
                            &child(n, "Job_Name"),
                            &child(n, "Job_Id"),
                            &child(n, "job_state"),
                        ),
                        (Flavour::GridEngine, "job_list") => push(
                            &child(n, "JB_name"),
                            &child(n, "JB_job_number"),
                            &child(n, "state"),
                        ),
                        (Flavour::Moab, "job") => push(
                            n.attribute("JobName").unwrap_or(""),
                            n.attribute("JobID").unwrap_or(""),
                            n.attribute("State").unwrap_or(""),
                        ),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(jobs)
}

/// The WIT's spawn refs as [`Spawn`]s.
pub fn spawns(refs: &[crate::SpawnRef]) -> Vec<Spawn> {
    refs.iter()
        .map(|r| Spawn {
            spawn_id: r.spawn_id.clone(),
            user: r.user.clone(),
        })
        .collect()
}

/// A [`find_jobs`] result as the `find-jobs` export answers: every job
/// found (with the empty plugin state `submit` gives a batch job), or a
/// scheduler error — never an empty "no jobs" when the scheduler's answer
/// proved nothing.
pub fn answer(
    r: Result<BTreeMap<String, Vec<Found>>, String>,
) -> Result<Vec<crate::FoundJob>, crate::PluginError> {
    let by_spawn = r.map_err(crate::PluginError::Scheduler)?;
    Ok(by_spawn
        .into_values()
        .flatten()
        .map(|f| crate::FoundJob {
            spawn_id: f.spawn_id,
            job_id: f.job_id,
            state: String::new(),
        })
        .collect())
}

/// Runs [`query`] and [`found`]: the jobs of `spawns`, by spawn id.
pub fn find_jobs(
    flavour: Flavour,
    b: &Batch,
    host: &dyn crate::Host,
    spawns: &[Spawn],
) -> Result<BTreeMap<String, Vec<Found>>, String> {
    let mut by_spawn: BTreeMap<String, Vec<Found>> = spawns
        .iter()
        .map(|s| (s.spawn_id.clone(), Vec::new()))
        .collect();
    if spawns.is_empty() {
        return Ok(by_spawn);
    }
    let cmd = query(flavour, b, spawns);
    let out = host
        .run(&cmd)
        .map_err(|e| crate::host::run_error_message(&e))?;
    for f in found(flavour, b, spawns, &out)? {
        by_spawn.entry(f.spawn_id.clone()).or_default().push(f);
    }
    Ok(by_spawn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{formats, JobIds, Scheduler};
    use crate::testing::output;

    static SCHED: Scheduler = Scheduler {
        name: "test",
        submit: "tsub",
        status: "tstat",
        cancel: "tdel",
        submit_fixed: &[],
        cancel_fixed: &[],
        template: "{{ job_name }}\n",
        queue_field: "queue",
        queue_enabled: true,
        memory: formats::mb,
        runtime: formats::hms,
        cancel_gone: &[],
        ids: JobIds::Exact,
        status_per_call: 10,
        extra_programs: &[],
    };

    fn batch() -> Batch {
        Batch::new(&SCHED, serde_json::from_str("{}").unwrap()).unwrap()
    }

    fn spawns() -> Vec<Spawn> {
        [("sp-aaa", "alice"), ("sp-bbb", "bob"), ("sp-ccc", "alice")]
            .iter()
            .map(|(s, u)| Spawn {
                spawn_id: s.to_string(),
                user: u.to_string(),
            })
            .collect()
    }

    /// Which job ids each spawn has, as `spawn=job,job;…`.
    fn summary(flavour: Flavour, stdout: &str) -> String {
        let b = batch();
        let found = found(flavour, &b, &spawns(), &output(0, stdout, "")).unwrap();
        found
            .iter()
            .map(|f| format!("{}={}:{}", f.spawn_id, f.job_id, f.state))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn job_names_carry_the_spawn_id_or_nothing_odd() {
        assert_eq!(job_name("jupyterhub", "sp-0a1b"), "jupyterhub-sp-0a1b");
        assert_eq!(job_name("jupyterhub", "a b"), "jupyterhub");
        assert_eq!(job_name("jupyterhub", ""), "jupyterhub");
        let set: BTreeSet<String> = ["sp-aaa".to_string()].into();
        assert_eq!(
            spawn_of("jupyterhub", "jupyterhub-sp-aaa", &set),
            Some("sp-aaa")
        );
        assert_eq!(spawn_of("jupyterhub", "jupyterhub-sp-aaa2", &set), None);
        assert_eq!(spawn_of("jupyterhub", "other-sp-aaa", &set), None);
    }

    #[test]
    fn one_command_for_many_spawns() {
        let b = batch();
        let argv = |f| query(f, &b, &spawns()).args;
        assert_eq!(
            argv(Flavour::Slurm)[2],
            "--name=jupyterhub-sp-aaa,jupyterhub-sp-bbb,jupyterhub-sp-ccc"
        );
        assert_eq!(argv(Flavour::GridEngine), ["-xml", "-u", "alice,bob"]);
        assert_eq!(argv(Flavour::Pbs), ["-x", "-w", "-u", "alice,bob"]);
        assert_eq!(argv(Flavour::Lsf)[2], "alice bob");
        assert_eq!(
            argv(Flavour::HtCondor)[2],
            r#"member(JobBatchName, {"jupyterhub-sp-aaa","jupyterhub-sp-bbb","jupyterhub-sp-ccc"})"#
        );
        assert_eq!(query(Flavour::Moab, &b, &spawns()).program, "mdiag");
    }

    #[test]
    fn slurm_and_lsf_lines() {
        let out = "101|jupyterhub-sp-aaa|PENDING\n102|jupyterhub-sp-aaa2|RUNNING\n103|jupyterhub-sp-bbb|RUNNING\n104|jupyterhub|RUNNING\n";
        assert_eq!(
            summary(Flavour::Slurm, out),
            "sp-aaa=101:PENDING sp-bbb=103:RUNNING"
        );
        assert_eq!(
            summary(Flavour::Lsf, "7|jupyterhub-sp-ccc|PEND\n"),
            "sp-ccc=7:PEND"
        );
        let b = batch();
        // LSF with none of them: "No job found", exit 255: an empty answer.
        let none = found(
            Flavour::Lsf,
            &b,
            &spawns(),
            &output(255, "", "No job found\n"),
        );
        assert_eq!(none, Ok(vec![]));
        // A dead controller proves nothing.
        let dead = found(
            Flavour::Slurm,
            &b,
            &spawns(),
            &output(
                1,
                "",
                "slurm_load_jobs error: Unable to contact slurm controller\n",
            ),
        );
        assert!(dead.is_err());
        let mut cut = output(0, out, "");
        cut.truncated = true;
        assert!(found(Flavour::Slurm, &b, &spawns(), &cut).is_err());
    }

    #[test]
    fn pbs_wide_listing() {
        let out = "\npbs01:\n                                                            Req'd  Req'd   Elap\nJob ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time\n--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----\n101.pbs01       alice    workq    jupyterhub-sp-aaa  12345   1   2    4gb 08:00 R 00:01\n102.pbs01       bob      workq    jupyterhub-sp-bbb    --    1   2    4gb 08:00 Q   --\n103.pbs01       alice    workq    STDIN       999    1   1    --  01:00 R 00:10\n";
        assert_eq!(
            summary(Flavour::Pbs, out),
            "sp-aaa=101.pbs01:R sp-bbb=102.pbs01:Q"
        );
    }

    #[test]
    fn xml_listings() {
        let torque = "<Data><Job><Job_Id>101.t01</Job_Id><Job_Name>jupyterhub-sp-ccc</Job_Name><job_state>Q</job_state></Job><Job><Job_Id>102.t01</Job_Id><Job_Name>STDIN</Job_Name><job_state>R</job_state></Job></Data>";
        assert_eq!(summary(Flavour::Torque, torque), "sp-ccc=101.t01:Q");
        let sge = "<?xml version='1.0'?>\n<job_info><queue_info><job_list state=\"running\"><JB_job_number>55</JB_job_number><JB_name>jupyterhub-sp-bbb</JB_name><JB_owner>bob</JB_owner><state>r</state></job_list></queue_info><job_info><job_list state=\"pending\"><JB_job_number>56</JB_job_number><JB_name>jupyterhub-sp-aaa</JB_name><state>qw</state></job_list></job_info></job_info>";
        assert_eq!(
            summary(Flavour::GridEngine, sge),
            "sp-bbb=55:r sp-aaa=56:qw"
        );
        let moab = "<Data><job JobID=\"1234\" JobName=\"jupyterhub-sp-aaa\" State=\"Idle\"><req/></job><job JobID=\"1235\" JobName=\"x\" State=\"Running\"/></Data>";
        assert_eq!(summary(Flavour::Moab, moab), "sp-aaa=1234:Idle");
        assert!(found(
            Flavour::Moab,
            &batch(),
            &spawns(),
            &output(0, "<Data><job", "")
        )
        .is_err());
    }

    #[test]
    fn htcondor_autoformat() {
        let out = "301.0 jupyterhub-sp-aaa 1\n302.0 jupyterhub-sp-bbb 2\n";
        assert_eq!(
            summary(Flavour::HtCondor, out),
            "sp-aaa=301.0:1 sp-bbb=302.0:2"
        );
    }

    #[test]
    fn find_jobs_answers_every_spawn() {
        let host = crate::testing::FakeHost::new();
        host.on("tstat", &["**"])
            .stdout("101|jupyterhub-sp-aaa|PENDING\n");
        let m = find_jobs(Flavour::Slurm, &batch(), &host, &spawns()).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["sp-aaa"][0].job_id, "101");
        assert!(m["sp-bbb"].is_empty());
        assert_eq!(host.calls().len(), 1);
    }
}
