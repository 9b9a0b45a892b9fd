//! The host's capabilities, as a trait a plugin's logic is written against.
//!
//! In the component, [`WasmHost`] calls the real imports. In native tests,
//! [`crate::testing::FakeHost`] answers from a script.

use crate::bindings::wasmspawner::plugin::{detached, log, process, ssh};
use crate::{Command, Launch, Level, Output, PluginError, ProcessState, RunError, Signal};

/// What a plugin may ask of the host. Every call is checked against the
/// plugin's declared capabilities and the operator's grants; a refusal comes
/// back as [`RunError::Denied`], never as a trap.
pub trait Host {
    /// Runs a program to completion (argv only, no shell).
    fn run(&self, cmd: &Command) -> Result<Output, RunError>;
    /// Runs a program on `host` over SSH.
    fn ssh(&self, host: &str, cmd: &Command) -> Result<Output, RunError>;
    /// Starts a long-running local process; returns its handle.
    fn start_detached(&self, launch: &Launch) -> Result<String, RunError>;
    /// The state of many detached processes, in order.
    fn detached_status(&self, handles: &[String]) -> Vec<ProcessState>;
    /// Signals the process group of a detached process.
    fn signal_detached(&self, handle: &str, signal: Signal) -> Result<(), RunError>;
    /// Writes to the host's log, tagged with the plugin instance.
    fn log(&self, level: Level, message: &str);
}

/// The real capabilities, through the component's imports.
pub struct WasmHost;

impl Host for WasmHost {
    fn run(&self, cmd: &Command) -> Result<Output, RunError> {
        process::run(cmd)
    }
    fn ssh(&self, host: &str, cmd: &Command) -> Result<Output, RunError> {
        ssh::run(host, cmd)
    }
    fn start_detached(&self, launch: &Launch) -> Result<String, RunError> {
        detached::start(launch)
    }
    fn detached_status(&self, handles: &[String]) -> Vec<ProcessState> {
        detached::status(handles)
    }
    fn signal_detached(&self, handle: &str, signal: Signal) -> Result<(), RunError> {
        detached::send_signal(handle, signal)
    }
    fn log(&self, level: Level, message: &str) {
        log::log(level, message)
    }
}

impl Command {
    /// A command with no stdin, no extra environment and the default timeout.
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            program: program.into(),
            args: Vec::new(),
            stdin: Vec::new(),
            env: Vec::new(),
            spawn_env: false,
            timeout_ms: 0,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push(crate::EnvVar {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Ask the host to inject the spawn's environment (the hub's token among
    /// it) into this command. The program must be declared and granted with
    /// `spawn-env`.
    pub fn with_spawn_env(mut self) -> Self {
        self.spawn_env = true;
        self
    }

    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// The argv as one line, for messages (never for execution).
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A one-line description of a capability error.
pub fn run_error_message(e: &RunError) -> String {
    match e {
        RunError::Denied(m) => format!("denied by the host: {m}"),
        RunError::NotFound(m) => format!("program not found: {m}"),
        RunError::TimedOut(m) => format!("timed out: {m}"),
        RunError::Failed(m) => format!("failed: {m}"),
    }
}

impl From<RunError> for PluginError {
    fn from(e: RunError) -> Self {
        PluginError::Capability(run_error_message(&e))
    }
}

/// A one-line description of a plugin error.
pub fn error_message(e: &PluginError) -> String {
    match e {
        PluginError::Config(m) => format!("site config error: {m}"),
        PluginError::Capability(m) => format!("capability error: {m}"),
        PluginError::Scheduler(m) => format!("scheduler error: {m}"),
        PluginError::Unsupported(m) => format!("unsupported: {m}"),
        PluginError::Other(m) => m.clone(),
    }
}

/// Runs `cmd` and turns a non-zero exit into [`PluginError::Scheduler`] with
/// the program's stderr, the usual shape of a scheduler command.
pub fn run_checked(host: &dyn Host, cmd: &Command) -> Result<Output, PluginError> {
    let out = host.run(cmd)?;
    if out.success() {
        Ok(out)
    } else {
        let stderr = out.stderr_str();
        let detail = stderr.trim();
        Err(PluginError::Scheduler(format!(
            "`{}` exited with status {}{}{}",
            cmd.program,
            out.exit_code,
            if detail.is_empty() { "" } else { ": " },
            detail
        )))
    }
}
