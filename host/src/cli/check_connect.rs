//! `wasmspawner check`'s SSH part: connect to each submit host, tunnel
//! gateway and literal `grants.ssh` host with the instance's own options
//! (strict host keys from `ssh.known_hosts` only, its identity and user),
//! and find each granted program there as the host would run it.
//!
//! Everything runs over a connection of the check's own (a ControlMaster
//! in a private temporary directory, closed at the end): a running host's
//! shared connections under `<state_dir>/ssh` are never used or touched.
//!
//! Programs are found without a shell builtin (`command -v` exists only
//! inside a shell): the remote login PATH is read with `printenv PATH`,
//! and each candidate `DIR/NAME` (or a grant's absolute `path`) is tried
//! with the external `test -x`, every argument one quoted word, as any
//! remote call is sent ([`crate::ssh_cmd::wrap`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::{InstanceConfig, SshConfig};

/// What the connect check found for one instance.
#[derive(Default, Debug)]
pub struct Found {
    /// Where programs resolve, as whom.
    pub resolved: Vec<String>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// The hosts of `ic` to connect to, with the key that names each.
fn targets(ic: &InstanceConfig) -> Vec<(String, String)> {
    let mut t: Vec<(String, String)> = Vec::new();
    if let Some(h) = &ic.submit_host {
        t.push((h.clone(), "submit_host".into()));
    }
    if let Some(tu) = &ic.tunnel {
        if !t.iter().any(|(h, _)| h == &tu.via) {
            t.push((tu.via.clone(), "tunnel.via".into()));
        }
    }
    for (i, g) in ic.grants.ssh.iter().enumerate() {
        for h in &g.hosts {
            if !h.contains(['*', '?']) && !t.iter().any(|(x, _)| x == h) {
                t.push((h.clone(), format!("grants.ssh[{i}].hosts")));
            }
        }
    }
    t
}

/// Whether `check` connects for `ic` by default: it has a submit host or a
/// tunnel (whose first use would otherwise be the first spawn).
pub fn connects_by_default(ic: &InstanceConfig) -> bool {
    ic.ssh.is_some() && (ic.submit_host.is_some() || ic.tunnel.is_some())
}

/// Connects to every host of `ic` and checks its programs there;
/// `connect_as` is the hub user put for `{user}` in `ssh.user`.
pub fn check(ic: &InstanceConfig, connect_as: Option<&str>) -> Found {
    let mut f = Found::default();
    let Some(cfg) = &ic.ssh else {
        return f;
    };
    let key = format!("instances.{}", ic.name);
    let user = match crate::ssh_cmd::remote_user(cfg, connect_as) {
        Ok(u) => u,
        Err(_) => {
            f.warnings.push(format!(
                "{key}: not connected: ssh.user names {{user}}; give --connect-as HUB_USER to check as one user"
            ));
            return f;
        }
    };
    let who = user.clone().unwrap_or_else(|| "the host's own user".into());
    let Ok(dir) = private_dir() else {
        f.problems.push(format!(
            "{key}: cannot create a private directory for the check's own connection"
        ));
        return f;
    };
    for (host, role) in targets(ic) {
        let remote = Remote {
            cfg,
            control: &dir,
            host: &host,
            user: user.as_deref(),
        };
        let path = match remote.run(&["printenv".into(), "PATH".into()]) {
            Err(cause) => {
                f.problems.push(format!(
                    "{key}.{role}: cannot connect to {host} (port {}) as {who}: {cause}; {}",
                    cfg.port,
                    fix_for(&cause, &key, cfg, &host)
                ));
                continue;
            }
            Ok((0, out)) => out.trim().to_string(),
            Ok(_) => String::new(),
        };
        f.resolved.push(format!(
            "{host}: connected as {who}, host key verified against {}",
            cfg.known_hosts.display()
        ));
        let mut programs: Vec<(String, String, Option<PathBuf>)> = Vec::new();
        if ic.submit_host.as_deref() == Some(host.as_str()) {
            for (i, g) in ic.grants.programs.iter().enumerate() {
                programs.push((
                    format!("grants.programs[{i}]"),
                    g.program.clone(),
                    g.path.clone(),
                ));
            }
            // A run_as prefix runs on the submit host too.
            if let Some(p) = ic.run_as.first() {
                programs.push(("run_as".into(), p.clone(), None));
            }
        }
        for (i, g) in ic.grants.ssh.iter().enumerate() {
            if g.hosts.iter().any(|h| h == &host) {
                programs.push((format!("grants.ssh[{i}]"), g.program.clone(), None));
            }
        }
        let dirs: Vec<&str> = path.split(':').filter(|d| d.starts_with('/')).collect();
        for (grant, program, given) in programs {
            let candidates: Vec<String> = match (&given, program.starts_with('/')) {
                (Some(p), _) => vec![p.display().to_string()],
                (None, true) => vec![program.clone()],
                (None, false) => dirs
                    .iter()
                    .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
                    .collect(),
            };
            let mut hit = None;
            for c in &candidates {
                match remote.run(&["test".into(), "-x".into(), c.clone()]) {
                    Ok((0, _)) => {
                        hit = Some(c.clone());
                        break;
                    }
                    Ok(_) => {}
                    Err(cause) => {
                        f.problems.push(format!(
                            "{key}.{grant}: {cause} while looking for `{program}` on {host}"
                        ));
                        hit = Some(String::new());
                        break;
                    }
                }
            }
            match hit {
                Some(p) if p.is_empty() => {}
                Some(p) => f
                    .resolved
                    .push(format!("{key}.{grant} `{program}` → {p} on {host}, runs as {who}")),
                None if given.is_some() || program.starts_with('/') => f.problems.push(format!(
                    "{key}.{grant}: {} is not an executable file on {host} (as {who}); install it there or fix the grant's path",
                    candidates[0]
                )),
                None => f.problems.push(format!(
                    "{key}.{grant}: `{program}` is not on the login PATH of {who} on {host} ({}); install it there, or give the grant an absolute `path`",
                    if path.is_empty() { "empty" } else { &path }
                )),
            }
        }
    }
    crate::ssh_cmd::close_masters(&cfg.program, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    f
}

/// The fix an operator makes for a connection failure.
fn fix_for(cause: &str, key: &str, cfg: &SshConfig, host: &str) -> String {
    if cause.contains("host key") {
        format!(
            "put {host}'s host key into {key}.ssh.known_hosts ({}), e.g. `ssh-keyscan -p {} {host}`, after checking its fingerprint with the site",
            cfg.known_hosts.display(),
            cfg.port
        )
    } else if cause.contains("refused the login") || cause.contains("identity file") {
        format!("check {key}.ssh.user and {key}.ssh.identity_file (the key must be in the account's authorized_keys)")
    } else {
        format!("check the host name and {key}.ssh.port, and that sshd runs there")
    }
}

/// A host reached over the check's own connection.
struct Remote<'a> {
    cfg: &'a SshConfig,
    control: &'a Path,
    host: &'a str,
    user: Option<&'a str>,
}

impl Remote<'_> {
    /// Runs `argv` there: its exit code and stdout, or the short cause of
    /// ssh's own failure.
    fn run(&self, argv: &[String]) -> Result<(i32, String), String> {
        let cfg = SshConfig {
            reuse_connections: true,
            control_persist: std::time::Duration::from_secs(30),
            ..self.cfg.clone()
        };
        let (mut cmd, _) =
            crate::ssh_cmd::wrap(&cfg, self.control, self.host, self.user, argv, &[]);
        let program = cmd.remove(0);
        let out = Command::new(program)
            .args(&cmd)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.cfg.program.display()))?;
        let code = out.status.code().unwrap_or(-1);
        if code == 255 {
            let text = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            return Err(crate::ssh_cmd::short_cause(self.host, &lines)
                .unwrap_or_else(|| format!("ssh to {} failed", self.host)));
        }
        Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

/// A new 0700 directory under the system's temporary directory.
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for _ in 0..8 {
        let d = std::env::temp_dir().join(format!("wscheck-{:08x}", rand::random::<u32>()));
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free name"))
}
