//! What batch-scheduler plugins share: the site config, the options form,
//! the batch-script context, submit/cancel command building and the mapping
//! of scheduler states to [`JobState`].
//!
//! A scheduler plugin describes itself with a [`Scheduler`] (program names,
//! default template, value formats) and writes only what differs: how to
//! ask for the state of many jobs and how to read the answer into an
//! [`Answer`]. Everything else is [`Batch`].
//!
//! The tree: [`config`] (the site's `[config]` table), [`form`] (the form
//! from a table of fields, and validation), [`script`] (the template
//! context, the batch script, submit), [`status`] (status by job id and the
//! mapping of answers), [`formats`] (value formats), [`pbs`] (what the PBS
//! family shares), [`find`] (a spawn's jobs by their name tag).

pub mod config;
pub mod find;
pub mod form;
pub mod formats;
pub mod pbs;
pub mod plugin;
pub mod script;
pub mod status;

pub use config::{toml_like, BatchConfig, ExtraOptionsConfig, FieldConfig};
pub use form::{number_fields, FieldSpec, FormEntry};
pub use plugin::BatchPlugin;
pub use status::{check_exit, is_empty_listing, Answer, Phase, Seen};

use crate::host::Host;
use crate::parse::first_host;
use crate::{Command, FormSchema, Job, PluginError, ProgramUse};

/// The static description of a scheduler, given by its plugin.
pub struct Scheduler {
    /// The plugin's name (`slurm`, `pbs`, …), used in messages.
    pub name: &'static str,
    /// Programs (bare names; the host resolves them through the instance's
    /// `search_path`, so `/opt/slurm/bin` is a site setting there).
    pub submit: &'static str,
    pub status: &'static str,
    pub cancel: &'static str,
    /// Arguments the plugin always passes to the submit command, before the
    /// site's `submit_args` (e.g. `--parsable`).
    pub submit_fixed: &'static [&'static str],
    /// Arguments the plugin always passes to the cancel command, before the
    /// site's `cancel_args` (e.g. Moab's `mjobctl -c`).
    pub cancel_fixed: &'static [&'static str],
    /// The default batch script (minijinja).
    pub template: &'static str,
    /// The form field id of the queue: `partition` (Slurm) or `queue`.
    pub queue_field: &'static str,
    /// Whether the queue field appears unless the site says otherwise
    /// (HTCondor has no queues).
    pub queue_enabled: bool,
    /// How a memory request in MiB is written for this scheduler.
    pub memory: fn(u64) -> String,
    /// How a wall time in minutes is written for this scheduler.
    pub runtime: fn(u64) -> String,
    /// Cancel output (stdout or stderr) that means "the job already ended or
    /// is unknown", so cancelling it is not an error.
    pub cancel_gone: &'static [&'static str],
    /// How two spellings of one job id compare (exact, apart from what the
    /// scheduler itself treats as the same job).
    pub ids: JobIds,
    /// How many job ids one status command asks about (the site's
    /// `status_ids_per_call` overrides it): chosen so one answer stays well
    /// inside the host's output cap (1 MiB by default).
    pub status_per_call: usize,
    /// Further programs the plugin runs with any arguments, declared beside
    /// the three (e.g. a program only finding jobs by name uses).
    pub extra_programs: &'static [&'static str],
}

/// How a scheduler spells one job's id, so an asked id finds the job in an
/// answer and never another job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobIds {
    /// Equal strings only (Slurm, Grid Engine, LSF).
    Exact,
    /// PBS and Torque `SEQ.SERVER`: the sequence number must be equal and
    /// the server the same name, short or fully qualified (`101.pbs01` is
    /// `101.pbs01.example.org`, never `101.pbs02`).
    PbsServer,
    /// HTCondor `CLUSTER.PROC`: a bare cluster is its process 0 (`301` is
    /// `301.0`, never `301.1`).
    CondorProc,
    /// Moab: `Moab.42` is `42`.
    MoabPrefix,
}

