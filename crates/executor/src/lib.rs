//! The executor: owns everything sbx puts on one host — runtime sandboxes,
//! writable layers, network namespaces — and can rebuild its picture of them
//! after a crash.

mod agent_http;
mod btrfs;
pub mod build_fs;
pub mod cgroups;
mod cmd;
pub mod custom_images;
pub mod dns;
pub mod gently;
mod host;
mod idle;
pub mod image;
pub mod layer;
mod linger;
mod memwatch;
pub mod net;
mod orphans;
mod placement;
mod pool;
mod resize;
mod rtnl;
mod secret_env;
pub mod snapshot;
mod warm;

pub use secret_env::SecretEnv;

use cgroups::CgroupParent;
pub use host::{boot_id, meminfo_kb, syncfs};
pub use idle::Hold;
use image::Images;
use layer::{Layer, VolumeFs};
use net::Slot;
pub use resize::{Resize, ResizeError};
use sbx_runtime::{Bind, Pin, Runtime, RuntimeError, SandboxSpec};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Port of the agent inside every sandbox.
pub const AGENT_PORT: u16 = 9501;
/// Where the agent's directory is mounted inside the sandbox.
const AGENT_MOUNT: &str = "/.sbx";
const AGENT_NAME: &str = "sbx-agent";
/// The host's CA bundle, in the agent's directory (`--sandbox-ca-bundle`).
const CA_NAME: &str = "ca-certificates.crt";
/// Variables that point the usual TLS clients at the CA bundle.
const CA_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
];
/// Marks a deleted snapshot's directory kept for sandboxes still using its layer.
const DELETED_MARK: &str = "deleted";
/// A suspended sandbox's memory image, in its directory.
const SUSPEND_DIR: &str = "suspend";
/// Names a resumed sandbox's memory image while it is deleted in the
/// background (see `gently`); swept at recovery.
const SUSPEND_TRASH_PREFIX: &str = ".suspend.trash-";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {reason}")]
    Host { what: String, reason: String },
    #[error("image: {0}")]
    Image(String),
    /// An image import failed (a bad source, the registry, the archive).
    #[error(transparent)]
    Import(#[from] sbx_image::Error),
    #[error("unknown image {name:?}; images: {available}")]
    UnknownImage { name: String, available: String },
    #[error("no free network slot: {0} sandboxes run on this host")]
    NoSlot(u32),
    #[error("network slot {0} is held by another sbx server on this host")]
    SlotTaken(u32),
    #[error("agent did not become healthy: {0}")]
    AgentTimeout(String),
    #[error("the sandbox stopped before its agent answered ({0})")]
    SandboxDied(String),
    #[error("sandbox {0} does not run on this host")]
    NotRunning(String),
    #[error("sandbox {0} is not suspended on this host")]
    NotSuspended(String),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct ExecutorConfig {
    pub data_dir: PathBuf,
    /// The static `sbx-agent` binary to mount into sandboxes.
    pub agent_bin: PathBuf,
    /// Spare writable volumes kept ready (0 = make each on demand).
    pub spare_volumes: usize,
    /// Size of the spare volumes: the default `disk_mb`.
    pub spare_disk_mb: u64,
    /// The cgroup under which sandboxes run (e.g. `sbx`); made and prepared here.
    pub cgroup_parent: String,
    /// A CA bundle every sandbox trusts (the host's, usually); `None`: only
    /// what each image has.
    pub ca_bundle: Option<PathBuf>,
    /// Idle time after which a sandbox with no process of its own is frozen
    /// ([`idle`]); `None`: never.
    pub idle_freeze: Option<std::time::Duration>,
    /// How long a suspended sandbox's volume and network stay ready for a
    /// quick resume ([`linger`]); zero: released right after the suspend.
    pub suspend_linger: std::time::Duration,
    /// Where DNS guards send the lookups they let through ([`dns`]); empty:
    /// the host's resolvers.
    pub dns_upstream: Vec<SocketAddr>,
}

/// What the executor needs to launch one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub id: String,
    pub image: String,
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub entrypoint: Vec<String>,
    /// Where it may send traffic (`allow_internet` on its own in older metadata).
    #[serde(flatten)]
    pub egress: net::Egress,
    /// A snapshot's layer, between the image and the writable layer.
    #[serde(default)]
    pub layer: Option<PathBuf>,
    /// Start from this checkpoint (a warm restore) instead of booting.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// Addresses the memory image had where it was captured (set by the
    /// executor from the snapshot; see [`net::configure`]).
    #[serde(default)]
    pub aliases: Vec<Ipv4Addr>,
    /// Secret variables for PID 1's environment; never written to the
    /// sandbox's metadata (a resume's memory image has them already).
    #[serde(skip)]
    pub secrets: SecretEnv,
}

/// Resolves once a checkpoint being written is whole (`Err`: it never
/// will be); see [`Executor::launch_when`].
pub use sbx_runtime::CheckpointReady;

/// Facts about a sandbox kept beside it on disk, for re-adoption after a
/// crash and for resuming it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    slot: u32,
    #[serde(default)]
    spec: Option<LaunchSpec>,
    /// Its memory is in `suspend/` and nothing of it runs.
    #[serde(default)]
    suspended: bool,
    /// The spec's policy changed while it was suspended: a network that
    /// lingered since the suspend has the old one (see [`Executor::set_egress`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    egress_changed: bool,
}

/// What [`Executor::capture`] made.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The snapshot's directory: `layer/` and, for memory, `checkpoint/`.
    pub dir: PathBuf,
    /// How long the sandbox was paused.
    pub pause_ms: u64,
    /// Bytes of the files in the layer.
    pub layer_bytes: u64,
    /// Bytes of the memory checkpoint.
    pub checkpoint_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    slot: Slot,
    pid: Option<i32>,
    /// The host CPU it is pinned to (see [`placement`]).
    cpu: Option<usize>,
}

/// A suspended sandbox's next run, made during its suspend's checkpoint
/// and lingering with its volume and network (see [`linger`]): the runtime
/// prepares the run (gVisor: `runsc create`, ~100 ms of a restore), so
/// that a resume, even one right after the suspend, only gives the link
/// its addresses again and restores the image into it.
///
/// It is made beside the old sandbox, paused for its checkpoint, on the
/// same link, and does not touch it: gVisor takes the link's addresses
/// into its own network stack when it restores, not when it creates. A
/// checkpoint that fails removes it; the sandbox runs on unharmed.
struct StandbyPlan {
    runtime_spec: SandboxSpec,
    pin: Option<Pin>,
}

impl StandbyPlan {
    /// Makes it, frozen (a sentry waiting for its restore still wakes up
    /// all the time: ~16 ms of CPU a second here); `None` (logged) when
    /// that failed.
    async fn make(
        self,
        runtime: &dyn Runtime,
        cgroups: &CgroupParent,
        id: &str,
    ) -> Option<linger::Standby> {
        match runtime.prepare_restore(&self.runtime_spec).await {
            Ok(()) => {
                let cgroup = runtime.prepared_cgroup_name(id);
                if let (true, Some(cgroup)) = (cgroups.can_freeze(), cgroup) {
                    if let Err(e) = cgroups.set_frozen(&cgroup, true) {
                        tracing::debug!(sandbox = id, "cannot freeze the standby: {e}");
                    }
                }
                Some(linger::Standby { pin: self.pin })
            }
            Err(e) => {
                tracing::warn!(sandbox = id, "making the suspended sandbox's standby: {e}");
                None
            }
        }
    }
}

/// Thaws the frozen standby of sandbox `id` (see [`StandbyPlan`]), if it
/// has one, before it is restored into or removed: runsc waits for a
/// frozen sandbox.
fn thaw_standby(cgroups: &CgroupParent, runtime: &dyn Runtime, id: &str) {
    if let (true, Some(cgroup)) = (cgroups.can_freeze(), runtime.prepared_cgroup_name(id)) {
        let _ = cgroups.set_frozen(&cgroup, false);
    }
}

/// Removes the standby of sandbox `id`, if it has one.
async fn remove_standby(cgroups: &CgroupParent, runtime: &dyn Runtime, id: &str) {
    thaw_standby(cgroups, runtime, id);
    runtime.discard_prepared(id).await;
}

/// What [`Executor::recover`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub adopted: Vec<String>,
    /// Suspended sandboxes whose memory and disk are intact.
    pub suspended: Vec<String>,
    pub cleaned: Vec<String>,
}

