//! A native test harness: run a plugin's logic under `cargo test` with
//! scripted capabilities.
//!
//! ```
//! use wasmspawner_sdk::testing::FakeHost;
//! use wasmspawner_sdk::{Command, Host};
//!
//! let host = FakeHost::new();
//! host.on("squeue", &["-h", "**"]).stdout("42 RUNNING node01\n");
//! let out = host.run(&Command::new("squeue").args(["-h", "-j", "42"])).unwrap();
//! assert_eq!(out.stdout_str(), "42 RUNNING node01\n");
//! assert_eq!(host.calls()[0].argv(), vec!["squeue", "-h", "-j", "42"]);
//! ```
//!
//! Patterns are the host's grant patterns (`*` one argument, `**` the rest,
//! `a*b` a glob); the first matching rule answers. A call no rule matches
//! answers [`RunError::Denied`], as the real host does for an ungranted call.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::{
    Command, Host, Launch, Level, Output, PluginError, ProcessState, RunError, Signal, User,
};

/// One call the plugin made.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    /// `None` for a local program, `Some(host)` over SSH.
    pub ssh_host: Option<String>,
    pub command: Command,
}

impl RecordedCall {
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.command.program.clone())
            .chain(self.command.args.iter().cloned())
            .collect()
    }
    pub fn stdin_str(&self) -> String {
        String::from_utf8_lossy(&self.command.stdin).into_owned()
    }
}

type Reply = std::rc::Rc<dyn Fn(&Command) -> Result<Output, RunError>>;

struct Rule {
    program: String,
    args: Vec<String>,
    answer: Reply,
}

/// The host's default cap on each of a program's stdout and stderr
/// (`limits.output_bytes`, 1 MiB).
pub const HOST_OUTPUT_CAP: usize = 1 << 20;

/// Scripted capabilities. See the module docs.
pub struct FakeHost {
    declared: RefCell<Option<crate::DeclaredCapabilities>>,
    undeclared: RefCell<Vec<String>>,
    rules: RefCell<Vec<Rule>>,
    output_cap: std::cell::Cell<usize>,
    calls: RefCell<Vec<RecordedCall>>,
    processes: RefCell<BTreeMap<String, (Launch, ProcessState)>>,
    signals: RefCell<Vec<(String, Signal)>>,
    logs: RefCell<Vec<(Level, String)>>,
}

/// Sets the answer of the rule just added by [`FakeHost::on`].
pub struct Answer<'a> {
    host: &'a FakeHost,
    index: usize,
}

impl Answer<'_> {
    fn set(&self, answer: Result<Output, RunError>) {
        self.host.rules.borrow_mut()[self.index].answer =
            std::rc::Rc::new(move |_: &Command| answer.clone());
    }
    /// An answer computed from the call, e.g. a fake scheduler that prints
    /// only the jobs asked about.
    pub fn with(self, reply: impl Fn(&Command) -> Output + 'static) -> Self {
        self.host.rules.borrow_mut()[self.index].answer =
            std::rc::Rc::new(move |c: &Command| Ok(reply(c)));
        self
    }
    /// Exit 0 with this stdout.
    pub fn stdout(self, stdout: &str) -> Self {
        self.set(Ok(output(0, stdout, "")));
        self
    }
    /// This exit code, stdout and stderr.
    pub fn exits(self, code: i32, stdout: &str, stderr: &str) -> Self {
        self.set(Ok(output(code, stdout, stderr)));
        self
    }
    /// A capability error instead of an output.
    pub fn fails(self, error: RunError) -> Self {
        self.set(Err(error));
        self
    }
}

