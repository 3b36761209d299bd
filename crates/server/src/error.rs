//! API errors: every non-2xx answer is JSON `{"code", "message"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sbx_api::ErrorBody;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id:?} not found"),
        )
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!("state store: {e}");
        Self::internal(format!("state store: {e}"))
    }
}

/// A JSON object body that may be empty or `null` (then `T::default()`) and is parsed
/// whatever its `Content-Type`: clients send bodyless POSTs, curl sends form types.
pub struct JsonBody<T>(pub T);

/// A request body type, and which of its fields hold objects: serde would
/// also fill a struct from a JSON array (`["name"]`), so `JsonBody` checks
/// that the body and these fields are objects.
pub trait ObjectBody {
    const OBJECT_FIELDS: &'static [&'static str] = &[];
}

impl ObjectBody for sbx_api::sandbox::CreateSandboxRequest {
    const OBJECT_FIELDS: &'static [&'static str] = &["resources", "network"];
}
impl ObjectBody for sbx_api::snapshot::CreateSnapshotRequest {}
impl ObjectBody for sbx_api::pool::PoolRequest {
    const OBJECT_FIELDS: &'static [&'static str] = &["resources", "network"];
}
impl ObjectBody for sbx_api::pool::ClaimRequest {}
impl ObjectBody for serde_json::Value {}

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Default + ObjectBody,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        let invalid =
            |e: &dyn std::fmt::Display| ApiError::bad_request(format!("invalid JSON body: {e}"));
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| invalid(&e))?;
        if value.is_null() {
            return Ok(JsonBody(T::default()));
        }
        let Some(object) = value.as_object() else {
            return Err(invalid(&"expected a JSON object"));
        };
        for field in T::OBJECT_FIELDS {
            if object
                .get(*field)
                .is_some_and(|v| !v.is_object() && !v.is_null())
            {
                return Err(invalid(&format!("{field}: expected a JSON object")));
            }
        }
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| invalid(&e))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A state-store error of a write that names a sandbox of `namespace`: a
/// taken name is a 409, the rest a database error.
pub fn name_conflict(e: crate::store::StoreError, namespace: &str) -> ApiError {
    match e {
        crate::store::StoreError::NameTaken(n) => ApiError::conflict(format!(
            "a sandbox named {n:?} already exists in namespace {namespace:?}"
        )),
        crate::store::StoreError::Db(e) => e.into(),
    }
}

/// Query parameters; a value that does not parse is a 400 JSON error
/// (axum's own `Query` answers plain text).
pub struct Query<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Path parameters; one that does not decode (not UTF-8) is a 400 JSON error.
pub struct Path<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::JsonBody;
    use axum::extract::{FromRequest, Request};
    use sbx_api::sandbox::CreateSandboxRequest;

    async fn parse(body: &'static str) -> Result<CreateSandboxRequest, u16> {
        JsonBody::<CreateSandboxRequest>::from_request(Request::new(body.into()), &())
            .await
            .map(|b| b.0)
            .map_err(|e| e.status.as_u16())
    }

    #[tokio::test]
    async fn bodies_must_be_objects() {
        assert!(parse("").await.unwrap().name.is_none());
        assert!(parse(" null ").await.unwrap().name.is_none());
        assert_eq!(
            parse(r#"{"name":"a"}"#).await.unwrap().name.as_deref(),
            Some("a")
        );
        // serde alone would read these as structs.
        assert_eq!(parse(r#"["a"]"#).await.unwrap_err(), 400);
        assert_eq!(parse(r#"{"resources":[2,4096]}"#).await.unwrap_err(), 400);
        assert_eq!(parse("7").await.unwrap_err(), 400);
    }
}
