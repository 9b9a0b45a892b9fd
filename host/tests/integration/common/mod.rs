//! Shared helpers for the host's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmspawner_host::config::Config;
use wasmspawner_host::runtime::plugin::PluginInstance;
use wasmspawner_host::runtime::Runtime;

/// A built plugin: `target/plugins/NAME.wasm` (made by `cargo xtask plugins`).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("WASMSPAWNER_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the plugins first with `cargo xtask plugins` (or run the tests with `cargo xtask test`)",
        p.display()
    );
    p
}

/// A committed component built against an older API version
/// (`tests/fixtures/api-0.1/NAME.wasm`: today's `local` and `slurm` as
/// they were built against 0.1, kept to prove they keep running).
pub fn fixture_wasm(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(format!("{rel}.wasm"));
    assert!(p.exists(), "{} is missing from the checkout", p.display());
    p
}

/// A temporary directory with a config file whose text is `body`, after a
/// `state_dir` line. `{plugin:NAME}` in `body` becomes the built plugin's path.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub fn setup(body: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    // One compile cache for all tests: a component is compiled once per run.
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-compile-cache");
    let mut text = format!(
        "state_dir = \"{}\"\ncache_dir = \"{}\"\n",
        dir.path().join("state").display(),
        cache.display()
    );
    let mut body = body.to_string();
    while let Some(start) = body.find("{plugin:") {
        let end = start + body[start..].find('}').unwrap();
        let name = body[start + 8..end].to_string();
        body.replace_range(start..=end, &plugin_wasm(&name).display().to_string());
    }
    text.push_str(&body);
    let path = dir.path().join("host.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    Setup { dir, config }
}

impl Setup {
    pub fn runtime(&self) -> Arc<Runtime> {
        // Each test owns its state directory and its SSH connections.
        let rt = Runtime::for_config(&self.config).unwrap();
        rt.own_ssh_connections();
        rt
    }

    pub async fn instance(&self, name: &str) -> Arc<PluginInstance> {
        PluginInstance::load(
            self.runtime(),
            &self.config.path,
            self.config.instance(name).unwrap().clone(),
        )
        .await
        .unwrap()
    }

    /// Audit records written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let p = self.config.state_dir.join("audit.jsonl");
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn user(name: &str) -> wasmspawner_host::model::User {
    wasmspawner_host::model::User {
        name: name.into(),
        groups: vec![],
        admin: false,
    }
}

/// The test sshd's directory (tests/ssh/sshd-up.sh: port, user, client_key,
/// known_hosts…), or `None` with a loud SKIPPED line on a developer machine
/// without one. Under CI=true a missing sshd fails the test.
pub fn sshd_dir() -> Option<PathBuf> {
    match std::env::var_os("WASMSPAWNER_TEST_SSH") {
        Some(d) => Some(PathBuf::from(d)),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI must run the SSH tests: start tests/ssh/sshd-up.sh and set WASMSPAWNER_TEST_SSH")
        }
        None => {
            eprintln!("\n*** SKIPPED (no sshd): set WASMSPAWNER_TEST_SSH, e.g. `eval $(tests/ssh/sshd-up.sh /tmp/ws-sshd)` as root ***\n");
            None
        }
    }
}

/// A file of the test sshd's directory, trimmed (`port`, `user`).
pub fn sshd_file(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
        .trim()
        .to_string()
}

/// `[instances.NAME.ssh]` for the test sshd (its user, key, known_hosts).
pub fn sshd_table(dir: &std::path::Path, instance: &str) -> String {
    format!(
        "[instances.{instance}.ssh]\nuser = \"{}\"\nport = {}\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\n",
        sshd_file(dir, "user"),
        sshd_file(dir, "port"),
        dir.join("client_key").display(),
        dir.join("known_hosts").display()
    )
}

/// Connection settings for the test sshd, without connection reuse.
pub fn sshd_config(dir: &std::path::Path) -> wasmspawner_host::config::SshConfig {
    wasmspawner_host::config::SshConfig {
        user: Some(sshd_file(dir, "user")),
        port: sshd_file(dir, "port").parse().unwrap(),
        identity_file: Some(dir.join("client_key")),
        known_hosts: dir.join("known_hosts"),
        reuse_connections: false,
        control_persist: std::time::Duration::from_secs(1),
        master_max_age: std::time::Duration::from_secs(3600),
        connect_timeout: std::time::Duration::from_secs(5),
        program: PathBuf::from("/usr/bin/ssh"),
        home: None,
    }
}

/// A job spec for plugin calls in tests.
pub fn job_spec(options: wasmspawner_host::model::Options) -> wasmspawner_host::model::JobSpec {
    wasmspawner_host::model::JobSpec {
        spawn_id: "s1".into(),
        user: user("alice"),
        options,
        cmd: vec!["jupyterhub-singleuser".into()],
        env_names: vec![],
        callback_url: "http://127.0.0.1/cb".into(),
        home: None,
    }
}

/// The site config and grants of a Slurm instance `name` on the test cluster
/// whose slurm.conf is `conf` (TOML tables, to follow `[instances.NAME]`).
pub fn slurm_tables(name: &str, conf: &str) -> String {
    format!(
        r#"[instances.{name}.config]
partition = {{ choices = ["debug"], default = "debug" }}
memory = {{ default = 1, max = 2 }}
runtime = {{ default = 10 }}
[instances.{name}.grants]
env = ["SLURM_CONF={conf}"]
[[instances.{name}.grants.programs]]
program = "sbatch"
spawn_env = true
phases = ["submit"]
[[instances.{name}.grants.programs]]
program = "squeue"
phases = ["status"]
run_as = "host"
[[instances.{name}.grants.programs]]
program = "scancel"
phases = ["cancel"]
"#
    )
}
