//! Store locations as one string; see [`BlobsUrl`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{Error, Locker, Result, Store, S3};

/// The region used when the URL names none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Where a store is, as one string (e.g. a `--blobs` flag):
///
/// ```text
/// /var/lib/sbx/store                       a local directory (LocalDir)
/// file:///var/lib/sbx/store                the same
/// s3://BUCKET[/PREFIX][?endpoint=URL&region=R]
/// ```
///
/// An S3 URL names no credentials: they come from `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and (optionally) `AWS_SESSION_TOKEN` when the
/// store is opened. `endpoint` is an `http://` or `https://` URL (default:
/// AWS's endpoint for the region); `region` defaults to `us-east-1`.
/// Requests are path-style (`ENDPOINT/BUCKET/KEY`), so a bucket name need
/// not resolve in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobsUrl {
    Local(PathBuf),
    S3(S3Config),
}

/// An S3 bucket (and key prefix) on an S3-compatible server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (`""`: none). Objects are
    /// `PREFIX/chunks/ab/<hash>.zst` and `PREFIX/manifests/<id>.json`.
    pub prefix: String,
    /// `http(s)://host[:port][/path]` without a trailing `/`; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// `None`: read from the environment when the store is opened
    /// ([`S3Credentials::from_env`]).
    pub credentials: Option<S3Credentials>,
}

/// An S3 access key. `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl S3Credentials {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (both required) and
    /// `AWS_SESSION_TOKEN` (optional). There is deliberately no fallback to
    /// instance metadata or profile files: the key in use is always the one
    /// the operator set.
    pub fn from_env() -> Result<S3Credentials> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            _ => Err(Error::Config(
                "S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (and AWS_SESSION_TOKEN for temporary credentials)"
                    .into(),
            )),
        }
    }
}

impl S3Config {
    /// `s3://bucket/prefix at ENDPOINT`, for logs.
    pub fn describe(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        match &self.endpoint {
            Some(e) => s.push_str(&format!(" at {e}")),
            None => s.push_str(&format!(" at AWS ({})", self.region)),
        }
        s
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidUrl(reason.into())
}

const USAGE: &str = "expected a directory path, file:///PATH or \
                     s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]";

impl BlobsUrl {
    /// Parses a location (see [`BlobsUrl`]). Reads nothing from
    /// the environment and touches nothing.
    pub fn parse(s: &str) -> Result<BlobsUrl> {
        if s.is_empty() {
            return Err(invalid(format!("empty ({USAGE})")));
        }
        let Some((scheme, rest)) = s.split_once("://").filter(|(scheme, _)| {
            let mut b = scheme.bytes();
            b.next().is_some_and(|c| c.is_ascii_alphabetic())
                && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        }) else {
            return Ok(BlobsUrl::Local(PathBuf::from(s)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "s3" => parse_s3(rest).map(BlobsUrl::S3),
            "file" => parse_file(s),
            other => Err(invalid(format!("unknown scheme {other:?} ({USAGE})"))),
        }
    }

    /// Opens the store (creating a local directory if needed). An S3 store
    /// takes its lock from an in-process [`LocalLocker`](crate::LocalLocker):
    /// enough for one process; hosts sharing a bucket need
    /// [`open_with_locker`](Self::open_with_locker).
    pub fn open(&self) -> Result<Store> {
        match self {
            BlobsUrl::Local(dir) => Store::open(dir),
            BlobsUrl::S3(c) => Ok(Store::with_backend(Arc::new(S3::open(c)?))),
        }
    }

    /// Like [`open`](Self::open), with the lock of an S3 store taken from
    /// `locker`. A local directory keeps its own `flock`, which already
    /// coordinates every process on the host.
    pub fn open_with_locker(&self, locker: Arc<dyn Locker>) -> Result<Store> {
        match self {
            BlobsUrl::Local(dir) => Store::open(dir),
            BlobsUrl::S3(c) => Ok(Store::with_backend(Arc::new(
                S3::open(c)?.with_locker(locker),
            ))),
        }
    }
}

impl std::str::FromStr for BlobsUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<BlobsUrl> {
        BlobsUrl::parse(s)
    }
}

/// The canonical form, without credentials (there are none in it).
impl fmt::Display for BlobsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobsUrl::Local(p) => write!(f, "{}", p.display()),
            BlobsUrl::S3(c) => {
                write!(f, "s3://{}", c.bucket)?;
                if !c.prefix.is_empty() {
                    write!(f, "/{}", c.prefix)?;
                }
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                if let Some(e) = &c.endpoint {
                    q.append_pair("endpoint", e);
                }
                q.append_pair("region", &c.region);
                write!(f, "?{}", q.finish())
            }
        }
    }
}

