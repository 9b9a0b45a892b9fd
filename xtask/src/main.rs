//! Project tasks: `cargo xtask <build|demo|test|plugins>`.
//!
//! - `build`: the plugins (wasm32-wasip2, copied to `target/plugins/NAME.wasm`)
//!   and the host binary.
//! - `demo [--slurm]`: build, then run a real JupyterHub at
//!   http://127.0.0.1:8000 with the host and the `local` plugin (and a
//!   one-node Slurm with `--slurm`) in the foreground (`demo.rs`).
//! - `bench-hub [--runs N]`: WasmSpawner against batchspawner 1.3.0 on
//!   the same one-node Slurm and JupyterHub (`bench_hub.rs`).
//! - `test`: build the plugins, then run every test of the workspace and of
//!   the example site plugin.
//! - `plugins`: build the plugins only (the example site plugin included).
//! - `python-plugin`: build the Python example plugin with componentize-py.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod bench_hub;
mod demo;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build_plugins().and_then(|_| build_host(true)),
        Some("plugins") => build_plugins().map(|_| ()),
        Some("demo") => demo::demo(&args[1..]),
        Some("bench-hub") => bench_hub::bench_hub(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("pyenv") => pyenv().map(|_| ()),
        Some("python-plugin") => pyenv().and_then(|v| build_python_plugin(&v)),
        Some("js-plugin") => build_js_plugin(),
        Some("schemathesis") => schemathesis(),
        _ => {
            eprintln!(
                "usage: cargo xtask <build|plugins|demo|test [cargo test args]>\n\
                 \n  build    build the plugins (wasm32-wasip2) and the host\
                 \n  plugins  build the plugins only, into target/plugins/\
                 \n  demo     build, then run JupyterHub at http://127.0.0.1:8000 with the host and the local plugin (--slurm: and a one-node Slurm)\
                 \n  bench-hub  start → ready and stop, WasmSpawner vs batchspawner 1.3.0 on one-node Slurm [--runs N]\
                 \n  test     build the plugins, then run all tests (Rust, then Python with a real JupyterHub)\
                 \n  pyenv    create the Python venv for the JupyterHub tests ($WASMSPAWNER_VENV, default target/venv)\
                 \n  python-plugin  build examples/python-plugin with componentize-py (from that venv)\
                 \n  js-plugin      build examples/js-plugin with componentize-js (from npm, into target/js-tools)\
                 \n  schemathesis   the HTTP API against its OpenAPI document (after `build`; part of `test`)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> Result<()> {
    let shown = format!("{c:?}");
    let status = c.status().with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Installs the wasm target with rustup when it is missing.
fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .exists()
    {
        return Ok(());
    }
    eprintln!("xtask: installing the {WASM_TARGET} target with rustup");
    let mut c = Command::new("rustup");
    c.args(["target", "add", WASM_TARGET]);
    run(c).context("the wasm target is needed to build plugins; install it with `rustup target add wasm32-wasip2`")
}

/// Plugin crates: `plugins/*` and `tests/plugins/*`, as (package, short name).
fn plugin_crates() -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for dir in ["plugins", "tests/plugins"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let manifest = e.path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let name = text
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("name = \"")
                        .and_then(|r| r.strip_suffix('"'))
                })
                .with_context(|| format!("no package name in {}", manifest.display()))?
                .to_string();
            let short = e.file_name().to_string_lossy().into_owned();
            found.push((name, short));
        }
    }
    Ok(found)
}

/// The example site plugin: its own workspace (as in a site's repository)
/// and its own target directory, since it builds the `slurm` plugin crate
/// without its exports (which must not overwrite the real `slurm.wasm`).
const SITE_PLUGIN: &str = "examples/site-plugin";

fn site_target_dir() -> PathBuf {
    target_dir().join("site-plugin")
}

/// A cargo command for the example site plugin.
fn site_cargo(args: &[&str]) -> Command {
    let mut c = cargo();
    c.args(args)
        .arg("--manifest-path")
        .arg(root().join(SITE_PLUGIN).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(site_target_dir());
    c
}

/// Builds every plugin and copies it to `target/plugins/<short>.wasm`.
fn build_plugins() -> Result<PathBuf> {
    ensure_wasm_target()?;
    let crates = plugin_crates()?;
    let mut c = cargo();
    c.args(["build", "--target", WASM_TARGET, "--profile", "plugin"]);
    for (pkg, _) in &crates {
        c.args(["-p", pkg]);
    }
    run(c)?;
    run(site_cargo(&[
        "build",
        "--target",
        WASM_TARGET,
        "--profile",
        "plugin",
    ]))?;
    let out_dir = target_dir().join("plugins");
    std::fs::create_dir_all(&out_dir)?;
    let built = |dir: PathBuf, pkg: &str| {
        dir.join(WASM_TARGET)
            .join("plugin")
            .join(format!("{}.wasm", pkg.replace('-', "_")))
    };
    let mut outputs: Vec<(PathBuf, String)> = crates
        .iter()
        .map(|(pkg, short)| (built(target_dir(), pkg), short.clone()))
        .collect();
    outputs.push((
        built(site_target_dir(), "example-site-plugin"),
        "example-site".into(),
    ));
    for (built, short) in outputs {
        let dest = out_dir.join(format!("{short}.wasm"));
        // Copy through a temporary name and rename, so a running host's
        // watcher never sees half a file.
        let tmp = out_dir.join(format!(".{short}.wasm.tmp"));
        std::fs::copy(&built, &tmp).with_context(|| format!("copy {}", built.display()))?;
        std::fs::rename(&tmp, &dest)?;
        let size = std::fs::metadata(&dest)?.len();
        eprintln!("xtask: {} ({} KiB)", dest.display(), size / 1024);
    }
    Ok(out_dir)
}

fn build_host(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "-p", "wasmspawner"]);
    if release {
        c.arg("--release");
    }
    run(c)
}

