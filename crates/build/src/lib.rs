//! A Dockerfile read into a build [`Plan`]: its stages, and for each step
//! what it does and the environment it runs in (variables expanded as
//! Docker expands them). Executing a plan — each step in a builder sandbox,
//! its result a layer — is the builder's job; this crate only reads.
//!
//! Instructions that mean nothing for a sandbox (`EXPOSE`, `HEALTHCHECK`,
//! `LABEL`, `VOLUME`, `STOPSIGNAL`, `SHELL`, `ONBUILD`, `MAINTAINER`) are
//! accepted with a [`Warning`]. Every error names its line.

pub mod globs;
mod words;

use parse_dockerfile::{Command, Flag, Instruction};
use serde::Serialize;
use std::collections::BTreeMap;

pub use words::expand;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct Error {
    pub line: usize,
    pub message: String,
}

/// Something accepted that has no effect here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub stages: Vec<Stage>,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// `FROM … AS name`.
    pub name: Option<String>,
    pub line: usize,
    pub base: Base,
    pub steps: Vec<Step>,
    /// The image config the stage ends with.
    pub config: Config,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    Scratch,
    /// An sbx image name (`default`) or a registry reference: the builder
    /// knows which.
    Image(String),
    /// An earlier stage, by index.
    Stage(usize),
}

/// The image config as the steps change it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

