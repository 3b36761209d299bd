//! HTTP client of the CLI: the control plane (lifecycle routes under
//! `/v1/namespaces/{ns}`), the data plane (a sandbox's daemon reached through
//! the sandbox proxy at its `sandbox_url`), and the SSE framing of streamed
//! answers.

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use sbx_api::image::{ImageInfo, ImportImageRequest, ListImagesResponse};
use sbx_api::node::{ListNodesResponse, NodeInfo};
use sbx_api::pool::{ClaimRequest, CreatePoolResponse, ListPoolsResponse, PoolInfo, PoolRequest};
use sbx_api::sandbox::{
    CreateSandboxRequest, CreateSandboxResponse, ListSandboxesResponse, SandboxInfo, SandboxStatus,
    UpdateSandboxRequest,
};
use sbx_api::secret::{ListSecretsResponse, SecretInfo, SetSecretRequest};
use sbx_api::snapshot::{
    CopySandboxResponse, CreateSnapshotRequest, CreateSnapshotResponse, ListSnapshotsResponse,
    SnapshotInfo, SnapshotType,
};
use sbx_api::ErrorBody;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Header naming the sandbox a data-plane request is for.
pub const SANDBOX_HEADER: &str = "X-Tensorlake-Sandbox-Id";

/// A non-2xx answer from the server. Displays as the server's message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    #[allow(dead_code)] // for callers that act on the code
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            f.write_str(" (set the key with --api-key or SBX_API_KEY)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// Builds the error from a status and the raw body: `{"code","message"}`
    /// when the body is such JSON, else the text itself.
    pub fn from_body(status: StatusCode, body: &str) -> Self {
        match serde_json::from_str::<ErrorBody>(body) {
            Ok(e) => Self {
                status,
                code: e.code,
                message: e.message,
            },
            Err(_) => {
                let text = body.trim();
                let message = if text.is_empty() {
                    format!(
                        "server answered {} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                    .trim_end()
                    .to_string()
                } else {
                    text.to_string()
                };
                Self {
                    status,
                    code: status.as_str().to_string(),
                    message,
                }
            }
        }
    }
}

/// Where a sandbox's daemon is reached: its real id and the proxy URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sandbox_id: String,
    pub url: String,
}

pub struct Client {
    http: reqwest::Client,
    api_url: String,
    api_key: Option<String>,
    namespace: String,
    targets: Mutex<HashMap<String, Target>>,
}

impl Client {
    pub fn new(api_url: &str, api_key: Option<String>, namespace: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("sbx-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            namespace: namespace.to_string(),
            targets: Mutex::new(HashMap::new()),
        })
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// `{api}/v1/namespaces/{ns}/sandboxes{suffix}`.
    fn sandboxes_url(&self, suffix: &str) -> String {
        format!(
            "{}/v1/namespaces/{}/sandboxes{}",
            self.api_url,
            encode_segment(&self.namespace),
            suffix
        )
    }

    fn authed(&self, rb: RequestBuilder) -> RequestBuilder {
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    fn api(&self, method: Method, url: String) -> RequestBuilder {
        self.authed(self.http.request(method, url))
    }

    /// Sends a request; a non-2xx answer becomes an [`ApiError`].
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().await.map_err(connect_error)?;
        check(resp).await
    }

    pub async fn create(&self, req: &CreateSandboxRequest) -> Result<CreateSandboxResponse> {
        let rb = self.api(Method::POST, self.sandboxes_url("")).json(req);
        Ok(self.send(rb).await?.json().await?)
    }

    pub async fn get(&self, id: &str) -> Result<SandboxInfo> {
        let url = self.sandboxes_url(&format!("/{}", encode_segment(id)));
        Ok(self.send(self.api(Method::GET, url)).await?.json().await?)
    }

    /// One page of a sandbox's persisted logs (`query`: level, processId,
    /// nextToken, head, tail, body).
    pub async fn logs(
        &self,
        id: &str,
        query: &[(&str, String)],
    ) -> Result<sbx_api::logs::LogsResponse> {
        let url = self.sandboxes_url(&format!("/{}/logs", encode_segment(id)));
        let rb = self.api(Method::GET, url).query(query);
        Ok(self.send(rb).await?.json().await?)
    }

