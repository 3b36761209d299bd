//! OCI runtime-spec `config.json` for a sandbox.

use crate::SandboxSpec;
use serde_json::{json, Value};

/// CFS period used for CPU quotas.
const CPU_PERIOD_US: u64 = 100_000;

/// Capabilities of a sandbox's root (the Docker default set): enough for the
/// agent to switch users and for ordinary tools, inside gVisor's own kernel.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Builds the OCI config of `spec`.
pub fn config(spec: &SandboxSpec) -> Value {
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for b in &spec.binds {
        let mut options = vec!["rbind"];
        if b.read_only {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": b.destination,
            "type": "bind",
            "source": b.source,
            "options": options,
        }));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match &spec.netns {
        Some(path) => namespaces.push(json!({"type": "network", "path": path})),
        None => namespaces.push(json!({"type": "network"})),
    }
    let quota = (spec.cpus * CPU_PERIOD_US as f64).round() as i64;
    let mut cpu = json!({"quota": quota, "period": CPU_PERIOD_US});
    if let Some(pin) = &spec.pin {
        cpu["cpus"] = json!(pin.cpuset());
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": spec.args,
            "env": spec.env,
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1_048_576u64, "soft": 1_048_576u64}],
            "noNewPrivileges": false,
        },
        "root": {"path": spec.rootfs, "readonly": false},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": spec.cgroup_path,
            "resources": {
                "memory": {"limit": spec.memory_limit_bytes},
                "cpu": cpu,
            },
            "namespaces": namespaces,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bind;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            id: "sbx1".into(),
            bundle_dir: "/b".into(),
            rootfs: "/b/rootfs".into(),
            netns: Some("/var/run/netns/sbx-sbx1".into()),
            cgroup_path: "/sbx/sbx1".into(),
            cpus: 1.5,
            pin: None,
            memory_limit_bytes: 1 << 30,
            args: vec!["/.sbx/sbx-agent".into()],
            env: vec!["A=1".into()],
            binds: vec![Bind {
                source: "/opt/agent".into(),
                destination: "/.sbx".into(),
                read_only: true,
            }],
            hostname: "sbx1".into(),
        }
    }

    #[test]
    fn limits_and_network_are_in_the_config() {
        let c = config(&spec());
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 150_000);
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 1u64 << 30);
        let ns = c["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/var/run/netns/sbx-sbx1"));
        assert_eq!(c["root"]["readonly"], false);
        let agent = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/.sbx")
            .unwrap();
        assert_eq!(agent["options"], json!(["rbind", "ro"]));
    }

    #[test]
    fn a_cpuset_is_set_only_for_a_pinned_sandbox() {
        let c = config(&spec());
        assert!(c["linux"]["resources"]["cpu"].get("cpus").is_none());
        let pinned = SandboxSpec {
            pin: Some(crate::Pin {
                cpu: 3,
                partner: Some(0),
            }),
            ..spec()
        };
        assert_eq!(config(&pinned)["linux"]["resources"]["cpu"]["cpus"], "0,3");
        let alone = SandboxSpec {
            pin: Some(crate::Pin {
                cpu: 1,
                partner: None,
            }),
            ..spec()
        };
        assert_eq!(config(&alone)["linux"]["resources"]["cpu"]["cpus"], "1");
    }
}