/// An [`Output`] with these fields.
pub fn output(code: i32, stdout: &str, stderr: &str) -> Output {
    Output {
        exit_code: code,
        stdout: stdout.as_bytes().to_vec(),
        stderr: stderr.as_bytes().to_vec(),
        truncated: false,
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            declared: RefCell::default(),
            undeclared: RefCell::default(),
            rules: RefCell::default(),
            output_cap: std::cell::Cell::new(HOST_OUTPUT_CAP),
            calls: RefCell::default(),
            processes: RefCell::default(),
            signals: RefCell::default(),
            logs: RefCell::default(),
        }
    }
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that checks every call against the plugin's own declaration
    /// (`P::describe()`), as the host's gate does: a program, argument list
    /// or spawn-environment use the plugin did not declare is denied, and
    /// the test fails when the host is dropped (unless
    /// [`FakeHost::take_undeclared`] took the list first).
    pub fn for_plugin<P: crate::Plugin>() -> Self {
        let host = Self::default();
        *host.declared.borrow_mut() = Some(P::describe().capabilities.into());
        host
    }

    /// The calls so far that the declaration does not allow (and forgets them).
    pub fn take_undeclared(&self) -> Vec<String> {
        std::mem::take(&mut *self.undeclared.borrow_mut())
    }

    fn check_declared(&self, ssh: bool, cmd: &Command) -> Result<(), RunError> {
        let declared = self.declared.borrow();
        let Some(d) = declared.as_ref() else {
            return Ok(());
        };
        let uses = if ssh { &d.ssh } else { &d.programs };
        let allowed = uses.iter().any(|u| {
            (u.program == "*" || u.program == cmd.program)
                && wasmspawner_argpattern::matches(&u.args, &cmd.args)
                && (u.spawn_env || !cmd.spawn_env)
        });
        if allowed {
            return Ok(());
        }
        let what = format!(
            "`{}`{} is not in the plugin's declaration",
            cmd.display(),
            if cmd.spawn_env {
                " with the spawn's environment"
            } else {
                ""
            }
        );
        self.undeclared.borrow_mut().push(what.clone());
        Err(RunError::Denied(what))
    }

    /// Cuts each of stdout and stderr at `bytes` and marks the output
    /// truncated, as the host does ([`HOST_OUTPUT_CAP`] unless set).
    pub fn output_cap(&self, bytes: usize) -> &Self {
        self.output_cap.set(bytes);
        self
    }

    /// Adds a rule: calls of `program` whose arguments match `args` answer
    /// with what the returned [`Answer`] sets (exit 0 and empty output until then).
    pub fn on(&self, program: &str, args: &[&str]) -> Answer<'_> {
        let mut rules = self.rules.borrow_mut();
        rules.push(Rule {
            program: program.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            answer: std::rc::Rc::new(|_: &Command| Ok(output(0, "", ""))),
        });
        Answer {
            host: self,
            index: rules.len() - 1,
        }
    }

    /// Every program call so far, local and SSH, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls.borrow().clone()
    }

    /// Sets what `detached_status` reports for a handle.
    pub fn set_process_state(&self, handle: &str, state: ProcessState) {
        if let Some(p) = self.processes.borrow_mut().get_mut(handle) {
            p.1 = state;
        }
    }

    /// The launches so far, by handle.
    pub fn launches(&self) -> Vec<(String, Launch)> {
        self.processes
            .borrow()
            .iter()
            .map(|(h, (l, _))| (h.clone(), l.clone()))
            .collect()
    }

    pub fn signals(&self) -> Vec<(String, Signal)> {
        self.signals.borrow().clone()
    }

    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs.borrow().clone()
    }

    fn answer(&self, ssh_host: Option<&str>, cmd: &Command) -> Result<Output, RunError> {
        self.calls.borrow_mut().push(RecordedCall {
            ssh_host: ssh_host.map(str::to_string),
            command: cmd.clone(),
        });
        self.check_declared(ssh_host.is_some(), cmd)?;
        let reply = self
            .rules
            .borrow()
            .iter()
            .find(|r| {
                r.program == cmd.program && wasmspawner_argpattern::matches(&r.args, &cmd.args)
            })
            .map(|r| r.answer.clone());
        let Some(reply) = reply else {
            return Err(RunError::Denied(format!(
                "FakeHost has no rule for `{}`",
                cmd.display()
            )));
        };
        let mut out = reply(cmd)?;
        let cap = self.output_cap.get();
        for stream in [&mut out.stdout, &mut out.stderr] {
            if stream.len() > cap {
                stream.truncate(cap);
                out.truncated = true;
            }
        }
        Ok(out)
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let undeclared = self.undeclared.get_mut();
        if !undeclared.is_empty() && !std::thread::panicking() {
            panic!(
                "the plugin made calls its declaration does not allow (the real host's gate \
                 denies them): {}",
                undeclared.join("; ")
            );
        }
    }
}