    /// The processes a sandbox's logs have records of.
    pub async fn log_processes(&self, id: &str) -> Result<Vec<sbx_api::logs::LogProcess>> {
        let url = self.sandboxes_url(&format!("/{}/processes", encode_segment(id)));
        let list: sbx_api::logs::LogProcessesResponse =
            self.send(self.api(Method::GET, url)).await?.json().await?;
        Ok(list.processes)
    }

    /// Lists sandboxes: `all` includes terminated ones; `status` filters.
    pub async fn list(&self, all: bool, status: Option<SandboxStatus>) -> Result<Vec<SandboxInfo>> {
        let mut rb = self.api(Method::GET, self.sandboxes_url(""));
        if all {
            rb = rb.query(&[("all", "true")]);
        }
        if let Some(s) = status {
            rb = rb.query(&[("status", s.as_str())]);
        }
        let list: ListSandboxesResponse = self.send(rb).await?.json().await?;
        Ok(list.sandboxes)
    }

    pub async fn update(&self, id: &str, req: &UpdateSandboxRequest) -> Result<SandboxInfo> {
        let url = self.sandboxes_url(&format!("/{}", encode_segment(id)));
        let rb = self.api(Method::PATCH, url).json(req);
        Ok(self.send(rb).await?.json().await?)
    }

    pub async fn terminate(&self, id: &str) -> Result<()> {
        let url = self.sandboxes_url(&format!("/{}", encode_segment(id)));
        self.send(self.api(Method::DELETE, url)).await?;
        self.targets.lock().unwrap().remove(id);
        Ok(())
    }

    /// `{api}/v1/namespaces/{ns}/snapshots{suffix}`.
    fn snapshots_url(&self, suffix: &str) -> String {
        format!(
            "{}/v1/namespaces/{}/snapshots{}",
            self.api_url,
            encode_segment(&self.namespace),
            suffix
        )
    }

    /// Starts a snapshot of sandbox `id` (the server's default type when `None`).
    pub async fn snapshot(
        &self,
        id: &str,
        snapshot_type: Option<SnapshotType>,
    ) -> Result<CreateSnapshotResponse> {
        let url = self.sandboxes_url(&format!("/{}/snapshot", encode_segment(id)));
        let rb = self
            .api(Method::POST, url)
            .json(&CreateSnapshotRequest { snapshot_type });
        Ok(self.send(rb).await?.json().await?)
    }

    pub async fn snapshot_info(&self, snapshot_id: &str) -> Result<SnapshotInfo> {
        let url = self.snapshots_url(&format!("/{}", encode_segment(snapshot_id)));
        Ok(self.send(self.api(Method::GET, url)).await?.json().await?)
    }

