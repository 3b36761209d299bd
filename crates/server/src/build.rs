//! `POST /images/build`: an image from a Dockerfile and its context (the
//! request body, a tar). Each `RUN` runs in a builder sandbox — gVisor, the
//! default network policy, like any sandbox — booted from the stage's base
//! image and the layer so far; its files are captured as the next layer
//! (see `sbx_executor::build_fs`). `COPY`/`ADD` write the next layer on the
//! host. Each step's layer is cached under a key of the layer before it,
//! the step (with its environment) and the content of the files it copies:
//! an unchanged Dockerfile rebuilds from the cache, a changed step reruns
//! from there. The answer is NDJSON progress ([`BuildEvent`]) after the
//! Dockerfile is read; a Dockerfile error is a 400 naming its line.

use crate::api::ApiState;
use crate::error::{ApiError, ApiResult};
use crate::images::{check_name, info, stream_events};
use crate::lifecycle::{random_hex, Manager, DEFAULT_DISK_MB};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use futures::StreamExt;
use sbx_api::daemon::{ProcessUser, RunEvent, RunRequest};
use sbx_api::image::BuildEvent;
use sbx_build::{Action, Base, Plan, Step};
use sbx_executor::build_fs::{self, CopySpec};
use sbx_executor::custom_images::ImageRecord;
use sbx_executor::LaunchSpec;
use sbx_image::{Credentials, ImageConfig, Source};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// The Dockerfile `sbx image build` puts into the context it sends.
const DOCKERFILE_IN_CONTEXT: &str = ".sbx-dockerfile";

struct BuildQuery {
    name: String,
    dockerfile: String,
    no_cache: bool,
    insecure: bool,
    args: BTreeMap<String, String>,
}

fn parse_query(raw: Option<&str>) -> ApiResult<BuildQuery> {
    let mut q = BuildQuery {
        name: String::new(),
        dockerfile: DOCKERFILE_IN_CONTEXT.into(),
        no_cache: false,
        insecure: false,
        args: BTreeMap::new(),
    };
    let flag = |v: &str| matches!(v, "1" | "true" | "yes");
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "name" => q.name = v.into_owned(),
            "dockerfile" => q.dockerfile = v.into_owned(),
            "no_cache" => q.no_cache = flag(&v),
            "insecure" => q.insecure = flag(&v),
            "build_arg" => {
                let (key, value) = v.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(format!("build_arg {v:?} is not KEY=VALUE"))
                })?;
                q.args.insert(key.to_string(), value.to_string());
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    if q.name.is_empty() {
        return Err(ApiError::bad_request("name is required (?name=…)"));
    }
    Ok(q)
}

pub async fn build(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let q = parse_query(raw.as_deref())?;
    let manager = state.manager.clone();
    if !manager.runs_sandboxes() {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no_executors_available",
            "image builds run in builder sandboxes and this server runs none \
             (--no-local-node): send the build to a node's API (sbx --api-url http://NODE:8900 image build …)",
        ));
    }
    check_name(&manager, &q.name)?;
    let work = Work::new(&manager.host().build_cache_dir()).await?;
    let (context, plan) = match prepare(&manager, &q, &work, body).await {
        Ok(p) => p,
        Err(e) => {
            work.remove().await;
            return Err(e);
        }
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BuildEvent>();
    tracing::info!(
        image = q.name,
        stages = plan.stages.len(),
        "image build started"
    );
    let (m, m2) = (manager.clone(), manager.clone());
    manager.tasks.spawn(async move {
        let builder = Builder {
            manager: m,
            tx: tx.clone(),
            context,
            work: &work,
            no_cache: q.no_cache,
            insecure: q.insecure,
        };
        // A committed image is stored in the blob store by the catalog
        // (`images::StoreCatalog`).
        let event = match builder.run(&plan, &q.name).await {
            Ok((image, _)) => {
                tracing::info!(image = q.name, id = image.id, "image built");
                BuildEvent::Done {
                    image: Box::new(image),
                }
            }
            Err(message) => {
                tracing::warn!(image = q.name, "image build failed: {message}");
                BuildEvent::Error { message }
            }
        };
        // Its scratch directory is gone before the client hears the end.
        drop(builder);
        work.remove().await;
        let _ = tx.send(event);
        drop(tx);
        prune(&m2.host().build_cache_dir(), CACHE_BYTES).await;
    });
    Ok(stream_events(rx))
}