impl JobIds {
    /// The part of an id that must be equal for two ids to be one job (an
    /// index key; [`JobIds::same`] decides).
    pub fn key<'a>(&self, id: &'a str) -> std::borrow::Cow<'a, str> {
        let id = id.trim();
        match self {
            JobIds::Exact => id.into(),
            JobIds::PbsServer => id.split('.').next().unwrap_or(id).into(),
            JobIds::CondorProc => match id.split_once('.') {
                None => format!("{id}.0").into(),
                Some(_) => id.into(),
            },
            JobIds::MoabPrefix => id.strip_prefix("Moab.").unwrap_or(id).into(),
        }
    }

    /// Whether `a` and `b` name the same job.
    pub fn same(&self, a: &str, b: &str) -> bool {
        let (a, b) = (a.trim(), b.trim());
        if a == b {
            return true;
        }
        match self {
            JobIds::PbsServer => {
                let (Some((sa, ha)), Some((sb, hb))) = (a.split_once('.'), b.split_once('.'))
                else {
                    return false;
                };
                sa == sb && !ha.is_empty() && !hb.is_empty() && {
                    let (short, long) = if ha.len() <= hb.len() {
                        (ha, hb)
                    } else {
                        (hb, ha)
                    };
                    long.strip_prefix(short)
                        .is_some_and(|rest| rest.starts_with('.'))
                }
            }
            _ => self.key(a) == self.key(b),
        }
    }
}

impl Scheduler {
    /// The capabilities a batch plugin declares: the three programs with any
    /// arguments; only submit receives the spawn's environment.
    pub fn capabilities(&self) -> crate::DeclaredCapabilities {
        let use_ = |p: &str, spawn_env| ProgramUse {
            program: p.into(),
            args: vec!["**".into()],
            spawn_env,
        };
        crate::DeclaredCapabilities {
            programs: [
                use_(self.submit, true),
                use_(self.status, false),
                use_(self.cancel, false),
            ]
            .into_iter()
            .chain(self.extra_programs.iter().map(|p| use_(p, false)))
            .collect(),
            ssh: vec![],
            detached: vec![],
        }
    }
}

/// A queue, account or extra-option word: no shell or directive syntax.
pub(crate) const SAFE_WORD: &str = "[A-Za-z0-9_][A-Za-z0-9_.@+-]*";

pub(crate) fn is_safe_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.@+-".contains(c))
}

pub(crate) fn is_safe_option_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.,:=@+/%-".contains(&c))
}

/// A batch plugin's shared logic, built from its [`Scheduler`] and the
/// site's [`BatchConfig`].
pub struct Batch {
    pub sched: &'static Scheduler,
    pub config: BatchConfig,
}