fn test(extra: &[String]) -> Result<()> {
    build_plugins()?;
    build_js_plugin()?;
    // The venv first: it has componentize-py for the Python plugin, which
    // the host's tests load.
    let venv = pyenv()?;
    build_python_plugin(&venv)?;
    let mut c = cargo();
    // Every failure in one run, not just the first test binary's.
    c.args(["test", "--workspace", "--no-fail-fast"])
        .args(extra);
    run(c)?;
    // The example site plugin's own tests (its own workspace).
    run(site_cargo(&["test"]))?;
    // The host binary the Python tests start.
    let mut c = cargo();
    c.args(["build", "-p", "wasmspawner"]);
    run(c)?;
    pytest(&venv, &["tests"])?;
    // The hub side also against JupyterHub 5.
    let venv5 = hub5_env(&venv)?;
    pytest(&venv5, &["tests/test_hub_e2e.py"])?;
    // The HTTP API against its own OpenAPI document: schemathesis with every
    // check, against a real `wasmspawner serve` (tests/schemathesis).
    schemathesis()
}

/// schemathesis (from PyPI, in its own venv `target/venv-schemathesis`)
/// against the debug host: tests/schemathesis/run.sh.
fn schemathesis() -> Result<()> {
    let venv = target_dir().join("venv-schemathesis");
    let want = "schemathesis==4.32.5";
    let stamp = venv.join(".wasmspawner-stamp");
    if !std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        eprintln!("xtask: creating {} ({want})", venv.display());
        let mut c = Command::new("/usr/bin/python3");
        c.args(["-m", "venv"]).arg(&venv);
        run(c).context(
            "creating the venv needs Python's venv module (Debian: apt-get install python3-venv)",
        )?;
        let mut c = Command::new(venv.join("bin/pip"));
        c.args(["install", "-q", "--disable-pip-version-check", want]);
        run(c)?;
        std::fs::write(&stamp, want)?;
    }
    let mut c = Command::new("bash");
    c.current_dir(root())
        .arg("tests/schemathesis/run.sh")
        .arg(target_dir().join("debug/wasmspawner"))
        .arg(venv.join("bin/st"));
    run(c)
}

fn pytest(venv: &Path, what: &[&str]) -> Result<()> {
    let mut c = Command::new(venv.join("bin/python"));
    c.current_dir(root().join("jupyterhub-spawner"))
        .args(["-m", "pytest", "-ra"])
        .args(what)
        .env("WASMSPAWNER_VENV", venv)
        .env("WASMSPAWNER_BIN", target_dir().join("debug/wasmspawner"))
        .env("WASMSPAWNER_PLUGIN_DIR", target_dir().join("plugins"));
    run(c)
}

/// The JavaScript example plugin (examples/js-plugin, API 0.2), built with
/// componentize-js from npm (the versions its package-lock.json pins,
/// installed once into `target/js-tools`), into
/// `target/plugins/js-slurm.wasm`.
fn build_js_plugin() -> Result<()> {
    let src = root().join("examples/js-plugin");
    let tools = target_dir().join("js-tools");
    std::fs::create_dir_all(&tools)?;
    let lock = std::fs::read(src.join("package-lock.json"))?;
    let stamp = tools.join(".wasmspawner-stamp");
    if std::fs::read(&stamp).ok().as_deref() != Some(lock.as_slice()) {
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(src.join(f), tools.join(f))?;
        }
        eprintln!("xtask: installing componentize-js into {}", tools.display());
        let mut c = Command::new("npm");
        c.current_dir(&tools)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
        run(c).context("npm (Node.js 18 or later) installs componentize-js; on Debian: apt-get install nodejs npm")?;
        std::fs::write(&stamp, &lock)?;
    }
    let out_dir = target_dir().join("plugins");
    std::fs::create_dir_all(&out_dir)?;
    let tmp = out_dir.join(".js-slurm.wasm.tmp");
    let mut c = Command::new(tools.join("node_modules/.bin/componentize-js"));
    c.current_dir(root())
        .arg(src.join("plugin.js"))
        .arg("--wit")
        .arg(root().join("wit/since_v0.2.0"))
        .args([
            "--world-name",
            "plugin",
            "--disable",
            "http",
            "fetch-event",
            "--out",
        ])
        .arg(&tmp);
    run(c)?;
    let dest = out_dir.join("js-slurm.wasm");
    std::fs::rename(&tmp, &dest)?;
    let size = std::fs::metadata(&dest)?.len();
    eprintln!("xtask: {} ({} KiB)", dest.display(), size / 1024);
    Ok(())
}

