//! The sbx control plane, sandbox proxy and the all-in-one `sbx server`:
//! one process with the control-plane API, the proxy and (unless `--no-local-node`) a local executor,
//! state in SQLite (or PostgreSQL, `--state`) and everything else under one
//! data directory.

mod admission;
mod api;
mod auth;
mod blob_lock;
mod build;
mod cluster;
mod error;
mod forward;
mod images;
mod lifecycle;
mod logs;
mod metrics;
mod node;
mod nodes;
mod openapi;
mod pools;
mod proxy;
mod relocate;
mod secrets;
mod snapshots;

/// The state store (`sbx_state`), by the name the modules here use.
use sbx_state as store;

use axum::extract::connect_info::ConnectInfo;
use sbx_executor::{Executor, ExecutorConfig};
use sbx_runtime::gvisor::Gvisor;
use sbx_runtime::Runtime;
pub use sbx_store::S3Credentials;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::ApiError;
pub use logs::Budget as LogBudget;

/// Settings of `sbx server`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Everything sbx keeps: state database, images, sandboxes' layers.
    pub data_dir: PathBuf,
    /// The state store's URL (`sqlite:PATH` or `postgres://…`); `None`:
    /// SQLite at `data_dir/state.db`.
    pub state: Option<String>,
    /// Where other servers sharing the state store reach this server's
    /// proxy (`HOST:PORT`); `None`: `proxy_addr` unless it is a wildcard.
    pub advertise: Option<String>,
    /// Where other servers send lifecycle requests for this server's
    /// sandboxes (`HOST:PORT`); `None`: `api_addr` unless it is a wildcard.
    pub advertise_api: Option<String>,
    /// A node silent this long is lost: its sandboxes fail (`node_lost`).
    pub node_lost_after: std::time::Duration,
    /// Where snapshots and images are stored: a directory or
    /// `s3://BUCKET[/PREFIX]?endpoint=URL&region=R`; `None`: `data_dir/store`.
    pub blobs: Option<String>,
    /// Control-plane listen address.
    pub api_addr: SocketAddr,
    /// Sandbox proxy (data plane) listen address.
    pub proxy_addr: SocketAddr,
    /// Accepted bearer keys; empty = no auth, loopback only.
    pub api_keys: Vec<String>,
    /// Static `sbx-agent` binary; default: found beside the running executable.
    pub agent_bin: Option<PathBuf>,
    /// The cgroup under which this server's sandboxes run (`sbx`).
    pub cgroup_parent: String,
    /// Which CA bundle sandboxes trust besides their image's own.
    pub sandbox_ca_bundle: CaBundle,
    /// Idle time after which a sandbox with no process of its own is
    /// frozen (no CPU at all) until its next request; `None`: never.
    pub idle_freeze: Option<std::time::Duration>,
    /// How long a suspended sandbox's volume and network stay ready for a
    /// quick resume before they are released.
    pub suspend_linger: std::time::Duration,
    /// Writable volumes made ahead of time (see `VolumePool`).
    pub spare_volumes: usize,
    /// Memory kept free of sandboxes; `None`: 5% of the host's, at least 512 MB.
    pub memory_reserve_mb: Option<u64>,
    /// At most this many sandboxes at once; `None`: as many as fit.
    pub max_sandboxes: Option<usize>,
    /// Where sandboxes' DNS guards send lookups (egress by host name);
    /// empty: the host's resolvers.
    pub sandbox_dns_upstream: Vec<SocketAddr>,
    /// How long a create without `max_pending_secs` waits for room;
    /// `None` or 0: refused at once when no node has room.
    pub max_pending_secs: Option<u64>,
    /// The key secrets are sealed with; `None`: `data_dir/secrets.key`
    /// (made on first start).
    pub secrets_key_file: Option<PathBuf>,
    /// The token nodes present to join (`POST /v1/cluster/join`); `None`:
    /// this server takes no nodes of its own accord (servers sharing the
    /// state store still work together).
    pub node_token: Option<String>,
    /// Whether this server runs sandboxes itself (`false`:
    /// `--no-local-node`, a control plane that places every sandbox on
    /// other nodes).
    pub local_node: bool,
    /// The S3 key of `blobs`; `None`: from the environment.
    pub blobs_credentials: Option<S3Credentials>,
    /// How much of the sandboxes' logs is kept (`DATA_DIR/logs`).
    pub logs: LogBudget,
}

