//! Tunnels through a real sshd to a server that listens on loopback only,
//! started by the `local` plugin; the tunnel survives a kill of its ssh. A
//! callback tunnel (`-R`) opens only once the gateway listens, and a gateway
//! that refuses the port is reported with ssh's reason.

mod common;

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
