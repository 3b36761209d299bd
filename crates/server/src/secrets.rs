//! Secrets: values set per namespace (`/secrets`), sealed with the server's
//! key before they reach the state store, and given to sandboxes created
//! with `secret_names` as environment variables of their PID 1.
//!
//! A value is sealed with XChaCha20-Poly1305 (a fresh random 192-bit nonce
//! each time, so random nonces never repeat in practice whatever the
//! number of writes) with its namespace and name as associated data: a
//! sealed value copied to another row does not open. Values never leave
//! through the API, errors or logs; the only way out is a sandbox's
//! environment.

use crate::api::ApiState;
use crate::error::{ApiError, ApiResult, Path};
use crate::store::{Sealed, SecretMeta, Store};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use sbx_api::secret::{
    is_valid_name, DeleteSecretResponse, ListSecretsResponse, SecretInfo, MAX_VALUE_BYTES,
    NAME_RULE,
};
use sbx_executor::SecretEnv;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
const HEX_LEN: usize = KEY_LEN * 2;
/// Most secrets one sandbox may name.
pub const MAX_SECRETS_PER_SANDBOX: usize = 256;
/// Marks the sealing scheme of a stored value.
const SEALED_PREFIX: &str = "xc1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("secrets key {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secrets key {0}: expected {KEY_LEN} raw bytes or {HEX_LEN} hex digits")]
    Malformed(String),
}

/// Why a sealed value did not open. Never says what the value is.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed value")]
    Malformed,
    #[error("it does not open with this server's secrets key (servers sharing a state store need the same --secrets-key-file)")]
    WrongKey,
}

/// The key that seals and opens secret values.
pub struct SecretsKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    pub fn from_bytes(key: &[u8; KEY_LEN]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Reads the key at `path` ({KEY_LEN} raw bytes, or as many bytes in
    /// hex), or makes a random one there (mode 0600) when there is none.
    pub fn load_or_create(path: &std::path::Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                if let Ok(meta) = std::fs::metadata(path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        tracing::warn!(
                            path = shown,
                            "the secrets key file is readable by other users: chmod 600 it"
                        );
                    }
                }
                let key = parse_key(&bytes).ok_or_else(|| KeyError::Malformed(shown.clone()))?;
                Ok(Self::from_bytes(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; KEY_LEN] = XChaCha20Poly1305::generate_key(&mut OsRng).into();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                // Exclusive: two servers starting on one data dir agree on one key.
                let created = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path);
                match created {
                    Ok(mut f) => {
                        f.write_all(&key).and_then(|_| f.sync_all()).map_err(io)?;
                        tracing::info!(path = shown, "generated a new secrets key");
                        Ok(Self::from_bytes(&key))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(path)
                    }
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Seals `value` for secret `name` of `namespace`.
    pub fn seal(&self, namespace: &str, name: &str, value: &str) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(namespace, name);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any value that fits in memory");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Sealed(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// The value of secret `name` of `namespace`, sealed as `sealed`.
    pub fn open(&self, namespace: &str, name: &str, sealed: &Sealed) -> Result<String, OpenError> {
        let data = sealed
            .0
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|d| d.len() >= NONCE_LEN)
            .ok_or(OpenError::Malformed)?;
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let aad = associated_data(namespace, name);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| OpenError::Malformed)
    }
}

/// What a sealed value is bound to: its namespace and name.
fn associated_data(namespace: &str, name: &str) -> Vec<u8> {
    format!("sbx-secret\0{namespace}\0{name}").into_bytes()
}

/// A key file's content: raw bytes, or hex (surrounding whitespace allowed).
/// The key in the file at `path` as hex digits (what the cluster join
/// hands to nodes, which write it to a key file of their own).
pub fn key_hex(path: &std::path::Path) -> Result<String, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let key = parse_key(&bytes).ok_or_else(|| KeyError::Malformed(path.display().to_string()))?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

fn parse_key(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Some(raw);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() != HEX_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// A secret name from a request: 400 unless it is a valid one.
pub fn check_name(name: &str) -> ApiResult<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid secret name {name:?}: {NAME_RULE}"
        )))
    }
}