impl Host for FakeHost {
    fn run(&self, cmd: &Command) -> Result<Output, RunError> {
        self.answer(None, cmd)
    }
    fn ssh(&self, host: &str, cmd: &Command) -> Result<Output, RunError> {
        self.answer(Some(host), cmd)
    }
    fn start_detached(&self, launch: &Launch) -> Result<String, RunError> {
        if let Some(d) = self.declared.borrow().as_ref() {
            let ok = d.detached.iter().any(|u| {
                (u.program == "*" || u.program == launch.program)
                    && wasmspawner_argpattern::matches(&u.args, &launch.args)
            });
            if !ok {
                let what = format!(
                    "detached `{}` is not in the plugin's declaration",
                    launch.program
                );
                self.undeclared.borrow_mut().push(what.clone());
                return Err(RunError::Denied(what));
            }
        }
        let mut procs = self.processes.borrow_mut();
        let handle = format!("fake-{}", procs.len() + 1);
        procs.insert(handle.clone(), (launch.clone(), ProcessState::Running));
        Ok(handle)
    }
    fn detached_status(&self, handles: &[String]) -> Vec<ProcessState> {
        let procs = self.processes.borrow();
        handles
            .iter()
            .map(|h| match procs.get(h) {
                Some((_, s)) => s.clone(),
                None => ProcessState::Unknown(format!("no process {h}")),
            })
            .collect()
    }
    fn signal_detached(&self, handle: &str, signal: Signal) -> Result<(), RunError> {
        if !self.processes.borrow().contains_key(handle) {
            return Err(RunError::Denied(format!("no process {handle}")));
        }
        self.signals.borrow_mut().push((handle.to_string(), signal));
        Ok(())
    }
    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

/// A user for tests.
pub fn user(name: &str) -> User {
    User {
        name: name.to_string(),
        groups: Vec::new(),
        admin: false,
    }
}

/// A [`crate::JobSpec`] for tests, with the usual single-user command.
pub fn job_spec(user_name: &str, options: Vec<crate::FieldValue>) -> crate::JobSpec {
    crate::JobSpec {
        spawn_id: "spawn-test".into(),
        user: user(user_name),
        options,
        cmd: vec!["jupyterhub-singleuser".into()],
        env_names: vec!["JUPYTERHUB_API_TOKEN".into()],
        callback_url: "http://127.0.0.1:8765/v1/spawns/spawn-test/ready".into(),
        home: Some(format!("/home/{user_name}")),
    }
}

/// Unwraps a plugin result, panicking with the error's message.
pub fn ok<T>(r: Result<T, PluginError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("plugin error: {}", crate::host::error_message(&e)),
    }
}

/// Jobs with these ids, for `status` tests.
pub fn jobs(ids: &[&str]) -> Vec<crate::Job> {
    ids.iter()
        .map(|id| crate::Job {
            job_id: id.to_string(),
            user: "alice".into(),
            state: String::new(),
        })
        .collect()
}

