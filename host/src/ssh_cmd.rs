//! The OpenSSH command lines the host builds: for remote submission (an
//! instance with a `submit_host`), for the plugin's `ssh.run`, and for
//! tunnels. Nothing here runs anything but [`close_masters`]; the gate and
//! the tunnel keeper execute what these functions shape.
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

use crate::config::SshConfig;

/// The remote prelude that reads `NAME=<base64>` lines from stdin until an
/// empty line and exports them. Fixed text: nothing from a plugin or a user
/// is ever part of it.
const ENV_PRELUDE: &str = r#"while IFS= read -r l && [ -n "$l" ]; do export "${l%%=*}=$(printf '%s' "${l#*=}" | base64 -d)" || exit 254; done; "#;

/// A host a user or plugin may name: a DNS name or an IP address (the same
/// rule as the job callback's), so never anything ssh would read as an
/// option.
pub fn check_host(h: &str) -> Result<(), String> {
    // A DNS name or an IP address can never start with '-'.
    if crate::model::valid_host(h) {
        Ok(())
    } else {
        Err(format!("{h:?} is not a host name or an IP address"))
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
    let connection: &[String] = &if cfg.reuse_connections {
        vec![
            "ControlMaster=auto".into(),
            format!(
                "ControlPath={}/{}-%C",
                control_dir.display(),
                master_generation(cfg)
            ),
            format!("ControlPersist={}", cfg.control_persist.as_secs()),
        ]
    } else {
        vec!["ControlMaster=no".into(), "ControlPath=none".into()]
    };
    let mut argv = vec![cfg.program.display().to_string()];
    argv.extend(client_args(cfg, user, connection));
    argv.push("--".into());
    argv.push(host.to_string());

    let quoted: Vec<String> = remote_argv.iter().map(|a| quote(a)).collect();
    let mut prefix = Vec::new();
    let command = if env.is_empty() {
        format!("exec {}", quoted.join(" "))
    } else {
        use base64::Engine;
        for (k, v) in env {
            let value = base64::engine::general_purpose::STANDARD.encode(v.as_bytes());
            prefix.extend_from_slice(format!("{k}={value}\n").as_bytes());
        }
        prefix.push(b'\n');
        format!("{ENV_PRELUDE}exec {}", quoted.join(" "))
    };
    argv.push(command);
    (argv, prefix)
}

/// The options every ssh the host runs shares: no user config, no prompts,
/// no forwarding of agent or X11, strict host keys from the configured file
/// only; then `extra` options, identity, port and user. The caller adds
/// `--`, the host and what to do there.
pub fn client_args(cfg: &SshConfig, user: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = ["-F", "/dev/null", "-T", "-x", "-a"]
        .map(String::from)
        .to_vec();
    let options = [
        "BatchMode=yes".to_string(),
        "StrictHostKeyChecking=yes".into(),
        format!("UserKnownHostsFile={}", cfg.known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".into(),
        "IdentitiesOnly=yes".into(),
        format!("ConnectTimeout={}", cfg.connect_timeout.as_secs()),
    ];
    // ssh takes an option's first value: an `extra` LogLevel must come
    // instead of the default, not after it.
    let log_level = if extra.iter().any(|o| o.starts_with("LogLevel=")) {
        None
    } else {
        Some("LogLevel=ERROR".to_string())
    };
    for o in options.iter().chain(&log_level).chain(extra) {
        argv.push("-o".into());
        argv.push(o.clone());
    }
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
    argv
}

/// The generation of the shared connections `cfg` uses, part of their
/// ControlPath: it changes when `known_hosts` or the identity file changes
/// (device, inode, size, mtime) and every `master_max_age`, so the next
/// call opens a fresh connection that checks the host key and key file
/// again. Older generations are closed by [`stop_other_masters`].
pub fn master_generation(cfg: &SshConfig) -> String {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut h = sha2::Sha256::new();
    for f in std::iter::once(&cfg.known_hosts).chain(cfg.identity_file.as_ref()) {
        h.update(f.as_os_str().as_encoded_bytes());
        if let Ok(m) = std::fs::metadata(f) {
            for v in [m.dev(), m.ino(), m.size()] {
                h.update(v.to_le_bytes());
            }
            h.update(m.mtime().to_le_bytes());
            h.update(m.mtime_nsec().to_le_bytes());
        }
    }
    let age = cfg.master_max_age.as_secs().max(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    h.update((now / age).to_le_bytes());
    hex::encode(h.finalize())[..10].to_string()
}

/// Asks the shared connections in `control_dir` whose generation is not in
/// `current` to stop (`ssh -O stop`: no new sessions; the master ends
/// when the sessions running over it end). Returns how many were asked.
pub fn stop_other_masters(program: &Path, control_dir: &Path, current: &[String]) -> usize {
    let Ok(entries) = std::fs::read_dir(control_dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some((generation, _)) = name.split_once('-') else {
            continue;
        };
        if current.iter().any(|c| c == generation) {
            continue;
        }
        // A socket whose master is gone: remove it, or it is tried for ever.
        if std::os::unix::net::UnixStream::connect(e.path())
            .is_err_and(|err| err.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let _ = std::process::Command::new(program)
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("ControlPath={}", e.path().display()))
            .args(["-O", "stop", "wasmspawner-control"])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        n += 1;
    }
    n
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

/// Where a job's home directory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobHome {
    /// A submit host's job (it runs as `ssh.user` on the cluster): only
    /// `ssh.home` (`{user}` the hub user), never a hub machine account.
    Remote(Option<String>),
    /// A job on this host: the caller looks the local account up.
    Local,
}

/// The home directory a job of `ic` for `hub_user` gets (see [`JobHome`]).
pub fn remote_home(ic: &crate::config::InstanceConfig, hub_user: &str) -> JobHome {
    if ic.submit_host.is_none() {
        return JobHome::Local;
    }
    JobHome::Remote(
        ic.ssh
            .as_ref()
            .and_then(|s| s.home.as_ref())
            .map(|h| h.replace("{user}", hub_user)),
    )
}

/// ssh's own failures (not the remote program's) exit 255: the short
/// cause for the reason (see [`short_cause`]); ssh's whole words go to the
/// host's log. `argv` is the ssh command line (the host follows `--`).
pub fn ssh_failure(argv: &[String], exit_code: i32, stderr: &[u8]) -> Option<String> {
    (exit_code == 255).then(|| {
        let host = argv
            .iter()
            .position(|a| a == "--")
            .and_then(|i| argv.get(i + 1))
            .map_or("the remote host", String::as_str);
        let text = String::from_utf8_lossy(stderr);
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        tracing::warn!(
            host,
            "ssh failed: {}",
            crate::sanitize::text(text.trim(), 4096)
        );
        format!(
            "ssh failed: {}",
            short_cause(host, &lines).unwrap_or_else(|| format!("ssh to {host} failed"))
        )
    })
}

/// The short cause of an ssh failure from its stderr lines, e.g. "host key
/// verification failed for login1"; the last meaningful line (cut) when no
/// known cause matches; `None` when ssh said nothing.
pub fn short_cause(host: &str, lines: &[String]) -> Option<String> {
    let has = |needle: &str| {
        lines.iter().any(|l| {
            l.to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase())
        })
    };
    let known = [
        ("Host key verification failed", format!("host key verification failed for {host}")),
        ("REMOTE HOST IDENTIFICATION HAS CHANGED", format!("host key verification failed for {host} (its key changed)")),
        ("Permission denied", format!("{host} refused the login (permission denied: check ssh.user and ssh.identity_file)")),
        ("UNPROTECTED PRIVATE KEY FILE", "ssh refuses the identity file: its permissions are too open (chmod 600)".to_string()),
        ("Connection refused", format!("connection refused by {host}")),
        ("Connection timed out", format!("connection to {host} timed out")),
        ("Operation timed out", format!("connection to {host} timed out")),
        ("Could not resolve hostname", format!("cannot resolve {host}")),
        ("No route to host", format!("no route to {host}")),
        ("Network is unreachable", format!("network unreachable for {host}")),
        ("Too many authentication failures", format!("{host} refused the login (too many authentication failures)")),
        ("remote port forwarding failed", format!("{host} refused the remote forward (remote port forwarding failed)")),
        ("Address already in use", "the local port is already in use".to_string()),
        ("cannot listen to port", "the local port is already in use".to_string()),
        ("Connection closed by", format!("{host} closed the connection")),
        ("Connection reset by", format!("{host} reset the connection")),
        ("kex_exchange_identification", format!("{host} closed the connection before the handshake")),
    ];
    for (needle, cause) in known {
        if has(needle) {
            return Some(cause);
        }
    }
    lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("debug")
                && !l.starts_with('@')
                && !l.starts_with("Warning: Permanently added")
                && !l.starts_with("Authenticated to")
        })
        .map(|l| crate::sanitize::text(l, 160))
}