pub struct Executor {
    data_dir: PathBuf,
    /// The DNS guards of sandboxes whose policy names hosts.
    dns: dns::DnsGuards,
    images: Images,
    runtime: Arc<dyn Runtime>,
    live: Mutex<HashMap<String, Live>>,
    /// Spare volumes of the default disk size.
    pool: Arc<pool::VolumePool>,
    /// Slots are handed out round-robin, so an address is not reused soon
    /// after its sandbox went away (pooled proxy connections may still name it).
    next_slot: Mutex<u32>,
    /// Host CPUs small sandboxes are pinned to, one each.
    cpus: Vec<usize>,
    /// Whether a pin is a CPU affinity inside a two-CPU cgroup (and the
    /// sentry gets two Go processors), rather than a one-CPU cgroup: see
    /// `sbx_runtime::pinning`.
    pin_by_affinity: bool,
    cgroups: CgroupParent,
    /// Whether sandboxes get the CA bundle (in the agent's directory).
    ca_bundle: bool,
    /// Whether the host tells agents of memory pressure ([`memwatch`]).
    host_memory_watch: bool,
    /// The memory watch of each sandbox that runs here.
    memory_watches: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    idle: Arc<idle::Idle>,
    /// Suspended sandboxes whose old sandbox is being stopped, or whose
    /// volume and network linger for a quick resume (a resume or destroy
    /// of one waits for, or takes over, what is under way).
    lingering: Arc<linger::Lingering>,
    suspend_linger: std::time::Duration,
    /// Suspend images being read into the page cache, by sandbox.
    warming: Mutex<HashMap<String, warm::Warming>>,
    /// The filesystem of new sandbox volumes.
    volume_fs: VolumeFs,
}

impl Executor {
    /// Prepares the host: directories, agent binary, firewall.
    pub async fn new(config: ExecutorConfig, runtime: Arc<dyn Runtime>) -> Result<Self, Error> {
        let data_dir = config.data_dir;
        tokio::fs::create_dir_all(data_dir.join("sandboxes")).await?;
        tokio::fs::create_dir_all(data_dir.join("snapshots")).await?;
        let agent_dir = data_dir.join("agent");
        tokio::fs::create_dir_all(&agent_dir).await?;
        install_agent(&config.agent_bin, &agent_dir.join(AGENT_NAME)).await?;
        install_ca_bundle(&agent_dir, config.ca_bundle.as_deref()).await?;
        host::raise_limits();
        orphans::adopt_and_reap();
        let cgroups = CgroupParent::prepare(&config.cgroup_parent)?;
        let cpus = if cgroups.can_pin() {
            let allowed = cgroups.allowed_cpus();
            placement::host_cpus()
                .into_iter()
                .filter(|c| allowed.contains(c))
                .collect()
        } else {
            Vec::new()
        };
        tracing::info!(
            cgroup_parent = cgroups.name(),
            version = ?cgroups.version(),
            pin_cpus = %placement::list(&cpus),
            "cgroups ready"
        );
        net::install_firewall().await?;
        tokio::fs::write(data_dir.join("resolv.conf"), net::sandbox_resolv_conf()).await?;
        let volume_fs = VolumeFs::detect();
        let pool = pool::VolumePool::new(
            data_dir.join("pool"),
            config.spare_disk_mb,
            config.spare_volumes,
            volume_fs,
        )
        .await;
        Ok(Self {
            images: Images::new(data_dir.join("images"))
                .with_custom(data_dir.join("custom-images")),
            data_dir,
            runtime,
            live: Mutex::new(HashMap::new()),
            pool,
            next_slot: Mutex::new(0),
            cpus,
            pin_by_affinity: sbx_runtime::pinning::affinity_survives_cpusets(),
            ca_bundle: config.ca_bundle.is_some(),
            host_memory_watch: memwatch::supported(),
            memory_watches: Mutex::new(HashMap::new()),
            idle: idle::Idle::new(cgroups.clone(), config.idle_freeze),
            lingering: Arc::new(linger::Lingering::default()),
            suspend_linger: config.suspend_linger,
            warming: Mutex::new(HashMap::new()),
            cgroups,
            volume_fs,
            dns: dns::DnsGuards::new(config.dns_upstream),
        })
    }

    /// Where image builds keep the layer of each step (see `build_fs`).
    pub fn build_cache_dir(&self) -> PathBuf {
        self.data_dir.join("build-cache")
    }

    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Keeps sandbox `id` thawed (see [`idle`]) until the hold is dropped:
    /// take one before reaching into a sandbox.
    pub fn hold(&self, id: &str) -> Hold {
        self.idle.hold(id)
    }

