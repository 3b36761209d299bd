//! Joining a cluster: `sbx node --server URL --node-token T` asks a control
//! plane (`POST /v1/cluster/join`, bearing the node token) for the state
//! store, blob store, timing and API keys the cluster shares, then serves
//! as one of its nodes. The answer holds secrets: only the node token opens
//! it, and a server started without `--node-token` takes no nodes.

use crate::error::{ApiError, ApiResult};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use sbx_api::node::{BlobsCredentials, JoinResponse};
use sbx_store::{BlobsUrl, S3Credentials};
use std::sync::Arc;

/// What a control plane tells joining nodes, and the token they must bear.
pub struct Join {
    token: String,
    answer: JoinResponse,
}

/// What a control plane shares with its nodes.
pub struct Shared<'a> {
    /// `--state` and `--blobs`, as given.
    pub state: Option<&'a str>,
    pub blobs: Option<&'a str>,
    /// The S3 key of `blobs`, when not in the environment.
    pub blobs_credentials: Option<&'a S3Credentials>,
    pub node_lost_secs: u64,
    pub api_keys: Vec<String>,
    /// The secrets key, as hex digits.
    pub secrets_key: String,
}

impl Join {
    /// The join answer of a control plane that shares `shared`. Nodes on
    /// other hosts must reach its state and blob stores: SQLite and the
    /// default blob directory (on this host's disk) are refused.
    pub fn new(token: String, shared: Shared) -> Result<Join, String> {
        let Shared {
            state,
            blobs,
            blobs_credentials: credentials,
            node_lost_secs,
            api_keys,
            secrets_key,
        } = shared;
        if token.trim().len() < 16 {
            return Err("--node-token: at least 16 characters".into());
        }
        let state = state
            .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
            .ok_or(
                "--node-token: nodes share the control plane's state store: \
                 start it with --state postgres://…",
            )?;
        let blobs = blobs.ok_or(
            "--node-token: nodes share the control plane's blob store: \
             start it with --blobs s3://BUCKET?endpoint=URL (or a directory every node mounts)",
        )?;
        let credentials = match BlobsUrl::parse(blobs) {
            Ok(BlobsUrl::S3(c)) => c
                .credentials
                .or_else(|| credentials.cloned())
                .or_else(|| S3Credentials::from_env().ok()),
            Ok(BlobsUrl::Local(_)) => None,
            Err(e) => return Err(format!("--blobs: {e}")),
        };
        Ok(Join {
            token: token.trim().to_string(),
            answer: JoinResponse {
                state: state.to_string(),
                blobs: blobs.to_string(),
                blobs_credentials: credentials.map(|c| BlobsCredentials {
                    access_key_id: c.access_key_id,
                    secret_access_key: c.secret_access_key,
                    session_token: c.session_token,
                }),
                node_lost_secs,
                api_keys,
                secrets_key: Some(secrets_key),
            },
        })
    }
}

/// `POST /v1/cluster/join`, outside the API-key check: the node token is
/// its key. `join`: `None` when this server takes no nodes.
pub fn router(join: Option<Arc<Join>>) -> Router {
    Router::new()
        .route("/v1/cluster/join", post(answer))
        .with_state(join)
}

async fn answer(
    State(join): State<Option<Arc<Join>>>,
    req: Request,
) -> ApiResult<Json<JoinResponse>> {
    let Some(join) = join else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cluster_join_disabled",
            "this server takes no nodes: start it with --node-token (and a shared --state and --blobs)",
        ));
    };
    crate::auth::authorize(std::slice::from_ref(&join.token), &req).map_err(|_| {
        tracing::warn!(peer = ?crate::peer(&req), "cluster join refused: wrong node token");
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid or missing node token (Authorization: Bearer <node token>)",
        )
    })?;
    tracing::info!(peer = ?crate::peer(&req), "a node joined");
    Ok(Json(join.answer.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef";
    const PG: &str = "postgres://sbx@db/sbx";

    fn shared<'a>(
        state: Option<&'a str>,
        blobs: Option<&'a str>,
        key: Option<&'a S3Credentials>,
    ) -> Shared<'a> {
        Shared {
            state,
            blobs,
            blobs_credentials: key,
            node_lost_secs: 30,
            api_keys: vec!["k".into()],
            secrets_key: "00ff".into(),
        }
    }

    #[test]
    fn a_join_needs_shared_state_and_blobs_and_a_long_token() {
        let join = |token: &str, state: Option<&str>, blobs: Option<&str>| {
            Join::new(token.into(), shared(state, blobs, None))
        };
        assert!(join("short", Some(PG), Some("/mnt/blobs")).is_err());
        let e = join(TOKEN, None, Some("/mnt/blobs")).err().unwrap();
        assert!(e.contains("--state postgres://"), "{e}");
        let e = join(TOKEN, Some("sqlite:/x/state.db"), Some("/b"))
            .err()
            .unwrap();
        assert!(e.contains("--state postgres://"), "{e}");
        let e = join(TOKEN, Some(PG), None).err().unwrap();
        assert!(e.contains("--blobs"), "{e}");
        let j = join(TOKEN, Some(PG), Some("/mnt/blobs")).unwrap();
        assert_eq!(j.answer.state, PG);
        assert!(j.answer.blobs_credentials.is_none());
    }

    #[test]
    fn an_s3_join_hands_over_the_control_planes_key() {
        let key = S3Credentials {
            access_key_id: "id".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        };
        let blobs = Some("s3://bkt?endpoint=http://127.0.0.1:1");
        let j = Join::new(TOKEN.into(), shared(Some(PG), blobs, Some(&key))).unwrap();
        let c = j.answer.blobs_credentials.clone().unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("id", "secret")
        );
        assert_eq!(j.answer.node_lost_secs, 30);
        assert_eq!(j.answer.secrets_key.as_deref(), Some("00ff"));
        // Its Debug form names no secret.
        let shown = format!("{:?}", j.answer);
        assert!(
            !shown.contains("secret") && !shown.contains("postgres"),
            "{shown}"
        );
    }
}
