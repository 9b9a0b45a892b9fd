//! `cargo xtask demo [--slurm]`: a real JupyterHub at http://127.0.0.1:8000
//! with `WasmSpawner`, configurable-http-proxy, the host and the `local`
//! plugin (and, with `--slurm`, a one-node Slurm the demo starts), in the
//! foreground. Ctrl-C stops everything it started, by PID.
//!
//! The hub's authenticator is for the demo only: one user, one fixed
//! password printed on start. Never expose it beyond 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{build_host, build_plugins, pyenv, root, run, target_dir};

/// The demo's fixed password. The demo listens on 127.0.0.1 only.
pub const DEMO_PASSWORD: &str = "wasmspawner-demo";
/// The OS user the demo's servers run as when the demo runs as root.
const DEMO_OS_USER: &str = "wsdemo";
const HUB_URL: &str = "http://127.0.0.1:8000";
const HUB_API: &str = "http://127.0.0.1:8081";
const PROXY_API: &str = "http://127.0.0.1:8001";
const HOST_URL: &str = "http://127.0.0.1:8765";
/// slurmctld's port for the demo's own Slurm (slurmd: the next one), away
/// from the test peers' default.
const DEMO_SLURM_PORT: &str = "16937";

const SLURM_PACKAGES: &str =
    "apt-get install --no-install-recommends slurmctld slurmd slurm-client munge";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn demo(args: &[String]) -> Result<()> {
    let slurm = match args {
        [] => false,
        [a] if a == "--slurm" => true,
        _ => bail!("usage: cargo xtask demo [--slurm]"),
    };
    let is_root = unsafe { libc::geteuid() } == 0;
    if slurm {
        check_slurm_installed(is_root)?;
    }
    build_plugins()?;
    // Debug: the demo is not a benchmark, and a debug host builds in a
    // fraction of a release build's time on a fresh clone.
    build_host(false)?;
    let venv = pyenv()?;
    let dir = target_dir().join("demo");
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("token");
    write_token(&token)?;

    // Who logs in and who the servers run as: as root, a demo account the
    // servers run as (runuser); otherwise the invoking user, whose own
    // processes the servers are.
    let user = if is_root {
        ensure_os_user(DEMO_OS_USER)?;
        DEMO_OS_USER.to_string()
    } else {
        std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .context("$USER is not set: the demo's hub user is the invoking user")?
    };

    let mut started = Started::default();
    // Signals first, so a Ctrl-C during start-up also stops what started.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let result = run_demo(&mut started, &dir, &venv, &token, &user, is_root, slurm);
    started.stop_all();
    result
}

fn run_demo(
    started: &mut Started,
    dir: &Path,
    venv: &Path,
    token: &Path,
    user: &str,
    is_root: bool,
    slurm: bool,
) -> Result<()> {
    let slurm_conf = if slurm {
        Some(start_slurm(started, dir)?)
    } else {
        None
    };
    let host_config = dir.join("host.toml");
    std::fs::write(
        &host_config,
        host_config_text(dir, venv, token, is_root, slurm_conf.as_deref()),
    )?;
    let bin = target_dir().join("debug/wasmspawner");
    let mut c = Command::new(&bin);
    c.args(["serve", "--config"]).arg(&host_config);
    started.spawn("host", c, &dir.join("host.log"))?;
    wait_http(
        &format!("{HOST_URL}/healthz"),
        Duration::from_secs(60),
        started,
    )?;

    let hub_dir = dir.join("hub");
    std::fs::create_dir_all(&hub_dir)?;
    std::fs::write(
        hub_dir.join("jupyterhub_config.py"),
        hub_config_text(venv, token, user, slurm),
    )?;
    let mut c = Command::new(venv.join("bin/jupyterhub"));
    c.args(["-f", "jupyterhub_config.py"])
        .current_dir(&hub_dir)
        .env("PATH", path_with(venv));
    started.spawn("jupyterhub", c, &hub_dir.join("hub.log"))?;
    wait_http(
        &format!("{HUB_URL}/hub/api/"),
        Duration::from_secs(120),
        started,
    )?;

    eprintln!(
        "\n  JupyterHub with Wasmspawner is running at {HUB_URL}\n\
         \n    user:     {user}\
         \n    password: {DEMO_PASSWORD}   (DEMO ONLY: a fixed password, 127.0.0.1 only)\n\
         \n  Log in, pick the options in the plugin's form, start your server.{slurm_note}\
         \n  Logs: {dir}/host.log, {dir}/hub/hub.log\
         \n  Ctrl-C stops the hub, its servers, the proxy, the host{slurm_stop}.\n",
        slurm_note = if slurm {
            "\n  \"slurm\" runs it as a job on the demo's one-node Slurm; \"local\" as a local process."
        } else {
            ""
        },
        slurm_stop = if slurm { " and Slurm" } else { "" },
        dir = dir.display(),
    );
    while !STOP.load(Ordering::SeqCst) {
        if let Some(name) = started.exited() {
            bail!("{name} exited; see its log under {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("\nxtask: stopping the demo");
    Ok(())
}

/// Children this demo started, stopped in reverse order by PID.
#[derive(Default)]
struct Started {
    children: Vec<(String, Child)>,
    slurm_dir: Option<PathBuf>,
}

impl Started {
    fn spawn(&mut self, name: &str, mut c: Command, log: &Path) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log)?;
        // Its own process group: the terminal's Ctrl-C reaches only xtask,
        // which stops the hub first (it stops its servers through the host).
        c.process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = c.spawn().with_context(|| format!("cannot start {name}"))?;
        eprintln!(
            "xtask: started {name} (pid {}), log {}",
            child.id(),
            log.display()
        );
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(n, c)| matches!(c.try_wait(), Ok(Some(_))).then(|| n.clone()))
    }

    fn stop_all(&mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            let pid = child.id() as libc::pid_t;
            if matches!(child.try_wait(), Ok(None)) {
                // The process group: the hub's proxy, the host's helpers.
                unsafe { libc::kill(-pid, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    eprintln!("xtask: {name} (pid {pid}) did not stop in 30 s, SIGKILL");
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    let _ = child.wait();
                }
            }
            eprintln!("xtask: stopped {name} (pid {pid})");
        }
        if let Some(dir) = self.slurm_dir.take() {
            let mut c = Command::new("bash");
            c.arg(root().join("tests/slurm/slurm-down.sh")).arg(&dir);
            if let Err(e) = run(c) {
                eprintln!("xtask: stopping the demo's Slurm: {e:#}");
            }
        }
    }
}

