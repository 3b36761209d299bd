//! The S3-compatible backend; see [`S3`].

use std::future::Future;
use std::sync::{mpsc, Arc};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::location::{S3Config, S3Credentials};
use crate::{Backend, Error, Kind, LocalLocker, LockGuard, LockMode, Locker, ObjectInfo, Result};

/// Worker threads of the backend's runtime: requests are I/O-bound, and the
/// store's chunk workers (up to four) each wait for one at a time.
const RUNTIME_THREADS: usize = 2;

/// A store in an S3-compatible bucket, through the `object_store` crate:
///
/// ```text
/// PREFIX/chunks/ab/abcdef….zst   chunk, named by the hex BLAKE3 of its content
/// PREFIX/manifests/<id>.json     manifest
/// ```
///
/// An S3 PUT is atomic and durable once it returns, so there are no
/// temporaries and `sync` has nothing to do. The store lock is not kept in
/// the bucket: see [`Locker`].
///
/// [`Backend`] is synchronous; `S3` runs its requests on a small tokio
/// runtime of its own and waits for them. It is meant for blocking threads
/// (`spawn_blocking`, the store's own workers), like file I/O is. Called on
/// a thread of a multi-thread tokio runtime it waits in
/// [`block_in_place`](tokio::task::block_in_place), so that runtime's other
/// tasks move to other threads; on a current-thread runtime it simply blocks
/// that thread (the requests make progress on the backend's own runtime, so
/// this cannot deadlock). Dropping it never waits (no panic in async code).
pub struct S3 {
    client: Arc<dyn ObjectStore>,
    prefix: Key,
    described: String,
    bucket: String,
    locker: Arc<dyn Locker>,
    runtime: OwnRuntime,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3({})", self.described)
    }
}

/// A runtime shut down without waiting for its threads: dropping a tokio
/// runtime in an async context panics, `shutdown_background` does not.
struct OwnRuntime(Option<Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl S3 {
    /// Sets up the client; sends no request. Credentials are the config's,
    /// else [`S3Credentials::from_env`]. Locks with a fresh [`LocalLocker`]
    /// until [`with_locker`](Self::with_locker) says otherwise.
    pub fn open(config: &S3Config) -> Result<S3> {
        let creds = match &config.credentials {
            Some(c) => c.clone(),
            None => S3Credentials::from_env()?,
        };
        let runtime = OwnRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_THREADS)
                .thread_name("sbx-store-s3")
                .enable_all()
                .build()
                .map_err(|e| Error::Config(format!("S3 client runtime: {e}")))?,
        ));
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key)
            .with_virtual_hosted_style_request(false)
            // No SHA-256 of every chunk written (CPU a restore beside it
            // wants): a chunk is checked against its BLAKE3 name when read.
            .with_unsigned_payload(true);
        if let Some(token) = creds.session_token {
            b = b.with_token(token);
        }
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        // The client's connection pool spawns onto the runtime it finds.
        let client = {
            let _enter = runtime.0.as_ref().map(Runtime::enter);
            b.build()
        }
        .map_err(|e| Error::Config(format!("S3 client for {}: {e}", config.describe())))?;
        let prefix = if config.prefix.is_empty() {
            Key::default()
        } else {
            Key::parse(&config.prefix)
                .map_err(|e| Error::InvalidUrl(format!("key prefix {:?}: {e}", config.prefix)))?
        };
        Ok(S3 {
            client: Arc::new(client),
            prefix,
            described: config.describe(),
            bucket: config.bucket.clone(),
            locker: Arc::new(LocalLocker::default()),
            runtime,
        })
    }

    /// Takes the store lock from `locker` (e.g. one that every host sharing
    /// the bucket reaches) instead of an in-process one.
    pub fn with_locker(mut self, locker: Arc<dyn Locker>) -> S3 {
        self.locker = locker;
        self
    }

    fn dir(&self, kind: Kind) -> Key {
        self.prefix.clone().join(match kind {
            Kind::Chunk => "chunks",
            Kind::Manifest => "manifests",
        })
    }

    fn key(&self, kind: Kind, name: &str) -> Key {
        match kind {
            Kind::Chunk => self
                .dir(kind)
                .join(name.get(..2).unwrap_or("__"))
                .join(format!("{name}.zst").as_str()),
            Kind::Manifest => self.dir(kind).join(format!("{name}.json").as_str()),
        }
    }

    /// Runs `fut` on the backend's runtime and waits for it (see [`S3`]
    /// for how, from which threads).
    fn wait<F>(&self, fut: F) -> Result<F::Output, String>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(rt) = &self.runtime.0 else {
            return Err("the S3 client's runtime is gone".into());
        };
        let (tx, rx) = mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        blocking(|| rx.recv())
            .map_err(|_| "the S3 request was dropped (client runtime stopped)".to_owned())
    }

    /// Runs a request; errors name the operation and the object.
    fn request<T, F>(&self, op: &'static str, key: &Key, fut: F) -> Result<T>
    where
        F: Future<Output = object_store::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let remote = |source| self.remote(op, key, source);
        match self.wait(fut) {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(remote(Box::new(e))),
            Err(e) => Err(remote(e.into())),
        }
    }

    /// The error of operation `op` on `key` that failed with `source`.
    fn remote(
        &self,
        op: &'static str,
        key: &Key,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Error {
        Error::Remote {
            op,
            key: format!("s3://{}/{key}", self.bucket),
            source,
        }
    }

    /// Every key in the bucket, prefix or not (tests check the layout).
    #[cfg(test)]
    pub(crate) fn all_keys(&self) -> Result<Vec<String>> {
        let client = self.client.clone();
        let mut keys: Vec<String> = self.request("list", &Key::default(), async move {
            client
                .list(None)
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
        })?;
        keys.sort();
        Ok(keys)
    }
}

