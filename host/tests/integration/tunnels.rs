//! Tunnels through a real sshd to a server that listens on loopback only,
//! started by the `local` plugin; the tunnel survives a kill of its ssh. A
//! callback tunnel (`-R`) opens only once the gateway listens, and a gateway
//! that refuses the port is reported with ssh's reason. A local port someone
//! else holds is never claimed; ports come from the configured range; a
//! killed host's tunnel ssh is ended by the next start; with sshd down,
//! re-opens back off.

use crate::common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::{setup, user};
use wasmspawner_host::capability::gate::CallContext;
use wasmspawner_host::model::{Job, JobSpec, Options};
use wasmspawner_host::tunnel::{ReverseSpec, TunnelSpec, Tunnels};

fn get(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test]
async fn a_tunnel_reaches_a_loopback_server_and_survives_its_ssh_dying() {
    let Some(dir) = common::sshd_dir() else {
        return;
    };
    // A server bound to loopback only, started through the local plugin.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = setup("[instances.local]\nplugin = \"{plugin:local}\"\n[instances.local.grants]\nenv = [\"JUPYTERHUB_DEFAULT_URL\"]\n[[instances.local.grants.detached]]\nprogram = \"python3\"\nspawn_env = true\n");
    let inst = s.instance("local").await;
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("index.html"), "hello through the tunnel").unwrap();
    let spec = JobSpec {
        spawn_id: "t1".into(),
        user: user("alice"),
        options: Options::new(),
        cmd: vec![
            "python3".into(),
            "-m".into(),
            "http.server".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--directory".into(),
            served.path().display().to_string(),
        ],
        env_names: vec![],
        callback_url: String::new(),
        home: None,
    };
    let ctx = CallContext {
        spawn_id: Some("t1".into()),
        user: Some("alice".into()),
        spawn_env: Arc::new(vec![]),
        phase: Some(wasmspawner_host::config::Phase::Submit),
        ..Default::default()
    };
    let job = inst.submit(ctx.clone(), &spec).await.unwrap();

    let ssh = common::sshd_config(&dir);
    let tunnels = Tunnels::new();
    let tspec = TunnelSpec {
        key: "t1".into(),
        via: "127.0.0.1".into(),
        user: ssh.user.clone(),
        target_host: "127.0.0.1".into(),
        target_port: port,
        local_ports: None,
    };
    let local = {
        let mut last = None;
        // The server may take a moment to listen.
        for _ in 0..40 {
            match tunnels.open(&ssh, tspec.clone(), None).await {
                Ok(a) => match get(a) {
                    Ok(body) if body.contains("hello through the tunnel") => {
                        last = Some(a);
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        last.expect("the tunnel never served the page")
    };
    assert_ne!(local.port(), port);

    // Kill the tunnel's ssh: the watcher re-opens it on the same local port.
    let pid = tunnels.list().await[0].pid.unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut back = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(body) = get(local) {
            if body.contains("hello through the tunnel") && tunnels.list().await[0].restarts >= 1 {
                back = true;
                break;
            }
        }
    }
    assert!(
        back,
        "the tunnel did not come back: {:?}",
        tunnels.list().await
    );

    // Closing removes it; the port stops answering.
    tunnels.close("t1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(get(local).is_err());
    inst.cancel(
        ctx,
        &Job {
            job_id: job.job_id,
            user: "alice".into(),
            state: String::new(),
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_callback_tunnel_opens_only_when_the_gateway_listens() {
    let Some(dir) = common::sshd_dir() else {
        return;
    };
    let ssh = common::sshd_config(&dir);
    // "This host": a listener that answers one line.
    let here = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = here.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in here.incoming().flatten() {
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nthe host");
        }
    });
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let tunnels = Tunnels::new();
    let spec = |port| ReverseSpec {
        key: "callback:x".into(),
        via: "127.0.0.1".into(),
        user: ssh.user.clone(),
        bind: Some("127.0.0.1".into()),
        remote_port: port,
        to,
    };

    // Opened means the gateway listens: the first connection gets through.
    let port = free();
    tunnels.open_reverse(&ssh, spec(port)).await.unwrap();
    let body = get(([127, 0, 0, 1], port).into()).unwrap();
    assert!(body.ends_with("the host"), "{body}");
    let list = tunnels.list().await;
    assert!(
        list[0].reverse && list[0].target == format!("127.0.0.1:{port}"),
        "{list:?}"
    );
    // Opening the same again keeps the one tunnel.
    let pid = list[0].pid;
    tunnels.open_reverse(&ssh, spec(port)).await.unwrap();
    assert_eq!(tunnels.list().await[0].pid, pid);

    // The gateway's port is taken: refused, with ssh's own words.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let e = tunnels
        .open_reverse(&ssh, spec(busy))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{busy}")) && e.contains("forwarding failed"),
        "{e}"
    );
    assert!(
        tunnels.list().await.is_empty(),
        "a refused tunnel is not kept"
    );
}

/// A loopback server answering every connection with `text`.
fn answering(text: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{text}").as_bytes());
        }
    });
    port
}