/// Receives the context and reads the Dockerfile into a plan; checks its
/// base images exist or can be pulled.
async fn prepare(
    manager: &Arc<Manager>,
    q: &BuildQuery,
    work: &Work,
    body: Body,
) -> ApiResult<(PathBuf, Plan)> {
    // The context, kept inside its directory whatever its paths say.
    let upload = work.dir.join("context.tar");
    crate::images::receive(body, &upload, None).await?;
    let context = work.dir.join("context");
    let (u, c) = (upload.clone(), context.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&c)?;
        let f = std::fs::File::open(&u)?;
        sbx_image::unpack::apply_layer(&c, std::io::BufReader::new(f), sbx_image::Compression::None)
            .map(drop)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await
    .expect("unpack task")
    .map_err(|e| ApiError::bad_request(format!("the context is not a readable tar file: {e}")))?;
    let _ = tokio::fs::remove_file(&upload).await;
    let dockerfile = sbx_image::unpack::resolve(&context, Path::new(&q.dockerfile))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let text = tokio::fs::read_to_string(&dockerfile)
        .await
        .map_err(|e| ApiError::bad_request(format!("Dockerfile {}: {e}", q.dockerfile)))?;
    if q.dockerfile == DOCKERFILE_IN_CONTEXT {
        let _ = tokio::fs::remove_file(&dockerfile).await;
    }
    let plan = sbx_build::plan(&text, &q.args).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for stage in &plan.stages {
        if let Base::Image(name) = &stage.base {
            if manager.resolve_image(name).await?.is_none() && !names_registry(name) {
                return Err(ApiError::bad_request(format!(
                    "Dockerfile line {}: unknown image {name:?}; images: {}; to pull one from a \
                     registry, name its host (docker.io/library/{name})",
                    stage.line,
                    manager.known_images().await?.join(", ")
                )));
            }
        }
    }
    Ok((context, plan))
}

/// A build's scratch directory (the context, flattened stages), removed
/// when the build ends; the next start sweeps one a crash left.
struct Work {
    dir: PathBuf,
}

impl Work {
    async fn new(cache: &Path) -> ApiResult<Work> {
        let dir = cache.join(format!(".work-{}", random_hex(12)));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ApiError::internal(format!("build directory: {e}")))?;
        Ok(Work { dir })
    }

    async fn remove(&self) {
        let _ = sbx_executor::gently::remove(&self.dir).await;
    }
}

/// Whether a `FROM` names a registry host (`HOST[:PORT]/REPO…`): only
/// those are pulled; a bare name is an sbx image.
fn names_registry(name: &str) -> bool {
    name.split_once('/').is_some_and(|(host, _)| {
        (host.contains('.') || host.contains(':') || host == "localhost")
            && Source::parse(name).is_ok()
    })
}