    /// Snapshots of the namespace, or only those taken from sandbox `of`.
    pub async fn snapshots(&self, of: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let url = match of {
            Some(id) => self.sandboxes_url(&format!("/{}/snapshots", encode_segment(id))),
            None => self.snapshots_url(""),
        };
        let list: ListSnapshotsResponse =
            self.send(self.api(Method::GET, url)).await?.json().await?;
        Ok(list.snapshots)
    }

    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        let url = self.snapshots_url(&format!("/{}", encode_segment(snapshot_id)));
        self.send(self.api(Method::DELETE, url)).await?;
        Ok(())
    }

    /// `{api}/v1/namespaces/{ns}/images{suffix}`.
    fn images_url(&self, suffix: &str) -> String {
        format!(
            "{}/v1/namespaces/{}/images{}",
            self.api_url,
            encode_segment(&self.namespace),
            suffix
        )
    }

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let url = format!("{}/v1/nodes", self.api_url);
        let list: ListNodesResponse = self.send(self.api(Method::GET, url)).await?.json().await?;
        Ok(list.nodes)
    }

    pub async fn node(&self, id: &str) -> Result<NodeInfo> {
        let url = format!("{}/v1/nodes/{}", self.api_url, encode_segment(id));
        Ok(self.send(self.api(Method::GET, url)).await?.json().await?)
    }

    /// `POST /v1/cluster/join` with the node token as the key.
    pub async fn join(&self) -> Result<sbx_api::node::JoinResponse> {
        let url = format!("{}/v1/cluster/join", self.api_url);
        Ok(self.send(self.api(Method::POST, url)).await?.json().await?)
    }

    /// `drain` or `undrain`.
    pub async fn node_action(&self, id: &str, action: &str) -> Result<NodeInfo> {
        let url = format!("{}/v1/nodes/{}/{action}", self.api_url, encode_segment(id));
        Ok(self.send(self.api(Method::POST, url)).await?.json().await?)
    }

    pub async fn images(&self) -> Result<Vec<ImageInfo>> {
        let list: ListImagesResponse = self
            .send(self.api(Method::GET, self.images_url("")))
            .await?
            .json()
            .await?;
        Ok(list.images)
    }

    pub async fn image(&self, name: &str) -> Result<ImageInfo> {
        let url = self.images_url(&format!("/{}", encode_segment(name)));
        Ok(self.send(self.api(Method::GET, url)).await?.json().await?)
    }

    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let url = self.images_url(&format!("/{}", encode_segment(name)));
        self.send(self.api(Method::DELETE, url)).await?;
        Ok(())
    }

    /// `{api}/v1/namespaces/{ns}/secrets{suffix}`.
    fn secrets_url(&self, suffix: &str) -> String {
        format!(
            "{}/v1/namespaces/{}/secrets{}",
            self.api_url,
            encode_segment(&self.namespace),
            suffix
        )
    }

    pub async fn secrets(&self) -> Result<Vec<SecretInfo>> {
        let list: ListSecretsResponse = self
            .send(self.api(Method::GET, self.secrets_url("")))
            .await?
            .json()
            .await?;
        Ok(list.secrets)
    }

    pub async fn set_secret(&self, name: &str, value: String) -> Result<SecretInfo> {
        let url = self.secrets_url(&format!("/{}", encode_segment(name)));
        let rb = self.api(Method::PUT, url).json(&SetSecretRequest { value });
        Ok(self.send(rb).await?.json().await?)
    }

    pub async fn delete_secret(&self, name: &str) -> Result<()> {
        let url = self.secrets_url(&format!("/{}", encode_segment(name)));
        self.send(self.api(Method::DELETE, url)).await?;
        Ok(())
    }

    /// `{api}/v1/namespaces/{ns}/sandbox-pools{suffix}`.
    fn pools_url(&self, suffix: &str) -> String {
        format!(
            "{}/v1/namespaces/{}/sandbox-pools{}",
            self.api_url,
            encode_segment(&self.namespace),
            suffix
        )
    }

    pub async fn create_pool(&self, req: &PoolRequest) -> Result<CreatePoolResponse> {
        let rb = self.api(Method::POST, self.pools_url("")).json(req);
        Ok(self.send(rb).await?.json().await?)
    }

    pub async fn pools(&self) -> Result<Vec<PoolInfo>> {
        let list: ListPoolsResponse = self
            .send(self.api(Method::GET, self.pools_url("")))
            .await?
            .json()
            .await?;
        Ok(list.pools)
    }

    /// One pool, with its sandboxes.
    pub async fn pool(&self, id: &str) -> Result<PoolInfo> {
        let url = self.pools_url(&format!("/{}", encode_segment(id)));
        Ok(self.send(self.api(Method::GET, url)).await?.json().await?)
    }

    pub async fn update_pool(&self, id: &str, req: &PoolRequest) -> Result<PoolInfo> {
        let url = self.pools_url(&format!("/{}", encode_segment(id)));
        Ok(self
            .send(self.api(Method::PUT, url).json(req))
            .await?
            .json()
            .await?)
    }

    pub async fn delete_pool(&self, id: &str) -> Result<()> {
        let url = self.pools_url(&format!("/{}", encode_segment(id)));
        self.send(self.api(Method::DELETE, url)).await?;
        Ok(())
    }

    /// Claims a sandbox of pool `id`. Without `wait` the server answers
    /// within about a second, `pending` if the pool is at its cap.
    pub async fn claim(
        &self,
        id: &str,
        req: &ClaimRequest,
        wait: bool,
    ) -> Result<CreateSandboxResponse> {
        let url = self.pools_url(&format!("/{}/sandboxes", encode_segment(id)));
        let mut rb = self.api(Method::POST, url).json(req);
        if !wait {
            rb = rb
                .header("x-tensorlake-request-timeout-ms", "1000")
                .header("x-tensorlake-request-timeout-grace-ms", "0");
        }
        Ok(self.send(rb).await?.json().await?)
    }

    /// Starts a registry import; the answer streams its progress (NDJSON).
    pub async fn import_image(&self, req: &ImportImageRequest) -> Result<Response> {
        let rb = self.api(Method::POST, self.images_url("/import")).json(req);
        self.send(rb).await
    }

    /// Sends a build: context tar `context` (with the Dockerfile in it);
    /// the answer streams the build's progress (NDJSON).
    pub async fn build_image(
        &self,
        name: &str,
        build_args: &[String],
        no_cache: bool,
        insecure: bool,
        context: Vec<u8>,
    ) -> Result<Response> {
        let mut query: Vec<(&str, &str)> = vec![("name", name)];
        if no_cache {
            query.push(("no_cache", "true"));
        }
        if insecure {
            query.push(("insecure", "true"));
        }
        query.extend(build_args.iter().map(|a| ("build_arg", a.as_str())));
        let rb = self
            .api(Method::POST, self.images_url("/build"))
            .query(&query)
            .header("content-type", "application/x-tar")
            .body(context);
        self.send(rb).await
    }

    /// Uploads archive `path` (`format`: docker-archive or oci-archive) as
    /// image `name`; the answer streams the import's progress (NDJSON).
    pub async fn import_image_archive(
        &self,
        path: &std::path::Path,
        format: &str,
        name: &str,
    ) -> Result<Response> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let rb = self
            .api(Method::POST, self.images_url("/import-archive"))
            .query(&[("name", name), ("format", format)])
            .header("content-type", "application/x-tar")
            .body(body);
        self.send(rb).await
    }

    /// `POST …/sandboxes/{id}/{verb}?wait_ms=…` for `suspend` and `resume`:
    /// the sandbox as the server left it when it answered.
    pub async fn lifecycle(&self, id: &str, verb: &str, wait: Duration) -> Result<SandboxInfo> {
        let url = self.sandboxes_url(&format!("/{}/{verb}", encode_segment(id)));
        let rb = self
            .api(Method::POST, url)
            .query(&[("wait_ms", wait.as_millis().to_string())]);
        self.targets.lock().unwrap().remove(id);
        Ok(self.send(rb).await?.json().await?)
    }

    /// `times` running copies of sandbox `id`, from one memory snapshot.
    pub async fn copy(&self, id: &str, times: u32) -> Result<CopySandboxResponse> {
        let url = self.sandboxes_url(&format!("/{}/copy", encode_segment(id)));
        let rb = self
            .api(Method::POST, url)
            .query(&[("times", times.to_string())]);
        Ok(self.send(rb).await?.json().await?)
    }

    /// Where to reach the daemon of sandbox `id` (an id or a name); looked
    /// up once per invocation.
    pub async fn target(&self, id: &str) -> Result<Target> {
        if let Some(t) = self.targets.lock().unwrap().get(id) {
            return Ok(t.clone());
        }
        let info = self.get(id).await?;
        let target = target_of(&info)?;
        self.targets
            .lock()
            .unwrap()
            .insert(id.to_string(), target.clone());
        Ok(target)
    }

    /// A request to the sandbox's daemon: `{sandbox_url}/api/v1{path}`.
    pub fn daemon(&self, target: &Target, method: Method, path: &str) -> RequestBuilder {
        let url = format!("{}/api/v1{}", target.url.trim_end_matches('/'), path);
        self.authed(
            self.http
                .request(method, url)
                .header(SANDBOX_HEADER, &target.sandbox_id),
        )
    }
}