    /// Freezes idle sandboxes, once a second, until aborted.
    pub fn start_idler(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.idle.sweep(|id| me.agent_addr(id)).await;
            }
        })
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    /// Waits until the sandbox's agent answers (up to 30 s), failing at
    /// once if the sandbox stops first (its PID 1 died): the runtime's
    /// state is checked every quarter second beside the health probes.
    async fn agent_ready(&self, id: &str, addr: SocketAddr) -> Result<(), Error> {
        let died = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let status = match self.runtime.state(id).await {
                    Ok(Some(state)) if state.status == "stopped" => "stopped".to_string(),
                    Ok(None) => "gone".to_string(),
                    _ => continue,
                };
                let panic_log = self.sandbox_dir(id).join("panic.log");
                let panic = tokio::fs::read_to_string(&panic_log)
                    .await
                    .unwrap_or_default();
                let last = panic.lines().last().unwrap_or("").trim();
                return if last.is_empty() {
                    format!("runtime status {status}")
                } else {
                    format!("runtime status {status}; {}: {last}", panic_log.display())
                };
            }
        };
        tokio::select! {
            ready = wait_for_agent(addr, std::time::Duration::from_secs(30)) => ready,
            why = died => Err(Error::SandboxDied(why)),
        }
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("sandboxes").join(id)
    }

    /// The agent's address of a sandbox that runs here.
    pub fn agent_addr(&self, id: &str) -> Option<SocketAddr> {
        let live = self.live.lock().unwrap();
        live.get(id)
            .map(|l| SocketAddr::new(l.slot.sandbox_ip().into(), AGENT_PORT))
    }

    /// Ids of the sandboxes that run here.
    pub fn running(&self) -> Vec<String> {
        self.live.lock().unwrap().keys().cloned().collect()
    }

    /// Ids of the sandboxes suspended on this host (their memory image and
    /// files here, nothing running).
    pub async fn suspended(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let Ok(mut rd) = tokio::fs::read_dir(self.data_dir.join("sandboxes")).await else {
            return ids;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let id = e.file_name().to_string_lossy().into_owned();
            if self.holds_suspended(&id).await && !self.live.lock().unwrap().contains_key(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Whether this host has sandbox `id` suspended (what [`Self::resume`]
    /// needs).
    pub async fn holds_suspended(&self, id: &str) -> bool {
        let dir = self.sandbox_dir(id);
        dir.join(SUSPEND_DIR).is_dir() && read_meta(&dir).await.is_some_and(|m| m.suspended)
    }

    fn take_slot(&self, id: &str) -> Result<Slot, Error> {
        let mut live = self.live.lock().unwrap();
        let used: HashSet<u32> = live
            .values()
            .map(|l| l.slot)
            .chain(self.lingering.slots())
            .map(|s| s.0)
            .collect();
        let mut next = self.next_slot.lock().unwrap();
        let slot = (0..net::MAX_SLOTS)
            .map(|i| (*next + i) % net::MAX_SLOTS)
            .find(|n| !used.contains(n))
            .map(Slot)
            .ok_or(Error::NoSlot(net::MAX_SLOTS))?;
        *next = (slot.0 + 1) % net::MAX_SLOTS;
        live.insert(
            id.to_string(),
            Live {
                slot,
                pid: None,
                cpu: None,
            },
        );
        Ok(slot)
    }

    /// Boots a sandbox and waits for its agent. On failure nothing is left behind.
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<SocketAddr, Error> {
        self.launch_when(spec, None).await
    }

    /// [`launch`](Self::launch) of a restore whose checkpoint is still being
    /// written (fetched from a blob store): the layer and network are made
    /// meanwhile, and the restore starts once `ready` resolves. The
    /// checkpoint's small files (its addresses) must be there already.
    pub async fn launch_when(
        &self,
        spec: &LaunchSpec,
        ready: Option<CheckpointReady>,
    ) -> Result<SocketAddr, Error> {
        if !self.images.exists(&spec.image) {
            return Err(Error::UnknownImage {
                name: spec.image.clone(),
                available: self.images.list().join(", "),
            });
        }
        match self.launch_in(spec, ready).await {
            Ok((slot, pid)) => {
                if let Some(l) = self.live.lock().unwrap().get_mut(&spec.id) {
                    l.pid = pid;
                }
                Ok(SocketAddr::new(slot.sandbox_ip().into(), AGENT_PORT))
            }
            Err(e) => {
                let slot = self.live.lock().unwrap().get(&spec.id).map(|l| l.slot);
                match slot {
                    Some(slot) => self.teardown(&spec.id, slot).await,
                    None => Layer::new(self.sandbox_dir(&spec.id)).destroy().await,
                }
                Err(e)
            }
        }
    }

    /// Claims a network slot: its netns and veth pair, not yet configured.
    async fn create_net(&self, spec: &LaunchSpec) -> Result<Slot, Error> {
        for _ in 0..64 {
            let slot = self.take_slot(&spec.id)?;
            match net::create_link(&spec.id, slot).await {
                Ok(()) => return Ok(slot),
                Err(Error::SlotTaken(_)) => {
                    self.live.lock().unwrap().remove(&spec.id);
                }
                Err(e) => {
                    self.live.lock().unwrap().remove(&spec.id);
                    return Err(e);
                }
            }
        }
        Err(Error::NoSlot(net::MAX_SLOTS))
    }

    async fn launch_in(
        &self,
        spec: &LaunchSpec,
        ready: Option<CheckpointReady>,
    ) -> Result<(Slot, Option<i32>), Error> {
        let mut spec = spec.clone();
        if let Some(ck) = &spec.checkpoint {
            spec.aliases = read_addresses(ck).await;
        }
        let spec = &spec;
        let _starting = self.pool.starting();
        let dir = self.sandbox_dir(&spec.id);
        tokio::fs::create_dir_all(&dir).await?;
        let layer = Layer::new(&dir);
        let t0 = std::time::Instant::now();
        let lowers = self.lowers(spec);
        let make_layer = async {
            match self.pool.take(spec.disk_mb) {
                Some(spare) => {
                    let r = async {
                        layer.adopt_volume(&spare).await?;
                        layer.mount_overlay(&lowers).await
                    }
                    .await;
                    if r.is_err() {
                        spare.destroy().await;
                        layer.destroy().await;
                    }
                    r
                }
                None => layer.create(&lowers, spec.disk_mb, self.volume_fs).await,
            }
        };
        // The interfaces are configured beside the layer: the runtime's
        // one command that creates and starts (or restores) reads them.
        let make_net = async {
            let slot = self.create_net(spec).await?;
            net::configure(&spec.id, slot, &spec.egress, &spec.aliases).await?;
            Ok::<_, Error>(slot)
        };
        let ((l, layer_ms), (n, net_ms)) = tokio::join!(timed(make_layer), timed(make_net));
        let slot = n?;
        let meta = Meta {
            id: spec.id.clone(),
            slot: slot.0,
            spec: Some(spec.clone()),
            suspended: false,
            egress_changed: false,
        };
        write_meta(&dir, &meta).await?;
        l?;
        let runtime_spec = self.runtime_spec(spec, self.place(&spec.id, spec.cpus));
        let t1 = std::time::Instant::now();
        // Its lookups are answered by its DNS guard from its first.
        self.dns.guard(&spec.id, slot, &spec.egress).await?;
        let state = match (&spec.checkpoint, ready) {
            // The runtime makes what it can while the checkpoint is written.
            (Some(ck), Some(ready)) => self.runtime.restore_when(&runtime_spec, ck, ready).await?,
            (Some(ck), None) => self.runtime.restore(&runtime_spec, ck).await?,
            (None, _) => self.runtime.create_and_start(&runtime_spec).await?,
        };
        let t2 = std::time::Instant::now();
        let addr = SocketAddr::new(slot.sandbox_ip().into(), AGENT_PORT);
        self.agent_ready(&spec.id, addr).await?;
        self.watch_memory(&spec.id, spec.memory_mb, spec.checkpoint.is_some());
        self.idle.add(&spec.id, &self.runtime.cgroup_name(&spec.id));
        tracing::debug!(
            sandbox = spec.id,
            layer_and_net_ms = (t1 - t0).as_millis() as u64,
            layer_ms,
            net_ms,
            runtime_ms = (t2 - t1).as_millis() as u64,
            agent_ms = t2.elapsed().as_millis() as u64,
            "launch phases"
        );
        Ok((slot, state.pid))
    }

    /// Overlay lower layers of a sandbox, top-most first.
    fn lowers(&self, spec: &LaunchSpec) -> Vec<PathBuf> {
        spec.layer
            .iter()
            .cloned()
            .chain([self.images.rootfs(&spec.image)])
            .collect()
    }

    /// Pins a sandbox of at most one CPU to the host CPU with the fewest
    /// pinned sandboxes and records it; the pin for its runtime spec, or
    /// `None` to let it run anywhere.
    fn place(&self, id: &str, cpus: f64) -> Option<Pin> {
        // One lock: two launches at once do not pick the same CPU.
        let mut live = self.live.lock().unwrap();
        let pin = self.pin_among(cpus, &live)?;
        live.get_mut(id)?.cpu = Some(pin.cpu);
        Some(pin)
    }

    /// The pin [`place`](Self::place) would give a sandbox of `cpus` beside
    /// the `live` ones, not recorded.
    fn pin_among(&self, cpus: f64, live: &HashMap<String, Live>) -> Option<Pin> {
        if !placement::is_pinned(cpus) {
            return None;
        }
        let cpu = placement::least_loaded(&self.cpus, live.values().filter_map(|l| l.cpu))?;
        Some(Pin {
            cpu,
            partner: self
                .pin_by_affinity
                .then(|| placement::partner(&self.cpus, cpu))
                .flatten(),
        })
    }

    fn runtime_spec(&self, spec: &LaunchSpec, pin: Option<Pin>) -> SandboxSpec {
        let dir = self.sandbox_dir(&spec.id);
        let mut args = vec![format!("{AGENT_MOUNT}/{AGENT_NAME}")];
        // Read once: it is the image's record on disk.
        let image = self.images.config(&spec.image);
        // The create's entrypoint, else the image's ENTRYPOINT + CMD.
        let entrypoint = match spec.entrypoint.is_empty() {
            true => image.start_command(),
            false => spec.entrypoint.clone(),
        };
        if !entrypoint.is_empty() {
            args.push("--".into());
            args.extend(entrypoint);
        }
        SandboxSpec {
            id: spec.id.clone(),
            bundle_dir: dir.clone(),
            rootfs: Layer::new(&dir).rootfs(),
            netns: Some(net::netns_path(&spec.id)),
            cgroup_path: self.cgroups.sandbox_path(&spec.id),
            cpus: spec.cpus,
            pin,
            memory_limit_bytes: hard_memory_limit_mb(spec.memory_mb) * 1024 * 1024,
            args,
            env: self.sandbox_env(spec, &image),
            binds: vec![
                Bind {
                    source: self.data_dir.join("agent"),
                    destination: AGENT_MOUNT.into(),
                    read_only: true,
                },
                Bind {
                    source: self.data_dir.join("resolv.conf"),
                    destination: "/etc/resolv.conf".into(),
                    read_only: true,
                },
            ],
            hostname: "sandbox".into(),
        }
    }

    /// The environment of the sandbox's PID 1, which its processes inherit.
    fn sandbox_env(&self, spec: &LaunchSpec, image: &sbx_image::ImageConfig) -> Vec<String> {
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "HOME=/root".into(),
            "LANG=C.UTF-8".into(),
        ];
        // The image's variables win over these defaults.
        for var in &image.env {
            let key = var.split('=').next().unwrap_or(var);
            env.retain(|v| v.split('=').next() != Some(key));
            env.push(var.clone());
        }
        env.push(format!("SBX_MEMORY_LIMIT_MB={}", spec.memory_mb));
        env.push(format!("SBX_SANDBOX_ID={}", spec.id));
        // The agent runs commands there and as that user unless told otherwise.
        if let Some(dir) = &image.working_dir {
            env.push(format!("SBX_DEFAULT_WORKDIR={dir}"));
        }
        if let Some(user) = &image.user {
            env.push(format!("SBX_DEFAULT_USER={user}"));
        }
        if self.ca_bundle {
            env.extend(CA_VARIABLES.map(|v| format!("{v}={AGENT_MOUNT}/{CA_NAME}")));
        }
        if self.host_memory_watch {
            env.push("SBX_MEMORY_WATCH=host".into());
        }
        spec.secrets.apply(&mut env);
        env
    }

    /// Tells the agent of sandbox `id` whenever its cgroup's memory crosses
    /// `memory_mb` ([`memwatch`]): SIGUSR1 above (it starts looking for a
    /// process group to kill), SIGUSR2 below. `restored`: the agent's state
    /// came from a memory image, so it is told where usage stands now too.
    fn watch_memory(&self, id: &str, memory_mb: u64, restored: bool) {
        if !self.host_memory_watch {
            return;
        }
        let cgroup = self.cgroups.sandbox_path(&self.runtime.cgroup_name(id));
        let Some(dir) = memwatch::memory_cgroup(&cgroup) else {
            tracing::warn!(sandbox = id, "no memory cgroup to watch");
            return;
        };
        let runtime = self.runtime.clone();
        let idle = self.idle.clone();
        let sandbox = id.to_string();
        // Registered in the background: it takes an RCU grace period, which
        // a launch must not wait for (it cost ~20 ms of time to first command).
        let task = tokio::spawn(async move {
            let threshold = match memwatch::Threshold::register(&dir, memory_mb << 20).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(sandbox, "cannot watch memory from the host: {e}");
                    return;
                }
            };
            let tell = |over: bool| {
                let (runtime, sandbox) = (runtime.clone(), sandbox.clone());
                let hold = idle.hold(&sandbox);
                async move {
                    let _hold = hold;
                    let signal = if over { libc::SIGUSR1 } else { libc::SIGUSR2 };
                    tracing::debug!(sandbox, over, "memory threshold crossed");
                    if let Err(e) = runtime.signal(&sandbox, signal).await {
                        tracing::debug!(sandbox, "cannot tell the agent of memory pressure: {e}");
                    }
                }
            };
            let mut last = threshold.over();
            if let Some(over) = last {
                if over || restored {
                    tell(over).await;
                }
            }
            while let Some(over) = threshold.next().await {
                if Some(over) != last {
                    tell(over).await;
                    last = Some(over);
                }
            }
        });
        if let Some(old) = self
            .memory_watches
            .lock()
            .unwrap()
            .insert(id.to_string(), task.abort_handle())
        {
            old.abort();
        }
    }

    fn stop_memory_watch(&self, id: &str) {
        if let Some(w) = self.memory_watches.lock().unwrap().remove(id) {
            w.abort();
        }
    }

    /// Lets a sandbox pinned by its cgroup alone use every CPU while its
    /// memory image is written: such a sentry (`GOMAXPROCS=1`) writes it
    /// with one Go processor (256 MB: ~2 s against ~0.26 s). Returns the CPU
    /// it was pinned to, for [`Self::pin_again`]. A sandbox pinned by its
    /// affinity has two Go processors and stays (~0.25 s pinned).
    async fn unpin(&self, id: &str) -> Option<usize> {
        if self.pin_by_affinity {
            return None;
        }
        let pinned = self.live.lock().unwrap().get(id).and_then(|l| l.cpu);
        if pinned.is_some() {
            if let Err(e) = self.set_cpus(id, &placement::list(&self.cpus)).await {
                tracing::warn!(sandbox = id, "cannot unpin for a checkpoint: {e}");
            }
        }
        pinned
    }

    /// Pins a sandbox [`Self::unpin`] released to its CPU again.
    async fn pin_again(&self, id: &str, pinned: Option<usize>) {
        if let Some(cpu) = pinned {
            if let Err(e) = self.set_cpus(id, &cpu.to_string()).await {
                tracing::warn!(sandbox = id, "cannot pin again after a checkpoint: {e}");
            }
        }
    }

    /// Sets the host CPUs sandbox `id` runs on (a cpuset list); a no-op
    /// where sandboxes are not pinned.
    async fn set_cpus(&self, id: &str, cpus: &str) -> std::io::Result<()> {
        match self.cgroups.cpus_file(&self.runtime.cgroup_name(id)) {
            Some(f) if f.exists() => tokio::fs::write(f, cpus).await,
            _ => Ok(()),
        }
    }

    /// Where a snapshot's files live on this host.
    pub fn snapshot_dir(&self, snapshot_id: &str) -> PathBuf {
        self.data_dir.join("snapshots").join(snapshot_id)
    }

    /// Captures a running sandbox as snapshot `snapshot_id`: its writable
    /// layer and, with `memory`, its memory and processes, at one instant
    /// (the sandbox is paused meanwhile). The sandbox runs on afterwards,
    /// also when the capture fails; a failed capture leaves nothing.
    pub async fn capture(
        &self,
        id: &str,
        snapshot_id: &str,
        memory: bool,
    ) -> Result<Captured, Error> {
        if self.agent_addr(id).is_none() {
            return Err(Error::NotRunning(id.into()));
        }
        let parent = read_meta(&self.sandbox_dir(id))
            .await
            .and_then(|m| m.spec)
            .and_then(|s| s.layer);
        let dir = self.snapshot_dir(snapshot_id);
        let tmp = self
            .data_dir
            .join("snapshots")
            .join(format!(".tmp-{snapshot_id}"));
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        let layer = Layer::new(self.sandbox_dir(id));
        // Named after the snapshot: a crash leaves it for recovery to find.
        let cow = layer.can_snapshot().then_some(snapshot_id);
        let result = async {
            tokio::fs::create_dir_all(&tmp).await?;
            let pause_ms = self.capture_into(id, &tmp, memory, &layer, cow).await?;
            let upper = tmp.join("upper");
            if let Some(name) = cow {
                // The sandbox runs again: the layer is copied out of the
                // volume's snapshot now (which goes below, however it ends).
                snapshot::copy_tree(&layer.captured_upper(name), &upper).await?;
            }
            if memory {
                let slot = self
                    .live
                    .lock()
                    .unwrap()
                    .get(id)
                    .map(|l| l.slot)
                    .ok_or_else(|| Error::NotRunning(id.into()))?;
                let meta = read_meta(&self.sandbox_dir(id)).await;
                write_addresses(&tmp.join("checkpoint"), slot, meta.as_ref()).await?;
            }
            let layer = tmp.join("layer");
            merge_layer(parent.as_deref(), &upper, &layer).await?;
            let (l, c) = (layer.clone(), tmp.join("checkpoint"));
            let (layer_bytes, checkpoint_bytes) = tokio::task::spawn_blocking(move || {
                (snapshot::tree_bytes(&l), snapshot::tree_bytes(&c))
            })
            .await
            .expect("size task");
            tokio::fs::rename(&tmp, &dir).await?;
            Ok(Captured {
                dir: dir.clone(),
                pause_ms,
                layer_bytes,
                checkpoint_bytes,
            })
        }
        .await;
        if let Some(name) = cow {
            layer.drop_snapshot(name).await;
        }
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
        }
        result
    }

    /// Pauses the sandbox and saves its memory and processes into `tmp`,
    /// leaving it paused; a save that fails leaves it running and is tried
    /// again, up to three times. (A checkpoint without `leave_running` that
    /// fails stops the sandbox: its processes would be lost.) runsc
    /// 20240729's save panics on a TCP connection caught mid-handshake
    /// (`resetConnectionLocked` on an endpoint without a sender): the
    /// sandbox runs a while between tries, longer than TCP's first
    /// retransmission (1 s), so that the handshake completes.
    /// `beside` runs beside the first checkpoint, once the sandbox is
    /// paused; its output, if it ran, comes with the outcome.
    async fn save_paused<T>(
        &self,
        id: &str,
        tmp: &Path,
        beside: impl std::future::Future<Output = T>,
    ) -> (Result<(), Error>, Option<T>) {
        let mut beside = Some(beside);
        let mut made = None;
        let mut tries = 0;
        loop {
            tries += 1;
            let _ = tokio::fs::remove_dir_all(tmp).await;
            // Made before the pause (see `capture_into`).
            if let Err(e) = tokio::fs::create_dir_all(tmp).await {
                return (Err(e.into()), made);
            }
            if let Err(e) = self.runtime.pause(id).await {
                return (Err(e.into()), made);
            }
            let checkpoint = self.runtime.checkpoint(id, tmp, true);
            let saved = match beside.take() {
                Some(beside) => {
                    let (saved, out) = tokio::join!(checkpoint, beside);
                    made = Some(out);
                    saved
                }
                None => checkpoint.await,
            };
            let Err(e) = saved else {
                return (Ok(()), made);
            };
            let _ = tokio::fs::remove_dir_all(tmp).await;
            tracing::warn!(sandbox = id, tries, "checkpoint failed: {e}");
            let resumed = self.resume_paused(id).await;
            if resumed.is_err() || tries == 3 || !self.is_alive(id) {
                return (Err(e.into()), made);
            }
            tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        }
    }

    /// Resumes a sandbox the runtime paused, trying twice.
    async fn resume_paused(&self, id: &str) -> Result<(), Error> {
        if self.runtime.resume(id).await.is_ok() {
            return Ok(());
        }
        Ok(self.runtime.resume(id).await?)
    }

    /// Flushes what the sandbox's kernel still caches to its writable layer:
    /// asks the agent (~2 ms), or where it does not answer (busy, or older
    /// than its `/sync`) runs the agent's `--sync` through the runtime
    /// (~100 ms, whatever state the agent is in).
    async fn sync(&self, id: &str) -> Result<(), Error> {
        if let Some(addr) = self.agent_addr(id) {
            let limit = std::time::Duration::from_secs(60);
            let answer = agent_http::request(addr, "POST", "/api/v1/sync", limit).await;
            if answer.is_some_and(|a| a.status == 204) {
                return Ok(());
            }
        }
        let agent = format!("{AGENT_MOUNT}/{AGENT_NAME}");
        self.runtime
            .exec(id, &[agent, "--sync".into()])
            .await
            .map(drop)
            .map_err(Error::from)
    }

    /// Stops the sandbox, captures its upper dir and, with `memory`, its
    /// memory and processes into `tmp/checkpoint`, and lets it run again;
    /// returns how long it was stopped, in milliseconds.
    ///
    /// With `cow` (a btrfs volume) the upper dir is captured as the
    /// volume's read-only snapshot named after it, in constant time; the
    /// caller copies it out. Otherwise it is copied to `tmp/upper` while
    /// the sandbox is stopped.
    async fn capture_into(
        &self,
        id: &str,
        tmp: &Path,
        memory: bool,
        layer: &Layer,
        cow: Option<&str>,
    ) -> Result<u64, Error> {
        let _thawed = self.hold(id);
        // Data the sandbox's kernel still caches goes to the layer first,
        // and, for a snapshot of the volume, from the host's cache to the
        // volume, while the sandbox runs: the snapshot then has next to
        // nothing left to write.
        if let Err(e) = self.sync(id).await {
            tracing::warn!(sandbox = id, "sync before capture: {e}");
        }
        if cow.is_some() {
            if let Err(e) = layer.sync_volume().await {
                tracing::warn!(sandbox = id, "syncfs before capture: {e}");
            }
        }
        // Made while the sandbox runs: under writeback a new directory can
        // wait for the filesystem's journal.
        if memory {
            tokio::fs::create_dir_all(tmp.join("checkpoint")).await?;
        }
        // A sandbox pinned by a one-CPU cpuset may use every CPU while its
        // memory image is written (see `unpin`). It is pinned again however
        // the capture ends.
        let pinned = if memory { self.unpin(id).await } else { None };
        let captured = self.pause_and_capture(id, tmp, memory, layer, cow).await;
        self.pin_again(id, pinned).await;
        let pause_ms = captured?;
        tracing::info!(sandbox = id, pause_ms, memory, "captured");
        Ok(pause_ms)
    }

    /// The stopped part of [`Self::capture_into`]; returns its length in ms.
    ///
    /// A memory image needs the sandbox paused by the runtime (whose kernel
    /// then still answers the checkpoint). Files alone need only that
    /// nothing writes them: the cgroup freezer stops the sandbox in a few
    /// ms, where `runsc pause` and `resume` take ~25 ms each.
    async fn pause_and_capture(
        &self,
        id: &str,
        tmp: &Path,
        memory: bool,
        layer: &Layer,
        cow: Option<&str>,
    ) -> Result<u64, Error> {
        let freeze = !memory && self.cgroups.can_freeze();
        let cgroup = self.runtime.cgroup_name(id);
        let started = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
        if freeze {
            self.cgroups
                .freeze_and_wait(&cgroup, std::time::Duration::from_secs(10))
                .await?;
        } else {
            self.runtime.pause(id).await?;
        }
        let stop_ms = ms(started);
        // Both read a stopped sandbox, side by side: the pause is the
        // longer of the two.
        let files = async {
            let t = std::time::Instant::now();
            let r = match cow {
                Some(name) => {
                    let (l, n) = (layer.clone(), name.to_string());
                    tokio::task::spawn_blocking(move || l.snapshot_volume(&n))
                        .await
                        .expect("snapshot task")
                        .map_err(Error::from)
                }
                None => snapshot::copy_tree(&layer.upper(), &tmp.join("upper")).await,
            };
            (r, ms(t))
        };
        let image = async {
            let t = std::time::Instant::now();
            if memory {
                // A save that fails leaves the sandbox running (and paused):
                // tried once more, as a suspend's (see `save_paused`).
                let dir = tmp.join("checkpoint");
                if let Err(e) = self.runtime.checkpoint(id, &dir, true).await {
                    tracing::warn!(sandbox = id, "checkpoint failed, trying again: {e}");
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                    self.runtime.checkpoint(id, &dir, true).await?;
                }
            }
            Ok::<u64, Error>(ms(t))
        };
        let ((files, files_ms), image) = tokio::join!(files, image);
        let image_ms = image.as_ref().map_or(0, |t| *t);
        let captured = files.and(image.map(drop));
        let resuming = std::time::Instant::now();
        let resumed = if freeze {
            self.cgroups.set_frozen(&cgroup, false).map_err(Error::from)
        } else {
            self.resume_paused(id).await
        };
        let resume_ms = ms(resuming);
        let pause_ms = ms(started);
        tracing::debug!(
            sandbox = id,
            stop_ms,
            files_ms,
            image_ms,
            resume_ms,
            pause_ms,
            "capture pause"
        );
        captured?;
        resumed?;
        Ok(pause_ms)
    }

    /// After a crash: a sandbox the runtime may have left paused (see
    /// [`Runtime::may_be_paused`]) is resumed if its agent does not answer.
    /// Whether it runs.
    async fn settle_pause(&self, id: &str, meta: Option<&Meta>) -> bool {
        if !self.runtime.may_be_paused(id) {
            return true;
        }
        let Some(meta) = meta else { return false };
        let addr = SocketAddr::new(Slot(meta.slot).sandbox_ip().into(), AGENT_PORT);
        if wait_for_agent(addr, std::time::Duration::from_secs(3))
            .await
            .is_ok()
        {
            self.runtime.forget_pause(id).await;
            return true;
        }
        tracing::info!(
            sandbox = id,
            "left paused by a capture cut short: resuming it"
        );
        match self.runtime.resume(id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(sandbox = id, "cannot resume: {e}");
                false
            }
        }
    }

    /// Forgets a snapshot's files. A layer that sandboxes still run on (or
    /// are suspended on) stays until the last of them is gone.
    /// The snapshots this host holds files of, not yet deleted (names of
    /// their directories; what else is there, e.g. a temporary, is the
    /// caller's to filter out).
    pub fn local_snapshots(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.data_dir.join("snapshots")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.path().is_dir() && !e.path().join(DELETED_MARK).exists())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect()
    }

    pub async fn delete_snapshot(&self, snapshot_id: &str) {
        let dir = self.snapshot_dir(snapshot_id);
        if !dir.exists() {
            return;
        }
        let _ = tokio::fs::write(dir.join(DELETED_MARK), b"").await;
        self.release_layers().await;
    }

    /// Removes deleted snapshots' directories that no sandbox uses any more.
    async fn release_layers(&self) {
        let mut used = HashSet::new();
        if let Ok(mut rd) = tokio::fs::read_dir(self.data_dir.join("sandboxes")).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                if let Some(layer) = read_meta(&e.path())
                    .await
                    .and_then(|m| m.spec)
                    .and_then(|s| s.layer)
                {
                    used.insert(layer);
                }
            }
        }
        let Ok(mut rd) = tokio::fs::read_dir(self.data_dir.join("snapshots")).await else {
            return;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let dir = e.path();
            if dir.join(DELETED_MARK).exists() && !used.contains(&dir.join("layer")) {
                let _ = gently::remove(&dir).await;
            }
        }
    }

    /// Removes capture temporaries a crash left (at recovery only).
    async fn remove_capture_temporaries(&self) {
        let Ok(mut rd) = tokio::fs::read_dir(self.data_dir.join("snapshots")).await else {
            return;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = tokio::fs::remove_dir_all(e.path()).await;
            }
        }
    }

    /// Checkpoints a sandbox to disk and stops it: no process and no memory
    /// stay on the host; its disk and memory image stay in its directory.
    /// When the checkpoint fails the sandbox keeps running.
    pub async fn suspend(&self, id: &str) -> Result<u64, Error> {
        self.suspend_exporting(id, None).await
    }

    /// [`Self::suspend`], also writing the suspended sandbox's memory image
    /// and files to `export` (`layer/`, `checkpoint/`: a memory snapshot's
    /// layout) while nothing can change them, for the blob store. An export
    /// that fails leaves nothing there and the suspend as it is.
    pub async fn suspend_exporting(&self, id: &str, export: Option<&Path>) -> Result<u64, Error> {
        let slot = {
            let live = self.live.lock().unwrap();
            live.get(id)
                .ok_or_else(|| Error::NotRunning(id.into()))?
                .slot
        };
        let dir = self.sandbox_dir(id);
        let mut meta = read_meta(&dir)
            .await
            .filter(|m| m.spec.is_some())
            .ok_or_else(|| Error::Host {
                what: format!("suspend {id}"),
                reason: "the sandbox has no launch record (started by an older sbx)".into(),
            })?;
        let image = dir.join(SUSPEND_DIR);
        let tmp = dir.join(format!(".{SUSPEND_DIR}.tmp"));
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        let _ = tokio::fs::remove_dir_all(&image).await;
        let thawed = self.hold(id);
        let t0 = std::time::Instant::now();
        if let Err(e) = self.sync(id).await {
            tracing::warn!(sandbox = id, "sync before suspend: {e}");
        }
        let sync_ms = t0.elapsed().as_millis() as u64;
        // As for a capture; pinned again if the checkpoint fails.
        let pinned = self.unpin(id).await;
        let plan = match self.suspend_linger.is_zero() {
            true => None,
            false => self.standby_plan(&meta),
        };
        let standby = async {
            match plan {
                Some(plan) => plan.make(self.runtime.as_ref(), &self.cgroups, id).await,
                None => None,
            }
        };
        let started = std::time::Instant::now();
        let (saved, standby) = self.save_paused(id, &tmp, standby).await;
        let standby = standby.flatten();
        if let Err(e) = saved {
            if standby.is_some() {
                remove_standby(&self.cgroups, self.runtime.as_ref(), id).await;
            }
            self.pin_again(id, pinned).await;
            return Err(e);
        }
        let sentry = self.live.lock().unwrap().get(id).and_then(|l| l.pid);
        let recorded = async {
            write_addresses(&tmp, slot, &meta).await?;
            tokio::fs::rename(&tmp, &image).await?;
            meta.suspended = true;
            write_meta(&dir, &meta).await
        };
        if let Err(e) = recorded.await {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            let _ = tokio::fs::remove_dir_all(&image).await;
            if standby.is_some() {
                remove_standby(&self.cgroups, self.runtime.as_ref(), id).await;
            }
            let _ = self.runtime.resume(id).await;
            self.pin_again(id, pinned).await;
            return Err(e);
        }
        // Saved and recorded: it stops where the image was taken. Its
        // ending (every process killed, its memory released: ~50-100 ms of
        // CPU for 256 MB) yields to a resume that may start right away.
        let _ = self
            .cgroups
            .set_lowest_cpu_weight(&self.runtime.cgroup_name(id));
        if let Some(pid) = sentry {
            if let Err(e) = self.runtime.stop_saved(id, pid).await {
                tracing::warn!(sandbox = id, "stopping the suspended sandbox: {e}");
            }
        }
        self.dns.stop(id).await;
        if let Some(dest) = export {
            // Stopped, and its volume still mounted until the linger below.
            let parent = meta.spec.as_ref().and_then(|s| s.layer.clone());
            if let Err(e) = export_suspended(&image, &Layer::new(&dir), parent, dest).await {
                tracing::warn!(sandbox = id, "suspend export: {e}");
                let _ = tokio::fs::remove_dir_all(dest).await;
            }
        }
        self.stop_memory_watch(id);
        drop(thawed);
        self.idle.remove(id);
        self.live.lock().unwrap().remove(id);
        // The memory image and the disk are safe: the sandbox is suspended.
        // The old sentry's exit and `runsc delete` (~0.06 s) go on in the
        // background, while its volume, network and standby linger for a
        // quick resume (see `linger`), which need not wait for them: the
        // runtime restores beside what it deletes. A destroy waits for them.
        // Meanwhile the image is read back into the page cache for the
        // resume (see `warm`).
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(sandbox = id, sync_ms, checkpoint_ms = ms, "suspend");
        let warming = warm::into_page_cache(image.clone());
        self.warming.lock().unwrap().insert(id.to_string(), warming);
        let stop = self.lingering.begin(id, slot, standby);
        let (runtime, lingering, linger, cgroups) = (
            self.runtime.clone(),
            self.lingering.clone(),
            self.suspend_linger,
            self.cgroups.clone(),
        );
        let id = id.to_string();
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            // The checkpoint ends the sentry. `runsc delete` finding it
            // still exiting would wait another 100 ms (it polls at that
            // pace); the server reaps it (see `orphans`) within a few ms.
            if let Some(pid) = sentry {
                orphans::wait_gone(pid, std::time::Duration::from_secs(2)).await;
            }
            let gone_ms = t0.elapsed().as_millis() as u64;
            // Its container and cgroup only: a resume may already run.
            if let Err(e) = runtime.destroy_stopped(&id).await {
                tracing::warn!(sandbox = id, "runtime destroy after suspend: {e}");
            }
            tracing::debug!(
                sandbox = id,
                gone_ms,
                stopped_ms = t0.elapsed().as_millis() as u64,
                "suspend: old sandbox stopped"
            );
            let Some(turn) = lingering.stopped(&id, stop) else {
                return;
            };
            tokio::time::sleep(linger).await;
            if let Some((slot, busy)) = lingering.expire(&id, turn) {
                remove_standby(&cgroups, runtime.as_ref(), &id).await;
                release(&id, slot, &dir).await;
                lingering.finish(&id, busy);
            }
        });
        Ok(ms)
    }

    /// What the standby of sandbox `meta`, about to be suspended, is made
    /// of (see [`StandbyPlan`]): its launch, on a CPU of its own.
    fn standby_plan(&self, meta: &Meta) -> Option<StandbyPlan> {
        let spec = meta.spec.as_ref()?;
        let pin = self.pin_among(spec.cpus, &self.live.lock().unwrap());
        Some(StandbyPlan {
            runtime_spec: self.runtime_spec(spec, pin.clone()),
            pin,
        })
    }

    /// Restores a suspended sandbox under its id, on its lingering volume
    /// and network or with a new network slot. It does not wait for the
    /// old sandbox's removal (see `linger`). On failure it stays
    /// suspended, its disk and memory image intact.
    pub async fn resume(&self, id: &str) -> Result<SocketAddr, Error> {
        let t0 = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
        let (lingering, standby) = match self.lingering.take(id).await {
            Some((slot, standby)) => (Some(slot), standby),
            None => (None, None),
        };
        let teardown_ms = ms(t0);
        let dir = self.sandbox_dir(id);
        let image = dir.join(SUSPEND_DIR);
        let Some(meta) = read_meta(&dir)
            .await
            .filter(|m| m.suspended && image.is_dir())
        else {
            if let Some(slot) = lingering {
                remove_standby(&self.cgroups, self.runtime.as_ref(), id).await;
                release(id, slot, &dir).await;
            }
            return Err(Error::NotSuspended(id.into()));
        };
        let mut spec = meta.spec.clone().expect("suspended sandboxes have a spec");
        spec.checkpoint = Some(image.clone());
        spec.aliases = read_addresses(&image).await;
        let layer = Layer::new(&dir);
        let result = async {
            if !layer.is_mounted() {
                layer.mount_volume().await?;
                layer.drop_all_snapshots().await;
                layer.mount_overlay(&self.lowers(&spec)).await?;
            }
            // A lingering network has the firewall rules of the spec's
            // policy, and its slot's address is among the image's.
            let slot = match lingering {
                Some(slot) => {
                    self.live.lock().unwrap().insert(
                        id.to_string(),
                        Live {
                            slot,
                            pid: None,
                            cpu: standby.as_ref().and_then(|s| s.pin.as_ref().map(|p| p.cpu)),
                        },
                    );
                    slot
                }
                None => self.create_net(&spec).await?,
            };
            write_meta(
                &dir,
                &Meta {
                    slot: slot.0,
                    ..meta.clone()
                },
            )
            .await?;
            // Pinned from the start, not after: the sentry counts its CPUs
            // when it starts, and one that counted more than it then has
            // spins (see `sbx_runtime::pinning`); pinned only after its
            // restore, it also ran commands twice as slowly.
            let pin = match &standby {
                // Made where the standby runs.
                Some(s) => s.pin.clone(),
                None => self.place(id, spec.cpus),
            };
            let runtime_spec = self.runtime_spec(&spec, pin);
            if standby.is_some() {
                thaw_standby(&self.cgroups, self.runtime.as_ref(), id);
            }
            match lingering {
                Some(_) => {
                    net::reconfigure_sandbox_end(id, slot, &spec.aliases).await?;
                    if meta.egress_changed {
                        net::update_egress(slot, &spec.egress).await?;
                    }
                }
                None => net::configure(id, slot, &spec.egress, &spec.aliases).await?,
            }
            self.dns.guard(id, slot, &spec.egress).await?;
            let prepared_ms = ms(t0);
            // The image's read into the page cache goes on beside the
            // restore's: two streams read it sooner than one.
            let state = self.runtime.restore(&runtime_spec, &image).await?;
            let restored_ms = ms(t0);
            let addr = SocketAddr::new(slot.sandbox_ip().into(), AGENT_PORT);
            self.agent_ready(id, addr).await?;
            tracing::debug!(
                sandbox = id,
                teardown_ms,
                lingered = lingering.is_some(),
                standby = standby.is_some(),
                prepared_ms,
                restored_ms,
                ready_ms = ms(t0),
                "resume"
            );
            self.watch_memory(id, spec.memory_mb, true);
            self.idle.add(id, &self.runtime.cgroup_name(id));
            Ok::<_, Error>((slot, state.pid, addr))
        }
        .await;
        match result {
            Ok((slot, pid, addr)) => {
                write_meta(
                    &dir,
                    &Meta {
                        slot: slot.0,
                        suspended: false,
                        egress_changed: false,
                        ..meta
                    },
                )
                .await?;
                if let Some(l) = self.live.lock().unwrap().get_mut(id) {
                    l.pid = pid;
                }
                discard_in_background(&dir, &image).await;
                Ok(addr)
            }
            Err(e) => {
                self.stop_memory_watch(id);
                self.idle.remove(id);
                let slot = self.live.lock().unwrap().remove(id).map(|l| l.slot);
                // Also the old sandbox, if its removal is still under way.
                self.destroy_runtime(id).await;
                if let Some(slot) = slot {
                    net::destroy(id, slot).await;
                }
                layer.unmount().await;
                let _ = write_meta(&dir, &meta).await;
                Err(e)
            }
        }
    }

    /// Gives sandbox `id` a new egress policy at once, without a restart.
    /// Its launch record gets it (what a resume and a recovery read); a
    /// running sandbox's firewall gets it now (see [`net::update_egress`]),
    /// a suspended one's on resume. Nothing here of `id`: nothing to do.
    /// The caller keeps launches, suspends and resumes of `id` out meanwhile.
    pub async fn set_egress(&self, id: &str, egress: &net::Egress) -> Result<(), Error> {
        let dir = self.sandbox_dir(id);
        let Some(mut meta) = read_meta(&dir).await.filter(|m| m.spec.is_some()) else {
            return Ok(());
        };
        if let Some(spec) = meta.spec.as_mut() {
            spec.egress = egress.clone();
        }
        let live = self.live.lock().unwrap().get(id).map(|l| l.slot);
        let running = live.filter(|_| !meta.suspended);
        meta.egress_changed |= running.is_none();
        write_meta(&dir, &meta).await?;
        if let Some(slot) = running {
            net::update_egress(slot, egress).await?;
            self.dns.guard(id, slot, egress).await?;
            // Destroyed meanwhile (a failed health check): its chain goes too.
            if !self.live.lock().unwrap().contains_key(id) {
                net::remove_policy(slot).await;
            }
            tracing::info!(sandbox = id, "egress policy updated");
        }
        Ok(())
    }

    /// Stops reading sandbox `id`'s suspend image into the page cache.
    fn stop_warming(&self, id: &str) {
        if let Some(w) = self.warming.lock().unwrap().remove(id) {
            w.stop();
        }
    }

    /// Stops a sandbox and removes everything it had on the host. Idempotent.
    pub async fn destroy(&self, id: &str) -> Result<(), Error> {
        self.stop_warming(id);
        let lingering = self.lingering.take_stopped(id).await;
        let slot = self.live.lock().unwrap().get(id).map(|l| l.slot);
        let meta = read_meta(&self.sandbox_dir(id)).await;
        let suspended = meta.as_ref().is_some_and(|m| m.suspended);
        let slot = match slot.or(lingering) {
            Some(s) => Some(s),
            // A suspended sandbox holds no slot: its number may be another's now.
            None => meta.filter(|m| !m.suspended).map(|m| Slot(m.slot)),
        };
        match slot {
            Some(slot) => self.teardown(id, slot).await,
            // A suspended one released its network: a netns of its name is
            // another server's on this host (it resumed the sandbox there).
            None => self.teardown_without_slot(id, !suspended).await,
        }
        self.release_layers().await;
        Ok(())
    }

    /// Teardown of a sandbox whose network slot is unknown (no metadata):
    /// deleting its netns (with `netns`) removes the veth pair with it.
    async fn teardown_without_slot(&self, id: &str, netns: bool) {
        self.idle.remove(id);
        self.destroy_runtime(id).await;
        if netns {
            let _ = cmd::run("ip", &["netns", "del", &net::netns_name(id)]).await;
        }
        Layer::new(self.sandbox_dir(id)).destroy().await;
    }

    async fn teardown(&self, id: &str, slot: Slot) {
        // First: the proxy must no longer route to this address.
        self.live.lock().unwrap().remove(id);
        self.dns.stop(id).await;
        self.stop_memory_watch(id);
        self.idle.remove(id);
        self.destroy_runtime(id).await;
        let dir = self.sandbox_dir(id);
        release(id, slot, &dir).await;
        // The directory goes last: once it is gone, nothing of the sandbox
        // is left on the host (what callers and tests wait for).
        Layer::new(dir).destroy().await;
    }

    /// Destroys whatever of sandbox `id` the runtime runs or keeps (its
    /// standby thawed first), and its cgroups (runsc may leave some).
    async fn destroy_runtime(&self, id: &str) {
        thaw_standby(&self.cgroups, self.runtime.as_ref(), id);
        let cgroup = self.runtime.cgroup_name(id);
        if let Err(e) = self.runtime.destroy(id).await {
            tracing::warn!(sandbox = id, "runtime destroy: {e}");
        }
        self.cgroups.remove_sandbox(&cgroup).await;
        if cgroup != id {
            self.cgroups.remove_sandbox(id).await;
        }
    }

    /// Finishes the teardowns of suspended sandboxes and releases what
    /// lingers of them, removes the spare volumes and, when no sandbox is
    /// left in it, the cgroup parent (on shutdown; sandboxes keep running).
    pub async fn shutdown(&self) {
        for id in self.lingering.ids() {
            if let Some(slot) = self.lingering.take_stopped(&id).await {
                remove_standby(&self.cgroups, self.runtime.as_ref(), &id).await;
                release(&id, slot, &self.sandbox_dir(&id)).await;
            }
        }
        self.pool.drain().await;
        if self.cgroups.remove_if_empty() {
            tracing::info!(cgroup_parent = self.cgroups.name(), "cgroup parent removed");
        }
    }

    /// Whether the sandbox's runtime process still exists.
    pub fn is_alive(&self, id: &str) -> bool {
        let pid = self.live.lock().unwrap().get(id).and_then(|l| l.pid);
        match pid {
            Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
            None => true,
        }
    }

    /// Reconciles the host with the sandboxes the server still has
    /// (`keep`): suspended ones whose disk and memory image are intact stay
    /// suspended (whatever a crash mid-resume started is undone); running
    /// ones whose runtime sandbox, layer and network are all intact are
    /// adopted (resumed first when a crash mid-capture left them paused);
    /// everything else sbx left on this host is removed.
    pub async fn recover(&self, keep: &HashSet<String>) -> Result<Recovery, Error> {
        let mut report = Recovery::default();
        // Sandboxes left frozen (see `idle`) answer no runsc command.
        self.cgroups.thaw_all();
        self.remove_capture_temporaries().await;
        let states = self.runtime.list().await?;
        let running: HashMap<String, (String, Option<i32>)> = states
            .iter()
            .filter(|s| s.status == "running" || s.status == "paused")
            .map(|s| (s.id.clone(), (s.status.clone(), s.pid)))
            .collect();
        // Other sbx servers may share this host: only what this one's data
        // directory and runsc root name is ours.
        let netns: HashSet<String> = net::list_netns().await?.into_iter().collect();
        let mut dirs = Vec::new();
        if let Ok(mut rd) = tokio::fs::read_dir(self.data_dir.join("sandboxes")).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                if let Ok(name) = e.file_name().into_string() {
                    dirs.push(name);
                }
            }
        }
        let mut seen: HashSet<String> = HashSet::new();
        seen.extend(states.iter().map(|s| s.id.clone()));
        seen.extend(dirs.iter().cloned());
        let mut cgroups_in_use = HashSet::new();
        for id in seen {
            let dir = self.sandbox_dir(&id);
            sweep_discarded(&dir).await;
            let layer = Layer::new(&dir);
            let meta = read_meta(&dir).await;
            let suspended = meta.as_ref().is_some_and(|m| m.suspended)
                && dir.join(SUSPEND_DIR).is_dir()
                && layer.image_file().exists();
            if keep.contains(&id) && suspended {
                self.destroy_runtime(&id).await;
                let _ = cmd::run("ip", &["netns", "del", &net::netns_name(&id)]).await;
                layer.unmount().await;
                report.suspended.push(id);
                continue;
            }
            let intact = keep.contains(&id)
                && running.contains_key(&id)
                && netns.contains(&id)
                && layer::mounts_below(&dir).contains(&layer.rootfs())
                && meta.is_some();
            let resumed = intact
                && (running[&id].0 != "paused" || self.runtime.resume(&id).await.is_ok())
                && self.settle_pause(&id, meta.as_ref()).await;
            if intact && resumed {
                let meta = meta.expect("checked");
                {
                    let mut next = self.next_slot.lock().unwrap();
                    *next = (*next).max(meta.slot + 1) % net::MAX_SLOTS;
                }
                self.live.lock().unwrap().insert(
                    id.clone(),
                    Live {
                        slot: Slot(meta.slot),
                        pid: running[&id].1,
                        cpu: None,
                    },
                );
                // What a crash left of its earlier runs (one a suspend
                // stopped before a resume started this one).
                if let Err(e) = self.runtime.destroy_stopped(&id).await {
                    tracing::warn!(sandbox = id, "runtime destroy of earlier runs: {e}");
                }
                let cgroup = self.runtime.cgroup_name(&id);
                self.idle.add(&id, &cgroup);
                cgroups_in_use.insert(cgroup);
                if let Some(spec) = &meta.spec {
                    self.watch_memory(&id, spec.memory_mb, true);
                    // Its guard went with the server that ran it.
                    if let Err(e) = self.dns.guard(&id, Slot(meta.slot), &spec.egress).await {
                        tracing::warn!(sandbox = id, "DNS guard: {e}");
                    }
                }
                // Snapshots of its volume a capture cut short left.
                layer.drop_all_snapshots().await;
                report.adopted.push(id);
            } else {
                match meta.filter(|m| !m.suspended) {
                    Some(m) => self.teardown(&id, Slot(m.slot)).await,
                    // A netns of a suspended sandbox's name that a process
                    // is in belongs to another server on this host.
                    None => {
                        let ours = net::netns_unused(&id).await;
                        self.teardown_without_slot(&id, ours).await
                    }
                }
                report.cleaned.push(id);
            }
        }
        // Cgroups of runs no record names any more (a crash while runsc
        // made one, or before it removed one).
        let killed = self
            .cgroups
            .kill_unused(&cgroups_in_use, std::time::Duration::from_secs(10))
            .await;
        if killed > 0 {
            tracing::info!(
                killed,
                "recovery: killed processes of unused sandbox cgroups"
            );
        }
        let removed = self.cgroups.remove_unused(&cgroups_in_use);
        if !removed.is_empty() {
            tracing::info!(?removed, "recovery: removed unused sandbox cgroups");
        }
        self.release_layers().await;
        Ok(report)
    }
}

