//! Helpers for the spawn-service tests: a host serving the real router on a
//! loopback port (in process), a minimal HTTP/1.1 client, and a tiny
//! "single-user server" that reports its port through the job callback.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmspawner_host::daemon::Daemon;
use wasmspawner_host::http::auth::Token;
use wasmspawner_host::service::Service;

use crate::common::{setup, Setup};

pub const TOKEN: &str = "test-api-token-0123456789abcdef";

pub struct Host {
    pub setup: Setup,
    pub url: String,
    pub service: Arc<Service>,
    /// The host as `serve` starts it (watcher, pollers, tunnel keeper).
    pub daemon: Daemon,
}

/// A host with the config `body` (see `common::setup`), serving on
/// 127.0.0.1 with the API token [`TOKEN`].
pub async fn start_host(body: &str) -> Host {
    let setup = setup(body);
    start_host_with(setup).await
}

pub async fn start_host_with(setup: Setup) -> Host {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = Daemon::start(setup.config.clone(), listener, Token::from_value(TOKEN))
        .await
        .unwrap();
    Host {
        url: daemon.url(),
        service: daemon.service.clone(),
        setup,
        daemon,
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTP/1.1 request (`Connection: close`).
pub async fn request(method: &str, url: &str, bearer: Option<&str>, body: Option<&Value>) -> Resp {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(authority).await.unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!(
        "Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    parse_response(&raw)
}

/// One request with exactly the header lines given (each without CRLF) and
/// the raw body (`Content-Length` added): for what [`request`] would not send.
pub async fn raw_request(method: &str, url: &str, headers: &[&str], body: &[u8]) -> Resp {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(authority).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // The host may answer (413) before it read all of a large body.
    let _ = s.write_all(&bytes).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    parse_response(&raw)
}

impl Resp {
    /// A response header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn parse_response(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        headers: head.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Host {
    /// Stops the pollers (and the retention sweep): nothing polls the
    /// scheduler any more.
    pub fn stop_pollers(&self) {
        self.daemon.stop_tasks();
    }

    pub async fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        request(method, &format!("{}{path}", self.url), Some(TOKEN), body).await
    }

    /// Polls `GET /v1/spawns/{id}` until `pred` holds.
    /// `POST /v1/spawns` with `body`: must be created (201); the spawn id.
    pub async fn start(&self, body: &Value) -> String {
        let r = self.api("POST", "/v1/spawns", Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_string()
    }

    pub async fn wait_spawn(&self, id: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self
                .api("GET", &format!("/v1/spawns/{id}"), None)
                .await
                .json();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("spawn {id} did not reach the expected state in {secs} s: {s}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn metrics(&self, instance: &str, key: &str) -> u64 {
        self.service.metrics()["instances"][instance][key]
            .as_u64()
            .unwrap_or(0)
    }
}

/// Reads Server-Sent Events from `url` until an event whose name is in
/// `until` (or the stream ends); returns (name, data JSON) pairs.
pub async fn read_events(url: &str, until: &[&str], secs: u64) -> Vec<(String, Value)> {
    let rest = url.strip_prefix("http://").unwrap();
    let i = rest.find('/').unwrap();
    let (authority, path) = (&rest[..i], &rest[i..]);
    let mut s = TcpStream::connect(authority).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
            .await
            .expect("the event stream did not end in time")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        let events = parse_sse(&buf);
        if events.iter().any(|(n, _)| until.contains(&n.as_str())) {
            return events;
        }
    }
    parse_sse(&buf)
}

fn parse_sse(raw: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in raw.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(n) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
            name = n.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
            if let Ok(v) = serde_json::from_str::<Value>(d.trim()) {
                out.push((std::mem::take(&mut name), v));
            }
        }
    }
    out
}

/// A single-user server stand-in: serves `GET /` with its spawn id and
/// whether the hub's token reached it, after reporting its port to the
/// callback URL with the callback token from its environment. With a file
/// path as first argument it waits for that file to exist before reporting.
pub const SERVER_PY: &str = r#"
import http.server, json, os, sys, threading, time, urllib.request

# A test that ends without stopping its spawns removes its temporary
# directory: the server goes with it, never left running.
def _watch(me=os.path.abspath(__file__)):
    while os.path.exists(me):
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "spawn_id": os.environ.get("WASMSPAWNER_SPAWN_ID"),
            "api_token": os.environ.get("JUPYTERHUB_API_TOKEN"),
            "argv": sys.argv,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

srv = http.server.HTTPServer(("127.0.0.1", 0), H)
if len(sys.argv) > 1:
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.05)
req = urllib.request.Request(
    os.environ["WASMSPAWNER_CALLBACK_URL"],
    data=json.dumps({"port": srv.server_address[1], "host": "127.0.0.1"}).encode(),
    headers={"Authorization": "Bearer " + os.environ["WASMSPAWNER_CALLBACK_TOKEN"],
             "Content-Type": "application/json"},
    method="POST")
urllib.request.urlopen(req).read()
srv.serve_forever()
"#;

/// Config of a `local` instance that may run python3 (fast polling).
pub fn local_config(extra: &str) -> String {
    local_config_with("poll_interval_secs = 0.5\nfast_poll_secs = 0.2", extra)
}

/// The same with its own `[instances.local.lifecycle]` lines.
pub fn local_config_with(lifecycle: &str, extra: &str) -> String {
    format!(
        r#"
[instances.local]
plugin = "{{plugin:local}}"
[instances.local.grants]
env = ["JUPYTERHUB_DEFAULT_URL"]
[[instances.local.grants.detached]]
program = "python3"
args = ["**"]
spawn_env = true
[instances.local.lifecycle]
{lifecycle}
{extra}
"#
    )
}

/// Writes the server script into `dir`; returns its path.
pub fn server_script(dir: &std::path::Path) -> String {
    let p = dir.join("server.py");
    std::fs::write(&p, SERVER_PY).unwrap();
    p.display().to_string()
}

pub fn start_body(user: &str, server: &str, request_id: &str, cmd: &[&str]) -> Value {
    serde_json::json!({
        "user": {"name": user, "groups": ["staff"], "admin": false},
        "server_name": server,
        "instance": "local",
        "request_id": request_id,
        "options": {"interface": ["lab"]},
        "env": {"JUPYTERHUB_API_TOKEN": "hub-secret-token-for-tests"},
        "cmd": cmd,
    })
}

/// The PID in a `local` plugin job id (`PID.START.MAC`).
pub fn pid_of(job_id: &str) -> u32 {
    job_id.split('.').next().unwrap().parse().unwrap()
}

/// A variable of a process's environment (we run as root in CI).
pub fn env_of(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    String::from_utf8_lossy(&environ)
        .split('\0')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
}

pub fn kill_group(pid: u32) {
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

/// Whether the process is gone (or a zombie nobody reaped yet).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rfind(')').is_some_and(|i| s[i + 2..].starts_with('Z')),
    }
}

/// Kills a job's process group when dropped (cleanup when a test fails).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !gone(self.0) {
            kill_group(self.0);
        }
    }
}