impl Batch {
    /// Checks the site config; errors name the key.
    pub fn new(sched: &'static Scheduler, config: BatchConfig) -> Result<Self, PluginError> {
        let b = Batch { sched, config };
        let cfg = |m: String| Err(PluginError::Config(m));
        for (key, f) in [
            (b.sched.queue_field, &b.config.queue),
            ("account", &b.config.account),
        ] {
            if let Some(bad) = f.choices.iter().find(|c| !is_safe_word(c)) {
                return cfg(format!(
                    "{key}.choices: {bad:?} is not a plain name ({SAFE_WORD})"
                ));
            }
            if let Some(bad) = f.groups.keys().find(|c| !f.choices.contains(c)) {
                return cfg(format!("{key}.groups: {bad:?} is not one of {key}.choices"));
            }
            if let Some(d) = &f.default {
                let d = d.to_string();
                if !f.choices.is_empty() && !f.choices.contains(&d) {
                    return cfg(format!("{key}.default: {d:?} is not one of {key}.choices"));
                }
                if f.choices.is_empty() && !is_safe_word(&d) {
                    return cfg(format!("{key}.default: {d:?} is not a plain name"));
                }
            }
        }
        for spec in b.int_specs() {
            let f = b.int_config(spec.id);
            if !f.choices.is_empty() || !f.groups.is_empty() {
                return cfg(format!(
                    "{}: choices and groups apply to queue and account only",
                    spec.id
                ));
            }
            if let Some(d) = &f.default {
                if !matches!(d, toml_like::Scalar::Int(_)) {
                    return cfg(format!("{}.default: expected an integer, got {d}", spec.id));
                }
            }
            let (min, max) = (f.min.unwrap_or(spec.min), f.max.unwrap_or(spec.max));
            if min < 0 || min > max {
                return cfg(format!(
                    "{}: min {min} and max {max} are not a range of non-negative numbers",
                    spec.id
                ));
            }
        }
        if let Some(bad) = b
            .config
            .extra_options
            .allowed_flags
            .iter()
            .find(|f| !f.starts_with('-') || !is_safe_option_token(f) || f.contains('='))
        {
            return cfg(format!(
                "extra_options.allowed_flags: {bad:?} is not a flag like \"--qos\" or \"-q\""
            ));
        }
        if let Some(p) = &b.config.host_pattern {
            if !p.contains("{host}") && !p.contains("{short}") {
                return cfg("host_pattern: must contain {host} or {short}".into());
            }
        }
        if let Some(t) = &b.config.template {
            // Parse now so a broken site template is a config error at load.
            let mut env = minijinja::Environment::new();
            env.add_template("site", t)
                .map_err(|e| PluginError::Config(format!("template: {e}")))?;
        }
        if let Some(n) = b.config.status_ids_per_call {
            if !(1..=100_000).contains(&n) {
                return cfg(format!(
                    "status_ids_per_call: {n} is not between 1 and 100000"
                ));
            }
        }
        if let Some(n) = &b.config.job_name {
            if !is_safe_word(n) {
                return cfg(format!("job_name: {n:?} is not a plain name"));
            }
        }
        Ok(b)
    }

    fn command(&self, program: &str, specific: &[String]) -> Command {
        Command::new(program)
            .args(self.config.extra_args.iter().cloned())
            .args(specific.iter().cloned())
            .timeout_ms(self.config.timeout_ms)
    }

    /// A status command: `program`, the site's args, then `args`.
    pub fn status_command(&self, args: impl IntoIterator<Item = String>) -> Command {
        self.command(self.sched.status, &self.config.status_args)
            .args(args)
    }

    /// Cancels; "already finished / unknown job" answers are success.
    pub fn cancel(&self, host: &dyn Host, job: &Job) -> Result<(), PluginError> {
        let cmd = Command::new(self.sched.cancel)
            .args(self.sched.cancel_fixed.iter().copied())
            .args(self.config.extra_args.iter().cloned())
            .args(self.config.cancel_args.iter().cloned())
            .arg(job.job_id.clone())
            .timeout_ms(self.config.timeout_ms);
        let out = host.run(&cmd)?;
        if out.success() {
            return Ok(());
        }
        let text = format!("{}\n{}", out.stdout_str(), out.stderr_str());
        if self.sched.cancel_gone.iter().any(|p| text.contains(p)) {
            return Ok(());
        }
        Err(PluginError::Scheduler(format!(
            "`{}` exited with status {}: {}",
            self.sched.cancel,
            out.exit_code,
            excerpt(&out.stdout_str(), &out.stderr_str())
        )))
    }

    /// The address the hub connects to for an execution-host field.
    pub fn address(&self, field: &str) -> Option<String> {
        let host = first_host(field)?;
        let short = host.split('.').next().unwrap_or(&host).to_string();
        if let Some(p) = &self.config.host_pattern {
            return Some(p.replace("{host}", &host).replace("{short}", &short));
        }
        match &self.config.host_suffix {
            Some(suffix) if !host.contains('.') => Some(format!("{host}{suffix}")),
            _ => Some(host),
        }
    }
}

