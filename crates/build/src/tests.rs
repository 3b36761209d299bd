use super::*;

fn no_args() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn env(step: &Step) -> BTreeMap<&str, &str> {
    step.env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn a_python_image_plans_its_steps_and_config() {
    let p = plan(
        r#"# syntax=docker/dockerfile:1
FROM default
ARG VERSION=1.0
ENV APP_HOME=/srv/app \
    GREETING="hello world"
WORKDIR $APP_HOME
RUN pip install --no-cache-dir \
      six
COPY --chown=1000:1000 --chmod=755 app.py requirements*.txt ./
USER 1000
EXPOSE 8080
ENTRYPOINT ["python3", "app.py"]
CMD ["--port", "8080"]
"#,
        &no_args(),
    )
    .unwrap();
    assert_eq!(p.stages.len(), 1);
    let s = &p.stages[0];
    assert_eq!(s.base, Base::Image("default".into()));
    assert_eq!(s.config.working_dir.as_deref(), Some("/srv/app"));
    assert_eq!(s.config.user.as_deref(), Some("1000"));
    assert_eq!(
        s.config.entrypoint,
        Some(vec!["python3".into(), "app.py".into()])
    );
    assert_eq!(s.config.cmd, Some(vec!["--port".into(), "8080".into()]));
    assert_eq!(
        s.config.env,
        vec![
            ("APP_HOME".into(), "/srv/app".into()),
            ("GREETING".into(), "hello world".into())
        ]
    );
    let run = s
        .steps
        .iter()
        .find(|st| matches!(st.action, Action::Run { .. }))
        .unwrap();
    assert_eq!(run.line, 7);
    assert_eq!(run.text, "RUN pip install --no-cache-dir …");
    match &run.action {
        Action::Run { argv } => {
            assert_eq!(argv[..2], ["/bin/sh", "-c"]);
            assert!(
                argv[2].contains("pip install") && argv[2].contains("six"),
                "{argv:?}"
            );
        }
        a => panic!("{a:?}"),
    }
    // RUN sees ENV and ARG; it runs in the WORKDIR.
    assert_eq!(env(run)["VERSION"], "1.0");
    assert_eq!(env(run)["APP_HOME"], "/srv/app");
    assert_eq!(run.working_dir.as_deref(), Some("/srv/app"));
    let copy = s
        .steps
        .iter()
        .find(|st| matches!(st.action, Action::Copy { .. }))
        .unwrap();
    assert_eq!(
        copy.action,
        Action::Copy {
            sources: vec!["app.py".into(), "requirements*.txt".into()],
            dest: "./".into(),
            from: None,
            chown: Some("1000:1000".into()),
            chmod: Some(0o755),
            add: false,
        }
    );
    let lines: Vec<usize> = p.warnings.iter().map(|w| w.line).collect();
    assert_eq!(lines, vec![1, 11], "{:?}", p.warnings);
    assert!(p.warnings[1].message.contains("EXPOSE"));
}

#[test]
fn build_args_and_global_args_reach_from_and_steps() {
    let text = "ARG BASE=default\nFROM $BASE AS build\nARG BASE\nARG MODE=debug\nRUN echo $MODE\nFROM scratch\nCOPY --from=build /out /out\nCOPY --from=0 /a /b\nCOPY --from=127.0.0.1:5000/x:1 /c /d\n";
    let p = plan(text, &no_args()).unwrap();
    assert_eq!(p.stages[0].base, Base::Image("default".into()));
    assert_eq!(p.stages[0].name.as_deref(), Some("build"));
    let run = &p.stages[0].steps[2];
    assert_eq!(env(run)["MODE"], "debug");
    // A global ARG declared again in the stage keeps its value.
    assert_eq!(env(run)["BASE"], "default");
    assert_eq!(p.stages[1].base, Base::Scratch);
    let froms: Vec<Option<Base>> = p.stages[1]
        .steps
        .iter()
        .map(|s| match &s.action {
            Action::Copy { from, .. } => from.clone(),
            a => panic!("{a:?}"),
        })
        .collect();
    assert_eq!(
        froms,
        vec![
            Some(Base::Stage(0)),
            Some(Base::Stage(0)),
            Some(Base::Image("127.0.0.1:5000/x:1".into()))
        ]
    );
    let args: BTreeMap<String, String> = [
        ("BASE".to_string(), "app".to_string()),
        ("MODE".to_string(), "release".to_string()),
    ]
    .into();
    let p = plan(text, &args).unwrap();
    assert_eq!(p.stages[0].base, Base::Image("app".into()));
    assert_eq!(env(&p.stages[0].steps[2])["MODE"], "release");
}

#[test]
fn a_stage_built_on_a_stage_inherits_its_config() {
    let p = plan(
        "FROM default AS base\nENV A=1\nWORKDIR /w\nFROM base\nWORKDIR sub\nENTRYPOINT [\"x\"]\n",
        &no_args(),
    )
    .unwrap();
    let s = &p.stages[1];
    assert_eq!(s.base, Base::Stage(0));
    assert_eq!(s.config.env, vec![("A".into(), "1".into())]);
    assert_eq!(s.config.working_dir.as_deref(), Some("/w/sub"));
}

#[test]
fn exec_and_here_document_forms() {
    let p = plan(
        "FROM default\nRUN [\"/bin/echo\", \"$HOME\"]\nRUN <<EOF\necho one\necho two\nEOF\nENV OLD legacy form value\n",
        &no_args(),
    )
    .unwrap();
    let s = &p.stages[0];
    assert_eq!(
        s.steps[0].action,
        Action::Run {
            argv: vec!["/bin/echo".into(), "$HOME".into()]
        }
    );
    match &s.steps[1].action {
        Action::Run { argv } => assert_eq!(argv[2], "echo one\necho two\n"),
        a => panic!("{a:?}"),
    }
    assert_eq!(
        s.config.env,
        vec![("OLD".into(), "legacy form value".into())]
    );
}

#[test]
fn errors_name_their_line() {
    let cases = [
        ("RUN echo no base\n", 1, "FROM"),
        ("FROM default\nFROOM x\n", 2, ""),
        ("FROM default\n\nCOPY --chmod=999 a b\n", 3, "octal"),
        ("FROM default\nADD https://example.com/x /x\n", 2, "URL"),
        (
            "FROM default\nRUN --mount=type=cache,target=/c true\n",
            2,
            "--mount",
        ),
        ("FROM --platform=linux/arm64 default\n", 1, "amd64"),
        (
            "FROM default AS a\nFROM default AS a\n",
            2,
            "duplicate stage",
        ),
        ("FROM default\nENV A=\"open\n", 2, "quote"),
        ("", 1, "FROM"),
    ];
    for (text, line, words) in cases {
        let e = plan(text, &no_args()).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.message.contains(words), "{text:?}: {e}");
        assert!(e
            .to_string()
            .starts_with(&format!("Dockerfile line {line}:")));
    }
}

