//! Secret environment variables of a sandbox: given to its PID 1 (and so to
//! every process it starts), never serialised into the sandbox's metadata,
//! never shown by `Debug`.

/// `NAME=value` pairs, in order; a later name wins.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(Vec<(String, String)>);

impl SecretEnv {
    pub fn new(vars: Vec<(String, String)>) -> Self {
        Self(vars)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets each variable in `env` (`NAME=value` entries), replacing an
    /// entry of the same name.
    pub fn apply(&self, env: &mut Vec<String>) {
        for (name, value) in &self.0 {
            env.retain(|v| v.split('=').next() != Some(name.as_str()));
            env.push(format!("{name}={value}"));
        }
    }
}

/// Names only.
impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| format!("{n}=<redacted>")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_replace_variables_and_never_debug_their_values() {
        let s = SecretEnv::new(vec![
            ("TOKEN".into(), "hunter2".into()),
            ("HOME".into(), "/s".into()),
        ]);
        let mut env = vec!["HOME=/root".to_string(), "PATH=/bin".into()];
        s.apply(&mut env);
        assert_eq!(env, ["PATH=/bin", "TOKEN=hunter2", "HOME=/s"]);
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("TOKEN"),
            "{shown}"
        );
    }
}