/// Connections (an ssh command line up to its host: options, account,
/// port, the shared connection's generation) that failed lately, and when
/// the next may be tried.
static FAILING: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<Vec<String>, Failing>>,
> = std::sync::LazyLock::new(Default::default);

struct Failing {
    backoff: Backoff,
    next: std::time::Instant,
    cause: String,
}

/// The connection part of an ssh argv (everything up to the host), and the host.
fn connection_of(argv: &[String]) -> Option<(Vec<String>, &str)> {
    let i = argv.iter().position(|a| a == "--")?;
    let host = argv.get(i + 1)?;
    Some((argv[..=i + 1].to_vec(), host))
}

/// Why a new ssh of `argv` is not started now: the same connection failed
/// lately and its backoff ([`Backoff`]) has not passed.
pub fn backing_off(argv: &[String]) -> Option<String> {
    let (key, host) = connection_of(argv)?;
    let failing = FAILING.lock().unwrap_or_else(|p| p.into_inner());
    let f = failing.get(&key)?;
    let now = std::time::Instant::now();
    (now < f.next).then(|| {
        format!(
            "ssh to {host} is backing off after {} failure(s) ({}); next try in {:.1} s",
            f.backoff.failures(),
            f.cause,
            (f.next - now).as_secs_f64()
        )
    })
}

