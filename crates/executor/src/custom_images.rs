//! Images users bring (imported from a registry or an archive): each in
//! `<dir>/<id>/` with its root filesystem, its record (`image.json`) and a
//! `ready` marker. The id is fixed at import, so a sandbox or snapshot made
//! from an image keeps the same root filesystem even when a later import
//! takes the name. Which images exist is the [`Catalog`]'s (the server's
//! state store, shared by hosts): every commit is recorded there before the
//! image appears here, and the files of an image the catalog no longer
//! lists go once nothing uses them ([`CustomImages::collect`]). A `removed`
//! marker is what hosts from before the catalog wrote at a removal.

use crate::Error;
use sbx_image::{Credentials, ImageConfig, Progress, Source};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

/// What sbx knows of an imported image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    /// Where it came from (`127.0.0.1:5000/tools/app:1`, `docker-archive`, …).
    pub source: String,
    /// The manifest's digest, when the source has one.
    pub digest: Option<String>,
    pub config: ImageConfig,
    /// RFC 3339.
    pub created_at: String,
    /// Bytes of its root filesystem.
    pub size_bytes: u64,
    pub layers: usize,
    /// Compressed bytes its files added to the content-addressed store,
    /// once they are there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
}

const RECORD: &str = "image.json";
const READY: &str = "ready";
const REMOVED: &str = "removed";
/// Ids of imported images start with this (the built-in ones never do).
pub const ID_PREFIX: &str = "img-";

/// Where images made on this host are recorded (the server's state store).
pub trait Catalog: Send + Sync {
    /// Records image `record` (taking its name from any older image) before
    /// it appears on this host; an error abandons the image.
    fn record<'a>(
        &'a self,
        record: &'a ImageRecord,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

    /// Image `record` is now complete on this host.
    fn committed(&self, record: &ImageRecord);

    /// Image `record`, recorded, could not be committed here after all.
    fn abandoned(&self, record: &ImageRecord);
}

#[derive(Clone)]
pub struct CustomImages {
    dir: PathBuf,
    /// Set once, at the server's start; shared by every clone.
    catalog: Arc<OnceLock<Arc<dyn Catalog>>>,
}

impl std::fmt::Debug for CustomImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomImages")
            .field("dir", &self.dir)
            .field("catalog", &self.catalog.get().is_some())
            .finish()
    }
}

