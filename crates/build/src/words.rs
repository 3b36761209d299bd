//! Dockerfile words and variables: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR:+alternative}` (and the forms without `:`), quotes and backslashes
//! as Docker's shell-like lexer treats them.

use std::collections::BTreeMap;

/// `s` with its variables replaced (unknown ones are empty); `\$` is a `$`.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' => out.push_str(&variable(&mut chars, vars)?),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Reads what follows a `$` and returns its value.
fn variable(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    vars: &BTreeMap<String, String>,
) -> Result<String, String> {
    let value = |name: &str| vars.get(name).cloned();
    match chars.peek() {
        Some('{') => {
            chars.next();
            let mut inner = String::new();
            let mut depth = 1;
            for c in chars.by_ref() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                inner.push(c);
            }
            if depth != 0 {
                return Err(format!("unclosed ${{{inner}"));
            }
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (name, op) = inner.split_at(name_len);
            if name.is_empty() {
                return Err(format!("bad substitution ${{{inner}}}"));
            }
            let v = value(name);
            let set_nonempty = v.as_deref().is_some_and(|v| !v.is_empty());
            Ok(match op {
                "" => v.unwrap_or_default(),
                _ if op.starts_with(":-") => match set_nonempty {
                    true => v.unwrap_or_default(),
                    false => expand(&op[2..], vars)?,
                },
                _ if op.starts_with(":+") => match set_nonempty {
                    true => expand(&op[2..], vars)?,
                    false => String::new(),
                },
                _ if op.starts_with('-') => match v {
                    Some(v) => v,
                    None => expand(&op[1..], vars)?,
                },
                _ if op.starts_with('+') => match v {
                    Some(_) => expand(&op[1..], vars)?,
                    None => String::new(),
                },
                _ => return Err(format!("unsupported substitution ${{{inner}}}")),
            })
        }
        Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
            let mut name = String::new();
            while let Some(c) = chars
                .peek()
                .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
            {
                name.push(*c);
                chars.next();
            }
            Ok(value(&name).unwrap_or_default())
        }
        _ => Ok("$".into()),
    }
}

/// Splits `text` into words at unquoted whitespace; quotes are removed, a
/// backslash keeps the next character. Variables are left for [`expand`]
/// (a `$` in single quotes is escaped so that it stays a `$`).
pub fn split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('$') => word.push_str("\\$"),
                    Some(n) => word.push(n),
                    None => word.push('\\'),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some('$') => word.push_str("\\$"),
                        Some(c) => word.push(c),
                        None => return Err("unclosed single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\')) => word.push(n),
                            Some('$') => word.push_str("\\$"),
                            Some(n) => {
                                word.push('\\');
                                word.push(n);
                            }
                            None => return Err("unclosed double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unclosed double quote".into()),
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("A", "1"), ("EMPTY", ""), ("P", "/opt")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_expand_as_docker_does() {
        let v = vars();
        let e = |s| expand(s, &v).unwrap();
        assert_eq!(e("$A-${A}x"), "1-1x");
        assert_eq!(e("$P/bin:$NOPE"), "/opt/bin:");
        assert_eq!(e("${NOPE:-d}${A:-d}${EMPTY:-d}"), "d1d");
        assert_eq!(e("${EMPTY-d}|${NOPE-d}"), "|d");
        assert_eq!(e("${A:+yes}${EMPTY:+no}${EMPTY+set}${NOPE+no}"), "yesset");
        assert_eq!(e("${NOPE:-$P/x}"), "/opt/x");
        assert_eq!(e("\\$A costs $ 5"), "$A costs $ 5");
        assert!(expand("${A", &v).is_err());
        assert!(expand("${A?err}", &v).is_err());
    }

    #[test]
    fn words_split_with_quotes() {
        assert_eq!(
            split(r#"A=1 B="two words" C='$A' D=a\ b"#).unwrap(),
            vec!["A=1", "B=two words", "C=\\$A", "D=a b"]
        );
        let c = &split("C='$A'").unwrap()[0];
        assert_eq!(expand(c, &vars()).unwrap(), "C=$A");
        assert!(split("A=\"open").is_err());
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
    }
}
