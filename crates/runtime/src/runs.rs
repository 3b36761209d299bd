//! Runs: every boot or restore of a gVisor sandbox is a runsc container of
//! its own, named after the sandbox.
//!
//! A suspend's checkpoint stops the sandbox, and its container is then
//! deleted in the background: its sentry exits (freeing its memory: ~40 ms
//! for 256 MB here) and `runsc delete` removes its state and cgroup (~25 ms
//! more). A resume right after must not wait for that, so it restores into
//! a new container whose name and cgroup differ from the one still being
//! deleted. Two containers never share a cgroup: runsc sets limits only in
//! cgroups it makes ("Using pre-created cgroup" skips them), removes those
//! when it deletes their container (retrying while they are busy), and the
//! old sentry's memory, until it is freed, stays charged to the old cgroup
//! rather than counting against the new one's limit.
//!
//! Run 0 is named after the sandbox itself; run `n` ≥ 1 is `r<n>-<id>`,
//! and its cgroup is a sibling of the sandbox's, named the same way. runsc
//! resolves a container id on its command line as a prefix (`runsc delete
//! X` fails as "ambiguous" while `X` and `X.r1` both exist), so no name may
//! begin with another: a sandbox id never begins with `r<n>-` (see
//! [`is_valid_id`]), and the digits of `r<n>-` end at the dash. A new run
//! takes the smallest `n` whose name is free (no runsc state, no deletion
//! under way, no cgroup left): a sandbox is in run 0 unless it was resumed
//! while its previous run was still being deleted, and quick resumes take
//! turns between two names.

/// The name of run `n` of sandbox `id` (its runsc container id, and the
/// last component of its cgroup path).
pub fn name(id: &str, n: u32) -> String {
    if n == 0 {
        id.to_string()
    } else {
        format!("r{n}-{id}")
    }
}

/// The sandbox a runsc container belongs to, and which run of it it is.
pub fn parse(name: &str) -> (&str, u32) {
    let later = name.strip_prefix('r').and_then(|rest| {
        let (digits, id) = rest.split_once('-')?;
        let valid = !digits.is_empty()
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !id.is_empty();
        Some((id, digits.parse::<u32>().ok().filter(|_| valid)?))
    });
    later.unwrap_or((name, 0))
}

/// Whether `id` can name a sandbox: not the name of a later run of another.
pub fn is_valid_id(id: &str) -> bool {
    parse(id).1 == 0
}

/// The cgroup path of run `n` (named `name`) of a sandbox whose own cgroup
/// is `base` (`/<parent>/<id>`): `base` itself for run 0, else its sibling.
pub fn cgroup_path(base: &str, name: &str, n: u32) -> String {
    if n == 0 {
        return base.to_string();
    }
    match base.trim_end_matches('/').rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for id in [
            "sbx0123456789abcdef0123",
            "a",
            "r-x",
            "rx-1",
            "r0-x",
            "r01-x",
        ] {
            for n in [0, 1, 2, 10, 4_000_000] {
                let run = name(id, n);
                assert_eq!(parse(&run), (id, n), "{run}");
            }
        }
        assert_eq!(name("sbx1", 0), "sbx1");
        assert_eq!(name("sbx1", 3), "r3-sbx1");
    }

    #[test]
    fn no_run_name_begins_with_another_of_the_same_sandbox() {
        // runsc reads a command line's container id as a prefix.
        let id = "sbx0123456789abcdef0123";
        let names: Vec<String> = (0..120).map(|n| name(id, n)).collect();
        for a in &names {
            for b in &names {
                if a != b {
                    assert!(!b.starts_with(a.as_str()), "{a} begins {b}");
                }
            }
        }
    }

    #[test]
    fn only_canonical_run_names_parse_as_later_runs() {
        assert_eq!(parse("r0-x"), ("r0-x", 0));
        assert_eq!(parse("r01-x"), ("r01-x", 0));
        assert_eq!(parse("r1-"), ("r1-", 0));
        assert_eq!(parse("r-x"), ("r-x", 0));
        assert_eq!(parse("rx-1"), ("rx-1", 0));
        assert_eq!(parse("r99999999999-x"), ("r99999999999-x", 0));
        assert_eq!(parse("r2-r1-x"), ("r1-x", 2));
        assert!(is_valid_id("sbx0123"));
        assert!(is_valid_id("r0-x"));
        assert!(!is_valid_id("r1-x"));
    }

    #[test]
    fn later_runs_get_a_sibling_cgroup() {
        assert_eq!(cgroup_path("/sbx/sbx1", "sbx1", 0), "/sbx/sbx1");
        assert_eq!(cgroup_path("/sbx/sbx1", "r1-sbx1", 1), "/sbx/r1-sbx1");
        assert_eq!(
            cgroup_path("/ci/run-7/sbx1", "r2-sbx1", 2),
            "/ci/run-7/r2-sbx1"
        );
        assert_eq!(cgroup_path("sbx1", "r1-sbx1", 1), "r1-sbx1");
    }
}
