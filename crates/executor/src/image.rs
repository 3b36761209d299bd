//! Root filesystem images. The default image is a Debian bookworm built once
//! by debootstrap and then shared read-only by every sandbox.

use crate::custom_images::{self, CustomImages};
use crate::Error;
use sbx_image::ImageConfig;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

pub const DEFAULT_IMAGE: &str = "default";

/// Packages added to debootstrap's minbase.
const PACKAGES: &str = "python3,python3-pip,python3-venv,ca-certificates,procps,iproute2,curl,less";

/// Where the default image stands: a server answers while it is built
/// (`GET /healthz` shows it) and creates wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildStatus {
    /// Being built (or waiting for another server's build); `progress` is
    /// the build's last step.
    Building {
        progress: String,
        steps: u32,
    },
    Ready,
    /// The last build failed; the server tries again later.
    Failed {
        error: String,
    },
}

/// The built-in images under `<dir>/<name>/rootfs`, each complete once
/// `<dir>/<name>/ready` exists, and the imported ones ([`CustomImages`]).
/// Sandboxes name an image by id: a built-in image's id is its name.
#[derive(Debug, Clone)]
pub struct Images {
    dir: PathBuf,
    default: Arc<watch::Sender<BuildStatus>>,
    custom: CustomImages,
}

