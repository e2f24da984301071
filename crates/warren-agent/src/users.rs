//! Users and groups of the workspace, read from its own `/etc/passwd` and
//! `/etc/group` (no NSS: the agent is a static binary and must not depend on
//! the image's libc).

use std::path::PathBuf;

/// One account from `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn parse_passwd_line(line: &str) -> Option<User> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 || line.starts_with('#') {
        return None;
    }
    Some(User {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
        shell: f[6].to_string(),
    })
}

/// Looks a user up by name.
pub fn by_name(name: &str) -> Option<User> {
    let found = read("/etc/passwd").lines().filter_map(parse_passwd_line).find(|u| u.name == name);
    // Minimal images may have no /etc/passwd at all; root always exists.
    found.or_else(|| {
        (name == "root").then(|| User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: PathBuf::from("/root"),
            shell: "/bin/sh".into(),
        })
    })
}

/// The supplementary groups `name` belongs to, plus its primary group.
pub fn groups_of(name: &str, primary: u32) -> Vec<u32> {
    let mut out = vec![primary];
    for line in read("/etc/group").lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        if f[3].split(',').any(|m| m == name) {
            if let Ok(gid) = f[2].parse() {
                if !out.contains(&gid) {
                    out.push(gid);
                }
            }
        }
    }
    out
}

/// uid → name and gid → name lookups for one request (reads each file once).
#[derive(Debug, Default)]
pub struct Names {
    users: Vec<(u32, String)>,
    groups: Vec<(u32, String)>,
}

impl Names {
    pub fn load() -> Self {
        let users = read("/etc/passwd").lines().filter_map(parse_passwd_line).map(|u| (u.uid, u.name)).collect();
        let groups = read("/etc/group")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
            })
            .collect();
        Names { users, groups }
    }

    pub fn user(&self, uid: u32) -> String {
        self.users.iter().find(|(id, _)| *id == uid).map(|(_, n)| n.clone()).unwrap_or_else(|| uid.to_string())
    }

    pub fn group(&self, gid: u32) -> String {
        self.groups.iter().find(|(id, _)| *id == gid).map(|(_, n)| n.clone()).unwrap_or_else(|| gid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let u = parse_passwd_line("user:x:1000:1000:User,,,:/home/user:/bin/bash").unwrap();
        assert_eq!((u.uid, u.gid, u.home.to_str().unwrap()), (1000, 1000, "/home/user"));
        assert!(parse_passwd_line("broken:x:abc:1:::").is_none());
        assert!(parse_passwd_line("short:x:1").is_none());
    }

    #[test]
    fn root_exists_on_any_host() {
        let r = by_name("root").unwrap();
        assert_eq!(r.uid, 0);
        assert_eq!(Names::load().user(0), "root");
        assert_eq!(Names::load().user(4_000_000_000), "4000000000");
    }
}
