//! The named plugin instances of a config, and hot reload.
//!
//! The watcher follows the directories of the plugin files (so a file that
//! is replaced by a rename is seen too). After a change it waits for the
//! file to be quiet for [`SETTLE`], then reloads every instance of that file
//! off the async runtime; a component that fails any check is refused with a
//! log line naming the file and the reason, and the old version keeps
//! serving. Calls in flight always finish on the version they started on.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};

use crate::config::Config;
use crate::runtime::plugin::PluginInstance;
use crate::runtime::Runtime;

/// How long a changed plugin file must stay unchanged before it is loaded.
pub const SETTLE: Duration = Duration::from_millis(300);

pub struct Registry {
    pub runtime: Arc<Runtime>,
    pub config: Config,
    instances: BTreeMap<String, Arc<PluginInstance>>,
}

impl Registry {
    /// Loads every instance of `config`; the first failure is the error.
    pub async fn load(runtime: Arc<Runtime>, config: Config) -> Result<Registry> {
        Self::load_only(runtime, config, None).await
    }

    /// Loads the named instances only (all when `only` is `None`).
    pub async fn load_only(
        runtime: Arc<Runtime>,
        config: Config,
        only: Option<&[String]>,
    ) -> Result<Registry> {
        let mut instances = BTreeMap::new();
        for (name, ic) in &config.instances {
            if only.is_some_and(|o| !o.contains(name)) {
                continue;
            }
            let inst = PluginInstance::load(runtime.clone(), &config.path, ic.clone()).await?;
            instances.insert(name.clone(), inst);
        }
        Ok(Registry {
            runtime,
            config,
            instances,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<PluginInstance>> {
        self.instances.get(name)
    }

    pub fn instances(&self) -> impl Iterator<Item = &Arc<PluginInstance>> {
        self.instances.values()
    }

    /// Starts watching the plugin files. Dropping the returned guard stops it.
    pub fn watch(&self) -> Result<WatchGuard> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if ev.kind.is_create() || ev.kind.is_modify() {
                    for p in ev.paths {
                        let _ = tx.send(p);
                    }
                }
            }
        })
        .context("cannot start the plugin file watcher")?;
        let mut dirs = HashSet::new();
        for inst in self.instances.values() {
            if let Some(dir) = inst.config.plugin.parent() {
                if dirs.insert(dir.to_path_buf()) {
                    watcher
                        .watch(dir, RecursiveMode::NonRecursive)
                        .with_context(|| format!("cannot watch {}", dir.display()))?;
                }
            }
        }
        let instances: Vec<Arc<PluginInstance>> = self.instances.values().cloned().collect();
        let runtime = self.runtime.clone();
        evict(&runtime, &instances);
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut changed = HashSet::from([first]);
                // Debounce: wait until the files have been quiet for SETTLE.
                while let Ok(Some(p)) = tokio::time::timeout(SETTLE, rx.recv()).await {
                    changed.insert(p);
                }
                for inst in &instances {
                    if changed.iter().any(|p| same_file(p, &inst.config.plugin)) {
                        match inst.reload().await {
                            Ok(true) => {}
                            Ok(false) => tracing::debug!(instance = inst.name(), "plugin file touched, content unchanged"),
                            Err(e) => tracing::error!(
                                instance = inst.name(),
                                "refused the changed plugin, the previous version keeps serving: {}",
                                crate::sanitize::text(&format!("{e:#}"), 4096)
                            ),
                        }
                    }
                }
                evict(&runtime, &instances);
            }
        });
        Ok(WatchGuard {
            _watcher: watcher,
            task,
        })
    }
}

/// Drops compiled artefacts that no instance's current version uses.
fn evict(runtime: &Runtime, instances: &[Arc<PluginInstance>]) {
    let keep: HashSet<String> = instances
        .iter()
        .map(|i| i.current().digest.clone())
        .collect();
    let n = runtime.cache.evict_except(&keep);
    if n > 0 {
        tracing::debug!("evicted {n} compiled plugin artefacts no instance uses");
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || (a.file_name() == b.file_name() && a.parent().map(canon) == b.parent().map(canon))
}

fn canon(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Keeps the watcher alive.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
