//! `process.run`: a program run to completion, argv only, no shell.
//!
//! The child gets the gate's environment and nothing else, `/` as working
//! directory, its own process group (so a timeout kills everything it
//! started), stdin from the plugin, and stdout/stderr read up to the cap.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::gate::{CallContext, Gate, Kind, Permit, ProgramRequest};
use super::CallState;
use crate::runtime::bindings::process::{self as wit, Output, RunError};

/// The outcome of one program.
#[derive(Debug)]
pub struct Finished {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

#[derive(Debug)]
pub enum ExecError {
    TimedOut(Duration),
    Failed(String),
}

/// Runs what the permit allows, feeding `stdin`.
pub async fn execute(permit: &Permit, stdin: Vec<u8>) -> Result<Finished, ExecError> {
    let mut cmd = Command::new(&permit.argv[0]);
    cmd.args(&permit.argv[1..])
        .env_clear()
        .envs(permit.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(if stdin.is_empty() && permit.stdin_prefix.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ExecError::Failed(format!("cannot start {}: {e}", permit.argv[0])))?;
    let pid = child.id();

    let prefix = permit.stdin_prefix.clone();
    let writer = child.stdin.take().map(|mut w| {
        tokio::spawn(async move {
            // A program that does not read its stdin is not an error here.
            let _ = w.write_all(&prefix).await;
            let _ = w.write_all(&stdin).await;
            let _ = w.shutdown().await;
        })
    });
    let cap = permit.output_cap;
    let out = tokio::spawn(read_capped(child.stdout.take().expect("piped"), cap));
    let err = tokio::spawn(read_capped(child.stderr.take().expect("piped"), cap));

    let status = match tokio::time::timeout(permit.timeout, child.wait()).await {
        Ok(s) => {
            s.map_err(|e| ExecError::Failed(format!("waiting for {}: {e}", permit.argv[0])))?
        }
        Err(_) => {
            kill_group(pid);
            let _ = child.kill().await;
            if let Some(w) = writer {
                w.abort();
            }
            out.abort();
            err.abort();
            return Err(ExecError::TimedOut(permit.timeout));
        }
    };
    // The direct child is gone; anything it left in its group goes too.
    kill_group(pid);
    if let Some(w) = writer {
        let _ = w.await;
    }
    let (stdout, t1) = join_output(out).await;
    let (stderr, t2) = join_output(err).await;
    Ok(Finished {
        exit_code: exit_code(status),
        stdout,
        stderr,
        truncated: t1 || t2,
    })
}

async fn join_output(h: tokio::task::JoinHandle<(Vec<u8>, bool)>) -> (Vec<u8>, bool) {
    // Left-behind grandchildren may hold the pipe open: give up after a moment.
    match tokio::time::timeout(Duration::from_secs(2), h).await {
        Ok(Ok(v)) => v,
        _ => (Vec::new(), true),
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: plain syscall; a negative pid names the process group the
        // child leads (process_group(0) above).
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

/// The shell's convention: the exit status, or 128 + signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Reads everything, keeping the first `cap` bytes.
async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

/// Gate + execute + audit, for one `process.run` or `ssh.run` call
/// (`ssh_host` names the host of an `ssh.run`).
pub async fn run_checked(
    gate: &Gate,
    call: &CallContext,
    kind: Kind,
    ssh_host: Option<&str>,
    cmd: wit::Command,
) -> Result<Output, RunError> {
    let env: Vec<(String, String)> = cmd.env.into_iter().map(|e| (e.name, e.value)).collect();
    let permit = gate.authorize(
        call,
        &ProgramRequest {
            kind,
            program: &cmd.program,
            args: &cmd.args,
            env: &env,
            spawn_env: cmd.spawn_env,
            timeout_ms: cmd.timeout_ms,
            ssh_host,
        },
    )?;
    let place = if permit.remote { " over SSH" } else { "" };
    // A connection that failed lately is not re-opened before its backoff.
    if let Some(why) = permit
        .remote
        .then(|| crate::ssh_cmd::backing_off(&permit.argv))
        .flatten()
    {
        permit.finish(None, Some(why.clone()));
        return Err(RunError::Failed(why));
    }
    match execute(&permit, cmd.stdin).await {
        Ok(f) => {
            // ssh's own failures (not the remote program's) exit 255.
            let failure = permit
                .remote
                .then(|| crate::ssh_cmd::ssh_failure(&permit.argv, f.exit_code, &f.stderr))
                .flatten();
            if permit.remote {
                crate::ssh_cmd::connection_result(&permit.argv, failure.as_deref());
            }
            if let Some(why) = failure {
                permit.finish(Some(f.exit_code), Some(why.clone()));
                return Err(RunError::Failed(why));
            }
            permit.finish(Some(f.exit_code), None);
            Ok(Output {
                exit_code: f.exit_code,
                stdout: f.stdout,
                stderr: f.stderr,
                truncated: f.truncated,
            })
        }
        Err(ExecError::TimedOut(d)) => {
            let msg = format!(
                "`{}`{place} ran longer than {:.1} s and was killed",
                cmd.program,
                d.as_secs_f64()
            );
            permit.finish(None, Some(msg.clone()));
            Err(RunError::TimedOut(msg))
        }
        Err(ExecError::Failed(m)) => {
            permit.finish(None, Some(m.clone()));
            Err(RunError::Failed(m))
        }
    }
}

/// `process` in the capability list.
pub const CAPABILITY: super::Capability = super::Capability {
    interface: "process",
    add_to_linker: |l| {
        wit::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(l, |s| s)
    },
};

impl wit::Host for CallState {
    async fn run(&mut self, cmd: wit::Command) -> Result<Output, RunError> {
        run_checked(&self.gate, &self.call, Kind::Run, None, cmd).await
    }
}
