//! SSH: the plugin's `ssh.run` capability, and remote submission (an
//! instance with a `submit_host` runs every granted program there).
//!
//! The system OpenSSH client runs with `-F /dev/null` (no user config),
//! `BatchMode`, strict host-key checking against the configured known_hosts
//! only, and connection sharing (ControlMaster/ControlPersist, sockets under
//! `<state_dir>/ssh/`), so a poll does not pay a handshake.
//!
//! ssh hands the remote side one command *string*, which the remote login
//! shell parses. The host builds that string itself: every argv element is
//! single-quoted, so each arrives as one word whatever it contains. The
//! environment (granted variables, the spawn's secrets) never goes into that
//! string or any argv: it travels on stdin, ahead of the program's own stdin,
//! as `NAME=<base64>` lines ended by an empty line, and a fixed prelude
//! exports them on the remote side before `exec`ing the program. The remote
//! environment is the remote account's login environment plus those
//! variables.

use std::path::Path;

use super::gate::{Denial, Kind, ProgramRequest};
use super::process::{execute, ExecError};
use super::CallState;
use crate::config::SshConfig;
use crate::runtime::bindings::process::{Command, Output, RunError};
use crate::runtime::bindings::ssh as wit;

/// The remote prelude that reads `NAME=<base64>` lines from stdin until an
/// empty line and exports them. Fixed text: nothing from a plugin or a user
/// is ever part of it.
const ENV_PRELUDE: &str = r#"while IFS= read -r l && [ -n "$l" ]; do export "${l%%=*}=$(printf '%s' "${l#*=}" | base64 -d)" || exit 254; done; "#;

/// A host name a user or plugin may name: letters, digits, `.`, `-`, `_`,
/// not starting with `-` (which ssh would read as an option).
pub fn check_host(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && !h.starts_with('-')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a host name (letters, digits, '.', '-', '_'; not starting with '-')"
        ))
    }
}

/// Quotes one argv element for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// What to execute locally to run `remote_argv` on `host`, and what to put
/// on its stdin first.
pub fn wrap(
    cfg: &SshConfig,
    control_dir: &Path,
    host: &str,
    user: Option<&str>,
    remote_argv: &[String],
    env: &[(String, String)],
) -> (Vec<String>, Vec<u8>) {
    let mut argv: Vec<String> = vec![
        cfg.program.display().to_string(),
        "-F".into(),
        "/dev/null".into(),
        "-T".into(),
        "-x".into(),
        "-a".into(),
    ];
    let mut opt = |o: String| {
        argv.push("-o".into());
        argv.push(o);
    };
    opt("BatchMode=yes".into());
    opt("StrictHostKeyChecking=yes".into());
    opt(format!("UserKnownHostsFile={}", cfg.known_hosts.display()));
    opt("GlobalKnownHostsFile=/dev/null".into());
    opt("IdentitiesOnly=yes".into());
    if cfg.reuse_connections {
        opt("ControlMaster=auto".into());
        opt(format!("ControlPath={}/%C", control_dir.display()));
        opt(format!("ControlPersist={}", cfg.control_persist.as_secs()));
    } else {
        opt("ControlMaster=no".into());
        opt("ControlPath=none".into());
    }
    opt(format!("ConnectTimeout={}", cfg.connect_timeout.as_secs()));
    opt("LogLevel=ERROR".into());
    if let Some(id) = &cfg.identity_file {
        argv.push("-i".into());
        argv.push(id.display().to_string());
    }
    argv.push("-p".into());
    argv.push(cfg.port.to_string());
    if let Some(u) = user {
        argv.push("-l".into());
        argv.push(u.to_string());
    }
    argv.push("--".into());
    argv.push(host.to_string());

    let quoted: Vec<String> = remote_argv.iter().map(|a| quote(a)).collect();
    let mut prefix = Vec::new();
    let command = if env.is_empty() {
        format!("exec {}", quoted.join(" "))
    } else {
        use base64_lite::encode;
        for (k, v) in env {
            prefix.extend_from_slice(format!("{k}={}\n", encode(v.as_bytes())).as_bytes());
        }
        prefix.push(b'\n');
        format!("{ENV_PRELUDE}exec {}", quoted.join(" "))
    };
    argv.push(command);
    (argv, prefix)
}