impl CustomImages {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            catalog: Default::default(),
        }
    }

    /// Records every image committed from now on in `catalog` (once; a
    /// second catalog is refused).
    pub fn set_catalog(&self, catalog: Arc<dyn Catalog>) -> Result<(), Error> {
        self.catalog
            .set(catalog)
            .map_err(|_| Error::Image("the image catalog is set already".into()))
    }

    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.dir.join(id).join("rootfs")
    }

    /// Where imported images live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ids of the images on this host (complete, removed or not).
    pub fn ids(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| is_id(id))
            .collect()
    }

    /// The complete images on this host, each with whether a removal
    /// marked it (hosts from before the catalog), newest first.
    pub fn on_disk(&self) -> Vec<(ImageRecord, bool)> {
        let mut all: Vec<(ImageRecord, bool)> = self
            .ids()
            .into_iter()
            .filter_map(|id| self.get(&id).map(|r| (r, self.is_removed(&id))))
            .collect();
        all.sort_by(|(a, _), (b, _)| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        all
    }

    /// The record of image `id`, removed or not, once it is complete.
    pub fn get(&self, id: &str) -> Option<ImageRecord> {
        if !is_id(id) || !self.dir.join(id).join(READY).exists() {
            return None;
        }
        let text = std::fs::read(self.dir.join(id).join(RECORD)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn is_removed(&self, id: &str) -> bool {
        self.dir.join(id).join(REMOVED).exists()
    }

    /// Complete images not removed, newest first.
    pub fn list(&self) -> Vec<ImageRecord> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut all: Vec<ImageRecord> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| !self.is_removed(id))
            .filter_map(|id| self.get(&id))
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        all
    }

    /// The current image named `name`: the newest import of it.
    pub fn find(&self, name: &str) -> Option<ImageRecord> {
        self.list().into_iter().find(|r| r.name == name)
    }

    /// Fetches `source` and unpacks it as image `name`; the image appears
    /// (and takes the name from an older one) only once it is complete.
    pub async fn import(
        &self,
        name: &str,
        source: &Source,
        credentials: &Credentials,
        insecure: bool,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<ImageRecord, Error> {
        let image = self.begin().await?;
        let result = async {
            let work = image.tmp.join("fetch");
            let fetched = sbx_image::fetch(source, credentials, insecure, &work, progress).await?;
            sbx_image::unpack(&fetched, &image.rootfs(), progress).await?;
            let _ = crate::gently::remove(&work).await;
            Ok::<_, Error>(fetched)
        }
        .await;
        match result {
            Ok(fetched) => {
                let source = describe(source);
                let layers = fetched.layers.len();
                image
                    .commit(name, &source, fetched.digest, fetched.config, layers)
                    .await
            }
            Err(e) => {
                image.abandon().await;
                Err(e)
            }
        }
    }

    /// Records that image `id`'s files are in the content-addressed store.
    pub async fn set_stored(&self, id: &str, bytes: u64) -> Result<(), Error> {
        let mut record = self
            .get(id)
            .ok_or_else(|| Error::Image(format!("image {id} is gone")))?;
        record.stored_bytes = Some(bytes);
        let dir = self.dir.join(id);
        let tmp = dir.join(".image.json.tmp");
        tokio::fs::write(&tmp, serde_json::to_vec_pretty(&record).expect("json")).await?;
        tokio::fs::rename(&tmp, dir.join(RECORD)).await?;
        Ok(())
    }

    /// Starts bringing image `record` back from the store: fill
    /// [`NewImage::rootfs`] (which does not exist yet), then
    /// [`NewImage::commit_record`].
    pub fn begin_restore(&self, record: &ImageRecord) -> Result<NewImage, Error> {
        if !is_id(&record.id) {
            return Err(Error::Image(format!("bad image id {:?}", record.id)));
        }
        let image = NewImage::new(self, record.id.clone());
        let _ = std::fs::remove_dir_all(&image.tmp);
        std::fs::create_dir_all(&image.tmp)?;
        Ok(image)
    }

    /// Starts a new image: fill its [`NewImage::rootfs`], then
    /// [`NewImage::commit`] it (or [`NewImage::abandon`] it).
    pub async fn begin(&self) -> Result<NewImage, Error> {
        let image = NewImage::new(self, new_id());
        if let Err(e) = tokio::fs::create_dir_all(image.rootfs()).await {
            image.abandon().await;
            return Err(e.into());
        }
        Ok(image)
    }

    /// Deletes the images whose id `dead` says may go, and imports and
    /// uploads a crash cut short. Returns the names deleted.
    pub async fn collect(&self, dead: impl Fn(&str) -> bool) -> Vec<String> {
        let mut gone = Vec::new();
        let Ok(mut rd) = tokio::fs::read_dir(&self.dir).await else {
            return gone;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let dead = if name.starts_with('.') && name.ends_with(".importing") {
                !IMPORTING.lock().unwrap().contains(&name)
            } else if name.starts_with(UPLOAD_PREFIX) {
                is_stale_upload(&name)
            } else {
                is_id(&name) && dead(&name)
            };
            if dead && crate::gently::remove(&e.path()).await.is_ok() {
                gone.push(name);
            }
        }
        gone
    }
}

/// Archives uploaded for an import are `.upload-<pid>-<n>.tar` here while
/// it runs.
pub const UPLOAD_PREFIX: &str = ".upload-";

/// An upload of another (so, dead) server process.
fn is_stale_upload(name: &str) -> bool {
    name.strip_prefix(UPLOAD_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .is_some_and(|pid| pid != std::process::id().to_string())
}

/// An image being made (imported or built), in a temporary directory of
/// the image store until it is committed.
pub struct NewImage {
    images: CustomImages,
    id: String,
    tmp: PathBuf,
}

impl NewImage {
    /// Image `id` in the making: its temporary directory, which a
    /// [`CustomImages::collect`] leaves alone while this lives.
    fn new(images: &CustomImages, id: String) -> NewImage {
        let tmp_name = temporary_name(&id);
        let tmp = images.dir.join(&tmp_name);
        IMPORTING.lock().unwrap().push(tmp_name);
        NewImage {
            images: images.clone(),
            id,
            tmp,
        }
    }

    /// Where its root filesystem goes.
    pub fn rootfs(&self) -> PathBuf {
        self.tmp.join("rootfs")
    }

    /// Makes it image `name` (which an older image of that name then
    /// leaves, staying for what uses it).
    pub async fn commit(
        self,
        name: &str,
        source: &str,
        digest: Option<String>,
        config: ImageConfig,
        layers: usize,
    ) -> Result<ImageRecord, Error> {
        // Where the agent binary is mounted.
        if let Err(e) = tokio::fs::create_dir_all(self.rootfs().join(".sbx")).await {
            self.abandon().await;
            return Err(e.into());
        }
        let record = ImageRecord {
            id: self.id.clone(),
            name: name.to_string(),
            source: source.to_string(),
            digest,
            config,
            created_at: now_rfc3339(),
            size_bytes: disk_usage(&self.rootfs()).await,
            layers,
            stored_bytes: None,
        };
        let images = self.images.clone();
        let catalog = images.catalog.get().cloned();
        if let Some(catalog) = &catalog {
            if let Err(e) = catalog.record(&record).await {
                self.abandon().await;
                return Err(Error::Image(format!("recording the image: {e}")));
            }
        }
        if let Err(e) = self.commit_record(&record).await {
            if let Some(catalog) = &catalog {
                catalog.abandoned(&record);
            }
            return Err(e);
        }
        for old in images.list() {
            if old.name == name && old.id != record.id {
                let _ = tokio::fs::write(images.dir.join(&old.id).join(REMOVED), b"").await;
            }
        }
        if let Some(catalog) = &catalog {
            catalog.committed(&record);
        }
        Ok(record)
    }

    /// Makes it the image `record` describes (also one brought back from
    /// the store); on failure nothing of it stays.
    pub async fn commit_record(self, record: &ImageRecord) -> Result<(), Error> {
        let result = async {
            tokio::fs::write(
                self.tmp.join(RECORD),
                serde_json::to_vec_pretty(record).expect("json"),
            )
            .await?;
            tokio::fs::write(self.tmp.join(READY), b"").await?;
            tokio::fs::rename(&self.tmp, self.images.dir.join(&self.id)).await?;
            Ok::<_, Error>(())
        }
        .await;
        if result.is_err() {
            self.abandon().await;
        }
        result
    }

    /// Removes what was made of it.
    pub async fn abandon(self) {
        let _ = crate::gently::remove(&self.tmp).await;
    }
}

impl Drop for NewImage {
    fn drop(&mut self) {
        let tmp_name = temporary_name(&self.id);
        IMPORTING.lock().unwrap().retain(|n| *n != tmp_name);
    }
}

/// The temporary directory's name of image `id` in the making.
fn temporary_name(id: &str) -> String {
    format!(".{id}.importing")
}

/// Temporary directories of imports under way in this process.
static IMPORTING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn new_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: fills the buffer it is given.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    format!(
        "{ID_PREFIX}{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

pub fn is_id(s: &str) -> bool {
    s.strip_prefix(ID_PREFIX)
        .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn describe(source: &Source) -> String {
    match source {
        Source::Registry(r) => r.clone(),
        Source::OciDir(p) => format!("oci:{}", p.display()),
        Source::OciArchive(_) => "oci-archive".into(),
        Source::DockerArchive(_) => "docker-archive".into(),
    }
}

fn now_rfc3339() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = t.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        t.subsec_micros()
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Bytes of the files under `root` (each hard-linked file once).
async fn disk_usage(root: &Path) -> u64 {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::MetadataExt;
        let (mut total, mut seen, mut todo) = (0u64, HashSet::new(), vec![root]);
        while let Some(dir) = todo.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                if m.is_dir() {
                    todo.push(e.path());
                } else if m.nlink() == 1 || seen.insert((m.dev(), m.ino())) {
                    total += m.len();
                }
            }
        }
        total
    })
    .await
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_793), (2026, 12, 6));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let now = now_rfc3339();
        assert_eq!(now.len(), "2026-12-06T14:43:08.000000Z".len(), "{now}");
    }

    #[test]
    fn ids_are_checked() {
        assert!(is_id("img-0a1b"));
        assert!(!is_id("img-"));
        assert!(!is_id("default"));
        assert!(!is_id("img-../x"));
        assert!(is_id(&new_id()));
    }

    /// A tiny image in an OCI layout, made by hand: one layer, one config.
    fn layout(dir: &Path, files: &[(&str, &str)], env: &str) {
        let mut b = tar::Builder::new(Vec::new());
        for (path, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(text.len() as u64);
            b.append_data(&mut h, path, text.as_bytes()).unwrap();
        }
        let layer = b.into_inner().unwrap();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["{env}"],"WorkingDir":"/w"}}}}"#
        );
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let d = fake_digest(data);
            std::fs::write(blobs.join(&d), data).unwrap();
            (format!("sha256:{d}"), data.len())
        };
        let (ld, ls) = put(&layer);
        let (cd, cs) = put(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{ls}}}]}}"#
        );
        let (md, ms) = put(manifest.as_bytes());
        std::fs::write(
            dir.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms}}}]}}"#
            ),
        )
        .unwrap();
    }

    /// Blob names for test layouts (an `oci:` layout's digests are not
    /// checked, only used as names).
    fn fake_digest(data: &[u8]) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in data {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }

    #[tokio::test]
    async fn imports_replace_names_and_removed_images_go_once_unused() {
        let t = tempfile::tempdir().unwrap();
        let images = CustomImages::new(t.path().join("images"));
        let (one, two) = (t.path().join("one"), t.path().join("two"));
        layout(&one, &[("etc/v", "1")], "V=1");
        layout(&two, &[("etc/v", "2")], "V=2");
        let none = Credentials::default();
        let quiet = |_: Progress| {};
        let a = images
            .import("app", &Source::OciDir(one), &none, false, &quiet)
            .await
            .unwrap();
        assert_eq!(a.config.env, vec!["V=1"]);
        assert_eq!(a.config.working_dir.as_deref(), Some("/w"));
        assert_eq!(
            std::fs::read_to_string(images.rootfs(&a.id).join("etc/v")).unwrap(),
            "1"
        );
        let b = images
            .import("app", &Source::OciDir(two), &none, false, &quiet)
            .await
            .unwrap();
        // The name moved to the new import; the old one stays while used.
        assert_eq!(images.find("app").unwrap().id, b.id);
        assert_eq!(images.list().len(), 1);
        assert!(images.get(&a.id).is_some());
        let on_disk: Vec<(String, bool)> = images
            .on_disk()
            .into_iter()
            .map(|(r, removed)| (r.id, removed))
            .collect();
        assert_eq!(on_disk, [(b.id.clone(), false), (a.id.clone(), true)]);
        // Only what the predicate names goes.
        assert!(images.collect(|_| false).await.is_empty());
        assert!(images.rootfs(&a.id).exists());
        assert_eq!(images.collect(|id| id == a.id).await, vec![a.id.clone()]);
        assert!(!images.rootfs(&a.id).exists());
        assert!(images.rootfs(&b.id).exists());
        assert_eq!(images.ids(), [b.id.as_str()]);
    }

    /// Records what it is told, and refuses names starting with `bad`.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl Catalog for Recorder {
        fn record<'a>(
            &'a self,
            record: &'a ImageRecord,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
            Box::pin(async move {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("record {}", record.name));
                if record.name.starts_with("bad") {
                    return Err("refused".into());
                }
                Ok(())
            })
        }

        fn committed(&self, record: &ImageRecord) {
            self.0
                .lock()
                .unwrap()
                .push(format!("committed {}", record.name));
        }

        fn abandoned(&self, record: &ImageRecord) {
            self.0
                .lock()
                .unwrap()
                .push(format!("abandoned {}", record.name));
        }
    }

    #[tokio::test]
    async fn commits_are_recorded_in_the_catalog_first() {
        let t = tempfile::tempdir().unwrap();
        let images = CustomImages::new(t.path().join("images"));
        let catalog = Arc::new(Recorder::default());
        images.clone().set_catalog(catalog.clone()).unwrap();
        assert!(images.set_catalog(catalog.clone()).is_err());
        let source = t.path().join("one");
        layout(&source, &[("etc/v", "1")], "V=1");
        let quiet = |_: Progress| {};
        let none = Credentials::default();
        let a = images
            .import("app", &Source::OciDir(source.clone()), &none, false, &quiet)
            .await
            .unwrap();
        let e = images
            .import("bad", &Source::OciDir(source), &none, false, &quiet)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        assert_eq!(
            *catalog.0.lock().unwrap(),
            ["record app", "committed app", "record bad"]
        );
        // The refused image left nothing.
        assert_eq!(images.ids(), [a.id]);
        assert_eq!(std::fs::read_dir(images.dir()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn a_failed_import_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let images = CustomImages::new(t.path().join("images"));
        let broken = t.path().join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("index.json"), "{}").unwrap();
        let e = images
            .import(
                "x",
                &Source::OciDir(broken),
                &Credentials::default(),
                false,
                &|_| {},
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("index.json"), "{e}");
        assert_eq!(
            std::fs::read_dir(t.path().join("images")).unwrap().count(),
            0
        );
    }
}
