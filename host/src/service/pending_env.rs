//! The hub's environment for a job (JUPYTERHUB_API_TOKEN, …) is never in
//! the store, the log or argv. It is kept on disk only from the moment a
//! spawn is recorded as `submitting` until the plugin's submit returns:
//! one file per spawn, `pending-env/<spawn id>.json` in the state
//! directory, mode 0600 in a 0700 directory, removed as soon as the submit
//! returns (or the spawn ends). A host killed in between finds it at
//! startup and can submit the job it never submitted, with the same
//! environment (see `recovery`).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the pending environments of a state directory are.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pending-env")
}

fn file(state_dir: &Path, id: &str) -> Option<PathBuf> {
    // Spawn ids are the host's own (`sp-` and hex): never a path.
    let ok = id.starts_with("sp-") && id[3..].bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| dir(state_dir).join(format!("{id}.json")))
}

/// Writes spawn `id`'s environment (the hub's variables), synced.
pub fn save(state_dir: &Path, id: &str, env: &[(String, String)]) -> Result<()> {
    let d = dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .with_context(|| format!("cannot create {}", d.display()))?;
    let path = file(state_dir, id).context("not a spawn id")?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(env)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Spawn `id`'s pending environment, if the host still has it.
pub fn load(state_dir: &Path, id: &str) -> Option<Vec<(String, String)>> {
    let text = std::fs::read(file(state_dir, id)?).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The spawn ids with a kept environment.
pub fn list(state_dir: &Path) -> std::collections::HashSet<String> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect()
}

/// Forgets spawn `id`'s environment (idempotent).
pub fn remove(state_dir: &Path, id: &str) {
    if let Some(p) = file(state_dir, id) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn kept_private_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let env = vec![("JUPYTERHUB_API_TOKEN".to_string(), "secret".to_string())];
        save(d.path(), "sp-abc123", &env).unwrap();
        let p = dir(d.path()).join("sp-abc123.json");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir(d.path()))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(load(d.path(), "sp-abc123"), Some(env));
        assert!(list(d.path()).contains("sp-abc123"));
        remove(d.path(), "sp-abc123");
        assert!(list(d.path()).is_empty());
        assert_eq!(load(d.path(), "sp-abc123"), None);
        assert!(save(d.path(), "../x", &[]).is_err());
    }
}