impl Config {
    fn set_env(&mut self, key: String, value: String) {
        match self.env.iter_mut().find(|(k, _)| *k == key) {
            Some(kv) => kv.1 = value,
            None => self.env.push((key, value)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub line: usize,
    /// The instruction as written (one line), for progress.
    pub text: String,
    pub action: Action,
    /// The environment a `RUN` gets: the stage's `ENV`, then its `ARG`s.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A command whose file changes make a layer.
    Run { argv: Vec<String> },
    /// Files from the context (or a stage, or an image) into the image.
    Copy {
        sources: Vec<String>,
        dest: String,
        from: Option<Base>,
        chown: Option<String>,
        chmod: Option<u32>,
        /// `ADD`: local tar archives are unpacked.
        add: bool,
    },
    /// Only the config changes (`ENV`, `WORKDIR`, `USER`, `CMD`,
    /// `ENTRYPOINT`, `ARG`): no layer.
    Config,
}

/// Reads `text` with build arguments `args` (`--build-arg K=V`).
pub fn plan(text: &str, args: &BTreeMap<String, String>) -> Result<Plan, Error> {
    let file = parse_dockerfile::parse(text).map_err(|e| Error {
        line: e.line().max(1),
        message: format!("{e:#}"),
    })?;
    let line_of = |pos: usize| text[..pos.min(text.len())].matches('\n').count() + 1;
    let mut warnings = Vec::new();
    if let Some(d) = &file.parser_directives.syntax {
        warnings.push(Warning {
            line: line_of(d.value.span.start),
            message: "the syntax directive is ignored".into(),
        });
    }
    // ARGs before the first FROM: usable in FROM lines only (unless a
    // stage declares them again).
    let mut global: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    // Per stage: its declared ARGs with values.
    let mut stage_args: BTreeMap<String, String> = BTreeMap::new();
    for ins in &file.instructions {
        let start = span_start(ins);
        let line = line_of(start);
        let err = |message: String| Error { line, message };
        let written = one_line(text, start);
        if let Instruction::From(from) = ins {
            let image = expand(&from.image.value, &global).map_err(err)?;
            for flag in &from.options {
                if flag_name(flag) == "platform" {
                    let v = expand(&flag_value(flag), &global).map_err(err)?;
                    if v != "linux/amd64" {
                        return Err(err(format!("platform {v}: this host builds linux/amd64")));
                    }
                } else {
                    return Err(err(format!("unknown FROM option --{}", flag_name(flag))));
                }
            }
            let base = if image.eq_ignore_ascii_case("scratch") {
                Base::Scratch
            } else {
                match stage_index(&stages, &image) {
                    Some(i) => Base::Stage(i),
                    None => Base::Image(image),
                }
            };
            let config = match &base {
                Base::Stage(i) => stages[*i].config.clone(),
                _ => Config::default(),
            };
            // (The parser refuses two stages of one name.)
            let name = from.as_.as_ref().map(|(_, n)| n.value.to_lowercase());
            stage_args.clear();
            stages.push(Stage {
                name,
                line,
                base,
                steps: Vec::new(),
                config,
            });
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            match ins {
                Instruction::Arg(a) => {
                    for (k, v) in arg_pairs(&a.arguments.value, &global).map_err(err)? {
                        let v = args.get(&k).cloned().or(v).unwrap_or_default();
                        global.insert(k, v);
                    }
                    continue;
                }
                _ => return Err(err("the first instruction must be FROM (or ARG)".into())),
            }
        };
        // What `$VAR` means here: the stage's ENV, then its ARGs.
        let mut vars: BTreeMap<String, String> = stage_args.clone();
        vars.extend(stage.config.env.iter().cloned());
        let action = match ins {
            Instruction::Arg(a) => {
                for (k, v) in arg_pairs(&a.arguments.value, &vars).map_err(err)? {
                    let v = args
                        .get(&k)
                        .cloned()
                        .or(v)
                        .or_else(|| global.get(&k).cloned())
                        .unwrap_or_default();
                    stage_args.insert(k, v);
                }
                Action::Config
            }
            Instruction::Env(e) => {
                for (k, v) in env_pairs(&e.arguments.value, &vars).map_err(err)? {
                    stage.config.set_env(k, v);
                }
                Action::Config
            }
            Instruction::Workdir(w) => {
                let dir = expand(&w.arguments.value, &vars).map_err(err)?;
                let dir = match (&stage.config.working_dir, dir.starts_with('/')) {
                    (_, true) => dir,
                    (Some(cur), false) => format!("{}/{dir}", cur.trim_end_matches('/')),
                    (None, false) => format!("/{dir}"),
                };
                stage.config.working_dir = Some(dir);
                Action::Config
            }
            Instruction::User(u) => {
                stage.config.user = Some(expand(&u.arguments.value, &vars).map_err(err)?);
                Action::Config
            }
            Instruction::Cmd(c) => {
                stage.config.cmd = Some(command(&c.arguments));
                Action::Config
            }
            Instruction::Entrypoint(e) => {
                stage.config.entrypoint = Some(command(&e.arguments));
                // As Docker: a new ENTRYPOINT drops the CMD inherited so far.
                stage.config.cmd = None;
                Action::Config
            }
            Instruction::Run(r) => {
                if let Some(flag) = r.options.first() {
                    return Err(err(format!("RUN --{} is not supported", flag_name(flag))));
                }
                let mut argv = command(&r.arguments);
                if !r.here_docs.is_empty() {
                    // `RUN <<EOF …`: the document is the script.
                    argv = vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        r.here_docs.iter().map(|h| h.value.as_ref()).collect(),
                    ];
                }
                Action::Run { argv }
            }
            Instruction::Copy(c) => copy_action(
                &c.options,
                c.src.iter().map(source_text),
                &c.dest.value,
                false,
                &vars,
                &stages,
            )
            .map_err(err)?,
            Instruction::Add(a) => copy_action(
                &a.options,
                a.src.iter().map(source_text),
                &a.dest.value,
                true,
                &vars,
                &stages,
            )
            .map_err(err)?,
            Instruction::Expose(_)
            | Instruction::Healthcheck(_)
            | Instruction::Label(_)
            | Instruction::Volume(_)
            | Instruction::Stopsignal(_)
            | Instruction::Shell(_)
            | Instruction::Onbuild(_)
            | Instruction::Maintainer(_) => {
                warnings.push(Warning {
                    line,
                    message: format!(
                        "{} has no meaning for a sandbox and is ignored",
                        written
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_uppercase()
                    ),
                });
                continue;
            }
            _ => return Err(err(format!("unsupported instruction: {written}"))),
        };
        // The stage may have been borrowed by `copy_action`: look it up again.
        let stage = stages.last_mut().expect("a stage");
        let mut env = stage.config.env.clone();
        for (k, v) in &stage_args {
            if !env.iter().any(|(e, _)| e == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        stage.steps.push(Step {
            line,
            text: written,
            action,
            env,
            working_dir: stage.config.working_dir.clone(),
            user: stage.config.user.clone(),
        });
    }
    if stages.is_empty() {
        return Err(Error {
            line: 1,
            message: "no FROM: a Dockerfile starts from an image (or scratch)".into(),
        });
    }
    Ok(Plan { stages, warnings })
}

fn copy_action(
    options: &[Flag<'_>],
    sources: impl Iterator<Item = String>,
    dest: &str,
    add: bool,
    vars: &BTreeMap<String, String>,
    stages: &[Stage],
) -> Result<Action, String> {
    let (mut from, mut chown, mut chmod) = (None, None, None);
    for flag in options {
        let value = expand(&flag_value(flag), vars)?;
        match flag_name(flag).as_str() {
            "from" if !add => {
                from = Some(match stage_index(stages, &value) {
                    Some(i) => Base::Stage(i),
                    None => Base::Image(value),
                })
            }
            "chown" => chown = Some(value),
            "chmod" => {
                chmod = Some(
                    u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| format!("--chmod={value} is not an octal mode"))?,
                )
            }
            // Layering hints with no effect here.
            "link" => {}
            other => return Err(format!("unknown option --{other}")),
        }
    }
    let sources = sources
        .map(|s| expand(&s, vars))
        .collect::<Result<Vec<_>, _>>()?;
    if add {
        if let Some(url) = sources.iter().find(|s| s.contains("://")) {
            return Err(format!(
                "ADD from a URL ({url}) is not supported: download it in a RUN step"
            ));
        }
    }
    Ok(Action::Copy {
        sources,
        dest: expand(dest, vars)?,
        from,
        chown,
        chmod,
        add,
    })
}

fn stage_index(stages: &[Stage], name: &str) -> Option<usize> {
    let lower = name.to_lowercase();
    stages
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
        .or_else(|| name.parse::<usize>().ok().filter(|i| *i < stages.len()))
}

/// Exec form as is; shell form through `/bin/sh -c`.
fn command(c: &Command<'_>) -> Vec<String> {
    match c {
        Command::Exec(args) => args.value.iter().map(|a| a.value.to_string()).collect(),
        Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.value.to_string()],
        _ => Vec::new(),
    }
}

fn source_text(s: &parse_dockerfile::Source<'_>) -> String {
    match s {
        parse_dockerfile::Source::Path(p) => p.value.to_string(),
        parse_dockerfile::Source::HereDoc(h) => h.value.to_string(),
        _ => String::new(),
    }
}

fn flag_name(f: &Flag<'_>) -> String {
    f.name.value.to_lowercase()
}

fn flag_value(f: &Flag<'_>) -> String {
    f.value
        .as_ref()
        .map(|v| v.value.to_string())
        .unwrap_or_default()
}

/// `K` or `K=V` words of an `ARG`.
fn arg_pairs(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<(String, Option<String>)>, String> {
    words::split(text)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), Some(expand(v, vars)?))),
            None => Ok((w, None)),
        })
        .collect()
}