/// Closes the shared connections (ControlMaster processes) whose sockets are
/// in `control_dir`: they are daemons of their own and would otherwise
/// outlive the host by ControlPersist.
pub fn close_masters(program: &Path, control_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(control_dir) else {
        return;
    };
    for e in entries.flatten() {
        let socket = e.path();
        let _ = std::process::Command::new(program)
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-O", "exit", "wasmspawner-control"])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The remote account for a call: `ssh.user` with `{user}` replaced.
pub fn remote_user(cfg: &SshConfig, hub_user: Option<&str>) -> Result<Option<String>, String> {
    match &cfg.user {
        None => Ok(None),
        Some(u) if u.contains("{user}") => match hub_user {
            Some(h) => Ok(Some(u.replace("{user}", h))),
            None => Err("ssh.user names {user}, but this call is for no particular user".into()),
        },
        Some(u) => Ok(Some(u.clone())),
    }
}

/// ssh's own failures (not the remote program's) exit 255.
pub fn ssh_failure(exit_code: i32, stderr: &[u8]) -> Option<String> {
    (exit_code == 255).then(|| {
        let e = String::from_utf8_lossy(stderr);
        format!("ssh failed: {}", e.trim())
    })
}

impl wit::Host for CallState {
    async fn run(&mut self, host: String, cmd: Command) -> Result<Output, RunError> {
        let env: Vec<(String, String)> = cmd.env.into_iter().map(|e| (e.name, e.value)).collect();
        let permit = self
            .gate
            .authorize(
                &self.call,
                &ProgramRequest {
                    kind: Kind::Ssh,
                    program: &cmd.program,
                    args: &cmd.args,
                    env: &env,
                    spawn_env: cmd.spawn_env,
                    timeout_ms: cmd.timeout_ms,
                    ssh_host: Some(&host),
                },
            )
            .map_err(|d| match d {
                Denial::Denied(m) => RunError::Denied(m),
                Denial::NotFound(m) => RunError::NotFound(m),
            })?;
        finish_remote(permit, cmd.stdin, &cmd.program).await
    }
}

/// Runs a permit that goes over SSH, telling ssh's own failures apart.
pub async fn finish_remote(
    permit: super::gate::Permit,
    stdin: Vec<u8>,
    program: &str,
) -> Result<Output, RunError> {
    match execute(&permit, stdin).await {
        Ok(f) => {
            if let Some(why) = ssh_failure(f.exit_code, &f.stderr) {
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
            let m = format!(
                "`{program}` over SSH ran longer than {:.1} s and was killed",
                d.as_secs_f64()
            );
            permit.finish(None, Some(m.clone()));
            Err(RunError::TimedOut(m))
        }
        Err(ExecError::Failed(m)) => {
            permit.finish(None, Some(m.clone()));
            Err(RunError::Failed(m))
        }
    }
}

/// Standard base64, enough for the environment block.
mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(b: &[u8]) -> String {
        let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64_lite::encode(b""), "");
        assert_eq!(base64_lite::encode(b"f"), "Zg==");
        assert_eq!(base64_lite::encode(b"fo"), "Zm8=");
        assert_eq!(base64_lite::encode(b"foo"), "Zm9v");
        assert_eq!(base64_lite::encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_lite::encode("é\n$x".as_bytes()), "w6kKJHg=");
    }

    #[test]
    fn hosts_that_look_like_options_are_refused() {
        assert!(check_host("login1.example.org").is_ok());
        assert!(check_host("-oProxyCommand=id").is_err());
        assert!(check_host("a b").is_err());
        assert!(check_host("a;b").is_err());
        assert!(check_host("").is_err());
    }

    #[test]
    fn quoting_makes_each_element_one_word() {
        assert_eq!(quote("it's"), r#"'it'\''s'"#);
        assert_eq!(quote("$(id)"), "'$(id)'");
    }
}