/// A sandbox's whole layer in `layer`: its `parent` (the layer of the
/// snapshot it was restored from) with its own `upper` dir applied; `upper`
/// is consumed.
async fn merge_layer(parent: Option<&Path>, upper: &Path, layer: &Path) -> Result<(), Error> {
    match parent {
        Some(parent) => {
            snapshot::link_tree(parent, layer).await?;
            let (u, l) = (upper.to_path_buf(), layer.to_path_buf());
            tokio::task::spawn_blocking(move || snapshot::apply_upper(&u, &l))
                .await
                .expect("apply task")?;
            tokio::fs::remove_dir_all(upper).await?;
        }
        None => tokio::fs::rename(upper, layer).await?,
    }
    Ok(())
}

/// Writes a suspended sandbox's memory `image` and files (its `parent`
/// layer with the upper dir of `layer` applied) to `dest` as a memory
/// snapshot's `checkpoint/` and `layer/`.
async fn export_suspended(
    image: &Path,
    layer: &Layer,
    parent: Option<PathBuf>,
    dest: &Path,
) -> Result<(), Error> {
    let _ = tokio::fs::remove_dir_all(dest).await;
    tokio::fs::create_dir_all(dest).await?;
    snapshot::link_tree(image, &dest.join("checkpoint")).await?;
    let upper = dest.join("upper");
    snapshot::copy_tree(&layer.upper(), &upper).await?;
    merge_layer(parent.as_deref(), &upper, &dest.join("layer")).await
}

