//! Status by job id: the commands, the answers a plugin's parser reads them
//! into, and the mapping to a state per job.

use std::collections::{BTreeSet, HashMap};

use crate::host::{run_error_message, Host};
use crate::{Command, DoneInfo, Job, JobState, Output, PendingInfo, RunningInfo};

use super::Batch;

impl Batch {
    /// Runs one status command and maps its answer for every job.
    /// `parse` reads the output; an `Err` makes every job `unknown`.
    pub fn status(
        &self,
        host: &dyn Host,
        jobs: &[Job],
        cmd: Command,
        parse: impl FnOnce(&Output) -> Result<Answer, String>,
    ) -> Vec<JobState> {
        if jobs.is_empty() {
            return vec![];
        }
        let answer = match host.run(&cmd) {
            Err(e) => Err(format!(
                "`{}` could not run: {}",
                self.sched.status,
                run_error_message(&e)
            )),
            Ok(out) if out.truncated => Err(format!(
                "`{}` output was cut at the host's cap",
                self.sched.status
            )),
            Ok(out) if is_empty_listing(&out) => Ok(Answer::complete(vec![])),
            Ok(out) => parse(&out).map_err(|e| format!("`{}`: {e}", self.sched.status)),
        };
        match answer {
            Ok(a) => self.map_states(jobs, &a),
            Err(why) => {
                host.log(crate::Level::Warn, &why);
                jobs.iter()
                    .map(|_| JobState::Unknown(why.clone()))
                    .collect()
            }
        }
    }

    /// Job ids one status command asks about.
    pub fn status_per_call(&self) -> usize {
        self.config
            .status_ids_per_call
            .unwrap_or(self.sched.status_per_call)
            .max(1)
    }

    /// Status by job id, never "every job of the site": the jobs in chunks
    /// of [`Batch::status_per_call`] ids, one command per chunk (`cmd` builds
    /// it from the chunk's jobs). An answer cut at the host's output cap is
    /// asked again in halves; a command the host refuses or that cannot run
    /// ends the round (the remaining jobs are `unknown`, as the run budget
    /// is spent or the scheduler is down).
    pub fn status_by_id(
        &self,
        host: &dyn Host,
        jobs: &[Job],
        cmd: impl Fn(&[&Job]) -> Command,
        parse: impl Fn(&Output) -> Result<Answer, String>,
    ) -> Vec<JobState> {
        let per = self.status_per_call();
        let groups = (0..jobs.len())
            .collect::<Vec<_>>()
            .chunks(per)
            .map(<[usize]>::to_vec)
            .collect();
        let halves = |_: &[Job], g: &[usize]| {
            (g.len() > 1).then(|| {
                let (a, b) = g.split_at(g.len() / 2);
                (a.to_vec(), b.to_vec())
            })
        };
        self.status_in_groups(host, jobs, groups, halves, cmd, parse)
    }