#[test]
fn the_examples_read_cleanly() {
    for (name, text) in [
        (
            "python-app",
            include_str!("../../../examples/python-app/Dockerfile"),
        ),
        (
            "browser",
            include_str!("../../../examples/browser/Dockerfile"),
        ),
        (
            "desktop",
            include_str!("../../../examples/desktop/Dockerfile"),
        ),
    ] {
        let p = plan(text, &no_args()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let stage = p.stages.last().unwrap();
        assert_eq!(stage.base, Base::Image("default".into()), "{name}");
        assert!(
            stage.config.entrypoint.is_some() || stage.config.cmd.is_some(),
            "{name} starts nothing"
        );
        // Only EXPOSE may warn: nothing else is ignored.
        for w in &p.warnings {
            assert!(w.message.starts_with("EXPOSE"), "{name}: {w:?}");
        }
        let copies_chmod = stage.steps.iter().all(|s| match &s.action {
            Action::Copy { sources, .. } => {
                sources.iter().all(|src| !src.contains(".sh")) || {
                    matches!(
                        &s.action,
                        Action::Copy {
                            chmod: Some(0o755),
                            ..
                        }
                    )
                }
            }
            _ => true,
        });
        assert!(copies_chmod, "{name}: scripts are copied executable");
    }
}
