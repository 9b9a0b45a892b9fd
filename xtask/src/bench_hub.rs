//! `cargo xtask bench-hub`: start → ready and stop of WasmSpawner against
//! batchspawner 1.3.0 (from PyPI, into the venv), alternating on the same
//! one-node Slurm and JupyterHub (`jupyterhub-spawner/tests/bench_hub.py`).
//! Printed, not asserted.
//!
//! Slurm: `$WASMSPAWNER_SLURM_CONF` when set (e.g. `.ci/run`'s), else a
//! one-node Slurm started here (`tests/slurm/slurm-up.sh`) and stopped after.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{build_host, build_plugins, pyenv, root, run, target_dir};

const BATCHSPAWNER: &str = "batchspawner==1.3.0";
/// slurmctld's port for a Slurm started here (slurmd: the next one).
const BENCH_SLURM_PORT: &str = "16947";

pub fn bench_hub(args: &[String]) -> Result<()> {
    let runs = match args {
        [] => "6".to_string(),
        [flag, n] if flag == "--runs" && n.parse::<u32>().is_ok_and(|n| n > 0) => n.clone(),
        _ => bail!("usage: cargo xtask bench-hub [--runs N]"),
    };
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-hub runs servers as a test user through runuser: run it as root");
    }
    build_plugins()?;
    build_host(false)?;
    let venv = pyenv()?;
    let has_batchspawner = Command::new(venv.join("bin/python"))
        .args(["-c", "import batchspawner"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_batchspawner {
        let mut c = Command::new(venv.join("bin/pip"));
        c.args(["install", "-q", "--disable-pip-version-check", BATCHSPAWNER]);
        run(c).context("installing batchspawner into the venv")?;
    }
    let (conf, started) = match std::env::var("WASMSPAWNER_SLURM_CONF") {
        Ok(conf) if !conf.is_empty() => (conf, None),
        _ => {
            let dir = target_dir().join("bench-hub/slurm");
            eprintln!("xtask: starting a one-node Slurm in {}", dir.display());
            let mut c = Command::new("bash");
            c.arg(root().join("tests/slurm/slurm-up.sh"))
                .arg(&dir)
                .env("PORT0", BENCH_SLURM_PORT);
            run(c).context(
                "tests/slurm/slurm-up.sh (apt-get install --no-install-recommends slurmctld slurmd slurm-client munge)",
            )?;
            (dir.join("etc/slurm.conf").display().to_string(), Some(dir))
        }
    };
    let mut c = Command::new(venv.join("bin/python"));
    c.current_dir(root().join("jupyterhub-spawner"))
        .arg("tests/bench_hub.py")
        .env("WASMSPAWNER_VENV", &venv)
        .env("WASMSPAWNER_BIN", target_dir().join("debug/wasmspawner"))
        .env("WASMSPAWNER_PLUGIN_DIR", target_dir().join("plugins"))
        .env("WASMSPAWNER_SLURM_CONF", &conf)
        .env("SLURM_CONF", &conf)
        .env("BENCH_HUB_RUNS", &runs);
    let result = run(c);
    if let Some(dir) = started {
        let mut c = Command::new("bash");
        c.arg(root().join("tests/slurm/slurm-down.sh")).arg(&dir);
        run(c)?;
    }
    result
}