    /// [`Batch::status_by_id`] with the caller's grouping: `groups` are
    /// indices into `jobs`, one command each; `split` divides a group whose
    /// answer was cut at the output cap (`None`: it cannot be divided, its
    /// jobs are `unknown`).
    pub fn status_in_groups(
        &self,
        host: &dyn Host,
        jobs: &[Job],
        groups: Vec<Vec<usize>>,
        split: impl Fn(&[Job], &[usize]) -> Option<(Vec<usize>, Vec<usize>)>,
        cmd: impl Fn(&[&Job]) -> Command,
        parse: impl Fn(&Output) -> Result<Answer, String>,
    ) -> Vec<JobState> {
        let program = self.sched.status;
        let mut states: Vec<Option<JobState>> = vec![None; jobs.len()];
        let mut todo: std::collections::VecDeque<Vec<usize>> = groups.into();
        let mut stopped: Option<String> = None;
        while let Some(group) = todo.pop_front() {
            if group.is_empty() {
                continue;
            }
            let asked: Vec<&Job> = group.iter().map(|&i| &jobs[i]).collect();
            let answer = match host.run(&cmd(&asked)) {
                Err(e) => {
                    let why = format!("`{program}` could not run: {}", run_error_message(&e));
                    for &i in &group {
                        states[i] = Some(JobState::Unknown(why.clone()));
                    }
                    stopped = Some(why);
                    break;
                }
                Ok(out) if out.truncated => {
                    if let Some((a, b)) = split(jobs, &group) {
                        todo.push_front(b);
                        todo.push_front(a);
                        continue;
                    }
                    Err(format!(
                        "`{program}` output for {} job(s) was cut at the host's output cap \
                         (limits.output_bytes; or lower status_ids_per_call)",
                        group.len()
                    ))
                }
                Ok(out) if is_empty_listing(&out) => Ok(Answer::complete(vec![])),
                Ok(out) => parse(&out).map_err(|e| format!("`{program}`: {e}")),
            };
            let owned: Vec<Job> = asked.into_iter().cloned().collect();
            let mapped = match answer {
                Ok(a) => self.map_states(&owned, &a),
                Err(why) => {
                    host.log(crate::Level::Warn, &why);
                    owned
                        .iter()
                        .map(|_| JobState::Unknown(why.clone()))
                        .collect()
                }
            };
            for (&i, st) in group.iter().zip(mapped) {
                states[i] = Some(st);
            }
        }
        if let Some(why) = &stopped {
            host.log(crate::Level::Warn, why);
        }
        let rest = stopped.unwrap_or_else(|| "not asked".into());
        states
            .into_iter()
            .map(|s| s.unwrap_or_else(|| JobState::Unknown(rest.clone())))
            .collect()
    }

    /// Maps a parsed answer to a state per job, in order. An asked id finds
    /// only the job the scheduler's own spelling rules make it
    /// ([`Scheduler::ids`]).
    pub fn map_states(&self, jobs: &[Job], a: &Answer) -> Vec<JobState> {
        let ids = self.sched.ids;
        let mut seen: HashMap<std::borrow::Cow<'_, str>, Vec<&Seen>> = HashMap::new();
        for s in &a.jobs {
            seen.entry(ids.key(&s.id)).or_default().push(s);
        }
        jobs.iter()
            .map(|j| {
                let key = ids.key(&j.job_id);
                let found = seen
                    .get(&key)
                    .and_then(|c| c.iter().find(|s| ids.same(&s.id, &j.job_id)));
                if let Some(s) = found {
                    return self.state_of(s);
                }
                if a.gone.iter().any(|g| ids.same(g, &j.job_id)) {
                    return JobState::Done(DoneInfo {
                        exit_code: None,
                        reason: "the scheduler no longer knows the job (finished)".into(),
                    });
                }
                match &a.absent_means_done {
                    Ok(()) => JobState::Done(DoneInfo {
                        exit_code: None,
                        reason: "the job has left the queue (finished)".into(),
                    }),
                    Err(why) => JobState::Unknown(why.clone()),
                }
            })
            .collect()
    }

    fn state_of(&self, s: &Seen) -> JobState {
        let pending = |what: &str| {
            let mut reason = join_reason(what, &s.reason);
            if let Some(t) = &s.expected_start_text {
                reason.push_str(&format!(", expected start {t}"));
            } else if let Some(e) = s.expected_start {
                reason.push_str(&format!(", expected start {}", utc(e)));
            }
            JobState::Pending(PendingInfo {
                expected_start: s.expected_start,
                time_limit: crate::TimeLimit {
                    limit_secs: s.time_limit_secs,
                    ends_at: None,
                },
                ..PendingInfo::new(reason)
            })
        };
        let done = |what: &str| {
            JobState::Done(DoneInfo {
                exit_code: s.exit_code,
                reason: join_reason(what, &s.reason),
            })
        };
        match s.phase {
            Phase::Pending => pending("pending"),
            Phase::Held => pending("held"),
            Phase::Waiting => pending("waiting"),
            Phase::Configuring => pending("configuring"),
            // A suspended job keeps its allocation but its server does not
            // answer; it is not done.
            Phase::Suspended => pending("suspended"),
            Phase::Running => JobState::Running(RunningInfo {
                started_at: s.started_at,
                time_limit: crate::TimeLimit {
                    limit_secs: s.time_limit_secs,
                    // The end the scheduler states, else its time left from
                    // this call's clock.
                    ends_at: s
                        .ends_at
                        .or_else(|| s.time_left_secs.and_then(|left| now()?.checked_add(left))),
                },
                ..RunningInfo::on(s.host.as_deref().and_then(|h| self.address(h)))
            }),
            Phase::Completing => done("completing"),
            Phase::Exiting => done("exiting"),
            Phase::Completed => match s.exit_code {
                Some(c) if c != 0 => done(&format!("failed: exit code {c}")),
                _ => done("completed"),
            },
            Phase::Failed => done("failed"),
            Phase::Cancelled => done("cancelled"),
            Phase::Unknown => JobState::Unknown(format!(
                "the scheduler reports state {:?}, which does not say whether the job runs",
                s.raw
            )),
        }
    }
}

