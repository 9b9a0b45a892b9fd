//! Host-side bindings of every released `wasmspawner:plugin` API version,
//! one module per frozen WIT folder (`wit/since_vX.Y.Z`), in the manner of
//! Zed's extension host.
//!
//! [`latest`] is what the host is written against: the capability modules
//! implement its imports, and [`super::convert`] and the service see only
//! its types. Each older version's module implements that version's imports
//! by forwarding to the latest, and converts its exports' arguments down and
//! results up ([`v0_1`]). A component's version is read before it is linked
//! ([`ApiVersion::of_component`]).
//!
//! All imports are async on the host (a program run awaits the child without
//! blocking the runtime); to the guest they are ordinary blocking calls.

pub mod v0_1;
pub mod v0_2;

pub use v0_2 as latest;

pub use latest::wasmspawner::plugin::types as wit;
pub use latest::wasmspawner::plugin::{detached, log, process, ssh};

/// The name of the custom section the SDK embeds with the API version a
/// component was built against (its payload: the version as UTF-8, e.g.
/// `0.2.0`).
pub const VERSION_SECTION: &str = "wasmspawner:api-version";

/// An API version this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiVersion {
    V0_1,
    V0_2,
}

impl ApiVersion {
    /// Every version this host runs, oldest first.
    pub const ALL: [ApiVersion; 2] = [ApiVersion::V0_1, ApiVersion::V0_2];
    /// The newest.
    pub const LATEST: ApiVersion = ApiVersion::V0_2;

    /// The package version, e.g. `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V0_1 => "0.1.0",
            ApiVersion::V0_2 => "0.2.0",
        }
    }

    /// The version whose `major.minor` `v` names (`0.2`, `0.2.0`, `0.2.7`).
    pub fn parse(v: &str) -> Option<ApiVersion> {
        let mut it = v.trim().split('.');
        let major: u64 = it.next()?.parse().ok()?;
        let minor: u64 = it.next()?.parse().ok()?;
        if let Some(patch) = it.next() {
            patch.parse::<u64>().ok()?;
        }
        if it.next().is_some() {
            return None;
        }
        match (major, minor) {
            (0, 1) => Some(ApiVersion::V0_1),
            (0, 2) => Some(ApiVersion::V0_2),
            _ => None,
        }
    }

    /// The versions this host runs, for messages: `0.1, 0.2`.
    pub fn supported() -> String {
        Self::ALL
            .iter()
            .map(|v| v.as_str().trim_end_matches(".0"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The API version of a component, read before anything is linked:
    /// the SDK's custom section ([`VERSION_SECTION`], in the component or
    /// one of its core modules) when there is one, else the version of the
    /// `wasmspawner:plugin/spawner` interface it exports (what a component
    /// from another toolchain — componentize-py, jco — always has).
    pub fn of_component(bytes: &[u8]) -> Result<ApiVersion, String> {
        let mut section: Option<String> = None;
        let mut exported: Vec<String> = Vec::new();
        let mut depth = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let payload = payload.map_err(|e| {
                format!(
                    "the file is not a valid WebAssembly component ({} at byte {})",
                    e.message(),
                    e.offset()
                )
            })?;
            match payload {
                wasmparser::Payload::Version { encoding, .. } => {
                    if depth == 0 && encoding != wasmparser::Encoding::Component {
                        return Err("a core WebAssembly module, not a component; build it for wasm32-wasip2 (or componentize it)".into());
                    }
                    depth += 1;
                }
                wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
                wasmparser::Payload::CustomSection(c) if c.name() == VERSION_SECTION => {
                    let v = String::from_utf8_lossy(c.data()).trim().to_string();
                    section.get_or_insert(v);
                }
                wasmparser::Payload::ComponentExportSection(s) if depth == 1 => {
                    for e in s.into_iter().flatten() {
                        exported.push(e.name.name.to_string());
                    }
                }
                _ => {}
            }
        }
        if let Some(v) = section {
            return ApiVersion::parse(&v).ok_or_else(|| {
                format!(
                    "built against API {}, which this host does not run (it runs {}); upgrade the host or rebuild the plugin with an SDK for one of those",
                    crate::sanitize::text(&v, 32),
                    Self::supported()
                )
            });
        }
        let spawner: Vec<&String> = exported
            .iter()
            .filter(|n| n.starts_with("wasmspawner:plugin/spawner@"))
            .collect();
        match spawner.as_slice() {
            [one] => {
                let v = one.trim_start_matches("wasmspawner:plugin/spawner@");
                ApiVersion::parse(v).ok_or_else(|| {
                    format!(
                        "exports wasmspawner:plugin/spawner@{}, an API version this host does not run (it runs {}); upgrade the host or rebuild the plugin for one of those",
                        crate::sanitize::text(v, 32),
                        Self::supported()
                    )
                })
            }
            [] => Err(format!(
                "does not export wasmspawner:plugin/spawner (it exports: {}); a plugin implements the `plugin` world of wit/since_v{}",
                if exported.is_empty() { "nothing".to_string() } else { crate::sanitize::text(&exported.join(", "), 512) },
                Self::LATEST.as_str()
            )),
            _ => Err("exports more than one version of wasmspawner:plugin/spawner".into()),
        }
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ApiVersion;

    #[test]
    fn versions_parse_by_major_and_minor() {
        assert_eq!(ApiVersion::parse("0.1.0"), Some(ApiVersion::V0_1));
        assert_eq!(ApiVersion::parse("0.2"), Some(ApiVersion::V0_2));
        assert_eq!(ApiVersion::parse("0.2.9"), Some(ApiVersion::V0_2));
        for bad in ["0.3.0", "1.0.0", "", "0", "0.2.x", "0.2.0.1", "v0.2"] {
            assert_eq!(ApiVersion::parse(bad), None, "{bad}");
        }
        assert_eq!(ApiVersion::supported(), "0.1, 0.2");
    }

    #[test]
    fn a_core_module_or_garbage_is_refused_by_name() {
        // `\0asm` version 1: a core module.
        let core = b"\0asm\x01\0\0\0";
        assert!(ApiVersion::of_component(core)
            .unwrap_err()
            .contains("core WebAssembly module"));
        assert!(ApiVersion::of_component(b"hello")
            .unwrap_err()
            .contains("is not a valid WebAssembly component"));
    }
}
