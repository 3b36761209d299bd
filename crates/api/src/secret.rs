//! Secrets: `/v1/namespaces/{ns}/secrets`. A secret's value goes in
//! (`PUT`) and into sandboxes' environments, never back out: answers carry
//! names and dates only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest secret name.
pub const MAX_NAME_LEN: usize = 128;
/// Largest secret value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Prefix kept for the variables sbx sets itself (the agent drops them from
/// the environment of the processes it starts).
pub const RESERVED_PREFIX: &str = "SBX_";

/// What is wrong with a name [`check_name`] refuses.
pub const NAME_RULE: &str =
    "use 1-128 letters, digits or '_', not starting with a digit nor with SBX_ (an environment variable name)";

/// Whether `name` can name a secret: an environment variable name
/// (`[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_NAME_LEN`]) outside `SBX_*`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(RESERVED_PREFIX)
}

/// `PUT …/secrets/{name}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSecretRequest {
    pub value: String,
}

/// Never shows the value.
impl std::fmt::Debug for SetSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecretRequest")
            .field("value", &"<redacted>")
            .finish()
    }
}

/// A secret as the API shows it: no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListSecretsResponse {
    pub secrets: Vec<SecretInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteSecretResponse {
    pub name: String,
    /// Always `deleted`.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_environment_variable_names() {
        for ok in ["A", "_", "db_password", "API_KEY_2", &"x".repeat(128)] {
            assert!(is_valid_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            "1A",
            "A-B",
            "A B",
            "A=B",
            "é",
            "SBX_TOKEN",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_request_never_debugs_its_value() {
        let r = SetSecretRequest {
            value: "hunter2".into(),
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
