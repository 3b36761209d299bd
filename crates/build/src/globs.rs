//! Path patterns of `COPY` sources and `.dockerignore`: `*`, `?` and
//! `[…]` within one path component, `**` across any number of them.

/// Whether one path component matches a pattern component.
pub fn component_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(1).position(|c| *c == ']').map(|e| e + 1) else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(c) = n.first() else { return false };
                let mut set = &p[1..end];
                let negate = matches!(set.first(), Some('!' | '^'));
                if negate {
                    set = &set[1..];
                }
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= *c && *c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == *c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[end + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

/// Whether `path` (relative, `/`-separated) matches `pattern`, where `**`
/// stands for any number of components.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    fn go(p: &[&str], n: &[&str]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(&"**") => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some(c) => !n.is_empty() && component_matches(c, n[0]) && go(&p[1..], &n[1..]),
        }
    }
    let split = |s: &str| -> Vec<String> {
        s.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect()
    };
    let (p, n) = (split(pattern), split(path));
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    let n: Vec<&str> = n.iter().map(String::as_str).collect();
    go(&p, &n)
}

/// `.dockerignore` rules: a path is excluded when the last pattern that
/// matches it (or a directory above it) is not a `!` exception.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<(bool, String)>,
}

impl Ignore {
    pub fn parse(text: &str) -> Ignore {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| match l.strip_prefix('!') {
                Some(rest) => (false, clean(rest)),
                None => (true, clean(l)),
            })
            .filter(|(_, p)| !p.is_empty())
            .collect();
        Ignore { rules }
    }

    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let mut excluded = false;
        for (exclude, pattern) in &self.rules {
            let hit = (1..=parts.len()).any(|n| path_matches(pattern, &parts[..n].join("/")));
            if hit {
                excluded = *exclude;
            }
        }
        excluded
    }
}

/// A pattern without a leading `/` or `./`, or a trailing `/`.
fn clean(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_and_paths_match() {
        assert!(component_matches("*.txt", "req.txt"));
        assert!(!component_matches("*.txt", "req.py"));
        assert!(component_matches("re?.txt", "req.txt"));
        assert!(component_matches("[a-c]x", "bx"));
        assert!(!component_matches("[!a-c]x", "bx"));
        assert!(component_matches("requirements*.txt", "requirements.txt"));
        assert!(path_matches("src/*.py", "src/app.py"));
        assert!(!path_matches("src/*.py", "src/sub/app.py"));
        assert!(path_matches("**/*.pyc", "a/b/c.pyc"));
        assert!(path_matches("**/*.pyc", "c.pyc"));
        assert!(path_matches("./app", "app"));
    }

    #[test]
    fn dockerignore_rules_and_exceptions() {
        let i = Ignore::parse("# comment\n.git\n*.log\n!keep.log\nbuild/\n**/__pycache__\n");
        assert!(i.excludes(".git"));
        assert!(i.excludes(".git/config"));
        assert!(i.excludes("debug.log"));
        assert!(!i.excludes("keep.log"));
        assert!(i.excludes("build/out/x"));
        assert!(i.excludes("pkg/sub/__pycache__/m.pyc"));
        assert!(!i.excludes("app.py"));
        assert!(
            !i.excludes("src/debug.log"),
            "*.log is for the top directory"
        );
    }
}