/// A job state in one short line, for assertions:
/// `pending: REASON`, `running@HOST` (`running@?` without a host),
/// `done(CODE): REASON` (`done: REASON` without a code), `unknown: WHY`.
pub fn brief(s: &crate::JobState) -> String {
    use crate::JobState::*;
    match s {
        Pending(p) => format!("pending: {}", p.reason),
        Running(r) => format!("running@{}", r.host.as_deref().unwrap_or("?")),
        Done(d) => match d.exit_code {
            Some(c) => format!("done({c}): {}", d.reason),
            None => format!("done: {}", d.reason),
        },
        Unknown(why) => format!("unknown: {why}"),
    }
}

/// A text option.
pub fn text(field: &str, v: &str) -> crate::FieldValue {
    crate::FieldValue {
        field: field.into(),
        value: crate::Value::Text(v.into()),
    }
}

/// An integer option.
pub fn int(field: &str, v: i64) -> crate::FieldValue {
    crate::FieldValue {
        field: field.into(),
        value: crate::Value::Integer(v),
    }
}

/// What one [`status_at_scale`] run measured.
#[derive(Debug, Clone)]
pub struct ScaleRun {
    pub jobs: usize,
    /// Status commands the plugin ran.
    pub calls: usize,
    /// The largest answer one command printed (bytes).
    pub max_output: usize,
    /// Whether any answer passed the host's output cap.
    pub truncated: bool,
    /// Wall time of the plugin's `status` (parsing and mapping; the fake
    /// scheduler's printing included).
    pub elapsed: std::time::Duration,
    pub states: Vec<crate::JobState>,
}

impl std::fmt::Display for ScaleRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status of {} jobs: {} command(s), largest answer {} KiB, {:.2} ms",
            self.jobs,
            self.calls,
            self.max_output / 1024,
            self.elapsed.as_secs_f64() * 1000.0
        )
    }
}

/// Status of `n` jobs (ids from `id`) through a fake scheduler `program`
/// that prints, for each call, what `answer(cmd)` returns (the records of
/// the jobs the call asks about), with the host's output cap. Prints and
/// returns what it measured; the caller asserts on the states.
pub fn status_at_scale(
    n: usize,
    program: &str,
    id: impl Fn(usize) -> String,
    user: impl Fn(usize) -> String,
    answer: impl Fn(&Command) -> String + 'static,
    status: impl Fn(&FakeHost, &[crate::Job]) -> Vec<crate::JobState>,
) -> ScaleRun {
    let sizes = std::rc::Rc::new(RefCell::new(Vec::new()));
    let host = FakeHost::new();
    let seen = sizes.clone();
    host.on(program, &["**"]).with(move |c| {
        let out = answer(c);
        seen.borrow_mut().push(out.len());
        output(0, &out, "")
    });
    let jobs: Vec<crate::Job> = (0..n)
        .map(|i| crate::Job {
            job_id: id(i),
            user: user(i),
            state: String::new(),
        })
        .collect();
    let start = std::time::Instant::now();
    let states = status(&host, &jobs);
    let elapsed = start.elapsed();
    let sizes = sizes.borrow();
    let run = ScaleRun {
        jobs: n,
        calls: host.calls().len(),
        max_output: sizes.iter().copied().max().unwrap_or(0),
        truncated: sizes.iter().any(|&s| s > HOST_OUTPUT_CAP),
        elapsed,
        states,
    };
    eprintln!("{program}: {run}");
    run
}