fn join_reason(what: &str, reason: &str) -> String {
    if reason.is_empty() || reason == what {
        what.to_string()
    } else {
        format!("{what}: {reason}")
    }
}

/// Seconds since the epoch by the wall clock the host lends the guest.
fn now() -> Option<u64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// `2026-12-01T23:10:00Z` for seconds since the epoch (civil from days,
/// proleptic Gregorian).
pub(crate) fn utc(epoch: u64) -> String {
    let (days, secs) = ((epoch / 86_400) as i64, epoch % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A job's state, in the words every scheduler documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Held,
    Waiting,
    Suspended,
    Configuring,
    Running,
    Completing,
    Exiting,
    /// Ended; the exit code (if known) tells success from failure.
    Completed,
    Failed,
    Cancelled,
    /// A state word that says nothing certain (e.g. LSF `UNKWN`).
    Unknown,
}

/// One job in a scheduler's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub id: String,
    pub phase: Phase,
    /// The scheduler's own state word, for messages.
    pub raw: String,
    /// The execution host field, as the scheduler printed it.
    pub host: Option<String>,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub expected_start: Option<u64>,
    /// The expected start as the scheduler printed it, for the reason text
    /// (`2026-12-01T23:10:00`) when it gives no epoch.
    pub expected_start_text: Option<String>,
    /// The job's wall-clock limit, seconds (API 0.2 status carries it).
    pub time_limit_secs: Option<u64>,
    /// Seconds the job has left before the scheduler ends it (running).
    pub time_left_secs: Option<u64>,
    /// When the job started, seconds since the epoch (running).
    pub started_at: Option<u64>,
    /// When the scheduler will end the job, seconds since the epoch, where
    /// its answer says so (running); else the end is `time_left_secs` from
    /// the call's clock.
    pub ends_at: Option<u64>,
}

/// Longer limits than this are a scheduler's "unlimited" (Moab's
/// `MMAX_TIME`, 2 140 000 000 s), not a limit: 20 years.
pub const MAX_LIMIT_SECS: u64 = 20 * 365 * 86_400;

/// A plausible time stamp (2001‥2200), seconds since the epoch.
fn plausible_epoch(t: Option<u64>) -> Option<u64> {
    t.filter(|&t| (1_000_000_000..7_258_118_400).contains(&t))
}