/// Records how an ssh of `argv` went: `Some(cause)` when ssh itself failed
/// (exit 255). Logs once per change: the first failure at warn, the
/// recovery at info.
pub fn connection_result(argv: &[String], failure: Option<&str>) {
    let Some((key, host)) = connection_of(argv) else {
        return;
    };
    let mut failing = FAILING.lock().unwrap_or_else(|p| p.into_inner());
    match failure {
        None => {
            if let Some(f) = failing.remove(&key) {
                tracing::info!(
                    host,
                    "ssh to {host} works again after {} failure(s)",
                    f.backoff.failures()
                );
            }
        }
        Some(cause) => {
            let f = failing.entry(key).or_insert_with(|| Failing {
                backoff: Backoff::default(),
                next: std::time::Instant::now(),
                cause: String::new(),
            });
            if f.backoff.failures() == 0 || f.cause != cause {
                tracing::warn!(host, "ssh to {host} fails: {cause}; new connections back off (0.5 s doubling to 60 s) until one succeeds");
            }
            f.cause = cause.to_string();
            f.next = std::time::Instant::now() + f.backoff.next_wait();
        }
    }
}

/// The wait before the next re-open of an ssh connection (forward,
/// callback or master): 0.5 s, doubling, at most 60 s, ±20% jitter;
/// [`Backoff::reset`] after a success.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const FIRST: std::time::Duration = std::time::Duration::from_millis(500);
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(60);

    /// The wait after one more failure.
    pub fn next_wait(&mut self) -> std::time::Duration {
        let d = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_look_like_options_are_refused() {
        assert!(check_host("login1.example.org").is_ok());
        assert!(check_host("-oProxyCommand=id").is_err());
        assert!(check_host("a b").is_err());
        assert!(check_host("a;b").is_err());
        assert!(check_host("").is_err());
    }

    #[test]
    fn the_generation_changes_with_known_hosts_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (kh, id) = (dir.path().join("kh"), dir.path().join("id"));
        std::fs::write(&kh, "a").unwrap();
        std::fs::write(&id, "k").unwrap();
        let cfg = SshConfig {
            user: None,
            port: 22,
            identity_file: Some(id.clone()),
            known_hosts: kh.clone(),
            reuse_connections: true,
            control_persist: std::time::Duration::from_secs(600),
            master_max_age: std::time::Duration::from_secs(3600),
            connect_timeout: std::time::Duration::from_secs(10),
            program: "/usr/bin/ssh".into(),
            home: None,
        };
        let g = master_generation(&cfg);
        assert_eq!(g, master_generation(&cfg), "stable while nothing changes");
        std::fs::write(&kh, "b").unwrap();
        let g2 = master_generation(&cfg);
        assert_ne!(g, g2, "a known_hosts edit");
        std::fs::write(&id, "other key").unwrap();
        assert_ne!(g2, master_generation(&cfg), "a new identity file");
        let (argv, _) = wrap(&cfg, dir.path(), "login1", None, &["true".into()], &[]);
        assert!(argv
            .iter()
            .any(|a| a.starts_with("ControlPath=") && a.contains(&master_generation(&cfg))));
    }

    #[test]
    fn short_causes_name_the_host() {
        let l = |s: &str| vec![s.to_string()];
        assert_eq!(
            short_cause("login1", &l("Host key verification failed.")).unwrap(),
            "host key verification failed for login1"
        );
        assert_eq!(
            short_cause(
                "login1",
                &l("ssh: connect to host login1 port 22: Connection refused")
            )
            .unwrap(),
            "connection refused by login1"
        );
        let banner: Vec<String> = (0..20)
            .map(|i| format!("@@@ banner line {i} {}", "x".repeat(60)))
            .collect();
        assert!(short_cause("login1", &banner).is_none_or(|c| c.len() <= 160));
    }

    #[test]
    fn quoting_makes_each_element_one_word() {
        assert_eq!(quote("it's"), r#"'it'\''s'"#);
        assert_eq!(quote("$(id)"), "'$(id)'");
    }
}