/// Releases what a stopped sandbox kept on the host besides its files:
/// its network on `slot` and its volume's mounts (in directory `dir`).
async fn release(id: &str, slot: Slot, dir: &Path) {
    let layer = Layer::new(dir);
    tokio::join!(net::destroy(id, slot), layer.unmount());
}

/// Puts the agent binary at `dest`, by copy then rename: sandboxes that run
/// keep the binary they booted with. An identical binary is left in place:
/// gVisor cannot checkpoint a sandbox whose agent file was replaced under
/// it (a deleted file it maps), so a restart of the server must not.
async fn install_agent(src: &Path, dest: &Path) -> Result<(), Error> {
    let host_err = |e: std::io::Error| Error::Host {
        what: format!("agent binary {}", src.display()),
        reason: e.to_string(),
    };
    let new = tokio::fs::read(src).await.map_err(host_err)?;
    if tokio::fs::read(dest).await.is_ok_and(|old| old == new) {
        return Ok(());
    }
    let tmp = dest.with_extension("tmp");
    tokio::fs::write(&tmp, &new).await.map_err(host_err)?;
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    tokio::fs::set_permissions(&tmp, mode).await?;
    tokio::fs::rename(&tmp, dest).await?;
    Ok(())
}

/// The cgroup limit sits above the user's memory so that the agent's
/// per-process OOM handling acts first; the cgroup is the backstop that
/// kills the whole sandbox.
pub fn hard_memory_limit_mb(memory_mb: u64) -> u64 {
    memory_mb + (memory_mb / 4).max(256)
}