/// The job ids a status command asks about: its arguments that look like
/// ids (start with a digit or `Moab.`), and comma lists in `--jobs=`.
pub fn asked_ids(cmd: &Command) -> Vec<String> {
    let mut ids = Vec::new();
    for a in &cmd.args {
        let a = a.strip_prefix("--jobs=").unwrap_or(a);
        for id in a.split(',') {
            if id.starts_with(|c: char| c.is_ascii_digit()) || id.starts_with("Moab.") {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

/// Variants of real scheduler output as a broken, cut-off or hostile
/// scheduler might print them, for robustness tests of status parsers:
/// every sample cut at many points, lines dropped, repeated and swapped,
/// fields replaced by odd values (huge and negative numbers, separators,
/// markup, control and non-ASCII characters, very long words), and bytes
/// inserted. `per_sample` variants of each sample, deterministic (seeded),
/// after the samples themselves and the empty output.
///
/// ```
/// let variants = wasmspawner_sdk::testing::mangled(&["7|RUNNING|node01\n"], 50);
/// assert_eq!(variants.len(), 2 + 50);
/// assert!(variants.iter().any(|v| v.contains("node01") && v != "7|RUNNING|node01\n"));
/// ```
pub fn mangled(samples: &[&str], per_sample: usize) -> Vec<String> {
    const ODD: &[&str] = &[
        "",
        " ",
        "\n",
        "\r\n",
        "\t",
        "\0",
        "|",
        "||",
        ",",
        ";",
        ":",
        "=",
        "+",
        "*",
        "/",
        "[",
        "]",
        "[0-",
        "-",
        "--",
        "(",
        ")",
        "<",
        ">",
        "</",
        "/>",
        "<x>",
        "&",
        "&amp;",
        "\"",
        "'",
        "\\",
        ".",
        "..",
        "@",
        "#",
        "n/a",
        "(null)",
        "undefined",
        "None",
        "0",
        "-1",
        "1e999",
        "NaN",
        "18446744073709551616",
        "99999999999999999999999999",
        "é",
        "\u{202e}",
        "\u{feff}",
        "日本",
        "🦀",
        "\u{7f}",
        "\u{1b}[31m",
    ];
    // xorshift64*: no dependency, same variants on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| -> usize {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    };
    let long = "x".repeat(5000);
    let mut out = vec![String::new()];
    for sample in samples {
        out.push(sample.to_string());
        let bounds: Vec<usize> = (0..=sample.len())
            .filter(|&i| sample.is_char_boundary(i))
            .collect();
        for _ in 0..per_sample {
            let mut lines: Vec<String> = sample.split_inclusive('\n').map(str::to_string).collect();
            let variant = match next(7) {
                // Cut anywhere (a dying scheduler, a closed pipe).
                0 => sample[..bounds[next(bounds.len())]].to_string(),
                // A line dropped, repeated or swapped with another.
                1 if !lines.is_empty() => {
                    let i = next(lines.len());
                    lines.remove(i);
                    lines.concat()
                }
                2 if !lines.is_empty() => {
                    let i = next(lines.len());
                    let l = lines[i].clone();
                    lines.insert(i, l);
                    lines.concat()
                }
                3 if lines.len() > 1 => {
                    let (i, j) = (next(lines.len()), next(lines.len()));
                    lines.swap(i, j);
                    lines.concat()
                }
                // A field (a run between separators) replaced.
                4 | 5 => {
                    let seps = |c: char| " |,\t\n<>=:/\"".contains(c);
                    let starts: Vec<usize> = sample
                        .char_indices()
                        .filter(|&(i, c)| !seps(c) && (i == 0 || sample[..i].ends_with(seps)))
                        .map(|(i, _)| i)
                        .collect();
                    if starts.is_empty() {
                        sample.to_string()
                    } else {
                        let a = starts[next(starts.len())];
                        let b = sample[a..].find(seps).map_or(sample.len(), |e| a + e);
                        let with = if next(10) == 0 {
                            long.as_str()
                        } else {
                            ODD[next(ODD.len())]
                        };
                        format!("{}{with}{}", &sample[..a], &sample[b..])
                    }
                }
                // Something inserted anywhere.
                _ => {
                    let at = bounds[next(bounds.len())];
                    format!("{}{}{}", &sample[..at], ODD[next(ODD.len())], &sample[at..])
                }
            };
            out.push(variant);
        }
    }
    out
}

/// The robustness check every status parser gets: for each [`mangled`]
/// variant of `samples` (400 per sample) and each exit code in `codes`,
/// `status(code, stdout)` must return one answer per job (`jobs` of them)
/// and must not panic.
///
/// ```
/// use wasmspawner_sdk::testing::assert_survives_mangled;
/// assert_survives_mangled(&["1|R\n"], &[0, 1], 1, |_code, out| {
///     vec![out.len()] // a plugin's `status(...)`, one answer per job
/// });
/// ```
pub fn assert_survives_mangled<T>(
    samples: &[&str],
    codes: &[i32],
    jobs: usize,
    status: impl Fn(i32, &str) -> Vec<T>,
) {
    for out in mangled(samples, 400) {
        for &code in codes {
            assert_eq!(
                status(code, &out).len(),
                jobs,
                "exit {code}, output {out:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangled_variants_differ_and_repeat() {
        let sample = "1|RUNNING|node01|None\n2|PENDING|n/a|Resources\n";
        let a = mangled(&[sample], 200);
        assert_eq!(a, mangled(&[sample], 200), "deterministic");
        let distinct: std::collections::BTreeSet<&String> = a.iter().collect();
        assert!(
            distinct.len() > 100,
            "only {} distinct variants",
            distinct.len()
        );
        assert!(a
            .iter()
            .any(|v| sample.starts_with(v.as_str()) && v.len() < sample.len()));
        assert!(a.iter().any(|v| v.lines().count() == 1 && v.len() > 5));
        assert!(a.iter().any(|v| v.len() > 5000));
    }

    struct Declares;
    impl crate::Plugin for Declares {
        type Config = ();
        fn describe() -> crate::Descriptor {
            crate::Descriptor {
                name: "d".into(),
                version: "0".into(),
                api_version: crate::API_VERSION.into(),
                description: String::new(),
                capabilities: crate::DeclaredCapabilities {
                    programs: vec![crate::ProgramUse {
                        program: "squeue".into(),
                        args: vec!["-h".into(), "**".into()],
                        spawn_env: false,
                    }],
                    ssh: vec![],
                    detached: vec![],
                }
                .into(),
            }
        }
        fn new(_: ()) -> Result<Self, PluginError> {
            Ok(Declares)
        }
        fn form(&self, _: &dyn Host, _: &User) -> Result<crate::FormSchema, PluginError> {
            unreachable!()
        }
        fn submit(
            &self,
            _: &dyn Host,
            _: &crate::JobSpec,
        ) -> Result<crate::Submitted, PluginError> {
            unreachable!()
        }
        fn status(&self, _: &dyn Host, _: &[crate::Job]) -> Vec<crate::JobState> {
            vec![]
        }
        fn cancel(&self, _: &dyn Host, _: &crate::Job) -> Result<(), PluginError> {
            Ok(())
        }
    }

    #[test]
    fn calls_outside_the_declaration_are_denied_as_the_gate_would() {
        let host = FakeHost::for_plugin::<Declares>();
        host.on("squeue", &["**"]).stdout("ok");
        host.on("sbatch", &["**"]).stdout("1");
        assert!(host
            .run(&Command::new("squeue").args(["-h", "-j", "1"]))
            .is_ok());
        assert!(matches!(
            host.run(&Command::new("squeue").arg("-j")),
            Err(RunError::Denied(_))
        ));
        assert!(matches!(
            host.run(&Command::new("squeue").arg("-h").with_spawn_env()),
            Err(RunError::Denied(_))
        ));
        assert!(matches!(
            host.run(&Command::new("sbatch")),
            Err(RunError::Denied(_))
        ));
        assert_eq!(host.take_undeclared().len(), 3);
    }

    #[test]
    #[should_panic(expected = "declaration does not allow")]
    fn an_undeclared_call_fails_the_test() {
        let host = FakeHost::for_plugin::<Declares>();
        let _ = host.run(&Command::new("rm"));
    }

    #[test]
    fn unmatched_call_is_denied_and_recorded() {
        let host = FakeHost::new();
        let err = host.run(&Command::new("rm").arg("-rf")).unwrap_err();
        assert!(matches!(err, RunError::Denied(_)));
        assert_eq!(host.calls().len(), 1);
    }
}