/// The data-plane address of a sandbox, or why it cannot be reached.
pub fn target_of(info: &SandboxInfo) -> Result<Target> {
    let id = &info.sandbox_id;
    let reachable = match info.status {
        SandboxStatus::Running => true,
        // The proxy wakes a suspended sandbox with auto_resume on traffic.
        SandboxStatus::Suspended | SandboxStatus::Suspending => info.auto_resume,
        _ => false,
    };
    if !reachable {
        let mut msg = format!("sandbox {id} is {}, not running", info.status);
        let why = info
            .pending_reason
            .as_deref()
            .or(info.termination_reason.as_deref())
            .or(info.error_details.as_ref().map(|e| e.message.as_str()));
        if let Some(why) = why {
            msg.push_str(&format!(" ({why})"));
        }
        bail!(msg);
    }
    let url = info
        .sandbox_url
        .clone()
        .ok_or_else(|| anyhow!("sandbox {id} has no sandbox_url"))?;
    Ok(Target {
        sandbox_id: id.clone(),
        url,
    })
}

/// Turns a non-2xx answer into an [`ApiError`].
pub async fn check(resp: Response) -> Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(ApiError::from_body(status, &body).into())
}

fn connect_error(e: reqwest::Error) -> anyhow::Error {
    if e.is_connect() {
        let url = e.url().map(|u| u.to_string()).unwrap_or_default();
        anyhow!("cannot reach {url}: is `sbx server` running? (set --api-url or SBX_API_URL)")
    } else {
        anyhow::Error::new(e)
    }
}