/// The `secret_names` of a create: valid names, not too many.
pub fn check_names(names: &[String]) -> ApiResult<()> {
    if names.len() > MAX_SECRETS_PER_SANDBOX {
        return Err(ApiError::bad_request(format!(
            "secret_names: at most {MAX_SECRETS_PER_SANDBOX} (got {})",
            names.len()
        )));
    }
    for n in names {
        if !is_valid_name(n) {
            return Err(ApiError::bad_request(format!(
                "secret_names: invalid secret name {n:?}: {NAME_RULE}"
            )));
        }
    }
    Ok(())
}

/// The value of a `PUT` body `{"value": "..."}`. Messages never quote the body.
fn value_of(body: &[u8]) -> ApiResult<String> {
    let shape = || ApiError::bad_request(r#"the body must be a JSON object {"value": "..."}"#);
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let object = v.as_object().ok_or_else(shape)?;
    if object.keys().any(|k| k != "value") {
        return Err(ApiError::bad_request(
            r#"unknown field in the body: it is {"value": "..."} only"#,
        ));
    }
    let value = object
        .get("value")
        .and_then(|v| v.as_str())
        .ok_or_else(shape)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "a secret's value may have at most {MAX_VALUE_BYTES} bytes (got {})",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(ApiError::bad_request(
            "a secret's value cannot contain NUL characters (it becomes an environment variable)",
        ));
    }
    Ok(value.to_string())
}

fn info(m: SecretMeta) -> SecretInfo {
    SecretInfo {
        name: m.name,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn namespace(params: &HashMap<String, String>) -> String {
    params
        .get("ns")
        .cloned()
        .unwrap_or_else(|| "default".into())
}

/// `GET …/secrets`: names and dates.
pub async fn list(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<ListSecretsResponse>> {
    let rows = state.manager.store.secrets(&namespace(&params)).await?;
    Ok(Json(ListSecretsResponse {
        secrets: rows.into_iter().map(info).collect(),
    }))
}

/// `PUT …/secrets/{name}` with `{"value": "..."}`: sets it (new or replaced).
pub async fn put(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    body: Result<bytes::Bytes, BytesRejection>,
) -> ApiResult<Json<SecretInfo>> {
    let ns = namespace(&params);
    let name = &params["name"];
    check_name(name)?;
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "invalid_argument"
            },
            format!("request body: {}", e.body_text()),
        )
    })?;
    let value = value_of(&body)?;
    let sealed = state.manager.secrets_key.seal(&ns, name, &value);
    let meta = state.manager.store.put_secret(&ns, name, &sealed).await?;
    tracing::info!(namespace = ns, secret = name, "secret set");
    Ok(Json(info(meta)))
}

