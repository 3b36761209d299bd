//! Sandbox images: `/v1/namespaces/{ns}/images`. Images belong to the host,
//! not to a namespace: every namespace sees the same ones.

use serde::{Deserialize, Serialize};

/// Whether `name` can name an image: 1-64 letters, digits, `.`, `_` or
/// `-`, not starting with `.`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What is wrong with a name [`is_valid_name`] refuses.
pub const NAME_RULE: &str = "use 1-64 letters, digits, '.', '_' or '-', not starting with '.'";

/// One image a sandbox can be created from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// Fixed at import: sandboxes and snapshots keep the image they were
    /// made from when a later import takes the name.
    pub id: String,
    /// Where it came from: a registry reference, `docker-archive`,
    /// `oci-archive`, or `debootstrap` for the built-in default.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// Compressed bytes its files added to the content-addressed store, once
    /// they are there (a host without them then brings them back from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// The image's `Env`: every process of its sandboxes gets it.
    #[serde(default)]
    pub env: Vec<String>,
    /// The image's `WorkingDir` and `User`: where and as whom commands run
    /// unless they say otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The image's `ENTRYPOINT` + `CMD`: started in a sandbox whose create
    /// gives no entrypoint.
    #[serde(default)]
    pub entrypoint: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListImagesResponse {
    pub images: Vec<ImageInfo>,
}

/// `POST …/images/import`: pull an image from a registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportImageRequest {
    /// `HOST[:PORT]/REPO[:TAG|@DIGEST]` (Docker Hub when no host).
    #[serde(default)]
    pub reference: String,
    /// The name sandboxes use; default: the repository's last component.
    #[serde(default)]
    pub name: Option<String>,
    /// Plain HTTP to the registry.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// One line of an import's `application/x-ndjson` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ImportEvent {
    /// The manifest is read: this many layers and bytes to fetch.
    Resolved { layers: usize, bytes: u64 },
    /// Layer `layer` (from 1) is downloaded.
    Fetched { layer: usize, bytes: u64 },
    /// Layer `layer` is applied to the root filesystem.
    Applied { layer: usize, entries: u64 },
    /// The image is ready: the last line.
    Done { image: Box<ImageInfo> },
    /// The import failed and left nothing: the last line.
    Error { message: String },
}

/// One line of a build's `application/x-ndjson` answer
/// (`POST …/images/build`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BuildEvent {
    /// An instruction that has no effect here, or an ignored directive.
    Warning { line: usize, message: String },
    /// A step starts: `step` of `steps` (from 1) in stage `stage` of `stages`.
    Step {
        stage: usize,
        stages: usize,
        step: usize,
        steps: usize,
        line: usize,
        text: String,
    },
    /// The step's result came from the build cache.
    Cached,
    /// A line the step's command printed.
    Output { line: String },
    /// The step is done: its milliseconds and the bytes it added.
    StepDone { ms: u64, bytes: u64 },
    /// The image is ready: the last line.
    Done { image: Box<ImageInfo> },
    /// The build failed and left no image: the last line.
    Error { message: String },
}