fn check_slurm_installed(is_root: bool) -> Result<()> {
    let missing: Vec<&str> = ["slurmctld", "slurmd", "sbatch", "munged"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if !missing.is_empty() {
        bail!(
            "`demo --slurm` starts a one-node Slurm, but {} {} not installed. On Debian/Ubuntu:\n\n    {SLURM_PACKAGES}\n\n(or run `cargo xtask demo` for the local plugin only)",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" }
        );
    }
    if !is_root {
        bail!("`demo --slurm` starts slurmctld, slurmd and munged and runs jobs as a demo user: run it as root (e.g. in a VM or container)");
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(program).is_file())
}

fn start_slurm(started: &mut Started, dir: &Path) -> Result<String> {
    let slurm_dir = dir.join("slurm");
    eprintln!(
        "xtask: starting a one-node Slurm in {}",
        slurm_dir.display()
    );
    let mut c = Command::new("bash");
    c.arg(root().join("tests/slurm/slurm-up.sh"))
        .arg(&slurm_dir)
        .env("PORT0", DEMO_SLURM_PORT)
        .env("SLURM_TEST_USER", DEMO_OS_USER);
    // Stopped by slurm-down.sh even when slurm-up.sh failed half-way.
    started.slurm_dir = Some(slurm_dir.clone());
    run(c).context("tests/slurm/slurm-up.sh")?;
    Ok(slurm_dir.join("etc/slurm.conf").display().to_string())
}

fn ensure_os_user(name: &str) -> Result<()> {
    let exists = Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        eprintln!("xtask: creating the OS user {name} the demo's servers run as (useradd -m)");
        let mut c = Command::new("useradd");
        c.args(["-m", "-s", "/bin/bash", name]);
        run(c)?;
    }
    Ok(())
}

fn write_token(token: &Path) -> Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if token.exists() {
        return Ok(());
    }
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(token)?;
    f.write_all(hex.as_bytes())?;
    Ok(())
}

fn path_with(venv: &Path) -> String {
    format!("{}/bin:/usr/local/bin:/usr/bin:/bin", venv.display())
}

