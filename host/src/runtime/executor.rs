//! Where plugin code runs: a tokio runtime of its own, apart from the one
//! that serves HTTP, with low-priority worker threads.
//!
//! Why both: wasmtime runs guest code on the thread that polls the call's
//! future. A spinning guest yields back to the executor at every epoch tick
//! ([`super::TICK`], via `epoch_deadline_callback` → `YieldCustom`), so
//! calls on this runtime share its workers fairly, and one instance cannot
//! keep another's calls from running for more than a tick (1 ms); and a
//! worker that serves HTTP must never wait even that long. So guest code never runs on the
//! HTTP runtime at all, and its threads are `nice`d (+10) so that the
//! kernel runs an HTTP thread at once when both want a core. The HTTP side
//! only awaits a `JoinHandle`, and drops the task at the call's deadline.

use std::future::Future;

use anyhow::{Context, Result};

/// How many workers run plugin code (at least 2, so one long call never
/// holds all plugin work).
fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// The nice value of plugin worker threads.
const NICE: libc::c_int = 10;

pub struct Executor {
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Executor {
    pub fn new() -> Result<Executor> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers())
            .thread_name("wasm-call")
            .enable_all()
            .on_thread_start(|| {
                // SAFETY: plain syscalls on the calling thread (Linux nice
                // values are per thread); failure only means normal priority.
                unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, NICE);
                }
            })
            .build()
            .context("cannot start the plugin call runtime")?;
        Ok(Executor {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `f` on the plugin runtime.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Never blocks (it may be dropped inside the HTTP runtime): calls
        // still running are dropped where they are; their children are
        // killed (kill_on_drop).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
