//! `sbx image import|ls|inspect|rm`: the images sandboxes are created from.

use crate::client::Client;
use crate::commands::snapshot::Progress;
use crate::table;
use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::{Args, Subcommand};
use futures::StreamExt;
use sbx_api::image::{BuildEvent, ImageInfo, ImportEvent, ImportImageRequest};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub action: ImageAction,
}

#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Build an image from a Dockerfile: each RUN in a builder sandbox,
    /// each step's result cached (an unchanged rebuild takes seconds).
    Build(BuildArgs),
    /// Import an image: from a registry (`HOST[:PORT]/REPO[:TAG]`, Docker
    /// Hub without a host), or an archive (`docker-archive:PATH`, what
    /// `docker save` writes; `oci-archive:PATH`, what `skopeo copy … oci-archive:` writes).
    Import(ImportArgs),
    /// List images.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show an image: its source, size, environment, working directory,
    /// user and entrypoint.
    Inspect(InspectArgs),
    /// Remove images (sandboxes and snapshots made from one keep it until they are gone).
    #[command(visible_alias = "delete")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// What to import.
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// The name sandboxes use (`sbx create -i NAME`); default: the
    /// repository's last component, or the archive's file name.
    #[arg(short = 't', long = "tag", visible_alias = "name", value_name = "NAME")]
    pub name: Option<String>,

    /// The registry speaks plain HTTP.
    #[arg(long)]
    pub insecure: bool,

    /// Registry user (default: from ~/.docker/config.json, if it has one).
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    pub username: Option<String>,

    /// Read the registry password from standard input.
    #[arg(long)]
    pub password_stdin: bool,

    /// Print progress events and the image as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context: the files COPY and ADD see (default: the
    /// Dockerfile's directory). `.dockerignore` in it is honoured.
    #[arg(value_name = "CONTEXT")]
    pub context: Option<PathBuf>,

    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// The image's name.
    #[arg(short = 't', long = "tag", visible_alias = "name", value_name = "NAME")]
    pub name: String,

    /// A build argument (ARG), repeatable.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,

    /// Run every step again.
    #[arg(long)]
    pub no_cache: bool,

    /// A base image from a plain-HTTP registry.
    #[arg(long)]
    pub insecure: bool,

    /// `plain`: every line as it comes; `tty`: step lines redrawn in place
    /// (default: tty on a terminal).
    #[arg(long, value_name = "plain|tty", value_parser = ["plain", "tty"])]
    pub progress: Option<String>,

    /// Print the build's events as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print `{"images": [...]}` as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