pub(crate) fn excerpt(stdout: &str, stderr: &str) -> String {
    let s = format!("{} {}", stdout.trim(), stderr.trim());
    let s = s.trim();
    if s.is_empty() {
        return "(no output)".into();
    }
    s.chars().take(400).collect()
}

/// The descriptor of a batch plugin.
pub fn descriptor(sched: &Scheduler, version: &str, description: &str) -> crate::Descriptor {
    crate::Descriptor {
        name: sched.name.into(),
        version: version.into(),
        api_version: crate::API_VERSION.into(),
        description: description.into(),
        capabilities: sched.capabilities().into(),
    }
}

/// Defines a batch plugin type `$ty` from a [`Scheduler`] and a status
/// function `fn(&Batch, &dyn Host, &[Job]) -> Vec<JobState>`, implements
/// [`crate::Plugin`] for it and exports it.
#[macro_export]
macro_rules! batch_plugin {
    ($ty:ident, $sched:expr, $description:expr, $status:path $(, find: $find:path)?) => {
        $crate::batch_plugin_type!($ty, $sched, $description, $status $(, find: $find)?);
        $crate::export_plugin!($ty);
    };
}

/// [`batch_plugin!`] without the export: for a scheduler crate that other
/// plugins build on (a component has one set of exports, so only the final
/// plugin exports).
#[macro_export]
macro_rules! batch_plugin_type {
    ($ty:ident, $sched:expr, $description:expr, $status:path $(, find: $find:path)?) => {
        pub struct $ty(pub $crate::batch::Batch);

        impl $crate::batch::BatchPlugin for $ty {
            fn batch(&self) -> &$crate::batch::Batch {
                &self.0
            }
            fn status(&self, host: &dyn $crate::Host, jobs: &[$crate::Job]) -> Vec<$crate::JobState> {
                $status(&self.0, host, jobs)
            }
            $(
            fn find_jobs(
                &self,
                host: &dyn $crate::Host,
                spawns: &[$crate::SpawnRef],
            ) -> Result<Vec<$crate::FoundJob>, $crate::PluginError> {
                $crate::batch::find::answer($find(&self.0, host, &$crate::batch::find::spawns(spawns)))
            }
            )?
        }

        $crate::plugin_via_batch!(
            $ty,
            describe: || $crate::batch::descriptor(&$sched, env!("CARGO_PKG_VERSION"), $description),
            new: |config| $crate::batch::Batch::new(&$sched, config).map($ty)
        );
    };
}