/// A second venv next to the first, with JupyterHub 5 (sharing its proxy).
/// The hub package installed (editable) from this checkout into `venv`: a
/// venv reused from another clone points to that clone's code otherwise.
fn this_checkouts_package(venv: &Path) -> Result<()> {
    let mark = venv.join(".wasmspawner-package");
    let pkg = root().join("jupyterhub-spawner");
    let want = pkg.display().to_string();
    if std::fs::read_to_string(&mark).is_ok_and(|s| s == want) {
        return Ok(());
    }
    let mut c = Command::new(venv.join("bin/pip"));
    c.args(["install", "-q", "--disable-pip-version-check", "-e"])
        .arg(&pkg);
    run(c)?;
    std::fs::write(&mark, want)?;
    Ok(())
}

fn hub5_env(venv: &Path) -> Result<PathBuf> {
    let mut name = venv.file_name().unwrap_or_default().to_os_string();
    name.push("-hub5");
    let v5 = venv.with_file_name(name);
    let stamp = v5.join(".wasmspawner-stamp");
    let want = "jupyterhub==5.5.4 jupyterlab pytest pytest-asyncio requests v1";
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        this_checkouts_package(&v5)?;
        return Ok(v5);
    }
    eprintln!("xtask: creating the JupyterHub 5 venv {}", v5.display());
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut c = Command::new(python);
    c.args(["-m", "venv"]).arg(&v5);
    run(c)?;
    let pip = v5.join("bin/pip");
    let mut c = Command::new(&pip);
    c.args(["install", "-q", "--disable-pip-version-check"])
        .args(want.rsplit_once(' ').map_or(want, |(p, _)| p).split(' '));
    run(c)?;
    this_checkouts_package(&v5)?;
    let chp = v5.join("chp");
    if !chp.exists() {
        std::os::unix::fs::symlink(venv.join("chp"), &chp)?;
    }
    std::fs::write(&stamp, want)?;
    Ok(v5)
}

/// The Python environment for the JupyterHub package and its tests: a venv
/// from the system's `/usr/bin/python3` (so other users can run it), with
/// JupyterHub 6.1, JupyterLab, the package itself, and configurable-http-proxy
/// from npm inside it. Made once; reused while its stamp matches.
/// The Python example plugin (examples/python-plugin), built with the venv's
/// componentize-py against API 0.1 (wit/since_v0.1.0: the example stays at
/// 0.1 as the witness that 0.1 components keep running), into
/// `target/plugins/python-slurm.wasm`.
fn build_python_plugin(venv: &Path) -> Result<()> {
    let out_dir = target_dir().join("plugins");
    std::fs::create_dir_all(&out_dir)?;
    let tmp = out_dir.join(".python-slurm.wasm.tmp");
    let mut c = Command::new(venv.join("bin/componentize-py"));
    c.current_dir(root())
        .args(["-d", "wit/since_v0.1.0", "-w", "plugin", "componentize"])
        .args(["-p", "examples/python-plugin", "app", "-o"])
        .arg(&tmp);
    run(c).context("componentize-py comes with the venv (cargo xtask pyenv)")?;
    let dest = out_dir.join("python-slurm.wasm");
    std::fs::rename(&tmp, &dest)?;
    let size = std::fs::metadata(&dest)?.len();
    eprintln!("xtask: {} ({} KiB)", dest.display(), size / 1024);
    Ok(())
}

fn pyenv() -> Result<PathBuf> {
    let venv = std::env::var_os("WASMSPAWNER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("venv"));
    let stamp = venv.join(".wasmspawner-stamp");
    let want = "jupyterhub==6.1.1 jupyterlab pytest pytest-asyncio requests playwright==1.55.0 componentize-py==0.25.1 v4";
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        this_checkouts_package(&venv)?;
        return Ok(venv);
    }
    eprintln!(
        "xtask: creating the Python venv {} (JupyterHub 6.1, JupyterLab, configurable-http-proxy)",
        venv.display()
    );
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut c = Command::new(python);
    c.args(["-m", "venv"]).arg(&venv);
    run(c).context(
        "creating the venv needs Python's venv module (Debian: apt-get install python3-venv)",
    )?;
    let pip = venv.join("bin/pip");
    let mut c = Command::new(&pip);
    c.args(["install", "-q", "--disable-pip-version-check"])
        // The last word is the stamp's own version, not a package.
        .args(want.rsplit_once(' ').map_or(want, |(p, _)| p).split(' '));
    run(c)?;
    this_checkouts_package(&venv)?;
    let mut c = Command::new("npm");
    c.args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(venv.join("chp"))
        .arg("configurable-http-proxy@5");
    run(c).context("configurable-http-proxy comes from npm")?;
    std::fs::write(&stamp, want)?;
    Ok(venv)
}
