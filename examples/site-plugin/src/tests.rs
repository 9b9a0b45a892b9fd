//! The site's rules, natively, with a scripted host.

use super::*;
use wasmspawner_sdk::batch::field_ids;
use wasmspawner_sdk::testing::{brief, int, job_spec, jobs, ok, text, user, FakeHost};
use wasmspawner_sdk::{load, FieldKind};

/// The instance config of examples/site-plugin/site.toml.
const CONFIG: &str = r#"{
    "partition": {"choices": ["debug", "standard", "gpu"], "default": "standard",
                  "groups": {"gpu": ["gpu-users"]}},
    "nprocs": {"max": 16, "default": 2},
    "memory": {"max": 128, "default": 8},
    "runtime": {"max": 480, "default": 120},
    "ngpus": {"enabled": true, "max": 2}
}"#;

fn site() -> Site {
    ok(load::<Site>(CONFIG))
}

fn member(name: &str, groups: &[&str]) -> User {
    User {
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..user(name)
    }
}

fn options(values: &[FieldValue]) -> Options {
    let mut o = Options::new();
    for v in values {
        o.set(&v.field, v.value.clone());
    }
    o
}

#[test]
fn the_project_is_a_choice_of_the_users_own_projects() {
    let form = site()
        .form(
            &FakeHost::for_plugin::<Site>(),
            &member("alice", &["staff", "proj-astro", "proj-bio"]),
        )
        .unwrap();
    let account = form.fields.iter().find(|f| f.id == "account").unwrap();
    let FieldKind::Choice(choices) = &account.kind else {
        panic!("account is not a choice: {account:?}");
    };
    let values: Vec<&str> = choices.iter().map(|c| c.value.as_str()).collect();
    assert_eq!(values, ["astro", "bio"]);
    assert_eq!(account.default.as_deref(), Some("astro"));
    assert!(account.required);
    assert_eq!(
        field_ids(&form),
        [
            "partition",
            "nprocs",
            "memory",
            "runtime",
            "ngpus",
            "account"
        ]
    );
}

#[test]
fn the_gpu_preset_is_only_for_gpu_users() {
    let ids = |u: &User| -> Vec<String> {
        site()
            .form(&FakeHost::for_plugin::<Site>(), u)
            .unwrap()
            .profiles
            .into_iter()
            .map(|p| p.id)
            .collect()
    };
    assert_eq!(
        ids(&member("alice", &["proj-astro"])),
        ["quick", "standard"]
    );
    assert_eq!(
        ids(&member("bob", &["proj-astro", "gpu-users"])),
        ["quick", "standard", "gpu"]
    );
    // The gpu partition itself is closed to others too (the slurm config's groups).
    let e = site()
        .validate(
            &FakeHost::for_plugin::<Site>(),
            &member("alice", &["proj-astro"]),
            options(&[text("partition", "gpu"), text("account", "astro")]),
        )
        .unwrap_err();
    assert_eq!(e[0].field, "partition", "{e:?}");
}

#[test]
fn memory_per_core_is_bounded() {
    let alice = member("alice", &["proj-astro"]);
    let e = site()
        .validate(
            &FakeHost::for_plugin::<Site>(),
            &alice,
            options(&[
                int("nprocs", 2),
                int("memory", 32),
                text("account", "astro"),
            ]),
        )
        .unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, "memory");
    assert!(e[0].message.contains("at most 16 GiB"), "{}", e[0].message);
    let fine = options(&[
        int("nprocs", 4),
        int("memory", 32),
        text("account", "astro"),
    ]);
    assert!(site().validate(&FakeHost::for_plugin::<Site>(), &alice, fine).is_ok());
}

#[test]
fn a_user_without_a_project_is_told_whom_to_ask() {
    let carol = member("carol", &["staff"]);
    let form = site().form(&FakeHost::for_plugin::<Site>(), &carol).unwrap();
    assert!(!field_ids(&form).contains(&"account"));
    let e = site()
        .validate(&FakeHost::for_plugin::<Site>(), &carol, options(&[int("nprocs", 1)]))
        .unwrap_err();
    assert_eq!(e[0].field, "", "a form-level error: {e:?}");
    assert!(e[0].message.contains(SUPPORT), "{}", e[0].message);
}

#[test]
fn submit_and_status_are_the_slurm_plugins() {
    let host = FakeHost::for_plugin::<Site>();
    host.on("sbatch", &["--parsable"]).stdout("4242\n");
    let job = job_spec(
        "alice",
        vec![
            text("partition", "standard"),
            int("nprocs", 4),
            int("memory", 16),
            int("runtime", 120),
            text("account", "astro"),
        ],
    );
    let submitted = site().submit(&host, &job).unwrap();
    assert_eq!(submitted.job_id, "4242");
    let script = host.calls()[0].stdin_str();
    for line in [
        "#SBATCH --partition=standard",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16384M",
        "#SBATCH --time=02:00:00",
        "#SBATCH --account=astro",
    ] {
        assert!(script.contains(line), "{line} missing from\n{script}");
    }

    let host = FakeHost::for_plugin::<Site>();
    host.on("squeue", &["**"])
        .stdout("4242|RUNNING|node07|node07|None\n4243|PENDING|n/a||Resources\n");
    let states = site().status(&host, &jobs(&["4242", "4243"]));
    assert_eq!(host.calls().len(), 1, "one squeue for all jobs");
    assert_eq!(
        states.iter().map(brief).collect::<Vec<_>>(),
        ["running@node07", "pending: pending: Resources"]
    );
}

#[test]
fn it_declares_only_the_slurm_commands() {
    let d = Site::describe();
    assert_eq!(d.name, "example-site");
    let caps = wasmspawner_sdk::DeclaredCapabilities::from(d.capabilities.clone());
    let programs: Vec<&str> = caps
        .programs
        .iter()
        .map(|p| p.program.as_str())
        .collect();
    assert_eq!(programs, ["sbatch", "squeue", "scancel"]);
    assert!(caps.ssh.is_empty() && caps.detached.is_empty());
}
