//! The one way to start the host: [`Daemon::start`] loads the plugins,
//! watches them for hot reload, opens the spawn service (recovering every
//! stored spawn), starts the pollers, the retention sweep and the tunnel
//! keeper, and serves the HTTP API on the listener given. `serve`, the
//! integration tests and the benches all start the host through it, so the
//! start-up path they exercise is the real one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http::{self, auth::Token, AppState};
use crate::registry::{Registry, WatchGuard};
use crate::runtime::Runtime;
use crate::service::Service;

/// How long [`Daemon::bind_and_start`] waits for a port in use.
pub const BIND_RETRY: Duration = Duration::from_secs(10);

pub struct Daemon {
    pub registry: Arc<Registry>,
    pub service: Arc<Service>,
    /// Where the API listens.
    pub local: SocketAddr,
    /// The base of the callback URL jobs get.
    pub public_url: String,
    /// How long opening the service (recovering the store) took.
    pub recovered_in: Duration,
    tasks: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _watch: WatchGuard,
}

impl Daemon {
    /// Starts the host for `config` on `listener` with the API `token`.
    pub async fn start(
        config: Config,
        listener: tokio::net::TcpListener,
        token: Token,
    ) -> Result<Daemon> {
        let runtime = Runtime::for_config(&config)?;
        runtime.own_ssh_connections();
        let local = listener.local_addr()?;
        let public_url = match &config.http.public_url {
            Some(u) => u.clone(),
            None => {
                if local.ip().is_unspecified() {
                    tracing::warn!(
                        "http.listen is {local} and http.public_url is not set: jobs are told to call back to {local}, which only works on this machine; set http.public_url"
                    );
                }
                format!("http://{local}")
            }
        };
        let registry = Arc::new(Registry::load(runtime, config).await?);
        for i in registry.instances() {
            let l = i.current();
            tracing::info!(
                instance = i.name(),
                "loaded plugin {} {} (sha256 {}) from {}",
                l.descriptor.name,
                l.descriptor.version,
                l.digest,
                l.path.display()
            );
        }
        let watch = registry.watch()?;
        let t = Instant::now();
        let service = Service::open(registry.clone(), &public_url)?;
        let recovered_in = t.elapsed();
        let mut tasks = service.start_pollers();
        let state = Arc::new(AppState {
            registry: registry.clone(),
            token,
            service: service.clone(),
        });
        // Callback tunnels forward to a listener that serves the job callback
        // only: the gateway's port exposes nothing else of the API.
        let has_callback_tunnel = registry
            .config
            .instances
            .values()
            .any(|i| i.tunnel.as_ref().is_some_and(|t| t.callback.is_some()));
        let callbacks_at = if has_callback_tunnel {
            let (addr, task) = http::callback_only::serve(state.clone())
                .await
                .context("cannot open the callback-only listener on 127.0.0.1")?;
            tracing::info!("callback tunnels forward to http://{addr} (the job callback only)");
            tasks.push(task);
            addr
        } else {
            local
        };
        tasks.push(service.start_tunnel_keeper(callbacks_at));
        let app = http::router(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
        });
        tracing::info!("listening on http://{local} (callbacks to {public_url})");
        Ok(Daemon {
            registry,
            service,
            local,
            public_url,
            recovered_in,
            tasks,
            server: Some(server),
            stop: Some(stop),
            _watch: watch,
        })
    }

    /// Binds `config.http.listen` and starts there. A port still in use
    /// is tried again for [`BIND_RETRY`] (a host restarted at once after a
    /// crash can find its port held for a moment by a child process of the
    /// old one between its fork and exec).
    pub async fn bind_and_start(config: Config, token: Token) -> Result<Daemon> {
        let listen = config.http.listen.clone();
        let until = Instant::now() + BIND_RETRY;
        let mut warned = false;
        let listener = loop {
            match tokio::net::TcpListener::bind(&listen).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < until => {
                    if !warned {
                        tracing::warn!(
                            "{listen} (http.listen) is in use; trying again for {} s",
                            BIND_RETRY.as_secs()
                        );
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot listen on {listen} (http.listen)"))
                }
            }
        };
        Self::start(config, listener, token).await
    }

    /// The API's base URL on this machine.
    pub fn url(&self) -> String {
        format!("http://{}", self.local)
    }

    /// Stops the background tasks (pollers, retention, tunnel keeper): for
    /// tests that want nothing to poll any more.
    pub fn stop_tasks(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// A planned stop: no new connections; open ones get `grace` (event
    /// streams of queued spawns never end by themselves); then submits in
    /// flight get `submit_grace`. Returns how many submits were still
    /// running then (those spawns are resolved at the next start).
    pub async fn shutdown(mut self, grace: Duration, submit_grace: Duration) -> Result<usize> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(grace, server).await {
                Ok(r) => r.context("the HTTP server task")??,
                Err(_) => tracing::info!(
                    "connections still open {} s after the shutdown signal (event streams); exiting",
                    grace.as_secs()
                ),
            }
        }
        Ok(self.service.drain(submit_grace).await)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.abort();
        }
        self.stop_tasks();
    }
}
