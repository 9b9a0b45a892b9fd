//! Hot reload: a changed component is swapped in for new calls while calls in
//! flight finish on the old one; a broken file is refused and the old
//! version keeps serving.

use crate::common;

use std::time::Duration;

use common::{plugin_wasm, setup, user};
use wasmspawner_host::model::{Job, JobState};
use wasmspawner_host::registry::Registry;

/// Replaces `dest` the way a deploy would: write a temporary file, rename.
fn replace(dest: &std::path::Path, bytes: &[u8]) {
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

async fn wait_for_name(reg: &Registry, want: &str) {
    for _ in 0..100 {
        if reg.get("live").unwrap().current().descriptor.name == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("plugin was not reloaded to {want}");
}

#[tokio::test]
async fn swap_while_calls_run_and_refuse_a_broken_file() {
    let s = setup(
        r#"
[instances.live]
plugin = "PLUGIN_DIR/live.wasm"
[[instances.live.grants.programs]]
program = "sleep"
args = ["*"]
"#
        .replace("PLUGIN_DIR", "plugins")
        .as_str(),
    );
    let live = s.dir.path().join("plugins/live.wasm");
    std::fs::create_dir_all(live.parent().unwrap()).unwrap();
    std::fs::copy(plugin_wasm("probe"), &live).unwrap();

    let reg = Registry::load(s.runtime(), s.config.clone()).await.unwrap();
    let _watch = reg.watch().unwrap();
    let inst = reg.get("live").unwrap().clone();
    assert_eq!(inst.current().descriptor.name, "probe");
    let old_digest = inst.current().digest.clone();

    // A call that takes 4 s on the probe version.
    let slow = tokio::spawn({
        let inst = inst.clone();
        async move {
            inst.status(&[Job {
                job_id: "sleep:4".into(),
                user: "alice".into(),
                state: String::new(),
            }])
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Deploy the local plugin over it.
    replace(&live, &std::fs::read(plugin_wasm("local")).unwrap());
    wait_for_name(&reg, "local").await;
    assert!(
        !slow.is_finished(),
        "the in-flight call should still be running"
    );
    // New calls use the new version...
    let form = inst.form(&user("alice")).await.unwrap();
    assert_eq!(form.fields[0].id, "interface");
    // ...and the call in flight finished on the old one: the probe answers
    // "running" for any job; local would not know "sleep:4".
    let states = slow.await.unwrap().unwrap();
    assert_eq!(
        states,
        vec![JobState::Running {
            host: Some("127.0.0.1".into())
        }]
    );

    // A broken file is refused; the local plugin keeps serving.
    let local_digest = inst.current().digest.clone();
    assert_ne!(local_digest, old_digest);
    replace(&live, b"\0asm garbage");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(inst.current().digest, local_digest);
    assert_eq!(
        inst.form(&user("alice")).await.unwrap().fields[0].id,
        "interface"
    );

    // And a good file after the broken one is picked up.
    replace(&live, &std::fs::read(plugin_wasm("probe")).unwrap());
    wait_for_name(&reg, "probe").await;
}
