//! Lifecycle requests (snapshot, suspend, resume, copy, update, logs,
//! processes) go to the node that runs the sandbox (`node::Node::lifecycle`):
//! carried out here when it is this server's, sent as they came to its
//! server when it is another's.

use crate::api::ApiState;
use crate::node::FORWARDED;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

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

/// Middleware: a lifecycle request for a sandbox goes to its node;
/// everything else runs here.
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
        // The handler answers (404 and the like).
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
    if manager.is_local(row.node_id.as_deref()) && manager.local_node().is_none() {
        return next.run(req).await;
    }
    manager.node(row.node_id.as_deref()).lifecycle(req).await
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
