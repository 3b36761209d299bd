//! Lifecycle requests (snapshot, suspend, resume, copy, update) for a sandbox that
//! runs on another node go to that node's server (`api_address`), as they
//! came: any server of a shared state store answers them.

use crate::api::ApiState;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::OnceLock;

/// Marks a request one server forwarded to another: never forwarded again.
pub const FORWARDED: &str = "x-sbx-forwarded";

fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
}

/// The namespace and sandbox of a lifecycle request only the sandbox's
/// node can carry out: `POST [/v1/namespaces/{ns}]/sandboxes/{id}/{verb}`,
/// `GET …/sandboxes/{id}/logs|processes` (kept on its node),
/// and `PATCH [/v1/namespaces/{ns}]/sandboxes/{id}` (verb `update`: a new
/// network policy goes to the sandbox's firewall; every PATCH is sent, the
/// node's server applies the rest as well as any).
fn lifecycle_target(method: &axum::http::Method, path: &str) -> Option<(String, String, String)> {
    use axum::http::Method;
    let patch = *method == Method::PATCH;
    if *method != Method::POST && *method != Method::GET && !patch {
        return None;
    }
    let (ns, rest) = match path.strip_prefix("/v1/namespaces/") {
        Some(rest) => {
            let (ns, rest) = rest.split_once('/')?;
            (ns.to_string(), format!("/{rest}"))
        }
        None => ("default".to_string(), path.to_string()),
    };
    let rest = rest.strip_prefix("/sandboxes/")?;
    if patch {
        let id = rest.strip_suffix('/').unwrap_or(rest);
        if id.is_empty() || id.contains('/') {
            return None;
        }
        return Some((ns, percent_decode(id)?, "update".to_string()));
    }
    let (id, verb) = rest.split_once('/')?;
    let id = percent_decode(id)?;
    let owned = match *method {
        // Its logs are kept on its node.
        Method::GET => matches!(verb, "logs" | "processes"),
        _ => matches!(verb, "snapshot" | "suspend" | "resume" | "copy"),
    };
    owned.then(|| (ns, id, verb.to_string()))
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Middleware: a lifecycle request for a sandbox of another node goes to
/// that node's server; everything else runs here.
pub async fn to_owner(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let Some((ns, id, verb)) = lifecycle_target(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let manager = &state.manager;
    let mut row = match manager.store.find(&ns, &id).await {
        Ok(Some(row)) => row,
        _ => return next.run(req).await,
    };
    // A node that cannot resume its suspended sandbox hands it on.
    if verb == "resume" {
        match manager.relocate_if_stranded(&row).await {
            Ok(Some(moved)) => row = moved,
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    if manager.is_local(row.node_id.as_deref()) {
        return next.run(req).await;
    }
    let node = row.node_id.clone().unwrap_or_default();
    let api = match manager.store.node(&node).await {
        Ok(Some(n)) => n.api_address,
        _ => None,
    };
    // Nowhere to send it: the handler says whose sandbox it is.
    let Some(api) = api else {
        return next.run(req).await;
    };
    let uri = match crate::proxy::uri_at(&api, req.uri()) {
        Ok(u) => u,
        Err(e) => {
            return ApiError::unavailable(format!("node {node}'s API address {api:?}: {e}"))
                .into_response()
        }
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.headers.remove(header::HOST);
    parts
        .headers
        .insert(FORWARDED, HeaderValue::from_static("1"));
    match client().request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => ApiError::unavailable(format!(
            "sandbox {} runs on node {node}, whose server did not answer: {e}",
            row.id
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn only_lifecycle_posts_and_updates_are_forwarded() {
        let t = |m: &Method, p: &str| lifecycle_target(m, p);
        assert_eq!(
            t(&Method::POST, "/sandboxes/sbx1/snapshot"),
            Some(("default".into(), "sbx1".into(), "snapshot".into()))
        );
        assert_eq!(
            t(
                &Method::POST,
                "/v1/namespaces/team/sandboxes/my%20box/suspend"
            ),
            Some(("team".into(), "my box".into(), "suspend".into()))
        );
        assert_eq!(t(&Method::GET, "/sandboxes/sbx1/snapshot"), None);
        assert_eq!(
            t(&Method::GET, "/sandboxes/sbx1/logs"),
            Some(("default".into(), "sbx1".into(), "logs".into()))
        );
        assert_eq!(t(&Method::POST, "/sandboxes/sbx1/logs"), None);
        assert_eq!(t(&Method::POST, "/sandboxes/sbx1/snapshots"), None);
        assert_eq!(t(&Method::POST, "/sandboxes"), None);
        assert_eq!(t(&Method::DELETE, "/sandboxes/sbx1"), None);
        assert_eq!(t(&Method::POST, "/v1/nodes/n1/drain"), None);
        assert_eq!(
            t(&Method::PATCH, "/v1/namespaces/team/sandboxes/sbx1"),
            Some(("team".into(), "sbx1".into(), "update".into()))
        );
        assert_eq!(
            t(&Method::PATCH, "/sandboxes/sbx1"),
            Some(("default".into(), "sbx1".into(), "update".into()))
        );
        assert_eq!(t(&Method::PATCH, "/sandboxes/sbx1/snapshot"), None);
        assert_eq!(t(&Method::PATCH, "/sandbox-pools/p1"), None);
    }
}