/// The build cache is pruned down to this many bytes of layers after a build.
const CACHE_BYTES: u64 = 20 << 30;
/// Layers used this recently stay (a build may be booting on them).
const CACHE_KEEP_RECENT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes the least recently used step layers until the cache holds at
/// most `limit` bytes (layers share files by hard links: each is counted
/// whole, so the cache may hold less).
async fn prune(cache: &Path, limit: u64) {
    let cache = cache.to_path_buf();
    let doomed = tokio::task::spawn_blocking(move || {
        let Ok(rd) = std::fs::read_dir(&cache) else {
            return Vec::new();
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let used = e.metadata().ok()?.modified().ok()?;
                let bytes = sbx_executor::snapshot::tree_bytes(&e.path());
                Some((used, bytes, e.path()))
            })
            .collect();
        entries.sort();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        let recent = std::time::SystemTime::now() - CACHE_KEEP_RECENT;
        let mut doomed = Vec::new();
        for (used, bytes, path) in entries {
            if total <= limit || used > recent {
                break;
            }
            total -= bytes;
            doomed.push(path);
        }
        doomed
    })
    .await
    .unwrap_or_default();
    for dir in doomed {
        tracing::info!(layer = %dir.display(), "build cache: least recently used layer removed");
        let _ = sbx_executor::gently::remove(&dir).await;
    }
}

/// Marks a cached layer used now (the cache is pruned least recently used first).
fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the scratch directories of builds a stopped server left (at start).
pub async fn sweep(cache: &Path) {
    let Ok(mut rd) = tokio::fs::read_dir(cache).await else {
        return;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        if e.file_name().to_string_lossy().starts_with(".work-") {
            let _ = sbx_executor::gently::remove(&e.path()).await;
        }
    }
}

/// Where a stage stands: its base image, its layer, and the cache key of
/// that state.
#[derive(Clone)]
struct StageState {
    base: Option<String>,
    layer: Option<PathBuf>,
    key: String,
    config: ImageConfig,
}

struct Builder<'w> {
    manager: Arc<Manager>,
    tx: UnboundedSender<BuildEvent>,
    context: PathBuf,
    work: &'w Work,
    no_cache: bool,
    insecure: bool,
}