impl Images {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let ready = is_ready(&dir, DEFAULT_IMAGE);
        let status = if ready {
            BuildStatus::Ready
        } else {
            BuildStatus::Building {
                progress: "not started".into(),
                steps: 0,
            }
        };
        Self {
            custom: CustomImages::new(dir.join(".no-custom-images")),
            dir,
            default: Arc::new(watch::Sender::new(status)),
        }
    }

    /// Imported images live in `dir`.
    pub fn with_custom(mut self, dir: impl Into<PathBuf>) -> Self {
        self.custom = CustomImages::new(dir);
        self
    }

    pub fn custom(&self) -> &CustomImages {
        &self.custom
    }

    /// The config of image `id` (the built-in ones have none).
    pub fn config(&self, id: &str) -> ImageConfig {
        self.custom.get(id).map(|r| r.config).unwrap_or_default()
    }

    /// Where the default image stands.
    pub fn default_status(&self) -> BuildStatus {
        self.default.borrow().clone()
    }

    /// Waits until image `name` can be used: the default image once its
    /// build ends (an error if it failed); any other at once.
    pub async fn wait_ready(&self, name: &str) -> Result<(), String> {
        if name != DEFAULT_IMAGE {
            return Ok(());
        }
        let mut rx = self.default.subscribe();
        let status = rx
            .wait_for(|s| !matches!(s, BuildStatus::Building { .. }))
            .await
            .map(|s| s.clone())
            .unwrap_or(BuildStatus::Ready);
        match status {
            BuildStatus::Failed { error } => {
                Err(format!("the default image could not be built: {error}"))
            }
            _ => Ok(()),
        }
    }

    fn set_progress(&self, progress: String, steps: u32) {
        self.default
            .send_replace(BuildStatus::Building { progress, steps });
    }

    /// The root filesystem of image `id`.
    pub fn rootfs(&self, id: &str) -> PathBuf {
        if custom_images::is_id(id) {
            return self.custom.rootfs(id);
        }
        self.dir.join(id).join("rootfs")
    }

    fn ready_marker(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("ready")
    }

    /// Whether image `id` is complete (imported ones also once removed:
    /// what uses them keeps them).
    pub fn exists(&self, id: &str) -> bool {
        if custom_images::is_id(id) {
            return self.custom.get(id).is_some();
        }
        is_ready(&self.dir, id)
    }

    /// Names of complete built-in images.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_ready(&self.dir, n))
            .collect();
        names.sort();
        names
    }

    /// Builds the default image unless it exists. Several servers sharing
    /// the directory build it once: the build holds a lock file. Where it
    /// stands is in [`Self::default_status`] meanwhile.
    pub async fn ensure_default(&self) -> Result<(), Error> {
        let result = self.ensure_default_inner().await;
        self.default.send_replace(match &result {
            Ok(()) => BuildStatus::Ready,
            Err(e) => BuildStatus::Failed {
                error: e.to_string(),
            },
        });
        result
    }

    async fn ensure_default_inner(&self) -> Result<(), Error> {
        if self.exists(DEFAULT_IMAGE) {
            return Ok(());
        }
        self.set_progress("waiting for the build lock".into(), 0);
        tokio::fs::create_dir_all(&self.dir).await?;
        let lock = std::fs::File::create(self.dir.join(".build.lock"))?;
        let lock = tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| std::io::Error::from(e))
        })
        .await
        .expect("lock task")?;
        let result = if self.exists(DEFAULT_IMAGE) {
            Ok(())
        } else {
            self.build_default().await
        };
        drop(lock);
        result
    }

    async fn build_default(&self) -> Result<(), Error> {
        let mirror = apt_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".into());
        let image_dir = self.dir.join(DEFAULT_IMAGE);
        let tmp = self.dir.join(format!(".{DEFAULT_IMAGE}.building"));
        remove_half_built(&tmp).await;
        tokio::fs::create_dir_all(&tmp).await?;
        tracing::info!(%mirror, "building the default image (Debian bookworm, once; about a minute)");
        let mut cmd = Command::new("debootstrap");
        cmd.args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(tmp.join("rootfs"))
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        // It dies with the server (a build that outlived it would write
        // into a directory the next start removes).
        crate::cmd::dies_with_server(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Image(format!(
                "cannot run debootstrap ({e}); apt-get install debootstrap"
            ))
        })?;
        // A build given up (the server stops) ends with all it started.
        let mut group = KillGroupOnDrop(child.id());
        self.set_progress("debootstrap started".into(), 0);
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let me = self.clone();
        let progress = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let (mut phases, mut steps) = (std::collections::HashSet::new(), 0u32);
            while let Ok(Some(line)) = lines.next_line().await {
                steps += 1;
                // debootstrap prints a line per package and step: show the
                // first of each phase (Retrieving, Extracting, Configuring,
                // …) and every 50th step.
                if phases.insert(build_phase(&line)) || steps % 50 == 0 {
                    tracing::info!(steps, "image build: {line}");
                }
                me.set_progress(line, steps);
            }
        });
        let mut err_text = String::new();
        let mut err_lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = err_lines.next_line().await {
            err_text.push_str(&line);
            err_text.push('\n');
        }
        let status = child.wait().await?;
        group.0 = None;
        let _ = progress.await;
        if !status.success() {
            remove_half_built(&tmp).await;
            return Err(Error::Image(format!(
                "debootstrap failed: {}",
                err_text.trim()
            )));
        }
        finish_rootfs(&tmp.join("rootfs")).await?;
        let _ = tokio::fs::remove_dir_all(&image_dir).await;
        tokio::fs::rename(&tmp, &image_dir).await?;
        tokio::fs::write(self.ready_marker(DEFAULT_IMAGE), b"").await?;
        tracing::info!("default image ready");
        Ok(())
    }
}

/// Kills a process group when dropped, unless it has ended.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: a plain signal to the group the child leads.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    }
}

/// Removes a half-built image directory; debootstrap mounts /proc and /sys
/// inside the root it builds, and a build cut short leaves them there.
async fn remove_half_built(tmp: &Path) {
    // Deepest first.
    for m in crate::layer::mounts_below(tmp) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = tokio::fs::remove_dir_all(tmp).await;
}

fn is_ready(dir: &Path, name: &str) -> bool {
    is_plain_name(name) && dir.join(name).join("ready").exists()
}