/// A user-facing list of options for docs and tests: the field ids in form order.
pub fn field_ids(form: &FormSchema) -> Vec<&str> {
    form.fields.iter().map(|f| f.id.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{jobs, output, text, user};
    use crate::{JobState, Output};

    static TEST: Scheduler = TEST_FIELDS;
    const TEST_FIELDS: Scheduler = Scheduler {
        name: "test",
        submit: "tsub",
        status: "tstat",
        cancel: "tdel",
        submit_fixed: &[],
        cancel_fixed: &[],
        template: "{{ cmd }}\n",
        queue_field: "queue",
        queue_enabled: true,
        memory: formats::mb,
        runtime: formats::hms,
        cancel_gone: &[],
        ids: JobIds::Exact,
        status_per_call: 2,
        extra_programs: &[],
    };

    fn batch(config: &str) -> Batch {
        Batch::new(&TEST, serde_json::from_str(config).unwrap()).unwrap()
    }

    #[test]
    fn job_ids_match_exactly_or_by_the_schedulers_own_rule() {
        use JobIds::*;
        assert!(PbsServer.same("101.pbs01", "101.pbs01.example.org"));
        assert!(PbsServer.same("101.pbs01.example.org", "101.pbs01"));
        assert!(!PbsServer.same("101.serverA", "101.serverB"));
        assert!(!PbsServer.same("101.pbs01", "101.pbs011"));
        assert!(!PbsServer.same("101.a", "102.a"));
        assert!(!PbsServer.same("101", "101.a"));
        assert!(CondorProc.same("301", "301.0"));
        assert!(!CondorProc.same("301", "301.1"));
        assert!(!CondorProc.same("301", "3010"));
        assert!(MoabPrefix.same("Moab.42", "42"));
        assert!(!MoabPrefix.same("Moab.42", "420"));
        assert!(!Exact.same("101", "1010"));
        assert!(!Exact.same("101.serverA", "101.serverB"));
        assert!(Exact.same("123[1]", " 123[1]"));
        assert!(!Exact.same("123[1]", "123[2]"));
    }

    #[test]
    fn map_states_never_takes_another_servers_job() {
        let mut b = batch("{}");
        static PBSLIKE: Scheduler = Scheduler {
            ids: JobIds::PbsServer,
            ..TEST_FIELDS
        };
        b.sched = &PBSLIKE;
        let a = Answer::complete(vec![Seen::new("101.serverB", Phase::Running, "R")]);
        let s = b.map_states(&jobs(&["101.serverA", "101.serverB.example.org"]), &a);
        assert!(matches!(&s[0], JobState::Done(_)), "{s:?}");
        assert!(matches!(&s[1], JobState::Running(_)), "{s:?}");
    }

    #[test]
    fn time_limits_start_and_end_reach_the_job_state() {
        let b = batch("{}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let a = Answer::complete(vec![
            // The scheduler's own end wins over its time left.
            Seen::new("1", Phase::Running, "R")
                .time_limit(Some(3600))
                .time_left(Some(600))
                .started_at(Some(1_764_583_200))
                .ends_at(Some(1_764_586_800)),
            Seen::new("2", Phase::Running, "R")
                .time_limit(Some(3600))
                .time_left(Some(600)),
            // Moab's MMAX_TIME and a zero limit are no limit; a start at
            // 0 or in the 1970s is no start.
            Seen::new("3", Phase::Running, "R")
                .time_limit(Some(2_140_000_000))
                .started_at(Some(0))
                .ends_at(Some(12)),
            Seen::new("4", Phase::Pending, "Q")
                .time_limit(Some(0))
                .time_left(Some(5)),
            Seen::new("5", Phase::Held, "H").time_limit(Some(7200)),
        ]);
        let s = b.map_states(&jobs(&["1", "2", "3", "4", "5"]), &a);
        let JobState::Running(r) = &s[0] else {
            panic!("{s:?}")
        };
        assert_eq!(r.started_at, Some(1_764_583_200));
        assert_eq!(r.time_limit.limit_secs, Some(3600));
        assert_eq!(r.time_limit.ends_at, Some(1_764_586_800));
        let JobState::Running(r) = &s[1] else {
            panic!("{s:?}")
        };
        let end = r.time_limit.ends_at.unwrap();
        assert!((now + 600..=now + 605).contains(&end), "{end}");
        let JobState::Running(r) = &s[2] else {
            panic!("{s:?}")
        };
        assert_eq!(
            (r.started_at, r.time_limit.limit_secs, r.time_limit.ends_at),
            (None, None, None)
        );
        let JobState::Pending(p) = &s[3] else {
            panic!("{s:?}")
        };
        assert_eq!(
            (p.time_limit.limit_secs, p.time_limit.ends_at),
            (None, None)
        );
        let JobState::Pending(p) = &s[4] else {
            panic!("{s:?}")
        };
        assert_eq!(
            (p.time_limit.limit_secs, p.time_limit.ends_at),
            (Some(7200), None)
        );
    }

    fn parse_lines(out: &Output) -> Result<Answer, String> {
        Ok(Answer::complete(
            out.stdout_str()
                .lines()
                .map(|l| Seen::new(l.split(' ').next().unwrap(), Phase::Running, "R"))
                .collect(),
        ))
    }

    fn by_id(b: &Batch, host: &crate::testing::FakeHost, ids: &[&str]) -> Vec<JobState> {
        b.status_by_id(
            host,
            &jobs(ids),
            |chunk| Command::new("tstat").args(chunk.iter().map(|j| j.job_id.clone())),
            parse_lines,
        )
    }

    #[test]
    fn status_by_id_asks_in_chunks_and_halves_a_cut_answer() {
        let b = batch(r#"{"status_ids_per_call":4}"#);
        let host = crate::testing::FakeHost::new();
        host.output_cap(30);
        // Each job prints 10 bytes: 4 jobs (40) pass the cap, 2 do not.
        host.on("tstat", &["**"]).with(|c| {
            let out: String = c.args.iter().map(|id| format!("{id:<9}\n")).collect();
            crate::testing::output(0, &out, "")
        });
        let ids = ["1", "2", "3", "4", "5", "6"];
        let s = by_id(&b, &host, &ids);
        assert!(s.iter().all(|s| matches!(s, JobState::Running(_))), "{s:?}");
        let argvs: Vec<Vec<String>> = host
            .calls()
            .iter()
            .map(|c| c.command.args.clone())
            .collect();
        assert_eq!(
            argvs,
            vec![
                vec!["1", "2", "3", "4"],
                vec!["1", "2"],
                vec!["3", "4"],
                vec!["5", "6"]
            ]
        );
        // One job whose answer alone passes the cap: unknown, naming the cap.
        host.output_cap(5);
        let s = by_id(&b, &host, &["1"]);
        assert!(
            matches!(&s[0], JobState::Unknown(w) if w.contains("output cap")),
            "{s:?}"
        );
    }

    #[test]
    fn status_by_id_stops_at_the_first_refused_command() {
        let b = batch(r#"{"status_ids_per_call":1}"#);
        let host = crate::testing::FakeHost::new();
        host.on("tstat", &["1"]).stdout("1\n");
        host.on("tstat", &["2"])
            .fails(crate::RunError::Denied("run budget spent".into()));
        host.on("tstat", &["3"]).stdout("3\n");
        let s = by_id(&b, &host, &["1", "2", "3"]);
        assert!(matches!(&s[0], JobState::Running(_)));
        assert!(matches!(&s[1], JobState::Unknown(w) if w.contains("run budget")));
        assert!(matches!(&s[2], JobState::Unknown(w) if w.contains("run budget")));
        assert_eq!(host.calls().len(), 2);
    }

    #[test]
    fn an_empty_listing_is_a_joblless_answer() {
        let b = batch("{}");
        let host = crate::testing::FakeHost::new();
        host.on("tstat", &["**"]).stdout("\n");
        let s = b.status(&host, &jobs(&["1"]), Command::new("tstat"), |_| {
            Err("the parser is not asked".into())
        });
        assert!(matches!(&s[0], JobState::Done(_)), "{s:?}");
    }

    #[test]
    fn utc_times() {
        assert_eq!(status::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(status::utc(1_764_630_600), "2025-12-01T23:10:00Z");
        assert_eq!(status::utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn queue_list_offers_what_its_help_says() {
        let form = batch(r#"{"queue":{"choices":["a","b"]}}"#).form(&user("alice"));
        let q = &form.fields[0];
        assert!(
            q.help.contains("empty for the site's default"),
            "{}",
            q.help
        );
        let crate::FieldKind::Choice(cs) = &q.kind else {
            panic!()
        };
        assert_eq!(cs[0].value, "");
        let form = batch(r#"{"queue":{"choices":["a","b"],"default":"a"}}"#).form(&user("alice"));
        let q = &form.fields[0];
        assert!(!q.help.contains("empty"), "{}", q.help);
        let crate::FieldKind::Choice(cs) = &q.kind else {
            panic!()
        };
        assert_eq!(
            cs.iter().map(|c| c.value.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn pending_reason_carries_the_expected_start() {
        let b = batch("{}");
        let a = Answer::complete(vec![
            Seen::new("1", Phase::Pending, "PD")
                .reason("Priority")
                .expected_start_text("2026-12-01T23:10:00"),
            Seen::new("2", Phase::Pending, "Idle").expected_start(Some(1_764_630_600)),
            Seen::new("3", Phase::Pending, "PD")
                .reason("Resources")
                .expected_start_text("N/A"),
        ]);
        let s: Vec<String> = b
            .map_states(&jobs(&["1", "2", "3"]), &a)
            .iter()
            .map(crate::testing::brief)
            .collect();
        assert_eq!(
            s,
            [
                "pending: pending: Priority, expected start 2026-12-01T23:10:00",
                "pending: pending, expected start 2025-12-01T23:10:00Z",
                "pending: pending: Resources",
            ]
        );
    }

    #[test]
    fn addresses_from_suffix_or_pattern() {
        let b = batch(r#"{"host_suffix":".ib"}"#);
        assert_eq!(b.address("n1/0*2").as_deref(), Some("n1.ib"));
        assert_eq!(
            b.address("n1.example.org").as_deref(),
            Some("n1.example.org")
        );
        let b = batch(r#"{"host_pattern":"{short}-ib.{host}"}"#);
        assert_eq!(b.address("n1.x").as_deref(), Some("n1-ib.n1.x"));
        assert_eq!(batch("{}").address("n/a"), None);
    }

    #[test]
    fn extra_options_allowlist() {
        let b = batch(r#"{"extra_options":{"enabled":true,"allowed_flags":["-l","--qos"]}}"#);
        assert_eq!(
            b.extra_options("-l walltime=1:00:00 --qos=hi").unwrap(),
            vec!["-l", "walltime=1:00:00", "--qos=hi"]
        );
        for bad in [
            "-l a b",
            "--qos=hi extra",
            "-x",
            "-l 'a'",
            "--qos=$(id)",
            "-l a\nb;",
        ] {
            assert!(b.extra_options(bad).is_err(), "{bad:?}");
        }
        assert!(batch("{}").extra_options("--qos=hi").is_err());
        assert!(batch("{}").extra_options("  ").unwrap().is_empty());
    }

    #[test]
    fn check_exit_separates_gone_ids_from_errors() {
        let gone = |l: &str| l.strip_prefix("gone ").map(str::to_string);
        let (ids, ok) = check_exit(&output(1, "", "gone 7\n"), gone);
        assert!(ids.contains("7") && ok.is_ok());
        let (_, ok) = check_exit(&output(1, "", ""), gone);
        assert!(ok.is_err());
        let (_, ok) = check_exit(&output(0, "", "warning: x\n"), gone);
        assert!(ok.is_err());
    }

    #[test]
    fn unknown_answers_never_say_done() {
        let b = batch("{}");
        let a = Answer::partial(vec![Seen::new("1", Phase::Running, "R")], "broken");
        let s = b.map_states(&jobs(&["1", "2"]), &a);
        assert!(matches!(s[0], JobState::Running(_)));
        assert!(matches!(&s[1], JobState::Unknown(w) if w == "broken"));
    }

    #[test]
    fn context_has_every_batchspawner_name() {
        let b = batch("{}");
        let mut job = crate::testing::job_spec("alice", vec![text("queue", "q1")]);
        job.user = user("alice");
        let ctx = b.context(&job);
        for name in [
            "partition",
            "queue",
            "nprocs",
            "memory",
            "runtime",
            "ngpus",
            "account",
            "options",
            "prologue",
            "epilogue",
            "username",
            "homedir",
            "cmd",
            "keepvars",
        ] {
            assert!(ctx.contains_key(name), "{name}");
        }
        assert_eq!(ctx["partition"].to_string(), "q1");
        assert_eq!(ctx["keepvars"].to_string(), "JUPYTERHUB_API_TOKEN");
    }
}
