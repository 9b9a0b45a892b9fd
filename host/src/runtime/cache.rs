//! Compiled components cached on disk.
//!
//! Key: the sha256 of the `.wasm` and a hash of the engine's compatibility
//! settings, so a new wasmtime or engine config never picks up an old
//! artifact. Only files this host wrote are loaded: the cache directory is
//! created 0700 and owned by the host's user, every artifact is checked to be
//! a regular file owned by that user and not writable by anyone else, and
//! artifacts are written to a temporary name and renamed into place.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    pub fn new(engine: &Engine, dir: &Path) -> Result<CompileCache> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the compile cache {}", dir.display()))?;
        super::restrict(dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", h.finish()),
        })
    }

    /// Reads `path`, and returns the compiled component and its sha256 (hex).
    pub fn load(&self, engine: &Engine, path: &Path) -> Result<(Component, String)> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read plugin component {}", path.display()))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let cached = self.dir.join(format!("{digest}-{}.cwasm", self.engine_key));
        if trusted(&cached) {
            // SAFETY: the file is one this host wrote (see `trusted`), from a
            // component with this digest, for an engine with these settings.
            match unsafe { Component::deserialize_file(engine, &cached) } {
                Ok(c) => return Ok((c, digest)),
                Err(e) => tracing::warn!("ignoring cached {}: {e:#}", cached.display()),
            }
        }
        let component = Component::from_binary(engine, &bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid WebAssembly component: {e:#}",
                path.display()
            )
        })?;
        if let Err(e) = self.store(&cached, &component) {
            tracing::warn!(
                "cannot cache the compiled plugin in {}: {e:#}",
                self.dir.display()
            );
        }
        Ok((component, digest))
    }

    fn store(&self, dest: &Path, component: &Component) -> Result<()> {
        let bytes = component.serialize()?;
        // Unique per writer: two loads of one component may race to cache it.
        let tmp = dest.with_extension(format!(
            "tmp{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        Ok(())
    }
}

/// A regular file owned by us, writable only by us, in a directory likewise.
fn trusted(path: &Path) -> bool {
    let uid = unsafe { libc::geteuid() };
    let ok = |m: &std::fs::Metadata| m.uid() == uid && m.permissions().mode() & 0o022 == 0;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    let dir_ok = path
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .is_some_and(|m| ok(&m));
    meta.file_type().is_file() && ok(&meta) && dir_ok
}