impl Builder<'_> {
    fn emit(&self, e: BuildEvent) {
        let _ = self.tx.send(e);
    }

    async fn run(
        &self,
        plan: &Plan,
        name: &str,
    ) -> Result<(sbx_api::image::ImageInfo, ImageRecord), String> {
        for w in &plan.warnings {
            self.emit(BuildEvent::Warning {
                line: w.line,
                message: w.message.clone(),
            });
        }
        let mut done: Vec<StageState> = Vec::new();
        let stages = plan.stages.len();
        for (si, stage) in plan.stages.iter().enumerate() {
            let mut state = match &stage.base {
                Base::Scratch => StageState {
                    base: None,
                    layer: None,
                    key: "scratch".into(),
                    config: ImageConfig::default(),
                },
                Base::Stage(i) => done[*i].clone(),
                Base::Image(image) => {
                    let id = self.base_image(image).await?;
                    StageState {
                        config: self.manager.images().config(&id),
                        key: format!("image:{id}"),
                        base: Some(id),
                        layer: None,
                    }
                }
            };
            let steps = stage.steps.len();
            for (n, step) in stage.steps.iter().enumerate() {
                self.emit(BuildEvent::Step {
                    stage: si + 1,
                    stages,
                    step: n + 1,
                    steps,
                    line: step.line,
                    text: step.text.clone(),
                });
                let started = std::time::Instant::now();
                let bytes = self
                    .step(&mut state, step, &done)
                    .await
                    .map_err(|e| format!("Dockerfile line {} ({}): {e}", step.line, step.text))?;
                self.emit(BuildEvent::StepDone {
                    ms: started.elapsed().as_millis() as u64,
                    bytes,
                });
            }
            state.config = merged(&state.config, &stage.config);
            done.push(state);
        }
        let last = done.last().expect("a plan has a stage");
        let images = self.manager.images();
        let image = images.custom().begin().await.map_err(|e| e.to_string())?;
        let base = last.base.as_ref().map(|id| images.rootfs(id));
        if let Err(e) =
            build_fs::flatten(base.as_deref(), last.layer.as_deref(), &image.rootfs()).await
        {
            image.abandon().await;
            return Err(format!("the image's files: {e}"));
        }
        let steps = plan.stages.iter().map(|s| s.steps.len()).sum();
        let record = image
            .commit(name, "build", None, last.config.clone(), steps)
            .await
            .map_err(|e| e.to_string())?;
        Ok((info(&record), record))
    }

    /// The id of base image `name`: an sbx image, or a registry reference
    /// imported now (under its repository's name).
    async fn base_image(&self, name: &str) -> Result<String, String> {
        let images = self.manager.images();
        // An image made on another host is brought here first.
        if let Some(id) = self
            .manager
            .resolve_image(name)
            .await
            .map_err(|e| e.to_string())?
        {
            self.manager.ensure_image(&id).await?;
            return Ok(id);
        }
        if !names_registry(name) {
            return Err(format!("unknown image {name:?}"));
        }
        let source = Source::parse(name).map_err(|e| e.to_string())?;
        let Source::Registry(reference) = &source else {
            return Err(format!(
                "FROM {name}: not an image name or registry reference"
            ));
        };
        let local = crate::images::default_name(reference);
        self.emit(BuildEvent::Output {
            line: format!("importing {reference} as {local}"),
        });
        let record = images
            .custom()
            .import(
                &local,
                &source,
                &Credentials::default(),
                self.insecure,
                &|_| {},
            )
            .await
            .map_err(|e| format!("FROM {name}: {e}"))?;
        Ok(record.id)
    }

    /// Runs one step (or takes it from the cache); the bytes it added.
    async fn step(
        &self,
        state: &mut StageState,
        step: &Step,
        done: &[StageState],
    ) -> Result<u64, String> {
        match &step.action {
            Action::Config => Ok(0),
            Action::Run { argv } => {
                if let Some(dir) = &step.working_dir {
                    self.ensure_dir(state, dir).await?;
                }
                let key = cache_key(&state.key, step, "");
                if let Some(layer) = self.cached(&key) {
                    state.key = key;
                    state.layer = Some(layer);
                    return Ok(0);
                }
                let base = state
                    .base
                    .clone()
                    .ok_or("RUN needs an image to run in (FROM scratch has none)")?;
                let (layer, layer_bytes) = self
                    .run_in_sandbox(&base, state.layer.as_deref(), step, argv)
                    .await?;
                let before = match state.layer.clone() {
                    Some(l) => {
                        tokio::task::spawn_blocking(move || sbx_executor::snapshot::tree_bytes(&l))
                            .await
                            .unwrap_or(0)
                    }
                    None => 0,
                };
                let layer = self.keep(&key, &layer).await?;
                state.key = key;
                state.layer = Some(layer);
                Ok(layer_bytes.saturating_sub(before))
            }
            Action::Copy {
                sources,
                dest,
                from,
                chown,
                chmod,
                add,
            } => {
                let root = match from {
                    None => self.context.clone(),
                    Some(Base::Stage(i)) => self.flattened(*i, &done[*i]).await?,
                    Some(Base::Image(name)) => {
                        let id = self.base_image(name).await?;
                        self.manager.images().rootfs(&id)
                    }
                    Some(Base::Scratch) => return Err("COPY --from=scratch copies nothing".into()),
                };
                let (r, srcs) = (root.clone(), sources.clone());
                let matched = tokio::task::spawn_blocking(move || match_sources(&r, &srcs))
                    .await
                    .expect("match task")?;
                let content = tokio::task::spawn_blocking({
                    let (r, m) = (root.clone(), matched.clone());
                    move || content_hash(&r, &m)
                })
                .await
                .expect("hash task");
                let key = cache_key(&state.key, step, &content);
                if let Some(layer) = self.cached(&key) {
                    state.key = key;
                    state.layer = Some(layer);
                    return Ok(0);
                }
                let dest = absolute(dest, step.working_dir.as_deref());
                let owner = match chown {
                    Some(spec) => Some(self.owner(state, spec)?),
                    None => None,
                };
                let spec = CopySpec {
                    sources: matched,
                    dest,
                    owner,
                    mode: *chmod,
                    unpack_archives: *add,
                };
                let (next, bytes) = self
                    .write_layer(state, move |layer, below| {
                        build_fs::copy_into(layer, below, &spec)
                    })
                    .await?;
                let layer = self.keep(&key, &next).await?;
                state.key = key;
                state.layer = Some(layer);
                Ok(bytes)
            }
        }
    }

    /// The image's root filesystem below a stage's layer.
    fn below(&self, state: &StageState) -> Vec<PathBuf> {
        state
            .base
            .iter()
            .map(|id| self.manager.images().rootfs(id))
            .collect()
    }

    /// Where image path `rel` (relative) is in the stage's merged view.
    fn visible(&self, state: &StageState, rel: &str) -> Option<PathBuf> {
        let mut roots: Vec<PathBuf> = state.layer.iter().cloned().collect();
        roots.extend(self.below(state));
        let refs: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
        sbx_image::unpack::top_most(&refs, Path::new(rel))
    }

    /// Writes the stage's next layer on the host: a hard-linked copy of
    /// its layer, changed by `change(layer, below)` (on a blocking thread).
    async fn write_layer<R: Send + 'static>(
        &self,
        state: &StageState,
        change: impl FnOnce(&Path, &[&Path]) -> Result<R, sbx_executor::Error> + Send + 'static,
    ) -> Result<(PathBuf, R), String> {
        let next = self.work.dir.join(format!("layer-{}", random_hex(8)));
        build_fs::next_layer(state.layer.as_deref(), &next)
            .await
            .map_err(|e| e.to_string())?;
        let (below, n) = (self.below(state), next.clone());
        let changed = tokio::task::spawn_blocking(move || {
            let below: Vec<&Path> = below.iter().map(PathBuf::as_path).collect();
            change(&n, &below)
        })
        .await
        .expect("layer task")
        .map_err(|e| e.to_string())?;
        Ok((next, changed))
    }

    /// Makes `dir` exist (a `WORKDIR` a `RUN` runs in), as a layer of its own.
    async fn ensure_dir(&self, state: &mut StageState, dir: &str) -> Result<(), String> {
        let exists = self
            .visible(state, dir.trim_start_matches('/'))
            .is_some_and(|p| p.is_dir());
        if exists {
            return Ok(());
        }
        let key = hex(&format!("{}\nmkdir {dir}", state.key));
        if let Some(layer) = self.cached(&key) {
            state.key = key;
            state.layer = Some(layer);
            return Ok(());
        }
        let d = dir.to_string();
        let (next, ()) = self
            .write_layer(state, move |layer, below| {
                build_fs::make_dir(layer, below, &d)
            })
            .await?;
        state.layer = Some(self.keep(&key, &next).await?);
        state.key = key;
        Ok(())
    }

    /// A stage's files as one directory, for `COPY --from` (made once).
    async fn flattened(&self, index: usize, stage: &StageState) -> Result<PathBuf, String> {
        let dir = self.work.dir.join(format!("stage-{index}"));
        if !dir.exists() {
            let base = stage
                .base
                .as_ref()
                .map(|id| self.manager.images().rootfs(id));
            build_fs::flatten(base.as_deref(), stage.layer.as_deref(), &dir)
                .await
                .map_err(|e| format!("stage {index}: {e}"))?;
        }
        Ok(dir)
    }

    /// `--chown=USER[:GROUP]`: numbers, or names from the image's
    /// `/etc/passwd` and `/etc/group`.
    fn owner(&self, state: &StageState, spec: &str) -> Result<(u32, u32), String> {
        let table = |file: &str| {
            self.visible(state, file)
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        let lookup = |text: &str, name: &str, field: usize| -> Option<u32> {
            text.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.first() == Some(&name))
                .and_then(|f| f.get(field)?.parse().ok())
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = table("etc/passwd");
        let uid = user
            .parse()
            .ok()
            .or_else(|| lookup(&passwd, user, 2))
            .ok_or_else(|| format!("--chown: no user {user} in the image"))?;
        let gid = match group {
            Some(g) => g
                .parse()
                .ok()
                .or_else(|| lookup(&table("etc/group"), g, 2))
                .ok_or_else(|| format!("--chown: no group {g} in the image"))?,
            None => lookup(&passwd, user, 3).unwrap_or(uid),
        };
        Ok((uid, gid))
    }

    fn cached(&self, key: &str) -> Option<PathBuf> {
        let layer = self
            .manager
            .host()
            .build_cache_dir()
            .join(key)
            .join("layer");
        if self.no_cache || !layer.is_dir() {
            return None;
        }
        touch(layer.parent().expect("key dir"));
        self.emit(BuildEvent::Cached);
        Some(layer)
    }

    /// Moves a step's new layer into the cache under `key`.
    async fn keep(&self, key: &str, layer: &Path) -> Result<PathBuf, String> {
        let dir = self.manager.host().build_cache_dir().join(key);
        let dest = dir.join("layer");
        if dest.is_dir() {
            // Built again (--no-cache): the new one replaces it.
            let old = dir.with_extension(format!("old-{}", random_hex(6)));
            let _ = tokio::fs::rename(&dir, &old).await;
            let _ = sbx_executor::gently::remove(&old).await;
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| e.to_string())?;
        tokio::fs::rename(layer, &dest)
            .await
            .map_err(|e| e.to_string())?;
        Ok(dest)
    }

    /// Boots a builder sandbox on `base` + `layer`, runs the step in it,
    /// and returns its files as a new layer (in the build's directory) and
    /// that layer's bytes.
    async fn run_in_sandbox(
        &self,
        base: &str,
        layer: Option<&Path>,
        step: &Step,
        argv: &[String],
    ) -> Result<(PathBuf, u64), String> {
        let executor = self.manager.host();
        let id = format!("bld{}", random_hex(20));
        let spec = LaunchSpec {
            id: id.clone(),
            image: base.to_string(),
            cpus: 1.0,
            memory_mb: 2048,
            disk_mb: DEFAULT_DISK_MB,
            entrypoint: Vec::new(),
            egress: Default::default(),
            layer: layer.map(Path::to_path_buf),
            checkpoint: None,
            aliases: Vec::new(),
            secrets: Default::default(),
        };
        let result = async {
            let addr = executor
                .launch(&spec)
                .await
                .map_err(|e| format!("builder sandbox: {e}"))?;
            self.run_command(addr, step, argv).await?;
            let sid = format!("bldsnap{}", random_hex(16));
            let captured = executor
                .capture(&id, &sid, false)
                .await
                .map_err(|e| format!("capturing the step's files: {e}"))?;
            let next = self.work.dir.join(format!("layer-{}", random_hex(8)));
            let moved = tokio::fs::rename(captured.dir.join("layer"), &next).await;
            executor.delete_snapshot(&sid).await;
            moved.map_err(|e| e.to_string())?;
            Ok((next, captured.layer_bytes))
        }
        .await;
        let _ = executor.destroy(&id).await;
        result
    }

    /// Runs `argv` through the sandbox's agent, its output as events.
    async fn run_command(
        &self,
        addr: std::net::SocketAddr,
        step: &Step,
        argv: &[String],
    ) -> Result<(), String> {
        let (command, args) = argv.split_first().ok_or("RUN has no command")?;
        let req = RunRequest {
            command: command.clone(),
            args: args.to_vec(),
            env: Some(step.env.iter().cloned().collect()),
            working_dir: step.working_dir.clone(),
            user: step.user.clone().map(ProcessUser::Spec),
            ..Default::default()
        };
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/api/v1/processes/run"))
            .header("accept", "text/event-stream")
            .json(&req)
            .send()
            .await
            .map_err(|e| format!("builder sandbox: {e}"))?;
        if !resp.status().is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("cannot run {command}: {body}"));
        }
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.map_err(|e| format!("builder sandbox: {e}"))?);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let Some(data) = text.trim().strip_prefix("data: ") else {
                    continue;
                };
                match serde_json::from_str::<RunEvent>(data) {
                    Ok(RunEvent::Output(o)) => self.emit(BuildEvent::Output { line: o.line }),
                    Ok(RunEvent::Exit(e)) => {
                        return match e.exit_code {
                            Some(0) => Ok(()),
                            Some(code) => Err(format!("exited with code {code}")),
                            None => Err(format!("ended by signal {}", e.signal.unwrap_or(0))),
                        };
                    }
                    _ => {}
                }
            }
        }
        Err("the builder sandbox stopped answering".into())
    }
}