fn wait_http(url: &str, timeout: Duration, started: &mut Started) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let (host, port, path) = split_url(url)?;
    while Instant::now() < deadline {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if let Some(name) = started.exited() {
            bail!("{name} exited during start-up; see its log");
        }
        if http_status(&host, port, &path).is_some_and(|s| s == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{url} did not answer 200 in {} s", timeout.as_secs())
}

fn split_url(url: &str) -> Result<(String, u16, String)> {
    let rest = url.strip_prefix("http://").context("http:// URL")?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = hostport.split_once(':').context("URL with a port")?;
    Ok((host.to_string(), port.parse()?, format!("/{path}")))
}

/// One HTTP/1.0 GET on loopback, for start-up checks only.
fn http_status(host: &str, port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn host_config_text(
    dir: &Path,
    venv: &Path,
    token: &Path,
    is_root: bool,
    slurm_conf: Option<&str>,
) -> String {
    let plugins = target_dir().join("plugins");
    let run_as = if is_root {
        "run_as = [\"/usr/sbin/runuser\", \"-u\", \"{user}\", \"--\"]\n"
    } else {
        ""
    };
    let wrapper = venv.join("bin/wasmspawner-singleuser");
    let path = path_with(venv);
    let mut text = format!(
        r#"# Written by `cargo xtask demo`: the host for the demo hub.
state_dir = {state}

[http]
listen = "127.0.0.1:8765"
public_url = "{HOST_URL}"
token_file = {token}

[instances.local]
plugin = {local}
{run_as}
[instances.local.config]
interfaces = ["lab", "notebook"]
workdir = "home"

[instances.local.grants]
env = ["JUPYTERHUB_DEFAULT_URL", "PATH={path}"]

[[instances.local.grants.detached]]
program = {wrapper}
phases = ["submit"]
args = ["**"]
spawn_env = true

[instances.local.lifecycle]
poll_interval_secs = 2
fast_poll_secs = 0.5
start_timeout_secs = 120
"#,
        state = toml_str(&dir.join("state")),
        token = toml_str(token),
        local = toml_str(&plugins.join("local.wasm")),
        wrapper = toml_str(&wrapper),
    );
    if let Some(conf) = slurm_conf {
        text.push_str(&format!(
            r#"
[instances.slurm]
plugin = {slurm}
{run_as}
[instances.slurm.config]
partition = {{ choices = ["debug"], default = "debug" }}
nprocs = {{ default = 1, max = 2 }}
memory = {{ default = 1, max = 2 }}
runtime = {{ default = 60, max = 480 }}

[instances.slurm.grants]
env = ["SLURM_CONF={conf}", "PATH={path}"]
[[instances.slurm.grants.programs]]
program = "sbatch"
spawn_env = true
phases = ["submit"]
[[instances.slurm.grants.programs]]
program = "squeue"
phases = ["status"]
run_as = "host"
[[instances.slurm.grants.programs]]
program = "scancel"
phases = ["cancel"]

[instances.slurm.lifecycle]
poll_interval_secs = 2
fast_poll_secs = 0.5
start_timeout_secs = 120
"#,
            slurm = toml_str(&plugins.join("slurm.wasm")),
        ));
    }
    text
}

fn hub_config_text(venv: &Path, token: &Path, user: &str, slurm: bool) -> String {
    let instances = if slurm {
        r#"["slurm", "local"]"#
    } else {
        r#"["local"]"#
    };
    format!(
        r#"# Written by `cargo xtask demo`. NOT a production configuration: the
# authenticator below is for the demo only (one user, a fixed password).
import hmac

from jupyterhub.auth import Authenticator

c = get_config()  # noqa: F821

DEMO_USER = {user:?}
DEMO_PASSWORD = {DEMO_PASSWORD:?}


class DemoOnlyAuthenticator(Authenticator):
    """FOR THE DEMO ONLY: one user with a fixed, printed password."""

    async def authenticate(self, handler, data):
        if data.get("username") == DEMO_USER and hmac.compare_digest(
            (data.get("password") or "").encode(), DEMO_PASSWORD.encode()
        ):
            return DEMO_USER
        return None


c.JupyterHub.authenticator_class = DemoOnlyAuthenticator
c.Authenticator.allowed_users = {{DEMO_USER}}
c.JupyterHub.bind_url = "{HUB_URL}"
c.JupyterHub.hub_bind_url = "{HUB_API}"
c.ConfigurableHTTPProxy.api_url = "{PROXY_API}"
c.ConfigurableHTTPProxy.command = [{chp:?}]
c.JupyterHub.allow_named_servers = True
# Ctrl-C stops the demo's servers too.
c.JupyterHub.cleanup_servers = True

c.JupyterHub.spawner_class = "wasm"
c.WasmSpawner.host_url = "{HOST_URL}"
c.WasmSpawner.api_token_file = {token:?}
c.WasmSpawner.instances = {instances}
c.WasmSpawner.wrapper = [{wrapper:?}]
# The form starts with the user's last choices.
c.WasmSpawner.remember_options = ["*"]
c.Spawner.cmd = [{singleuser:?}]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 120
"#,
        chp = venv
            .join("chp/node_modules/.bin/configurable-http-proxy")
            .display()
            .to_string(),
        token = token.display().to_string(),
        wrapper = venv
            .join("bin/wasmspawner-singleuser")
            .display()
            .to_string(),
        singleuser = venv.join("bin/jupyterhub-singleuser").display().to_string(),
    )
}