/// Runs `wait`, which blocks, from any thread: on a worker of a
/// multi-thread tokio runtime in [`block_in_place`](tokio::task::block_in_place),
/// so that its other tasks move to other threads.
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        // block_in_place refuses (panics before it blocks) only on a thread
        // that drives a current-thread runtime while it has a multi-thread
        // one's handle entered; then block plainly. The closure is taken
        // back for that: it has not run.
        Ok(RuntimeFlavor::MultiThread) => {
            let mut wait = Some(wait);
            let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::task::block_in_place(|| wait.take().map(|w| w()))
            }));
            match (tried, wait) {
                (Ok(Some(t)), _) => t,
                (_, Some(w)) => w(),
                (Err(panic), None) => std::panic::resume_unwind(panic),
                (Ok(None), None) => unreachable!("the closure ran and returned"),
            }
        }
        _ => wait(),
    }
}

/// What a streamed GET hands from the client's runtime to the reader.
enum Piece {
    Bytes(bytes::Bytes),
    Missing,
    Failed(object_store::Error),
    End,
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Backend for S3 {
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Vec<u8>>> {
        let (client, key) = (self.client.clone(), self.key(kind, name));
        let k = key.clone();
        self.request("get", &key, async move {
            match client.get_opts(&k, GetOptions::default()).await {
                Ok(r) => Ok(Some(r.bytes().await?.into())),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// The body's pieces come from the client's runtime over a short
    /// channel and `sink` runs on this thread: no piece is copied into a
    /// whole object, and what `sink` does (hashing, writing a file) stays
    /// off the runtime's two threads.
    fn get_with(
        &self,
        kind: Kind,
        name: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<bool> {
        let key = self.key(kind, name);
        let remote = |source| self.remote("get", &key, source);
        let Some(rt) = &self.runtime.0 else {
            return Err(remote("the S3 client's runtime is gone".into()));
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let (client, k) = (self.client.clone(), key.clone());
        rt.spawn(async move {
            let mut body = match client.get_opts(&k, GetOptions::default()).await {
                Ok(r) => r.into_stream(),
                Err(e) if not_found(&e) => return drop(tx.send(Piece::Missing).await),
                Err(e) => return drop(tx.send(Piece::Failed(e)).await),
            };
            while let Some(piece) = body.next().await {
                let piece = match piece {
                    Ok(b) => Piece::Bytes(b),
                    Err(e) => Piece::Failed(e),
                };
                let last = matches!(piece, Piece::Failed(_));
                // A closed channel: the reader gave up (its sink failed).
                if tx.send(piece).await.is_err() || last {
                    return;
                }
            }
            let _ = tx.send(Piece::End).await;
        });
        blocking(|| loop {
            // Not blocking_recv, which refuses a current-thread runtime's
            // thread (see S3: such a thread simply blocks).
            match futures::executor::block_on(rx.recv()) {
                Some(Piece::Bytes(b)) => sink(&b)?,
                Some(Piece::Missing) => return Ok(false),
                Some(Piece::Failed(e)) => return Err(remote(Box::new(e))),
                Some(Piece::End) => return Ok(true),
                None => {
                    return Err(remote(
                        "the S3 request was dropped (client runtime stopped)".into(),
                    ))
                }
            }
        })
    }

    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<()> {
        let (client, key) = (self.client.clone(), self.key(kind, name));
        let (k, payload) = (key.clone(), PutPayload::from(data.to_vec()));
        self.request("put", &key, async move {
            client
                .put_opts(&k, payload, PutOptions::default())
                .await
                .map(drop)
        })
    }

    fn exists(&self, kind: Kind, name: &str) -> Result<bool> {
        let (client, key) = (self.client.clone(), self.key(kind, name));
        let k = key.clone();
        self.request("stat", &key, async move {
            match client.get_opts(&k, GetOptions::new().with_head(true)).await {
                Ok(_) => Ok(true),
                Err(e) if not_found(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// An S3 DELETE succeeds whether or not the object exists, so a HEAD
    /// comes first to tell which.
    fn delete(&self, kind: Kind, name: &str) -> Result<bool> {
        let (client, key) = (self.client.clone(), self.key(kind, name));
        let k = key.clone();
        self.request("delete", &key, async move {
            match client.get_opts(&k, GetOptions::new().with_head(true)).await {
                Ok(_) => {}
                Err(e) if not_found(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
            let one = futures::stream::once(async move { Ok(k) });
            client
                .delete_stream(Box::pin(one))
                .try_collect::<Vec<_>>()
                .await?;
            Ok(true)
        })
    }

    /// Pages through the kind's prefix (`object_store` follows the
    /// continuation tokens); keys outside the layout are left out.
    fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        let (client, dir) = (self.client.clone(), self.dir(kind));
        let d = dir.clone();
        let metas: Vec<object_store::ObjectMeta> = self.request("list", &dir, async move {
            client.list(Some(&d)).try_collect().await
        })?;
        let (depth, suffix) = match kind {
            Kind::Chunk => (2, ".zst"),
            Kind::Manifest => (1, ".json"),
        };
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.prefix_match(&dir)?.collect();
                let last = parts.last()?.as_ref();
                let name = last.strip_suffix(suffix)?;
                (parts.len() == depth && !name.is_empty()).then(|| ObjectInfo {
                    name: name.to_owned(),
                    size: m.size,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Nothing to do: a PUT returns once the object is durable.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn lock(&self, mode: LockMode) -> Result<LockGuard> {
        self.locker.lock(mode)
    }

    /// A PUT is all or nothing: no temporaries.
    fn remove_temporaries(&self) -> Result<u64> {
        Ok(0)
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}