/// A stage's image config: its base's, changed by its instructions.
fn merged(base: &ImageConfig, stage: &sbx_build::Config) -> ImageConfig {
    let mut env = base.env.clone();
    for (k, v) in &stage.env {
        env.retain(|e| e.split('=').next() != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    // A new ENTRYPOINT drops the base's CMD, as in Docker.
    let cmd = match (&stage.entrypoint, &stage.cmd) {
        (_, Some(c)) => Some(c.clone()),
        (Some(_), None) => None,
        (None, None) => base.cmd.clone(),
    };
    ImageConfig {
        env,
        working_dir: stage
            .working_dir
            .clone()
            .or_else(|| base.working_dir.clone()),
        user: stage.user.clone().or_else(|| base.user.clone()),
        entrypoint: stage.entrypoint.clone().or_else(|| base.entrypoint.clone()),
        cmd,
    }
}

/// `dest` made absolute against the step's working directory.
fn absolute(dest: &str, workdir: Option<&str>) -> String {
    if dest.starts_with('/') {
        return dest.to_string();
    }
    let base = workdir.unwrap_or("/").trim_end_matches('/');
    let dest = dest.trim_start_matches("./");
    match dest {
        "" | "." => format!("{base}/"),
        d => format!("{base}/{d}"),
    }
}

/// The files under `root` that `patterns` name (wildcards within a
/// component), each inside `root`.
fn match_sources(root: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for pattern in patterns {
        let parts: Vec<&str> = pattern
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if parts.contains(&"..") {
            return Err(format!("{pattern}: sources must be inside the context"));
        }
        let mut found = vec![root.to_path_buf()];
        for part in &parts {
            let mut next = Vec::new();
            for dir in &found {
                if !part.contains(['*', '?', '[']) {
                    let rel = dir.strip_prefix(root).unwrap_or(Path::new("")).join(part);
                    let p = sbx_image::unpack::resolve(root, &rel).map_err(|e| e.to_string())?;
                    if p.symlink_metadata().is_ok() {
                        next.push(p);
                    }
                    continue;
                }
                let Ok(rd) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<_> = rd
                    .flatten()
                    .filter(|e| {
                        sbx_build::globs::component_matches(part, &e.file_name().to_string_lossy())
                    })
                    .map(|e| e.path())
                    .collect();
                names.sort();
                next.extend(names);
            }
            found = next;
        }
        if found.is_empty() {
            return Err(format!("{pattern}: no such file in the context"));
        }
        out.extend(found);
    }
    Ok(out)
}

/// Names (below `root`), modes and contents of the files under `paths`.
fn content_hash(root: &Path, paths: &[PathBuf]) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    let mut todo: Vec<PathBuf> = paths.iter().rev().cloned().collect();
    while let Some(p) = todo.pop() {
        let Ok(m) = p.symlink_metadata() else {
            continue;
        };
        h.update(
            p.strip_prefix(root)
                .unwrap_or(&p)
                .as_os_str()
                .as_encoded_bytes(),
        );
        h.update(m.mode().to_le_bytes());
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                let mut children: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                children.sort();
                todo.extend(children.into_iter().rev());
            }
        } else if m.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(&p) {
                h.update(t.as_os_str().as_encoded_bytes());
            }
        } else if let Ok(mut f) = std::fs::File::open(&p) {
            let _ = std::io::copy(&mut f, &mut h);
        }
    }
    format!("{:x}", h.finalize())
}