/// The CA bundle made available in every sandbox (`--sandbox-ca-bundle`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CaBundle {
    /// The host's system bundle, if it has one.
    #[default]
    Host,
    /// This file.
    File(PathBuf),
    /// None: sandboxes trust what their image trusts.
    Off,
}

impl CaBundle {
    /// `none` or a path.
    pub fn parse(s: &str) -> Self {
        match s {
            "none" => CaBundle::Off,
            p => CaBundle::File(p.into()),
        }
    }

    fn resolve(&self) -> Result<Option<PathBuf>, Error> {
        match self {
            CaBundle::Off => Ok(None),
            CaBundle::Host => {
                let found = sbx_executor::host_ca_bundle();
                if found.is_none() {
                    tracing::info!(
                        "no CA bundle found on this host: sandboxes trust only their image's CAs"
                    );
                }
                Ok(found)
            }
            CaBundle::File(p) => match std::fs::metadata(p) {
                Ok(m) if m.is_file() => Ok(Some(p.clone())),
                Ok(_) => Err(Error::Config(format!(
                    "--sandbox-ca-bundle {}: not a file",
                    p.display()
                ))),
                Err(e) => Err(Error::Config(format!(
                    "--sandbox-ca-bundle {}: {e}",
                    p.display()
                ))),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("state store: {0}")]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    StateOpen(#[from] sbx_state::OpenError),
    #[error(transparent)]
    Executor(#[from] sbx_executor::Error),
    #[error(transparent)]
    Runtime(#[from] sbx_runtime::RuntimeError),
    #[error(transparent)]
    SecretsKey(#[from] secrets::KeyError),
}

/// Opens the blob store and removes what interrupted writes left in it.
/// Hosts that share an S3 bucket through PostgreSQL lock it there.
async fn open_blobs(
    config: &ServerConfig,
    data_dir: &std::path::Path,
    state: &store::Store,
) -> Result<sbx_store::Store, Error> {
    let mut url = match &config.blobs {
        Some(url) => {
            sbx_store::BlobsUrl::parse(url).map_err(|e| Error::Config(format!("--blobs: {e}")))?
        }
        None => sbx_store::BlobsUrl::Local(data_dir.join("store")),
    };
    if let (sbx_store::BlobsUrl::S3(c), Some(key)) = (&mut url, &config.blobs_credentials) {
        c.credentials.get_or_insert_with(|| key.clone());
    }
    let shared = state.kind() == store::Kind::Postgres;
    let locker = blob_lock::ClusterLocker::new(state.clone(), tokio::runtime::Handle::current());
    let blobs = tokio::task::spawn_blocking(move || {
        let blobs = if shared {
            url.open_with_locker(Arc::new(locker))?
        } else {
            url.open()?
        };
        // An upload cut short by a crash leaves temporary files behind.
        match blobs.remove_temporaries() {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "removed unfinished store writes"),
            Err(e) => tracing::warn!("cannot sweep the store's temporary files: {e}"),
        }
        Ok::<_, sbx_store::Error>(blobs)
    })
    .await
    .expect("open blobs task")
    .map_err(|e| Error::Config(format!("blob store: {e}")))?;
    Ok(blobs)
}

/// Runs the server until SIGINT/SIGTERM. Sandboxes keep running across a
/// restart of the server and are adopted again when it comes back.
pub async fn run(config: ServerConfig) -> Result<(), Error> {
    if config.api_keys.is_empty()
        && !(config.api_addr.ip().is_loopback() && config.proxy_addr.ip().is_loopback())
    {
        return Err(Error::Config(
            "refusing to listen on a non-loopback address without an API key: pass --api-key or set SBX_API_KEY".into(),
        ));
    }
    if !config.local_node && config.node_token.is_none() {
        return Err(Error::Config(
            "--no-local-node: this server then runs no sandboxes, so it needs nodes: \
             give it --node-token (with --state postgres://… and --blobs) and start \
             `sbx node --server URL --node-token TOKEN` on the hosts that run them"
                .into(),
        ));
    }
    tokio::fs::create_dir_all(&config.data_dir).await?;
    let data_dir = config.data_dir.canonicalize()?;
    // A server that runs no sandboxes needs no runtime and no privileges.
    let runtime: Option<Arc<dyn Runtime>> = match config.local_node {
        true => {
            let runtime: Arc<dyn Runtime> = Arc::new(Gvisor::from_path(data_dir.join("runsc")));
            let version = runtime.check().await?;
            tracing::info!(runtime = runtime.name(), %version, data_dir = %data_dir.display(), "starting sbx");
            Some(runtime)
        }
        false => {
            tracing::info!(data_dir = %data_dir.display(), "starting sbx (no local node)");
            None
        }
    };

    let store = match &config.state {
        Some(url) => store::Store::connect(url).await?,
        None => store::Store::open(&data_dir.join("state.db")).await?,
    };
    tracing::info!(state = ?store.kind(), "state store open");
    let secrets_key_file = config
        .secrets_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("secrets.key"));
    let secrets_key = Arc::new(secrets::SecretsKey::load_or_create(&secrets_key_file)?);
    let join = match &config.node_token {
        Some(token) => Some(Arc::new(
            cluster::Join::new(
                token.clone(),
                cluster::Shared {
                    state: config.state.as_deref(),
                    blobs: config.blobs.as_deref(),
                    blobs_credentials: config.blobs_credentials.as_ref(),
                    node_lost_secs: config.node_lost_after.as_secs(),
                    api_keys: config.api_keys.clone(),
                    secrets_key: secrets::key_hex(&secrets_key_file)?,
                },
            )
            .map_err(Error::Config)?,
        )),
        None => None,
    };
    let executor = match runtime {
        Some(runtime) => Some(Arc::new(
            Executor::new(
                ExecutorConfig {
                    data_dir: data_dir.clone(),
                    agent_bin: find_agent(config.agent_bin.clone())?,
                    spare_volumes: config.spare_volumes,
                    spare_disk_mb: lifecycle::DEFAULT_DISK_MB,
                    cgroup_parent: config.cgroup_parent.clone(),
                    ca_bundle: config.sandbox_ca_bundle.resolve()?,
                    idle_freeze: config.idle_freeze,
                    suspend_linger: config.suspend_linger,
                    dns_upstream: config.sandbox_dns_upstream.clone(),
                },
                runtime,
            )
            .await?,
        )),
        None => None,
    };
    // The executor's images, or (no local node) only the catalog's.
    let images = match &executor {
        Some(e) => e.images().clone(),
        None => sbx_executor::image::Images::new(data_dir.join("images"))
            .with_custom(data_dir.join("custom-images")),
    };
    let blobs = Arc::new(open_blobs(&config, &data_dir, &store).await?);
    tracing::info!(blobs = %blobs.describe(), "blob store open");
    let host = lifecycle::HostLimits::detect();
    let admission = admission::Admission {
        memory_reserve_mb: config
            .memory_reserve_mb
            .unwrap_or_else(|| admission::Admission::default_reserve_mb(host.memory_mb)),
        max_sandboxes: config.max_sandboxes,
        default_pending_secs: config.max_pending_secs.filter(|s| *s > 0),
    };
    let node_id = nodes::local_id(&data_dir)?;
    let advertise = config.advertise.clone().or_else(|| {
        (!config.proxy_addr.ip().is_unspecified()).then(|| config.proxy_addr.to_string())
    });
    let advertise_api = config
        .advertise_api
        .clone()
        .or_else(|| (!config.api_addr.ip().is_unspecified()).then(|| config.api_addr.to_string()));
    let node = nodes::LocalNode {
        id: node_id,
        advertise,
        advertise_api,
        timing: nodes::Timing::new(config.node_lost_after),
        // The servers of a cluster share their keys.
        peer_key: config.api_keys.first().cloned(),
    };
    let logs = logs::Logs::new(data_dir.join("logs"), config.logs)?;
    let manager = lifecycle::Manager::new(
        store,
        executor,
        images,
        host,
        blobs,
        admission,
        node,
        secrets_key,
        logs,
    );
    manager.recover().await?;
    if manager.runs_sandboxes() {
        manager.register_local_node().await?;
        tracing::info!(node = manager.node_id, "local node registered");
    } else {
        tracing::info!("no local node (--no-local-node): sandboxes run on other nodes");
    }
    // The state store catalogs the images (it adopts this host's images
    // it lacks); imports and uploads a killed server left and images now
    // unused go; images are brought from the blob store only when needed.
    manager.start_image_catalog().await;
    manager.collect_images().await;
    manager.store_unstored_images().await;
    if let Some(executor) = &manager.executor {
        build::sweep(&executor.build_cache_dir()).await;
    }
    let sweeper = manager.start_sweeper();
    let heartbeat = manager.runs_sandboxes().then(|| manager.start_heartbeat());
    let node_watch = manager.start_node_watch();
    let wake_listener = manager.start_wake_listener();
    let idler = manager.executor.as_ref().map(|e| e.start_idler());
    let log_collector = manager
        .runs_sandboxes()
        .then(|| logs::collect::start(manager.clone()));
    // The API answers while the default image is built (the first start
    // of a host): creates wait for it, `/healthz` shows its progress.
    let image_builder = manager
        .executor
        .clone()
        .map(|e| tokio::spawn(build_default_image(e)));

    let keys = Arc::new(config.api_keys.clone());
    let api_app = api::router(api::ApiState {
        manager: manager.clone(),
        proxy_addr: config.proxy_addr,
    })
    .layer(axum::middleware::from_fn_with_state(
        keys.clone(),
        auth::check,
    ))
    .merge(cluster::router(join));
    let proxy_app = proxy::router(manager.clone(), keys);

    let api_listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {} (api): {e}", config.api_addr)))?;
    let proxy_listener = tokio::net::TcpListener::bind(config.proxy_addr)
        .await
        .map_err(|e| {
            Error::Config(format!(
                "cannot listen on {} (proxy): {e}",
                config.proxy_addr
            ))
        })?;
    tracing::info!(
        api = %api_listener.local_addr()?,
        proxy = %proxy_listener.local_addr()?,
        auth = !config.api_keys.is_empty(),
        "sbx server ready"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serve = |listener: tokio::net::TcpListener, app: axum::Router| {
        let mut rx = stop_rx.clone();
        // No Nagle: streamed events are small writes that must not wait for an ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        }
    };
    let api_task = tokio::spawn(serve(api_listener, api_app));
    let proxy_task = tokio::spawn(serve(proxy_listener, proxy_app));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    sweeper.abort();
    node_watch.abort();
    for task in [
        heartbeat,
        image_builder,
        wake_listener,
        idler,
        log_collector,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    // Finish what was started on the host (teardowns, launches, captures):
    // a stop right after a request must not leave mounts or netns behind.
    manager.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, manager.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            pending = manager.tasks.len(),
            "background work still running at shutdown; the next start recovers it"
        );
    }
    if let Some(executor) = &manager.executor {
        executor.shutdown().await;
    }
    // Open streams (follow, PTY) do not hold the shutdown up for long.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = api_task.await;
        let _ = proxy_task.await;
    })
    .await;
    Ok(())
}

/// Builds the default image unless it is there, trying again after a
/// failure (a mirror that did not answer, a full disk) with a growing pause.
async fn build_default_image(executor: Arc<Executor>) {
    let mut pause = std::time::Duration::from_secs(30);
    loop {
        match executor.images().ensure_default().await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(
                    retry_in_secs = pause.as_secs(),
                    "building the default image failed: {e}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(600));
            }
        }
    }
}

/// Longest a shutdown waits for background work on the host.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The agent binary: given, `SBX_AGENT_BIN`, or beside this executable.
fn find_agent(given: Option<PathBuf>) -> Result<PathBuf, Error> {
    let mut candidates: Vec<PathBuf> = given.into_iter().collect();
    if let Some(p) = std::env::var_os("SBX_AGENT_BIN") {
        candidates.push(p.into());
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("sbx-agent"));
            // cargo layouts: target/{debug,release}/sbx next to the static build.
            if let (Some(profile), Some(target)) = (dir.file_name(), dir.parent()) {
                let target = if profile == "deps" {
                    target.parent().unwrap_or(target)
                } else {
                    target
                };
                for p in ["release", "debug"] {
                    candidates.push(
                        target
                            .join("x86_64-unknown-linux-gnu")
                            .join(p)
                            .join("sbx-agent"),
                    );
                }
            }
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::Config(
            "sbx-agent not found: build it with `make agent` and pass --agent-bin or set SBX_AGENT_BIN".into(),
        )
    })
}

/// Peer address of a request (for the loopback-only rule).
pub(crate) fn peer(req: &axum::extract::Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_must_be_a_file_or_none() {
        assert_eq!(CaBundle::parse("none").resolve().unwrap(), None);
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            CaBundle::parse(f.path().to_str().unwrap())
                .resolve()
                .unwrap(),
            Some(f.path().to_path_buf())
        );
        let e = CaBundle::parse("/no/such/bundle.pem")
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("/no/such/bundle.pem"), "{e}");
        let e = CaBundle::parse("/tmp").resolve().unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
    }
}
