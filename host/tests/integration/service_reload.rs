//! Hot reloading a plugin keeps its spawns: the new version continues
//! polling and stopping the jobs the old one submitted.

use crate::common;
use crate::service_common;

use service_common::*;

/// The same component with one more custom section: another digest, the
/// same behaviour ("a new version").
fn new_version(wasm: &[u8]) -> Vec<u8> {
    let name = b"wasmspawner-test-version";
    let payload = b"2";
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_plugin_keeps_polling_and_stops_the_old_versions_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.wasm");
    std::fs::copy(common::plugin_wasm("local"), &live).unwrap();
    let config = local_config("").replace("{plugin:local}", &live.display().to_string());
    let h = start_host(&config).await;
    let script = server_script(h.setup.dir.path());
    let r = h
        .api(
            "POST",
            "/v1/spawns",
            Some(&start_body("alice", "", "r", &["python3", &script])),
        )
        .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    let before = h.wait_spawn(&id, 30, |s| s["state"] == "ready").await;
    let pid = pid_of(before["job_id"].as_str().unwrap());
    let _cleanup = KillOnDrop(pid);

    let inst = h.service.registry().get("local").unwrap().clone();
    let old_digest = inst.current().digest.clone();
    std::fs::write(&live, new_version(&std::fs::read(&live).unwrap())).unwrap();
    assert!(
        inst.reload().await.unwrap(),
        "the new version was not swapped in"
    );
    let plugins = h.api("GET", "/v1/plugins", None).await.json();
    assert_ne!(plugins[0]["digest"], old_digest.as_str());

    // Still tracked, still polled by the new version.
    let calls = h.metrics("local", "status_calls");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(h.metrics("local", "status_calls") > calls);
    let after = h.api("GET", &format!("/v1/spawns/{id}"), None).await.json();
    assert_eq!(after["state"], "ready");
    assert_eq!(after["job_id"], before["job_id"]);
    assert_eq!(after["port"], before["port"]);
    // And the new version stops it.
    assert_eq!(
        h.api("DELETE", &format!("/v1/spawns/{id}"), None)
            .await
            .status,
        202
    );
    h.wait_spawn(&id, 20, |s| s["state"] == "stopped").await;
    assert!(
        gone(pid),
        "stopped, but the server process {pid} still runs"
    );
}
