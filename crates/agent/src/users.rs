//! User resolution by parsing /etc/passwd and /etc/group directly (no NSS, so
//! the agent works as a static binary).

use sbx_api::daemon::ProcessUser;

/// Who a child process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (always includes `gid`).
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: String,
}

#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 6 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The user databases, read once per resolution.
pub struct UserDb {
    passwd: Vec<PasswdEntry>,
    group: Vec<GroupEntry>,
}

impl UserDb {
    pub fn load() -> Self {
        let read = |p| std::fs::read_to_string(p).unwrap_or_default();
        Self::from_text(&read("/etc/passwd"), &read("/etc/group"))
    }

    pub fn from_text(passwd: &str, group: &str) -> Self {
        Self {
            passwd: parse_passwd(passwd),
            group: parse_group(group),
        }
    }

    /// Home directory of `uid`, if it has a passwd entry.
    pub fn home_of(&self, uid: u32) -> Option<String> {
        self.passwd
            .iter()
            .find(|e| e.uid == uid)
            .map(|e| e.home.clone())
    }

    fn gid_of_group(&self, spec: &str) -> Result<u32, String> {
        if let Ok(gid) = spec.parse() {
            return Ok(gid);
        }
        self.group
            .iter()
            .find(|g| g.name == spec)
            .map(|g| g.gid)
            .ok_or_else(|| format!("unknown group `{spec}`"))
    }

    /// Resolves `user` (a name or uid) and an optional group override.
    fn resolve_parts(&self, user: &str, group: Option<u32>) -> Result<Identity, String> {
        let entry = match user.parse::<u32>() {
            Ok(uid) => self
                .passwd
                .iter()
                .find(|e| e.uid == uid)
                .cloned()
                .or(Some(PasswdEntry {
                    name: String::new(),
                    uid,
                    gid: uid,
                    home: if uid == 0 { "/root".into() } else { "/".into() },
                })),
            Err(_) => self.passwd.iter().find(|e| e.name == user).cloned(),
        };
        let entry = match entry {
            Some(e) => e,
            None if user == "root" => PasswdEntry {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
            },
            None => return Err(format!("unknown user `{user}`")),
        };
        let gid = group.unwrap_or(entry.gid);
        let mut groups = vec![gid];
        if !entry.name.is_empty() {
            for g in &self.group {
                if g.members.contains(&entry.name) && !groups.contains(&g.gid) {
                    groups.push(g.gid);
                }
            }
        }
        Ok(Identity {
            uid: entry.uid,
            gid,
            groups,
            name: (!entry.name.is_empty()).then_some(entry.name),
            home: entry.home,
        })
    }

    /// Resolves `"root"`, `"name"`, `"uid"`, `"uid:gid"`, `"name:group"` or `{name|uid, gid?}`.
    pub fn resolve(&self, user: &ProcessUser) -> Result<Identity, String> {
        match user {
            ProcessUser::Spec(s) => {
                let s = s.trim();
                if s.is_empty() {
                    return Err("user must not be empty".into());
                }
                match s.split_once(':') {
                    Some((u, g)) => {
                        let gid = self.gid_of_group(g)?;
                        self.resolve_parts(u, Some(gid))
                    }
                    None => self.resolve_parts(s, None),
                }
            }
            ProcessUser::Ids { name, uid, gid } => {
                let who = match (name, uid) {
                    (Some(n), None) => n.clone(),
                    (None, Some(u)) => u.to_string(),
                    (Some(n), Some(u)) => {
                        let id = self.resolve_parts(n, *gid)?;
                        if id.uid != *u {
                            return Err(format!("user `{n}` does not have uid {u}"));
                        }
                        return Ok(id);
                    }
                    (None, None) => return Err("user needs a name or a uid".into()),
                };
                self.resolve_parts(&who, *gid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n# c\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nbad line\n";
    const GROUP: &str = "root:x:0:\nalice:x:1000:\ndocker:x:999:alice,bob\nstaff:x:50:\n";

    fn db() -> UserDb {
        UserDb::from_text(PASSWD, GROUP)
    }

    #[test]
    fn resolves_names_and_ids() {
        let db = db();
        let a = db.resolve(&ProcessUser::Spec("alice".into())).unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(a.groups, vec![1000, 999]);
        let r = db.resolve(&ProcessUser::Spec("root".into())).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let n = db.resolve(&ProcessUser::Spec("4242".into())).unwrap();
        assert_eq!((n.uid, n.gid, n.name), (4242, 4242, None));
        let ug = db.resolve(&ProcessUser::Spec("1000:staff".into())).unwrap();
        assert_eq!((ug.uid, ug.gid), (1000, 50));
        let ug = db.resolve(&ProcessUser::Spec("alice:7".into())).unwrap();
        assert_eq!((ug.uid, ug.gid), (1000, 7));
        let s = db
            .resolve(&ProcessUser::Ids {
                name: None,
                uid: Some(1000),
                gid: Some(5),
            })
            .unwrap();
        assert_eq!((s.uid, s.gid), (1000, 5));
        let s = db
            .resolve(&ProcessUser::Ids {
                name: Some("alice".into()),
                uid: None,
                gid: None,
            })
            .unwrap();
        assert_eq!(s.uid, 1000);
    }

    #[test]
    fn rejects_unknown() {
        let db = db();
        assert!(db.resolve(&ProcessUser::Spec("mallory".into())).is_err());
        assert!(db
            .resolve(&ProcessUser::Spec("alice:nogroup".into()))
            .is_err());
        assert!(db.resolve(&ProcessUser::Spec(" ".into())).is_err());
        assert!(db
            .resolve(&ProcessUser::Ids {
                name: None,
                uid: None,
                gid: None
            })
            .is_err());
        // root resolves even without a passwd file.
        let empty = UserDb::from_text("", "");
        assert_eq!(
            empty
                .resolve(&ProcessUser::Spec("root".into()))
                .unwrap()
                .uid,
            0
        );
    }
}