/// The phase of a debootstrap progress line: its first two words.
fn build_phase(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Trims caches and lets `pip install` work system-wide, as users of a
/// throwaway sandbox expect.
async fn finish_rootfs(rootfs: &Path) -> Result<(), Error> {
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let d = rootfs.join(dir);
        if let Ok(mut rd) = tokio::fs::read_dir(&d).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                if e.file_type().await.map(|t| t.is_file()).unwrap_or(false) {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
            }
        }
    }
    if let Ok(mut rd) = tokio::fs::read_dir(rootfs.join("usr/lib")).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            if e.file_name().to_string_lossy().starts_with("python3") {
                let _ = tokio::fs::remove_file(e.path().join("EXTERNALLY-MANAGED")).await;
            }
        }
    }
    tokio::fs::create_dir_all(rootfs.join(".sbx")).await?;
    Ok(())
}

/// The Debian mirror apt on this host uses.
pub fn apt_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                texts.push(t);
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    texts.iter().find_map(|t| mirror_from_sources(t))
}

/// First Debian (not security) archive URI in a sources text, deb822 or one-line.
fn mirror_from_sources(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        let uri = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().next()
        } else if line.starts_with("deb ") {
            line.split_whitespace()
                .skip(1)
                .find(|w| w.starts_with("http"))
        } else {
            None
        };
        if let Some(u) = uri {
            if u.contains("debian") && !u.contains("security") {
                return Some(u.to_string());
            }
        }
    }
    None
}

/// Image names are single path components of safe characters.
pub fn is_plain_name(name: &str) -> bool {
    sbx_api::image::is_valid_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_is_read_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://deb.example/debian-security\n\nTypes: deb\nURIs: http://m.example/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_from_sources(deb822).as_deref(),
            Some("http://m.example/debian")
        );
        let one = "deb [arch=amd64] http://m2.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources(one).as_deref(),
            Some("http://m2.example/debian")
        );
        assert_eq!(
            mirror_from_sources("deb https://other.example/apt stable main"),
            None
        );
    }

    #[test]
    fn progress_is_shown_per_phase() {
        assert_eq!(build_phase("I: Extracting bash..."), "I: Extracting");
        assert_eq!(
            build_phase("I: Extracting dash..."),
            build_phase("I: Extracting bash...")
        );
        assert_ne!(
            build_phase("I: Configuring bash..."),
            build_phase("I: Extracting bash...")
        );
    }

    #[test]
    fn image_names_cannot_escape() {
        assert!(is_plain_name("default"));
        assert!(!is_plain_name("../etc"));
        assert!(!is_plain_name(".hidden"));
        assert!(!is_plain_name("a/b"));
    }

    #[tokio::test]
    async fn creates_wait_for_the_default_image_and_learn_why_its_build_failed() {
        let d = tempfile::tempdir().unwrap();
        let images = Images::new(d.path());
        assert!(matches!(
            images.default_status(),
            BuildStatus::Building { .. }
        ));
        assert!(images.list().is_empty());
        let waiting = tokio::spawn({
            let images = images.clone();
            async move { images.wait_ready(DEFAULT_IMAGE).await }
        });
        images.set_progress("I: Retrieving bash".into(), 3);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        images.default.send_replace(BuildStatus::Failed {
            error: "mirror unreachable".into(),
        });
        let err = waiting.await.unwrap().unwrap_err();
        assert!(err.contains("mirror unreachable"), "{err}");
        images.default.send_replace(BuildStatus::Ready);
        assert_eq!(images.wait_ready(DEFAULT_IMAGE).await, Ok(()));
        // Other images are checked where they are used, not waited for.
        assert_eq!(images.wait_ready("other").await, Ok(()));
        // A server that finds the image built starts ready.
        std::fs::create_dir_all(d.path().join("default/rootfs")).unwrap();
        std::fs::write(d.path().join("default/ready"), b"").unwrap();
        assert_eq!(Images::new(d.path()).default_status(), BuildStatus::Ready);
    }

    #[test]
    fn images_list_only_complete_ones() {
        let d = tempfile::tempdir().unwrap();
        let images = Images::new(d.path());
        std::fs::create_dir_all(d.path().join("half/rootfs")).unwrap();
        std::fs::create_dir_all(d.path().join("full/rootfs")).unwrap();
        std::fs::write(d.path().join("full/ready"), b"").unwrap();
        assert_eq!(images.list(), vec!["full".to_string()]);
    }
}
