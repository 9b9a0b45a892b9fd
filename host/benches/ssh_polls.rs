//! Polls per second over SSH, with and without connection reuse
//! (ControlMaster). Needs the test sshd: `eval $(tests/ssh/sshd-up.sh DIR)`,
//! then `cargo bench -p wasmspawner --bench ssh_polls`.

use std::time::Instant;

use wasmspawner_host::config::Config;
use wasmspawner_host::model::Job;
use wasmspawner_host::runtime::plugin::PluginInstance;
use wasmspawner_host::runtime::Runtime;

fn main() {
    let Some(dir) = std::env::var_os("WASMSPAWNER_TEST_SSH") else {
        eprintln!("SKIPPED: set WASMSPAWNER_TEST_SSH (tests/ssh/sshd-up.sh)");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let port = std::fs::read_to_string(dir.join("port")).unwrap();
    let probe =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/probe.wasm");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for reuse in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("host.toml");
        // The probe's status runs `sleep 0` for a job "sleep:0": one remote command per poll.
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"{}\"\n[instances.p]\nplugin = \"{}\"\nsubmit_host = \"127.0.0.1\"\n[instances.p.ssh]\nuser = \"wsssh\"\nport = {}\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\nreuse_connections = {reuse}\n[[instances.p.grants.programs]]\nprogram = \"sleep\"\nargs = [\"*\"]\n",
                tmp.path().join("state").display(),
                probe.display(),
                port.trim(),
                dir.join("client_key").display(),
                dir.join("known_hosts").display()
            ),
        )
        .unwrap();
        let config = Config::load(&cfg).unwrap();
        rt.block_on(async {
            let runtime = Runtime::new(&config.state_dir).unwrap();
            let inst = PluginInstance::load(runtime, &config.path, config.instance("p").unwrap().clone()).await.unwrap();
            let jobs = vec![Job { job_id: "sleep:0".into(), user: "alice".into(), state: String::new() }];
            inst.status(&jobs).await.unwrap(); // warm up (opens the shared connection)
            let n = 30;
            let t = Instant::now();
            for _ in 0..n {
                inst.status(&jobs).await.unwrap();
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "ssh polls, reuse_connections = {reuse}: {:.1} polls/s ({:.1} ms per poll, {n} polls)",
                n as f64 / secs,
                secs * 1000.0 / n as f64
            );
        });
    }
}