fn parse_file(s: &str) -> Result<BlobsUrl> {
    let u = url::Url::parse(s).map_err(|e| invalid(format!("file URL: {e}")))?;
    if u.query().is_some() || u.fragment().is_some() {
        return Err(invalid("a file:// URL takes no query or fragment"));
    }
    match u.host_str() {
        None | Some("") | Some("localhost") => {}
        Some(h) => {
            return Err(invalid(format!(
                "file:// URL names host {h:?}; only local paths (file:///PATH) are supported"
            )))
        }
    }
    let path = u
        .to_file_path()
        .map_err(|()| invalid("file:// URL is not an absolute local path"))?;
    Ok(BlobsUrl::Local(path))
}

fn parse_s3(rest: &str) -> Result<S3Config> {
    if rest.contains('#') {
        return Err(invalid("an s3:// URL takes no fragment ('#')"));
    }
    let (loc, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = loc.split_once('/').unwrap_or((loc, ""));
    if bucket.contains('@') {
        return Err(invalid(
            "put S3 credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, not in the URL",
        ));
    }
    if bucket.is_empty() {
        return Err(invalid(format!("missing bucket ({USAGE})")));
    }
    validate_bucket(bucket)?;
    let prefix = prefix.trim_end_matches('/');
    for seg in prefix.split('/').filter(|_| !prefix.is_empty()) {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(invalid(format!(
                "bad key prefix {prefix:?}: segments of [A-Za-z0-9._-], separated by single '/'"
            )));
        }
    }
    let mut config = S3Config {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        endpoint: None,
        region: DEFAULT_REGION.to_owned(),
        credentials: None,
    };
    let mut seen = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if seen.contains(&k) {
            return Err(invalid(format!("query key {k:?} given twice")));
        }
        if v.is_empty() {
            return Err(invalid(format!("query key {k:?} has no value")));
        }
        match &*k {
            "endpoint" => config.endpoint = Some(validate_endpoint(&v)?),
            "region" => {
                if !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                {
                    return Err(invalid(format!("bad region {v:?}")));
                }
                config.region = v.to_string();
            }
            _ => {
                return Err(invalid(format!(
                    "unknown query key {k:?} (known: endpoint, region)"
                )))
            }
        }
        seen.push(k);
    }
    Ok(config)
}

/// Names S3-compatible servers accept: 3-63 of `[a-z0-9.-]` in AWS's rules;
/// uppercase and `_` too, which some other servers allow.
fn validate_bucket(b: &str) -> Result<()> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "bad bucket name {b:?} (3-63 of [a-z0-9.-], starting and ending with a letter or digit)"
        )))
    }
}