/// Beside a checkpoint: the addresses its memory image had.
const ADDRESSES: &str = "sbx-addresses.json";

async fn write_addresses(
    checkpoint: &Path,
    slot: Slot,
    meta: impl Into<Option<&Meta>>,
) -> Result<(), Error> {
    let mut all = vec![slot.sandbox_ip()];
    if let Some(spec) = meta.into().and_then(|m| m.spec.as_ref()) {
        all.extend(spec.aliases.iter().copied());
    }
    all.sort();
    all.dedup();
    tokio::fs::write(
        checkpoint.join(ADDRESSES),
        serde_json::to_vec(&all).expect("json"),
    )
    .await?;
    Ok(())
}

async fn read_addresses(checkpoint: &Path) -> Vec<Ipv4Addr> {
    match tokio::fs::read(checkpoint.join(ADDRESSES)).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Renames `path` (a directory in `dir`) out of the way and deletes it in
/// the background; deletes it at once if it cannot be renamed.
async fn discard_in_background(dir: &Path, path: &Path) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let trash = dir.join(format!("{SUSPEND_TRASH_PREFIX}{nanos}"));
    match tokio::fs::rename(path, &trash).await {
        Ok(()) => {
            tokio::spawn(async move {
                let _ = gently::remove(trash).await;
            });
        }
        Err(_) => {
            let _ = gently::remove(path).await;
        }
    }
}

