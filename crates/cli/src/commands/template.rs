//! Sandbox-template flags shared by `sbx create`/`sbx run` (one sandbox),
//! `sbx pool create|update` (a pool's sandboxes) and, for the egress
//! policy, `sbx network`.

use anyhow::{bail, Context, Result};
use clap::Args;
use sbx_api::sandbox::{NetworkPolicy, ResourcesRequest};

/// Image, resources, timeout and entrypoint of a sandbox.
#[derive(Debug, Clone, Default, Args)]
pub struct TemplateOpts {
    /// Image to boot (default: the server's default image).
    #[arg(short = 'i', long, value_name = "NAME")]
    pub image: Option<String>,

    /// CPUs per sandbox (fractions allowed, e.g. 0.5).
    #[arg(short = 'c', long, value_name = "N")]
    pub cpus: Option<f64>,

    /// Memory per sandbox in MB.
    #[arg(short = 'm', long, value_name = "MB")]
    pub memory: Option<u64>,

    /// Disk size per sandbox in MB.
    #[arg(long, value_name = "MB")]
    pub disk_mb: Option<u64>,

    /// Seconds of inactivity before a sandbox is stopped (named ones
    /// suspend; 0: none); a pool's sandboxes count from their claim.
    #[arg(short = 't', long, value_name = "SECS")]
    pub timeout: Option<u64>,

    /// Entrypoint command line, split like a shell would ("CMD ARGS").
    #[arg(short = 'e', long, value_name = "CMD")]
    pub entrypoint: Option<String>,
}

impl TemplateOpts {
    /// The resources given (`None` when no resource flag was).
    pub fn resources(&self) -> Option<ResourcesRequest> {
        (self.cpus.is_some() || self.memory.is_some() || self.disk_mb.is_some()).then_some(
            ResourcesRequest {
                cpus: self.cpus,
                memory_mb: self.memory,
                disk_mb: self.disk_mb,
                gpus: None,
            },
        )
    }

    /// `--entrypoint` split into words; an unsplittable or empty one is an
    /// error.
    pub fn entrypoint(&self) -> Result<Option<Vec<String>>> {
        let Some(e) = &self.entrypoint else {
            return Ok(None);
        };
        let words =
            shell_words::split(e).with_context(|| format!("cannot split --entrypoint {e:?}"))?;
        if words.is_empty() {
            bail!("--entrypoint is empty");
        }
        Ok(Some(words))
    }
}

/// Egress policy flags.
#[derive(Debug, Clone, Default, Args)]
pub struct EgressOpts {
    /// No outbound traffic except to --allow-out destinations.
    #[arg(long)]
    pub no_internet: bool,

    /// An IPv4 address, CIDR block, host name or *.domain pattern the
    /// sandbox may reach, even when --no-internet or --deny-out would block
    /// it (repeatable).
    #[arg(long, value_name = "DEST")]
    pub allow_out: Vec<String>,

    /// An IPv4 address, CIDR block, host name or *.domain pattern the
    /// sandbox may not reach (repeatable; 0.0.0.0/0 denies everything not
    /// allowed).
    #[arg(long, value_name = "DEST")]
    pub deny_out: Vec<String>,
}

impl EgressOpts {
    /// The whole policy the flags describe, `None` when none was given.
    pub fn policy(&self) -> Option<NetworkPolicy> {
        (self.no_internet || !self.allow_out.is_empty() || !self.deny_out.is_empty()).then(|| {
            NetworkPolicy {
                allow_internet_access: !self.no_internet,
                allow_out: self.allow_out.clone(),
                deny_out: self.deny_out.clone(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_given_means_nothing() {
        let t = TemplateOpts::default();
        assert!(t.resources().is_none());
        assert_eq!(t.entrypoint().unwrap(), None);
        assert!(EgressOpts::default().policy().is_none());
    }

    #[test]
    fn given_flags_make_resources_entrypoint_and_policy() {
        let t = TemplateOpts {
            disk_mb: Some(4096),
            entrypoint: Some("sh -c 'echo hi'".into()),
            ..Default::default()
        };
        let r = t.resources().unwrap();
        assert_eq!((r.cpus, r.memory_mb, r.disk_mb), (None, None, Some(4096)));
        assert_eq!(t.entrypoint().unwrap().unwrap(), ["sh", "-c", "echo hi"]);
        for bad in ["", "  ", "echo 'open"] {
            let t = TemplateOpts {
                entrypoint: Some(bad.into()),
                ..Default::default()
            };
            assert!(t.entrypoint().is_err(), "{bad:?}");
        }
        let p = EgressOpts {
            deny_out: vec!["0.0.0.0/0".into()],
            ..Default::default()
        }
        .policy()
        .unwrap();
        assert!(p.allow_internet_access && p.allow_out.is_empty());
        assert_eq!(p.deny_out, ["0.0.0.0/0"]);
    }
}
