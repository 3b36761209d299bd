//! Bearer-key authentication for the API and the proxy. Without keys the
//! server only answers loopback peers.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The control-plane API's check. `GET /healthz` needs no key: probes
/// (a load balancer, Kubernetes) cannot present one, and it tells only
/// whether the server is up and ready.
pub async fn check(State(keys): State<Arc<Vec<String>>>, req: Request, next: Next) -> Response {
    if is_health_probe(&req) {
        return next.run(req).await;
    }
    match authorize(&keys, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Whether `req` may pass: it presents one of `keys`, or, when there are
/// no keys, comes from a loopback peer.
pub fn authorize(keys: &[String], req: &Request) -> Result<(), ApiError> {
    if keys.is_empty() {
        let loopback = crate::peer(req).is_some_and(|p| p.ip().is_loopback());
        if !loopback {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this server has no API key and answers only on loopback",
            ));
        }
        return Ok(());
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(k)
            if keys
                .iter()
                .any(|key| constant_time_eq(key.as_bytes(), k.as_bytes())) =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid API key",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer <key>",
        )),
    }
}

fn is_health_probe(req: &Request) -> bool {
    req.method() == axum::http::Method::GET && req.uri().path() == "/healthz"
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(auth: Option<&str>) -> Request {
        let mut b = Request::builder().uri("/");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn keys_are_checked() {
        let keys = vec!["k1".to_string(), "k2".to_string()];
        assert!(authorize(&keys, &req(Some("Bearer k2"))).is_ok());
        let status = |r: Result<(), ApiError>| r.unwrap_err().status;
        assert_eq!(status(authorize(&keys, &req(Some("Bearer nope")))), 401);
        assert_eq!(status(authorize(&keys, &req(None))), 401);
        // No keys: only loopback peers, and a request without a peer is none.
        assert_eq!(status(authorize(&[], &req(None))), 403);
    }

    #[test]
    fn only_a_get_of_healthz_is_a_probe() {
        let r = |method: &str, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap()
        };
        assert!(is_health_probe(&r("GET", "/healthz")));
        assert!(is_health_probe(&r("GET", "/healthz?x=1")));
        assert!(!is_health_probe(&r("POST", "/healthz")));
        assert!(!is_health_probe(&r("GET", "/healthz/x")));
        assert!(!is_health_probe(&r("GET", "/v1/nodes")));
    }

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