fn validate_endpoint(e: &str) -> Result<String> {
    // Before anything that would repeat the value in an error.
    if e.contains('@') {
        return Err(invalid(
            "endpoint: put S3 credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, not in the URL",
        ));
    }
    let not_http = || invalid(format!("endpoint {e:?}: not an http:// or https:// URL"));
    if !e.contains("://") {
        return Err(not_http());
    }
    let u = url::Url::parse(e).map_err(|err| invalid(format!("endpoint {e:?}: {err}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(not_http());
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("endpoint {e:?}: no host")));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(invalid(format!(
            "endpoint {e:?}: no query or fragment allowed (percent-encode it if it was meant for the endpoint)"
        )));
    }
    Ok(u.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(url: &str) -> S3Config {
        match BlobsUrl::parse(url).unwrap() {
            BlobsUrl::S3(c) => c,
            other => panic!("{url}: {other:?}"),
        }
    }

    fn err(url: &str) -> String {
        match BlobsUrl::parse(url) {
            Err(e @ Error::InvalidUrl(_)) => e.to_string(),
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn local_paths() {
        for (s, p) in [
            ("/var/lib/sbx/store", "/var/lib/sbx/store"),
            ("store", "store"),
            ("./a:b", "./a:b"),
            ("file:///var/lib/sbx/store", "/var/lib/sbx/store"),
            ("file://localhost/srv/x", "/srv/x"),
            ("FILE:///srv/a%20b", "/srv/a b"),
        ] {
            assert_eq!(
                BlobsUrl::parse(s).unwrap(),
                BlobsUrl::Local(p.into()),
                "{s}"
            );
        }
        assert!(err("file://otherhost/x").contains("host"));
        assert!(err("file:///x?y=1").contains("no query"));
        assert!(err("").contains("empty"));
    }

    #[test]
    fn s3_urls() {
        let c = s3("s3://sbx-blobs");
        assert_eq!(
            c,
            S3Config {
                bucket: "sbx-blobs".into(),
                prefix: "".into(),
                endpoint: None,
                region: "us-east-1".into(),
                credentials: None,
            }
        );
        assert_eq!(c.describe(), "s3://sbx-blobs at AWS (us-east-1)");

        let c = s3("s3://b.1/a/b-c/d_e.f/?endpoint=http://127.0.0.1:8333/&region=eu-west-3");
        assert_eq!(c.bucket, "b.1");
        assert_eq!(c.prefix, "a/b-c/d_e.f");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(
            c.describe(),
            "s3://b.1/a/b-c/d_e.f at http://127.0.0.1:8333"
        );
        // Display is the canonical URL, and parses back to the same.
        let u = BlobsUrl::S3(c.clone());
        assert_eq!(
            u.to_string(),
            "s3://b.1/a/b-c/d_e.f?endpoint=http%3A%2F%2F127.0.0.1%3A8333&region=eu-west-3"
        );
        assert_eq!(BlobsUrl::parse(&u.to_string()).unwrap(), u);

        // Percent-encoded endpoint, a path on it, https.
        let c = s3("s3://bkt/p?endpoint=https%3A%2F%2Fminio.example%3A9000%2Fs3");
        assert_eq!(c.endpoint.as_deref(), Some("https://minio.example:9000/s3"));
        assert_eq!(s3("s3://bkt?region=x").prefix, "");
        assert_eq!(s3("S3://bkt/").prefix, "");
    }

    #[test]
    fn bad_urls() {
        for (url, says) in [
            ("gs://bucket", "unknown scheme \"gs\""),
            ("http://127.0.0.1:8333/b", "unknown scheme \"http\""),
            ("s3://", "missing bucket"),
            ("s3:///prefix", "missing bucket"),
            ("s3://?endpoint=http://x", "missing bucket"),
            ("s3://ab", "bad bucket name"),
            ("s3://Bad!Bucket", "bad bucket name"),
            ("s3://-bkt", "bad bucket name"),
            ("s3://key:secret@bkt", "AWS_ACCESS_KEY_ID"),
            ("s3://bkt?endpoint=http://k:s@host", "AWS_ACCESS_KEY_ID"),
            ("s3://bkt/a//b", "bad key prefix"),
            ("s3://bkt/../x", "bad key prefix"),
            ("s3://bkt/a b", "bad key prefix"),
            (
                "s3://bkt?endpoint=ftp://x",
                "not an http:// or https:// URL",
            ),
            (
                "s3://bkt?endpoint=127.0.0.1:8333",
                "not an http:// or https:// URL",
            ),
            (
                "s3://bkt?endpoint=http://",
                "endpoint \"http://\": empty host",
            ),
            ("s3://bkt?endpoint=", "has no value"),
            ("s3://bkt?region=a&region=b", "given twice"),
            ("s3://bkt?region=a/b", "bad region"),
            ("s3://bkt?bucket=x", "unknown query key \"bucket\""),
            ("s3://bkt?endpoint=http://h?x=1", "no query"),
            ("s3://bkt?endpoint=ftp://k:secret@h", "AWS_ACCESS_KEY_ID"),
            ("s3://bkt#frag", "fragment"),
        ] {
            let e = err(url);
            assert!(e.contains(says), "{url}: {e:?} lacks {says:?}");
            assert!(e.starts_with("invalid blob store URL: "), "{e}");
            assert!(
                !e.contains("secret"),
                "{url}: the error repeats a secret: {e}"
            );
        }
    }

    #[test]
    fn credentials_are_not_shown() {
        let c = S3Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("tok".into()),
        };
        let d = format!("{c:?}");
        assert!(d.contains("AKIDEXAMPLE") && !d.contains("wJalr") && !d.contains("tok\""));
    }
}
