//! `GET /v1/metrics?format=prometheus`: the counters of
//! [`crate::service::Service::metrics`] and each plugin's health in the
//! Prometheus text exposition format (version 0.0.4), for a site's scraper.

use std::fmt::Write;

use crate::runtime::plugin::HealthReport;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `metrics` (the JSON of `Service::metrics`) and the plugins'
/// health (`(instance, report)`).
pub fn render(metrics: &serde_json::Value, health: &[(String, HealthReport)]) -> String {
    let mut out = Family::default();
    let instances = metrics["instances"]
        .as_object()
        .cloned()
        .unwrap_or_default();

    out.family(
        "wasmspawner_spawns",
        "gauge",
        "Spawns the host tracks, by plugin instance and state.",
    );
    // Every state of every instance, 0 included: a series does not vanish
    // when its last spawn leaves the state. The totals list every state.
    let states: Vec<&String> = metrics["spawns"]
        .as_object()
        .map(|t| t.keys().collect())
        .unwrap_or_default();
    for (name, i) in &instances {
        for state in &states {
            let n = i["spawns"][state.as_str()].as_u64().unwrap_or(0);
            out.sample(&[("instance", name), ("state", state)], n);
        }
    }
    for (key, kind, help) in [
        (
            "status_calls",
            "wasmspawner_status_calls_total",
            "Plugin status calls made by the poller (one per interval for all jobs).",
        ),
        (
            "jobs_polled",
            "wasmspawner_jobs_polled_total",
            "Jobs asked about, summed over all status calls.",
        ),
        (
            "scheduler_commands",
            "wasmspawner_scheduler_commands_total",
            "Programs run for the plugin instance (scheduler commands), allowed by the gate.",
        ),
    ] {
        out.family(kind, "counter", help);
        for (name, i) in &instances {
            out.sample(&[("instance", name)], i[key].as_u64().unwrap_or(0));
        }
    }
    out.family(
        "wasmspawner_last_poll_timestamp_seconds",
        "gauge",
        "When the poller last asked the plugin for the state of its jobs (Unix time).",
    );
    for (name, i) in &instances {
        let at = i["last_poll"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let Some(at) = at {
            out.sample(&[("instance", name)], at.timestamp());
        }
    }

    out.family(
        "wasmspawner_plugin_healthy",
        "gauge",
        "1 while the plugin instance's calls succeed, 0 after repeated failures (traps, timeouts, garbage).",
    );
    for (name, h) in health {
        out.sample(&[("instance", name)], u64::from(h.healthy));
    }
    out.family(
        "wasmspawner_plugin_calls_total",
        "counter",
        "Calls into the plugin instance.",
    );
    for (name, h) in health {
        out.sample(&[("instance", name)], h.calls);
    }
    out.family(
        "wasmspawner_plugin_failures_total",
        "counter",
        "Plugin calls that trapped, timed out or returned garbage.",
    );
    for (name, h) in health {
        out.sample(&[("instance", name)], h.failures);
    }
    out.text
}

/// The text under construction; `name` is the family samples belong to.
#[derive(Default)]
struct Family {
    text: String,
    name: String,
}

impl Family {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self.name = name.to_string();
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.text, "{}{{{}}} {value}", self.name, labels.join(","));
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let metrics = serde_json::json!({
            "spawns": {"queued": 1, "ready": 2, "stopped": 0},
            "instances": {
                "slurm": {
                    "status_calls": 7, "jobs_polled": 70, "scheduler_commands": 9,
                    "last_poll": "2026-11-24T05:00:00Z",
                    "spawns": {"ready": 2, "queued": 1},
                },
                "a\"b": {"status_calls": 0, "jobs_polled": 0, "scheduler_commands": 0,
                         "last_poll": null, "spawns": {}},
            }
        });
        let health = vec![(
            "slurm".to_string(),
            HealthReport {
                healthy: false,
                calls: 12,
                failures: 3,
                consecutive_failures: 3,
                last_error: Some("trap".into()),
            },
        )];
        let text = render(&metrics, &health);
        for line in [
            "# TYPE wasmspawner_spawns gauge",
            "wasmspawner_spawns{instance=\"slurm\",state=\"queued\"} 1",
            "wasmspawner_spawns{instance=\"slurm\",state=\"ready\"} 2",
            "wasmspawner_spawns{instance=\"slurm\",state=\"stopped\"} 0",
            "wasmspawner_spawns{instance=\"a\\\"b\",state=\"ready\"} 0",
            "# TYPE wasmspawner_status_calls_total counter",
            "wasmspawner_status_calls_total{instance=\"slurm\"} 7",
            "wasmspawner_status_calls_total{instance=\"a\\\"b\"} 0",
            "wasmspawner_jobs_polled_total{instance=\"slurm\"} 70",
            "wasmspawner_scheduler_commands_total{instance=\"slurm\"} 9",
            "wasmspawner_last_poll_timestamp_seconds{instance=\"slurm\"} 1795496400",
            "wasmspawner_plugin_healthy{instance=\"slurm\"} 0",
            "wasmspawner_plugin_calls_total{instance=\"slurm\"} 12",
            "wasmspawner_plugin_failures_total{instance=\"slurm\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        // Never polled: no timestamp sample at all, rather than a made-up 0.
        assert!(!text.contains("wasmspawner_last_poll_timestamp_seconds{instance=\"a"));
        // Every sample line belongs to a declared family.
        let mut family = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(&format!("{family}{{")), "{l}");
            }
        }
    }
}