impl Seen {
    pub fn new(id: impl Into<String>, phase: Phase, raw: impl Into<String>) -> Self {
        Seen {
            id: id.into(),
            phase,
            raw: raw.into(),
            host: None,
            reason: String::new(),
            exit_code: None,
            expected_start: None,
            expected_start_text: None,
            time_limit_secs: None,
            time_left_secs: None,
            started_at: None,
            ends_at: None,
        }
    }
    /// The wall-clock limit, seconds (0 and "unlimited" sentinels past
    /// [`MAX_LIMIT_SECS`] are none).
    pub fn time_limit(mut self, secs: Option<u64>) -> Self {
        self.time_limit_secs = secs.filter(|&s| s > 0 && s <= MAX_LIMIT_SECS);
        self
    }
    /// The time left before the limit, seconds (a running job).
    pub fn time_left(mut self, secs: Option<u64>) -> Self {
        self.time_left_secs = secs.filter(|&s| s <= MAX_LIMIT_SECS);
        self
    }
    /// When the job started, seconds since the epoch (0 and implausible
    /// stamps are none).
    pub fn started_at(mut self, epoch_secs: Option<u64>) -> Self {
        self.started_at = plausible_epoch(epoch_secs);
        self
    }
    /// When the scheduler will end the job, seconds since the epoch, as its
    /// answer states it (a running job; implausible stamps are none).
    pub fn ends_at(mut self, epoch_secs: Option<u64>) -> Self {
        self.ends_at = plausible_epoch(epoch_secs);
        self
    }
    /// The expected start, seconds since the epoch (a pending job only).
    pub fn expected_start(mut self, epoch: Option<u64>) -> Self {
        self.expected_start = epoch.filter(|&e| e > 0);
        self
    }
    /// The expected start as printed (`N/A`, `Unknown`, `-` and the like
    /// are nothing).
    pub fn expected_start_text(mut self, t: &str) -> Self {
        let t = t.trim();
        if t.bytes().next().is_some_and(|b| b.is_ascii_digit()) && t.len() <= 40 {
            self.expected_start_text = Some(t.to_string());
        }
        self
    }
    pub fn host(mut self, h: &str) -> Self {
        self.host = crate::parse::first_host(h).map(|_| h.trim().to_string());
        self
    }
    pub fn reason(mut self, r: &str) -> Self {
        let r = r.trim();
        if !matches!(r, "" | "None" | "(null)" | "-" | "undefined" | "n/a") {
            self.reason = r.to_string();
        }
        self
    }
    pub fn exit_code(mut self, c: Option<i32>) -> Self {
        self.exit_code = c;
        self
    }
}

/// What one status command said.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub jobs: Vec<Seen>,
    /// Ids the scheduler explicitly says it does not know (any more).
    pub gone: BTreeSet<String>,
    /// `Ok` when the command fully succeeded, so a job missing from the
    /// answer has left the queue; `Err(why)` makes missing jobs `unknown`.
    pub absent_means_done: Result<(), String>,
}

impl Answer {
    /// An answer from a command that fully succeeded.
    pub fn complete(jobs: Vec<Seen>) -> Self {
        Answer {
            jobs,
            gone: BTreeSet::new(),
            absent_means_done: Ok(()),
        }
    }

    /// An answer whose missing jobs are unknown, for `why`.
    pub fn partial(jobs: Vec<Seen>, why: impl Into<String>) -> Self {
        Answer {
            jobs,
            gone: BTreeSet::new(),
            absent_means_done: Err(why.into()),
        }
    }
}

/// A status command that succeeded and printed nothing at all: a job-less
/// listing, read the same way by every batch plugin (none of the asked jobs
/// is in the queue any more), whatever format the scheduler prints jobs in.
pub fn is_empty_listing(out: &Output) -> bool {
    out.success()
        && !out.truncated
        && out.stdout.iter().all(u8::is_ascii_whitespace)
        && out.stderr.iter().all(u8::is_ascii_whitespace)
}

/// For text answers: fails on a non-zero exit or unexpected stderr, except
/// stderr lines that `gone` recognises (returning the job id they name).
/// Returns the ids named "gone" and whether anything else went wrong.
pub fn check_exit(
    out: &Output,
    gone: impl Fn(&str) -> Option<String>,
) -> (BTreeSet<String>, Result<(), String>) {
    let mut ids = BTreeSet::new();
    let mut other = Vec::new();
    for line in out.stderr_str().lines() {
        match gone(line) {
            Some(id) => {
                ids.insert(id);
            }
            None if !line.trim().is_empty() => other.push(line.trim().to_string()),
            None => {}
        }
    }
    for line in out.stdout_str().lines() {
        if let Some(id) = gone(line) {
            ids.insert(id);
        }
    }
    let ok = if !other.is_empty() {
        Err(format!(
            "exit status {}, error output: {}",
            out.exit_code,
            other.join(" | ").chars().take(300).collect::<String>()
        ))
    } else if !out.success() && ids.is_empty() {
        Err(format!("exit status {} and no error output", out.exit_code))
    } else {
        Ok(())
    };
    (ids, ok)
}