/// `DELETE …/secrets/{name}`. Running sandboxes keep the value they have.
pub async fn remove(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<DeleteSecretResponse>> {
    let ns = namespace(&params);
    let name = &params["name"];
    check_name(name)?;
    if !state.manager.store.delete_secret(&ns, name).await? {
        return Err(ApiError::not_found("secret", name));
    }
    tracing::info!(namespace = ns, secret = name, "secret deleted");
    Ok(Json(DeleteSecretResponse {
        name: name.clone(),
        status: "deleted".into(),
    }))
}

/// 400 naming the first of `names` that the namespace has no secret for.
pub async fn check_known(store: &Store, namespace: &str, names: &[String]) -> ApiResult<()> {
    let found = store.sealed_secrets(namespace, names).await?;
    match names.iter().find(|n| !found.iter().any(|(f, _)| f == *n)) {
        Some(missing) => Err(ApiError::bad_request(format!(
            "secret_names: no secret named {missing:?} in namespace {namespace:?} (set it with `sbx secret set {missing}`)"
        ))),
        None => Ok(()),
    }
}

/// The current values of `names` as environment variables, in the order named.
pub async fn resolve(
    store: &Store,
    key: &SecretsKey,
    namespace: &str,
    names: &[String],
) -> Result<SecretEnv, String> {
    let found = store
        .sealed_secrets(namespace, names)
        .await
        .map_err(|e| format!("state store: {e}"))?;
    let mut vars = Vec::with_capacity(names.len());
    for name in names {
        let (_, sealed) = found
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("secret {name:?} no longer exists"))?;
        let value = key
            .open(namespace, name, sealed)
            .map_err(|e| format!("secret {name:?}: {e}"))?;
        vars.push((name.clone(), value));
    }
    Ok(SecretEnv::new(vars))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretsKey {
        SecretsKey::from_bytes(&[b; KEY_LEN])
    }

    #[test]
    fn values_round_trip_and_each_sealing_differs() {
        let k = key(7);
        let a = k.seal("default", "TOKEN", "hunter2 ünïcode");
        let b = k.seal("default", "TOKEN", "hunter2 ünïcode");
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(!a.0.contains("hunter2"));
        assert_eq!(k.open("default", "TOKEN", &a).unwrap(), "hunter2 ünïcode");
        assert_eq!(k.open("default", "TOKEN", &b).unwrap(), "hunter2 ünïcode");
        let empty = k.seal("default", "E", "");
        assert_eq!(k.open("default", "E", &empty).unwrap(), "");
    }

    #[test]
    fn a_wrong_key_or_another_row_does_not_open() {
        let sealed = key(7).seal("default", "TOKEN", "hunter2");
        assert!(matches!(
            key(8).open("default", "TOKEN", &sealed),
            Err(OpenError::WrongKey)
        ));
        // Bound to its namespace and name.
        assert!(key(7).open("other", "TOKEN", &sealed).is_err());
        assert!(key(7).open("default", "OTHER", &sealed).is_err());
        // Tampered with, or not sealed at all.
        let mut bytes = sealed.0.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = Sealed(String::from_utf8(bytes).unwrap());
        assert!(key(7).open("default", "TOKEN", &tampered).is_err());
        assert!(matches!(
            key(7).open("default", "TOKEN", &Sealed("hunter2".into())),
            Err(OpenError::Malformed)
        ));
        let e = key(8).open("default", "TOKEN", &sealed).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn a_key_file_is_made_once_with_mode_0600_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/secrets.key");
        let k1 = SecretsKey::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let sealed = k1.seal("ns", "A", "v");
        let k2 = SecretsKey::load_or_create(&path).unwrap();
        assert_eq!(k2.open("ns", "A", &sealed).unwrap(), "v");
        // Hex works too; anything else is refused.
        let hex = d.path().join("hex.key");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(KEY_LEN))).unwrap();
        let k3 = SecretsKey::load_or_create(&hex).unwrap();
        assert_eq!(
            k3.open("ns", "A", &key(0xab).seal("ns", "A", "w")).unwrap(),
            "w"
        );
        let bad = d.path().join("bad.key");
        std::fs::write(&bad, b"short").unwrap();
        assert!(matches!(
            SecretsKey::load_or_create(&bad),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("DB_PASSWORD").is_ok());
        for bad in ["", "9X", "A-B", "SBX_X", "a b"] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(e.body.message.contains("invalid secret name"));
        }
        assert!(check_names(&["A".into(), "B".into()]).is_ok());
        let e = check_names(&["A".into(), "B-C".into()]).unwrap_err();
        assert!(e.body.message.contains("\"B-C\""), "{}", e.body.message);
        let many: Vec<String> = (0..=MAX_SECRETS_PER_SANDBOX)
            .map(|i| format!("S{i}"))
            .collect();
        assert!(check_names(&many).is_err());
    }

    #[test]
    fn bodies_are_checked_without_quoting_them() {
        assert_eq!(value_of(br#"{"value":"hunter2"}"#).unwrap(), "hunter2");
        assert_eq!(value_of(br#"{"value":""}"#).unwrap(), "");
        for (body, status) in [
            (&br#"{"value":"hunter2""#[..], 400),
            (br#"{"value":5}"#, 400),
            (br#"["hunter2"]"#, 400),
            (br#"{"value":"hunter2","extra":"hunter2"}"#, 400),
            (br#"{"value":"hun\u0000ter2"}"#, 400),
            (b"", 400),
        ] {
            let e = value_of(body).unwrap_err();
            assert_eq!(e.status.as_u16(), status);
            assert!(!e.body.message.contains("hunter2"), "{}", e.body.message);
        }
        let big = format!(r#"{{"value":"{}"}}"#, "x".repeat(MAX_VALUE_BYTES + 1));
        let e = value_of(big.as_bytes()).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.body.code, "too_large");
    }
}