/// Deletes what [`discard_in_background`] left in `dir` when the server
/// stopped before it was done.
async fn sweep_discarded(dir: &Path) {
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        if e.file_name()
            .to_string_lossy()
            .starts_with(SUSPEND_TRASH_PREFIX)
        {
            let _ = gently::remove(e.path()).await;
        }
    }
}

async fn write_meta(dir: &Path, meta: &Meta) -> Result<(), Error> {
    let tmp = dir.join(".meta.json.tmp");
    tokio::fs::write(&tmp, serde_json::to_vec(meta).expect("json")).await?;
    tokio::fs::rename(&tmp, dir.join("meta.json")).await?;
    Ok(())
}

async fn read_meta(dir: &Path) -> Option<Meta> {
    let bytes = tokio::fs::read(dir.join("meta.json")).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Where distributions keep the system's CA bundle (Debian/Ubuntu/Alpine,
/// Fedora/RHEL, openSUSE, others).
const HOST_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The host's CA bundle: what the host's own TLS clients trust (a
/// TLS-inspecting proxy's CA included, where the host trusts one).
pub fn host_ca_bundle() -> Option<PathBuf> {
    HOST_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0))
}

/// Puts the CA bundle for sandboxes into the agent's directory (copy, then
/// rename), or removes one an earlier start put there.
async fn install_ca_bundle(agent_dir: &Path, bundle: Option<&Path>) -> Result<(), Error> {
    let target = agent_dir.join(CA_NAME);
    let Some(bundle) = bundle else {
        let _ = tokio::fs::remove_file(&target).await;
        return Ok(());
    };
    let tmp = agent_dir.join(format!(".{CA_NAME}.tmp"));
    tokio::fs::copy(bundle, &tmp)
        .await
        .map_err(|e| Error::Host {
            what: format!("CA bundle {}", bundle.display()),
            reason: e.to_string(),
        })?;
    tokio::fs::rename(&tmp, &target).await?;
    Ok(())
}