fn server_spec(
    key: &str,
    ssh: &wasmspawner_host::config::SshConfig,
    target_port: u16,
) -> TunnelSpec {
    TunnelSpec {
        key: key.into(),
        via: "127.0.0.1".into(),
        user: ssh.user.clone(),
        target_host: "127.0.0.1".into(),
        target_port,
        local_ports: None,
    }
}

/// Two adjacent free ports.
fn free_pair() -> u16 {
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

async fn until(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_someone_else_holds_is_never_claimed_and_ports_come_from_the_range() {
    let Some(dir) = common::sshd_dir() else {
        return;
    };
    let ssh = common::sshd_config(&dir);
    let server = answering("the user's server");
    let first = free_pair();
    // A local user took the first port of the range before the host.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", first)).unwrap();
    let tunnels = Tunnels::new();
    let spec = TunnelSpec {
        local_ports: Some((first, first + 1)),
        ..server_spec("a", &ssh, server)
    };
    let local = tunnels.open(&ssh, spec.clone(), None).await.unwrap();
    assert_eq!(local.port(), first + 1, "the held port is skipped");
    assert!(tunnels.is_open("a"));
    assert!(get(local).unwrap().ends_with("the user's server"));
    // The range is full (one port ours, one held): refused, naming the key.
    let e = tunnels
        .open(
            &ssh,
            TunnelSpec {
                key: "b".into(),
                ..spec.clone()
            },
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("tunnel.local_ports"), "{e}");

    // After a restart the spawn's port is the held one: the tunnel stays
    // down (never "re-created"), re-tried with backoff, and says why.
    tunnels.keep(&ssh, server_spec("c", &ssh, server), first);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = tunnels
        .list()
        .await
        .into_iter()
        .find(|t| t.key == "c")
        .unwrap();
    assert!(!c.open && !tunnels.is_open("c"), "{c:?}");
    assert!(
        c.cause
            .as_deref()
            .unwrap_or("")
            .contains("held by another process"),
        "{c:?}"
    );
    eprintln!(
        "measured: {} ssh starts in 4 s for a squatted port",
        c.attempts
    );
    assert!(
        (2..=5).contains(&c.attempts),
        "backoff: {} attempts in 4 s",
        c.attempts
    );
    // Whoever connects there reaches the squatter, never a tunnel of ours.
    let _ = std::net::TcpStream::connect(("127.0.0.1", first)).unwrap();
    assert!(squatter.set_nonblocking(true).is_ok() && squatter.accept().is_ok());
    // The squatter leaves: the tunnel opens on the spawn's port.
    drop(squatter);
    assert!(
        until(20, || tunnels.is_open("c")).await,
        "{:?}",
        tunnels.list().await
    );
    assert!(get(([127, 0, 0, 1], first).into())
        .unwrap()
        .ends_with("the user's server"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_tunnel_ssh_is_ended_at_the_next_start() {
    let Some(dir) = common::sshd_dir() else {
        return;
    };
    let ssh = common::sshd_config(&dir);
    let server = answering("after the restart");
    let state = tempfile::tempdir().unwrap();
    let port = free_pair();
    // What a SIGKILLed host leaves: its tunnel's ssh, marked, holding the port.
    let marker = Tunnels::for_state_dir(state.path()).marker().unwrap();
    let mut orphan = std::process::Command::new("/usr/bin/ssh")
        .args([
            "-N",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", ssh.known_hosts.display()))
        .args(["-o", "PermitLocalCommand=no", "-o", &marker])
        .arg("-i")
        .arg(ssh.identity_file.as_ref().unwrap())
        .args([
            "-p",
            &ssh.port.to_string(),
            "-l",
            ssh.user.as_deref().unwrap(),
        ])
        .args([
            "-L",
            &format!("127.0.0.1:{port}:127.0.0.1:{server}"),
            "--",
            "127.0.0.1",
        ])
        .spawn()
        .unwrap();
    assert!(
        until(10, || get(([127, 0, 0, 1], port).into()).is_ok()).await,
        "the orphan tunnel never listened"
    );
    // Another state directory's start leaves it alone.
    let other = tempfile::tempdir().unwrap();
    drop(Tunnels::for_state_dir(other.path()));
    assert!(
        orphan.try_wait().unwrap().is_none(),
        "another host's tunnel was ended"
    );

    let tunnels = Tunnels::for_state_dir(state.path());
    assert!(
        orphan.try_wait().unwrap().is_some(),
        "the orphan tunnel ssh still runs"
    );
    let local = tunnels
        .open(&ssh, server_spec("s", &ssh, server), Some(port))
        .await
        .unwrap();
    assert!(get(local).unwrap().ends_with("after the restart"));
    let pid = tunnels.list().await[0].pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.split(|b| *b == 0).any(|a| a == marker.as_bytes()),
        "new tunnels carry the marker"
    );
}

/// An sshd of its own (the test sshd's host key and users) on a free port,
/// so it can be stopped and started again; stopped by PID.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

impl Sshd {
    fn new(peer: &std::path::Path) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let port = free_pair();
        let conf: String = std::fs::read_to_string(peer.join("sshd_config"))
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("Port ") {
                    format!("Port {port}\n")
                } else if l.starts_with("PidFile ") {
                    format!("PidFile {}\n", dir.path().join("sshd.pid").display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(dir.path().join("sshd_config"), conf).unwrap();
        let key = std::fs::read_to_string(peer.join("host_key.pub")).unwrap();
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        std::fs::write(
            dir.path().join("known_hosts"),
            format!("[127.0.0.1]:{port} {}\n", key.join(" ")),
        )
        .unwrap();
        let mut s = Sshd {
            dir,
            port,
            child: None,
        };
        s.start();
        s
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("sshd.log")).unwrap();
        self.child = Some(
            std::process::Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(self.dir.path().join("sshd_config"))
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the throwaway sshd did not listen");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn config(&self, peer: &std::path::Path) -> wasmspawner_host::config::SshConfig {
        wasmspawner_host::config::SshConfig {
            port: self.port,
            known_hosts: self.dir.path().join("known_hosts"),
            ..common::sshd_config(peer)
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sshd_down_reopens_back_off_and_reset_once_it_is_back() {
    let Some(peer) = common::sshd_dir() else {
        return;
    };
    let mut sshd = Sshd::new(&peer);
    let ssh = sshd.config(&peer);
    let server = answering("still there");
    let tunnels = Tunnels::new();
    let local = tunnels
        .open(&ssh, server_spec("d", &ssh, server), None)
        .await
        .unwrap();
    assert!(get(local).unwrap().ends_with("still there"));

    // sshd goes down, and with it the tunnel's connection.
    sshd.stop();
    let pid = tunnels.list().await[0].pid.unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let before = tunnels.list().await[0].attempts;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let t = tunnels.list().await.remove(0);
    let reopens = t.attempts - before;
    eprintln!("measured: {reopens} tunnel re-opens in 10 s with sshd down");
    // 0.5 s doubling (±20%): about 4 in 10 s, where a fixed 0.5 s gave 20.
    assert!(
        (2..=6).contains(&reopens),
        "{reopens} re-opens in 10 s: {t:?}"
    );
    assert!(!t.open && !tunnels.is_open("d"));
    assert_eq!(
        t.cause.as_deref(),
        Some("connection refused by 127.0.0.1"),
        "the short cause: {t:?}"
    );

    // sshd is back: the tunnel opens on the same port (within the current
    // wait), and its backoff starts over.
    sshd.start();
    assert!(
        until(20, || tunnels.is_open("d")).await,
        "{:?}",
        tunnels.list().await
    );
    assert!(get(local).unwrap().ends_with("still there"));
}
