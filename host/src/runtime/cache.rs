//! Compiled components cached on disk.
//!
//! Key: the sha256 of the `.wasm` and a hash of the engine's compatibility
//! settings, so a new wasmtime or engine config never picks up an old
//! artifact. Only files this host wrote are loaded: the cache directory is
//! created 0700 and owned by the host's user, every artifact is checked to be
//! a regular file owned by that user and not writable by anyone else, and
//! artifacts are written to a temporary name and renamed into place.
//! Artifacts no loaded version uses are evicted ([`CompileCache::evict_except`]).
//!
//! A component file is read by [`read_component`]: only a regular file
//! (a symlink to one is fine), opened without blocking (a FIFO or device at
//! the path is refused at once, never read), at most
//! [`MAX_COMPONENT_BYTES`]. Its digest is known before anything is compiled,
//! so a pin is checked first.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// The largest component file the host reads.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// Reads a component file: a regular file of bounded size, never blocking.
/// Returns its bytes and sha256 (hex).
pub fn read_component(path: &Path) -> Result<(Vec<u8>, String)> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot read plugin component {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot stat plugin component {}", path.display()))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        anyhow::bail!(
            "{} is {kind}; a plugin component must be a regular .wasm file (a symlink to one is fine)",
            path.display()
        );
    }
    if meta.len() > MAX_COMPONENT_BYTES {
        anyhow::bail!(
            "{} is {} bytes; the host reads components of at most {} MiB",
            path.display(),
            meta.len(),
            MAX_COMPONENT_BYTES >> 20
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never past the cap.
    f.take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read plugin component {}", path.display()))?;
    if bytes.len() as u64 > MAX_COMPONENT_BYTES {
        anyhow::bail!(
            "{} grew past {} MiB while it was read",
            path.display(),
            MAX_COMPONENT_BYTES >> 20
        );
    }
    let digest = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, digest))
}

pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
    /// The operator's `cache_dir`, which other hosts may share: no eviction.
    pub shared: bool,
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
            shared: false,
        })
    }

    fn artifact(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Removes every artifact whose component digest is not in `keep`
    /// (artifacts of other engines included), and stale temporary files.
    pub fn evict_except(&self, keep: &std::collections::HashSet<String>) -> usize {
        if self.shared {
            return 0;
        }
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let digest = name.split('-').next().unwrap_or("");
            let ours = name.ends_with(&format!("-{}.cwasm", self.engine_key));
            if (!ours || !keep.contains(digest))
                && trusted(&e.path())
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// Compiles `bytes` (sha256 `digest`), or loads the artifact compiled
    /// from them before.
    pub fn compile(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Component> {
        let cached = self.artifact(digest);
        if trusted(&cached) {
            // SAFETY: the file is one this host wrote (see `trusted`), from a
            // component with this digest, for an engine with these settings.
            match unsafe { Component::deserialize_file(engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!("ignoring cached {}: {e:#}", cached.display()),
            }
        }
        let component = Component::from_binary(engine, bytes).map_err(|e| {
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
        Ok(component)
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