/// `work`'s outcome and how long it took, in milliseconds.
async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, u64) {
    let t = std::time::Instant::now();
    let out = work.await;
    (out, t.elapsed().as_millis() as u64)
}

/// Polls the agent's health route until it answers 200.
async fn wait_for_agent(addr: SocketAddr, limit: std::time::Duration) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let answer = agent_http::request(
            addr,
            "GET",
            "/api/v1/health",
            std::time::Duration::from_millis(500),
        )
        .await;
        let last = match answer {
            Some(a) if a.status == 200 => return Ok(()),
            Some(a) => format!("agent answered {}", a.status),
            None => "no answer".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::AgentTimeout(format!("{addr}: {last}")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// The sandbox address range, for callers that must recognise it.
pub fn sandbox_ip(slot: u32) -> Ipv4Addr {
    Slot(slot).sandbox_ip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_discarded_image_goes_at_once_and_leftovers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join(SUSPEND_DIR);
        std::fs::create_dir(&image).unwrap();
        std::fs::write(image.join("pages.img"), vec![1u8; 1 << 20]).unwrap();
        discard_in_background(dir.path(), &image).await;
        assert!(!image.exists());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let left = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name() != "meta.json")
                .count()
        };
        while left() > 0 {
            assert!(std::time::Instant::now() < deadline, "the trash stays");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // What a stopped server left behind is swept; the rest stays.
        let trash = dir.path().join(format!("{SUSPEND_TRASH_PREFIX}123"));
        std::fs::create_dir(&trash).unwrap();
        std::fs::write(trash.join("pages.img"), b"x").unwrap();
        std::fs::write(dir.path().join("meta.json"), b"{}").unwrap();
        sweep_discarded(dir.path()).await;
        assert!(!trash.exists());
        assert!(dir.path().join("meta.json").exists());
    }

    #[test]
    fn a_launch_spec_keeps_its_policy_and_reads_older_metadata() {
        let old = r#"{"id":"sbx1","image":"default","cpus":1.0,"memory_mb":1024,
            "disk_mb":10240,"entrypoint":[],"allow_internet":false}"#;
        let spec: LaunchSpec = serde_json::from_str(old).unwrap();
        assert!(!spec.egress.allow_internet);
        assert!(spec.egress.deny_out.is_empty());
        let mut spec = spec;
        spec.egress.deny_out = vec!["198.18.0.0/15".parse().unwrap()];
        let again: LaunchSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again.egress, spec.egress);
        spec.secrets = SecretEnv::new(vec![("TOKEN".into(), "hunter2".into())]);
        let json = serde_json::to_string(&spec).unwrap();
        assert!(
            !json.contains("hunter2") && !json.contains("TOKEN"),
            "{json}"
        );
        assert!(!format!("{spec:?}").contains("hunter2"));
    }
}