/// Percent-encodes one path segment (ids and names are simple, but be safe).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser: feed it chunks as they arrive (split anywhere,
/// even inside a UTF-8 character); it returns the events completed so far.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        self.buf.drain(..start);
        out
    }

    /// End of stream: an event left without its blank line is still given.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            let line = line.trim_end_matches('\r').to_string();
            if let Some(ev) = self.line(&line) {
                return Some(ev);
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields are not used
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if self.data.is_empty() {
            self.event = None;
            return None;
        }
        Some(SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data).join("\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parser: &mut SseParser, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(parser.push(c).into_iter().map(|e| e.data));
        }
        out
    }

    #[test]
    fn sse_events_split_across_reads() {
        let mut p = SseParser::new();
        let got = feed(
            &mut p,
            &[
                b"data: {\"pid\"",
                b":7}\n",
                b"\ndata: {\"line\":\"a\"}\n\nda",
                b"ta: x\n",
                b"\n",
            ],
        );
        assert_eq!(got, vec![r#"{"pid":7}"#, r#"{"line":"a"}"#, "x"]);
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn sse_crlf_comments_multiline_and_event_names() {
        let mut p = SseParser::new();
        let evs = p.push(b": keepalive\r\n\r\nevent: exit\r\ndata: a\r\ndata:b\r\n\r\n");
        assert_eq!(
            evs,
            vec![SseEvent {
                event: Some("exit".into()),
                data: "a\nb".into()
            }]
        );
    }

    #[test]
    fn sse_split_inside_utf8_and_crlf() {
        let mut p = SseParser::new();
        let bytes = "data: héllo\r\n\r\n".as_bytes();
        let split = 8; // inside the two bytes of 'é'
        assert!(p.push(&bytes[..split]).is_empty());
        let evs = p.push(&bytes[split..split + 7]); // up to and including '\r'
        assert!(evs.is_empty());
        let evs = p.push(&bytes[split + 7..]);
        assert_eq!(evs[0].data, "héllo");
    }

    #[test]
    fn sse_finish_gives_an_unterminated_event() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: last").is_empty());
        assert_eq!(p.finish().unwrap().data, "last");
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn api_errors_show_the_message() {
        let e = ApiError::from_body(
            StatusCode::NOT_FOUND,
            r#"{"code":"not_found","message":"sandbox x not found"}"#,
        );
        assert_eq!(e.to_string(), "sandbox x not found");
        assert_eq!(e.code, "not_found");
        let e = ApiError::from_body(StatusCode::BAD_GATEWAY, "");
        assert_eq!(e.to_string(), "server answered 502 Bad Gateway");
        let e = ApiError::from_body(
            StatusCode::UNAUTHORIZED,
            r#"{"code":"unauthorized","message":"invalid API key"}"#,
        );
        assert!(e.to_string().starts_with("invalid API key"));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("sb-1_a.b"), "sb-1_a.b");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