pub async fn run(client: &Client, args: ImageArgs) -> Result<i32> {
    match args.action {
        ImageAction::Import(a) => import(client, a).await,
        ImageAction::Build(a) => build(client, a).await,
        ImageAction::Ls(a) => {
            let images = client.images().await?;
            if a.json {
                let out = serde_json::json!({ "images": images });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", render(&images));
            }
            Ok(0)
        }
        ImageAction::Inspect(a) => {
            let image = client.image(&a.name).await?;
            println!("{}", serde_json::to_string_pretty(&image)?);
            Ok(0)
        }
        ImageAction::Rm(a) => {
            let mut code = 0;
            for name in &a.names {
                match client.remove_image(name).await {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("error: {name}: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

async fn import(client: &Client, args: ImportArgs) -> Result<i32> {
    let archive = [
        ("docker-archive:", "docker-archive"),
        ("oci-archive:", "oci-archive"),
    ]
    .iter()
    .find_map(|(prefix, format)| {
        args.source
            .strip_prefix(prefix)
            .map(|p| (PathBuf::from(p), *format))
    });
    let resp = match archive {
        Some((path, format)) => {
            let name = match &args.name {
                Some(n) => n.clone(),
                None => name_of_file(&path)?,
            };
            // Checked before the upload, which a refusal would cut short.
            check_name(&name)?;
            client.import_image_archive(&path, format, &name).await?
        }
        None => {
            let (username, password) = credentials(&args)?;
            client
                .import_image(&ImportImageRequest {
                    reference: args.source.clone(),
                    name: args.name.clone(),
                    insecure: args.insecure,
                    username,
                    password,
                })
                .await?
        }
    };
    follow(resp, args.json).await
}

async fn build(client: &Client, args: BuildArgs) -> Result<i32> {
    check_name(&args.name)?;
    let context = match (&args.context, &args.file) {
        (Some(c), _) => c.clone(),
        (None, Some(f)) => f
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ".".into()),
        (None, None) => ".".into(),
    };
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let dockerfile = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let tar = tokio::task::spawn_blocking(move || context_tar(&context, &dockerfile))
        .await
        .expect("tar task")?;
    for a in &args.build_args {
        if !a.contains('=') {
            bail!("--build-arg {a:?} is not KEY=VALUE");
        }
    }
    let resp = client
        .build_image(
            &args.name,
            &args.build_args,
            args.no_cache,
            args.insecure,
            tar,
        )
        .await?;
    let tty = match args.progress.as_deref() {
        Some(p) => p == "tty",
        None => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    follow_build(resp, args.json, tty).await
}

/// The context directory as a tar (without what `.dockerignore` excludes),
/// with the Dockerfile added where the server looks for it.
fn context_tar(dir: &Path, dockerfile: &[u8]) -> Result<Vec<u8>> {
    let ignore = std::fs::read_to_string(dir.join(".dockerignore"))
        .map(|t| sbx_build::globs::Ignore::parse(&t))
        .unwrap_or_default();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = dir.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            if ignore.excludes(&r.to_string_lossy()) {
                continue;
            }
            let meta = e.path().symlink_metadata()?;
            if meta.is_dir() {
                b.append_dir(&r, e.path())?;
                todo.push(r);
            } else {
                b.append_path_with_name(e.path(), &r)
                    .with_context(|| format!("adding {}", e.path().display()))?;
            }
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(dockerfile.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, ".sbx-dockerfile", dockerfile)?;
    Ok(b.into_inner()?)
}

/// Prints a build's progress; the image's name at the end.
async fn follow_build(resp: reqwest::Response, json: bool, tty: bool) -> Result<i32> {
    follow_events(resp, json, "build", |event: BuildEvent, progress| {
        match event {
            BuildEvent::Warning { line, message } if !json => {
                eprintln!("warning: Dockerfile line {line}: {message}")
            }
            BuildEvent::Step {
                stage,
                stages,
                step,
                steps,
                text,
                ..
            } if !json => {
                let head = if stages > 1 {
                    format!("[stage {stage}/{stages}, {step}/{steps}]")
                } else {
                    format!("[{step}/{steps}]")
                };
                if tty {
                    progress.show(&format!("{head} {text}"));
                } else {
                    eprintln!("{head} {text}");
                }
            }
            BuildEvent::Cached if !json && !tty => eprintln!("  cached"),
            BuildEvent::Output { line } if !json => {
                progress.clear();
                eprintln!("  {line}");
            }
            BuildEvent::StepDone { ms, bytes } if !json && !tty && (ms > 0 || bytes > 0) => {
                eprintln!(
                    "  done in {:.1}s{}",
                    ms as f64 / 1000.0,
                    match bytes {
                        0 => String::new(),
                        b => format!(", {}", table::bytes(b)),
                    }
                )
            }
            BuildEvent::Done { image } => {
                progress.clear();
                return Ok(Some(finished("built", &image, json)));
            }
            BuildEvent::Error { message } => bail!("build failed: {message}"),
            _ => {}
        }
        Ok(None)
    })
    .await
}

/// Prints an import's progress; the image's name at the end.
async fn follow(resp: reqwest::Response, json: bool) -> Result<i32> {
    let mut total_layers = 0;
    follow_events(resp, json, "import", |event: ImportEvent, progress| {
        match event {
            ImportEvent::Resolved { layers, bytes } => {
                total_layers = layers;
                progress.show(&format!("{layers} layers, {}", table::bytes(bytes)));
            }
            ImportEvent::Fetched { layer, bytes } => progress.show(&format!(
                "fetched layer {layer}/{total_layers} ({})",
                table::bytes(bytes)
            )),
            ImportEvent::Applied { layer, entries } => progress.show(&format!(
                "unpacked layer {layer}/{total_layers} ({entries} entries)"
            )),
            ImportEvent::Done { image } => {
                progress.clear();
                return Ok(Some(finished("imported", &image, json)));
            }
            ImportEvent::Error { message } => bail!("import failed: {message}"),
        }
        Ok(None)
    })
    .await
}

/// Reads an NDJSON progress answer (each line also printed as it came,
/// with `json`) and hands each event to `on_event` until it returns the
/// exit code; the progress line is cleared however it ends.
async fn follow_events<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    json: bool,
    work: &str,
    mut on_event: impl FnMut(T, &mut Progress) -> Result<Option<i32>>,
) -> Result<i32> {
    let mut progress = Progress::new();
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let result = async {
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(
                &chunk.with_context(|| format!("reading the {work}'s progress"))?,
            );
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let event: T = serde_json::from_slice(&line).with_context(|| {
                    format!("bad progress line {:?}", String::from_utf8_lossy(&line))
                })?;
                if json {
                    println!("{}", String::from_utf8_lossy(&line).trim_end());
                }
                if let Some(code) = on_event(event, &mut progress)? {
                    return Ok(code);
                }
            }
        }
        bail!("the server stopped answering before the {work} finished")
    }
    .await;
    progress.clear();
    result
}

/// Says what an import or build made (`verb`) and prints its name; 0.
fn finished(verb: &str, image: &ImageInfo, json: bool) -> i32 {
    if !json {
        eprintln!(
            "{verb} {} ({}, {})",
            image.name,
            image.id,
            image.size_bytes.map(table::bytes).unwrap_or_default()
        );
        println!("{}", image.name);
    }
    0
}

/// `--username` with the password from stdin, else what
/// `~/.docker/config.json` has for the registry, else none.
fn credentials(args: &ImportArgs) -> Result<(Option<String>, Option<String>)> {
    if args.password_stdin {
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("reading the password from stdin")?;
        let password = password.trim_end_matches(['\n', '\r']).to_string();
        return Ok((args.username.clone(), Some(password)));
    }
    let config = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .map(|d| d.join("config.json"));
    let Some(text) = config.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Ok((None, None));
    };
    Ok(docker_login(&text, &registry_of(&args.source)).unzip())
}

/// The registry host of a reference (`docker.io` without one).
fn registry_of(reference: &str) -> String {
    let r = reference.strip_prefix("docker://").unwrap_or(reference);
    match r.split_once('/') {
        Some((host, _)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            host.to_string()
        }
        _ => "docker.io".into(),
    }
}

/// User and password for `registry` in a Docker `config.json`.
fn docker_login(config: &str, registry: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(config).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let keys: Vec<String> = if registry == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
        ]
    } else {
        vec![
            registry.into(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    let entry = keys.iter().find_map(|k| auths.get(k))?;
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .ok()?;
        let (u, p) = String::from_utf8(raw)
            .ok()?
            .split_once(':')
            .map(|(u, p)| (u.to_string(), p.to_string()))?;
        return Some((u, p));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some((u.into(), p.into()))
}

/// What the server takes as an image name (it says why not, but only
/// after an upload).
fn check_name(name: &str) -> Result<()> {
    if !sbx_api::image::is_valid_name(name) {
        bail!("image name {name:?}: {}", sbx_api::image::NAME_RULE);
    }
    Ok(())
}

/// An archive's default image name: its file name without extensions.
fn name_of_file(path: &Path) -> Result<String> {
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .filter(|n| !n.is_empty());
    match stem {
        Some(s) => Ok(s.to_string()),
        None => bail!("name the image: --tag NAME"),
    }
}

pub const HEADERS: [&str; 5] = ["NAME", "ID", "SOURCE", "SIZE", "CREATED"];

fn render(images: &[ImageInfo]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.id.clone(),
                i.source.clone(),
                i.size_bytes.map(table::bytes).unwrap_or_else(|| "-".into()),
                i.created_at
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| table::age(chrono::Utc::now(), t.with_timezone(&chrono::Utc)))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table::render(&HEADERS, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_and_logins_are_found() {
        assert_eq!(registry_of("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("ghcr.io/o/r"), "ghcr.io");
        let config = r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/":{"username":"hub","password":"pw"}}}"#;
        assert_eq!(
            docker_login(config, "127.0.0.1:5000"),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(
            docker_login(config, "docker.io"),
            Some(("hub".into(), "pw".into()))
        );
        assert_eq!(docker_login(config, "ghcr.io"), None);
        assert_eq!(docker_login("not json", "ghcr.io"), None);
    }

    #[test]
    fn archives_are_named_after_their_file() {
        assert_eq!(name_of_file(Path::new("/tmp/app.tar")).unwrap(), "app");
        assert_eq!(name_of_file(Path::new("bb.oci.tar")).unwrap(), "bb");
        assert!(name_of_file(Path::new("/")).is_err());
    }
}
