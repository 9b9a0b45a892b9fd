//! The example site plugin (examples/site-plugin) in the host, with its
//! example config: the site's presets and per-user project accounts reach the
//! hub's form, the host enforces them, and the plugin's own rule (memory per
//! core) comes back as a field error.

use crate::common;

use std::collections::BTreeMap;

use wasmspawner_host::config::Config;
use wasmspawner_host::model::{RawOptions, User, Value};
use wasmspawner_host::runtime::plugin::ValidateError;

fn member(name: &str, groups: &[&str]) -> User {
    User {
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..common::user(name)
    }
}

fn raw(pairs: &[(&str, &str)]) -> RawOptions {
    let mut r = BTreeMap::new();
    for (k, v) in pairs {
        r.insert(k.to_string(), vec![v.to_string()]);
    }
    r
}

/// The example config, with its state in a temporary directory and the
/// plugin this test run built.
fn example() -> common::Setup {
    let dir = tempfile::tempdir().unwrap();
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site-plugin/site.toml");
    let mut config = Config::load(&file).unwrap();
    config.state_dir = dir.path().join("state");
    config.cache_dir =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-compile-cache"));
    config.instances.get_mut("site").unwrap().plugin = common::plugin_wasm("example-site");
    common::Setup { dir, config }
}

#[tokio::test]
async fn the_sites_presets_and_projects_reach_the_form_and_are_enforced() {
    let s = example();
    let site = s.instance("site").await;
    let alice = member("alice", &["staff", "proj-astro", "proj-bio"]);

    let form = site.form(&alice).await.unwrap();
    let profiles: Vec<&str> = form.profiles.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(profiles, ["quick", "standard"], "no gpu preset for alice");
    let gpu_user = member("bob", &["proj-astro", "gpu-users"]);
    assert_eq!(site.form(&gpu_user).await.unwrap().profiles.len(), 3);

    // A preset fixes the values, whatever the form sent.
    let o = site
        .validate(
            &alice,
            &raw(&[("profile", "quick"), ("nprocs", "12"), ("account", "bio")]),
        )
        .await
        .unwrap();
    assert_eq!(o["partition"], Value::Text("debug".into()));
    assert_eq!(o["nprocs"], Value::Integer(1));
    assert_eq!(o["runtime"], Value::Integer(60));
    assert_eq!(o["account"], Value::Text("bio".into()));

    let fields = |e: ValidateError| match e {
        ValidateError::Fields(f) => f,
        ValidateError::Call(c) => panic!("the plugin call failed: {c}"),
    };
    // The plugin's own rule: at most 8 GiB per core.
    let e = fields(
        site.validate(
            &alice,
            &raw(&[
                ("profile", "standard"),
                ("nprocs", "2"),
                ("memory", "32"),
                ("account", "astro"),
            ]),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e[0].field, "memory", "{e:?}");
    assert!(e[0].message.contains("per core"), "{}", e[0].message);
    // The host's checks against alice's form: no gpu preset, only her projects.
    let e = fields(
        site.validate(&alice, &raw(&[("profile", "gpu")]))
            .await
            .unwrap_err(),
    );
    assert!(e[0].message.contains("unknown profile"), "{e:?}");
    let e = fields(
        site.validate(&alice, &raw(&[("account", "chem")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e[0].field, "account", "{e:?}");
    // A preset's bound: the standard preset allows at most 8 cores.
    let e = fields(
        site.validate(
            &alice,
            &raw(&[
                ("profile", "standard"),
                ("nprocs", "12"),
                ("account", "astro"),
            ]),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e[0].field, "nprocs", "{e:?}");
}