/// `K=V …` pairs of an `ENV`, or the old `ENV K V W` (one pair).
fn env_pairs(text: &str, vars: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    let words = words::split(text)?;
    if words.first().is_some_and(|w| !w.contains('=')) {
        let (key, rest) = text
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((text.trim(), ""));
        return Ok(vec![(key.to_string(), expand(rest.trim(), vars)?)]);
    }
    words
        .into_iter()
        .map(|w| {
            let (k, v) = w.split_once('=').expect("checked");
            if k.is_empty() {
                return Err("ENV needs a name before '='".to_string());
            }
            Ok((k.to_string(), expand(v, vars)?))
        })
        .collect()
}

/// Where an instruction starts in the text.
fn span_start(ins: &Instruction<'_>) -> usize {
    match ins {
        Instruction::Add(i) => i.add.span.start,
        Instruction::Arg(i) => i.arg.span.start,
        Instruction::Cmd(i) => i.cmd.span.start,
        Instruction::Copy(i) => i.copy.span.start,
        Instruction::Entrypoint(i) => i.entrypoint.span.start,
        Instruction::Env(i) => i.env.span.start,
        Instruction::Expose(i) => i.expose.span.start,
        Instruction::From(i) => i.from.span.start,
        Instruction::Healthcheck(i) => i.healthcheck.span.start,
        Instruction::Label(i) => i.label.span.start,
        Instruction::Maintainer(i) => i.maintainer.span.start,
        Instruction::Onbuild(i) => i.onbuild.span.start,
        Instruction::Run(i) => i.run.span.start,
        Instruction::Shell(i) => i.shell.span.start,
        Instruction::Stopsignal(i) => i.stopsignal.span.start,
        Instruction::User(i) => i.user.span.start,
        Instruction::Volume(i) => i.volume.span.start,
        Instruction::Workdir(i) => i.workdir.span.start,
        _ => 0,
    }
}

/// The first line of the instruction at `start`, trimmed.
fn one_line(text: &str, start: usize) -> String {
    let rest = &text[start..];
    let line = rest.split('\n').next().unwrap_or("").trim();
    match line.strip_suffix('\\') {
        Some(l) => format!("{} …", l.trim_end()),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests;