/// The cache key of `step` after state `parent` (with `content`: what it copies).
fn cache_key(parent: &str, step: &Step, content: &str) -> String {
    let what = serde_json::json!({
        "action": step.action,
        "env": step.env,
        "working_dir": step.working_dir,
        "user": step.user,
    });
    hex(&format!("{parent}\n{what}\n{content}"))
}

fn hex(s: &str) -> String {
    format!("{:x}", Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cache_loses_its_least_recently_used_layers_first() {
        let t = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - 2 * CACHE_KEEP_RECENT;
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let layer = t.path().join(key).join("layer");
            std::fs::create_dir_all(&layer).unwrap();
            std::fs::write(layer.join("f"), vec![0u8; 1000]).unwrap();
            let used = old + std::time::Duration::from_secs(i as u64);
            std::fs::File::open(t.path().join(key))
                .unwrap()
                .set_modified(used)
                .unwrap();
        }
        // `a` is the oldest, but was just used.
        touch(&t.path().join("a"));
        std::fs::create_dir_all(t.path().join(".work-x")).unwrap();
        prune(t.path(), 1500).await;
        let mut left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, [".work-x", "a"]);
    }

    #[test]
    fn only_names_with_a_host_are_pulled() {
        assert!(names_registry("127.0.0.1:5000/tools/bb:1"));
        assert!(names_registry("docker.io/library/python:3.12"));
        assert!(names_registry("localhost/x"));
        assert!(!names_registry("python:3.12"));
        assert!(!names_registry("library/python"));
        assert!(!names_registry("default"));
    }

    #[test]
    fn destinations_and_configs() {
        assert_eq!(absolute("./", Some("/app")), "/app/");
        assert_eq!(absolute("x.py", Some("/app/")), "/app/x.py");
        assert_eq!(absolute("/etc/x", Some("/app")), "/etc/x");
        assert_eq!(absolute(".", None), "/");
        let base = ImageConfig {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let stage = sbx_build::Config {
            env: vec![("A".into(), "2".into())],
            entrypoint: Some(vec!["app".into()]),
            ..Default::default()
        };
        let m = merged(&base, &stage);
        assert_eq!(m.env, vec!["PATH=/bin", "A=2"]);
        assert_eq!(m.entrypoint, Some(vec!["app".into()]));
        assert_eq!(m.cmd, None);
    }

    #[tokio::test]
    async fn sources_match_inside_the_context() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for f in [
            "app.py",
            "requirements.txt",
            "requirements-dev.txt",
            "pkg/a.py",
        ] {
            std::fs::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            std::fs::write(r.join(f), f).unwrap();
        }
        let m = match_sources(r, &["requirements*.txt".into(), "pkg".into()]).unwrap();
        let names: Vec<String> = m
            .iter()
            .map(|p| p.strip_prefix(r).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["requirements-dev.txt", "requirements.txt", "pkg"]);
        assert!(match_sources(r, &["nope".into()]).is_err());
        assert!(match_sources(r, &["../etc/passwd".into()]).is_err());
        let a = content_hash(r, &m);
        // The same files elsewhere (the next build's context) hash the same.
        let copy = tempfile::tempdir().unwrap();
        sbx_executor::snapshot::link_tree(r, &copy.path().join("c"))
            .await
            .unwrap();
        let again = match_sources(
            &copy.path().join("c"),
            &["requirements*.txt".into(), "pkg".into()],
        )
        .unwrap();
        assert_eq!(a, content_hash(&copy.path().join("c"), &again));
        std::fs::write(r.join("pkg/a.py"), "changed").unwrap();
        assert_ne!(a, content_hash(r, &m));
    }
}
