//! The `sbx` CLI against a real server.

use sbx_e2e::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn create_ls_exec_cp_name_describe_terminate() {
    let s = Server::start().await;
    let out = s
        .cli()
        .args(["create", "clibox", "-c", "1", "-m", "1024"])
        .output()
        .unwrap();
    let printed = ok(&out);
    let (_, info) = s.get("clibox").await;
    let id = info["sandbox_id"].as_str().unwrap().to_string();
    assert!(printed.contains(&id), "create prints the id: {printed}");

    let table = ok(&s.cli().arg("ls").output().unwrap());
    assert!(
        table.contains(&id) && table.contains("clibox") && table.contains("running"),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&ok(&s.cli().args(["ls", "--json"]).output().unwrap())).unwrap();
    let listed = json
        .as_array()
        .or_else(|| json["sandboxes"].as_array())
        .unwrap()
        .clone();
    assert!(listed.iter().any(|x| x["sandbox_id"] == id.as_str()));

    let out = s
        .cli()
        .args([
            "exec",
            "clibox",
            "-w",
            "/tmp",
            "-e",
            "A=1",
            "--",
            "sh",
            "-c",
            "echo $A; pwd; echo err >&2; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n/tmp\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));

    // cp both ways, binary-safe.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.bin");
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    ok(&s
        .cli()
        .args(["cp", src.to_str().unwrap(), "clibox:/root/in.bin"])
        .output()
        .unwrap());
    let back = dir.path().join("back.bin");
    ok(&s
        .cli()
        .args(["cp", "clibox:/root/in.bin", back.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(std::fs::read(&back).unwrap() == data);

    ok(&s
        .cli()
        .args(["name", "clibox", "clibox2"])
        .output()
        .unwrap());
    assert_eq!(s.get("clibox2").await.1["sandbox_id"], id.as_str());
    let described = ok(&s.cli().args(["describe", "clibox2"]).output().unwrap());
    assert!(described.contains(&id));

    ok(&s.cli().args(["terminate", "clibox2"]).output().unwrap());
    assert_eq!(s.get(&id).await.1["status"], "terminated");
    let out = s.cli().args(["describe", "no-such-box"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    s.cleanup().await;
}

#[tokio::test]
async fn run_creates_executes_and_terminates() {
    let s = Server::start().await;
    let out = s
        .cli()
        .args(["run", "--", "sh", "-c", "echo hello; exit 2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let all: Value = s
        .api_json(reqwest::Method::GET, "/sandboxes?all=true")
        .await;
    let list = all["sandboxes"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "terminated");
    s.cleanup().await;
}

#[tokio::test]
async fn ssh_runs_a_shell_with_piped_input() {
    let s = Server::start().await;
    let id = s.create(serde_json::json!({})).await;
    let mut child = s
        .cli()
        .args(["ssh", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo hi-$((40+2))\nexit 3\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hi-42"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(3));
    s.cleanup().await;
}

/// `sbx ssh` in a real terminal (tmux): raw mode, the terminal's size, and
/// a resize reaching the remote shell.
#[tokio::test]
async fn ssh_in_a_real_terminal_follows_resizes() {
    use std::process::Command;
    let s = Server::start().await;
    let id = s.create(serde_json::json!({})).await;
    let session = format!("sbx-ssh-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().unwrap();
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).to_string()
    };
    let cmd = format!(
        "SBX_API_URL={} {} ssh {id}; echo ssh-exited-$?; sleep 30",
        s.api,
        sbx_bin().display()
    );
    let out = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = screen();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never saw {needle:?} on screen:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "stty size; echo size-$((1+1))",
        "Enter",
    ]);
    let text = wait_for("size-2");
    assert!(text.contains("30 100"), "initial size:\n{text}");
    tmux(&["resize-window", "-t", &session, "-x", "120", "-y", "40"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "clear; stty size; echo resized-$((2+2))",
        "Enter",
    ]);
    let text = wait_for("resized-4");
    assert!(text.contains("40 120"), "after resize:\n{text}");
    tmux(&["send-keys", "-t", &session, "exit 6", "Enter"]);
    wait_for("ssh-exited-6");
    tmux(&["kill-session", "-t", &session]);
    s.cleanup().await;
}

/// The first line of a CLI's stdout, which must succeed.
fn line(out: &Output) -> String {
    ok(out)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test]
async fn snapshot_restore_suspend_resume_copy() {
    let s = Server::start().await;
    // Renamed into place: a reader never sees the file half-written.
    let counter = "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done'";
    ok(&s
        .cli()
        .args(["create", "clisnap", "-e", counter])
        .output()
        .unwrap());
    s.sh("clisnap", "echo kept > /root/f").await;

    // A memory checkpoint: waits, prints the id, says what it captured.
    let out = s
        .cli()
        .args([
            "checkpoint",
            "clisnap",
            "--checkpoint-type",
            "memory",
            "-t",
            "120",
        ])
        .output()
        .unwrap();
    let mem = line(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("memory snapshot"), "{stderr}");
    let info = s
        .api_json(reqwest::Method::GET, &format!("/snapshots/{mem}"))
        .await;
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(info["snapshot_type"], "memory");

    // A filesystem snapshot (the default type), listed both ways.
    let fs = line(&s.cli().args(["snapshot", "clisnap"]).output().unwrap());
    let table = ok(&s
        .cli()
        .args(["checkpoint", "ls", "--sandbox", "clisnap"])
        .output()
        .unwrap());
    assert!(table.contains(&mem) && table.contains(&fs), "{table}");
    let json: Value = serde_json::from_str(&ok(&s
        .cli()
        .args(["snapshot", "ls", "--json"])
        .output()
        .unwrap()))
    .unwrap();
    let listed: Vec<&str> = json["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["snapshot_id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&mem.as_str()) && listed.contains(&fs.as_str()));

    // Warm restore: the file is there and the counter counts on.
    let warm = line(
        &s.cli()
            .args(["create", "--snapshot", &mem])
            .output()
            .unwrap(),
    );
    assert_eq!(s.sh(&warm, "cat /root/f").await, "kept\n");
    let first: u64 = s.sh(&warm, "cat /tmp/count").await.trim().parse().unwrap();
    let mut later = first;
    for _ in 0..50 {
        later = s.sh(&warm, "cat /tmp/count").await.trim().parse().unwrap();
        if later > first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(later > first, "counter stuck at {first}");
    // Resources of a memory restore are fixed.
    let out = s
        .cli()
        .args(["create", "--snapshot", &mem, "-m", "2048"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("resources"));

    // Cold restore with a bigger disk.
    let cold = line(
        &s.cli()
            .args(["create", "--snapshot", &fs, "--disk-mb", "20480"])
            .output()
            .unwrap(),
    );
    assert_eq!(s.sh(&cold, "cat /root/f").await, "kept\n");
    assert_eq!(s.get(&cold).await.1["resources"]["disk_mb"], 20480);
    ok(&s.cli().args(["rm", &warm, &cold]).output().unwrap());

    // Suspend and resume by name.
    let out = ok(&s.cli().args(["suspend", "clisnap"]).output().unwrap());
    assert_eq!(out.trim(), "clisnap\tsuspended");
    assert_eq!(s.get("clisnap").await.1["status"], "suspended");
    let out = ok(&s.cli().args(["resume", "clisnap"]).output().unwrap());
    assert_eq!(out.trim(), "clisnap\trunning");
    assert_eq!(s.sh("clisnap", "cat /root/f").await, "kept\n");

    // Two running copies; their snapshot stays listed until removed.
    let out = s
        .cli()
        .args(["clone", "clisnap", "-n", "2"])
        .output()
        .unwrap();
    let copies: Vec<String> = ok(&out).lines().map(str::to_string).collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    for id in &copies {
        assert_eq!(s.get(id).await.1["status"], "running");
        assert_eq!(s.sh(id, "cat /root/f").await, "kept\n");
    }
    let json: Value = serde_json::from_str(&ok(&s
        .cli()
        .args(["snapshot", "ls", "-s", "clisnap", "--json"])
        .output()
        .unwrap()))
    .unwrap();
    let copy_snap = json["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["snapshot_id"].as_str().unwrap().to_string())
        .find(|sid| *sid != mem && *sid != fs)
        .expect("the copies' snapshot is listed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&copy_snap), "{stderr}");

    // rm deletes snapshots; an unknown one is an error, reported.
    let removed = ok(&s
        .cli()
        .args(["checkpoint", "rm", &mem, &fs, &copy_snap])
        .output()
        .unwrap());
    assert_eq!(removed.lines().count(), 3, "{removed}");
    let gone = s
        .req(reqwest::Method::GET, &format!("/snapshots/{mem}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    let out = s.cli().args(["snapshot", "rm", &mem]).output().unwrap();
    assert!(!out.status.success());
    s.cleanup().await;
}
