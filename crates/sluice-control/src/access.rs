//! The server's IP allow-lists: one for management (the management API and metrics), one
//! for consumers (SSE, pull, waiting rooms), as CIDR blocks, IPv4 and IPv6. Kept in
//! `<data_dir>/access.json`; a change applies to the next request, with no restart.
//!
//! Invariants:
//! - `None` lets every address in; a list lets only its blocks in (an empty list, none).
//! - A change is written whole before it applies.
//! - An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is matched as the IPv4 address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::files::write_whole;

/// The two lists, as given (CIDR blocks or single addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AllowLists {
    /// Who may manage: `null` for everyone.
    #[serde(default)]
    pub management: Option<Vec<String>>,
    /// Who may consume: `null` for everyone.
    #[serde(default)]
    pub consumers: Option<Vec<String>>,
}

/// Which list a request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Management,
    Consumers,
}

#[derive(Debug, Default)]
struct Parsed {
    management: Option<Vec<IpNet>>,
    consumers: Option<Vec<IpNet>>,
}

/// What is wrong with the allow-lists, or their file. All of it is the operator's to
/// change (a list's entry, the file), so none passes by itself.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// An entry of list `list` that is neither an address nor a CIDR block.
    #[error("{list}: {given:?} is not an address or a CIDR block like 10.0.0.0/8 or fd00::/8")]
    BadBlock { list: &'static str, given: String },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The file holds lists with bad entries: each of them.
    #[error("{}: {}", path.display(), join(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<AccessError>,
    },
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot save the allow-lists: {0}")]
    Save(#[source] std::io::Error),
}

fn join(problems: &[AccessError]) -> String {
    let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

fn parse_list(
    list: &'static str,
    given: &Option<Vec<String>>,
) -> Result<Option<Vec<IpNet>>, AccessError> {
    let Some(given) = given else {
        return Ok(None);
    };
    given
        .iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| AccessError::BadBlock {
                    list,
                    given: s.to_owned(),
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl AllowLists {
    fn parse(&self) -> Result<Parsed, Vec<AccessError>> {
        let (m, c) = (
            parse_list("management", &self.management),
            parse_list("consumers", &self.consumers),
        );
        match (m, c) {
            (Ok(management), Ok(consumers)) => Ok(Parsed {
                management,
                consumers,
            }),
            (m, c) => Err([m.err(), c.err()].into_iter().flatten().collect()),
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn allows(list: &Option<Vec<IpNet>>, ip: IpAddr) -> bool {
    let ip = canonical(ip);
    list.as_ref()
        .is_none_or(|l| l.iter().any(|n| n.contains(&ip)))
}

pub struct Access {
    path: PathBuf,
    given: RwLock<(AllowLists, Parsed)>,
}

impl Access {
    /// Opens the lists of data dir `root` (everyone allowed if there are none yet).
    pub fn open(root: &Path) -> Result<Access, AccessError> {
        let path = root.join("access.json");
        let lists: AllowLists = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| AccessError::Parse {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AllowLists::default(),
            Err(source) => return Err(AccessError::Read { path, source }),
        };
        let parsed = lists.parse().map_err(|problems| AccessError::Invalid {
            path: path.clone(),
            problems,
        })?;
        Ok(Access {
            path,
            given: RwLock::new((lists, parsed)),
        })
    }

    pub fn lists(&self) -> AllowLists {
        self.given.read().expect("access lock").0.clone()
    }

    pub fn allows(&self, area: Area, ip: IpAddr) -> bool {
        let g = self.given.read().expect("access lock");
        match area {
            Area::Management => allows(&g.1.management, ip),
            Area::Consumers => allows(&g.1.consumers, ip),
        }
    }

    /// Whether `lists` would let `ip` manage (to refuse a change that locks its maker out).
    pub fn would_allow(lists: &AllowLists, ip: IpAddr) -> Result<bool, Vec<AccessError>> {
        Ok(allows(&lists.parse()?.management, ip))
    }

    /// Replaces the lists: checked, written, then applied. The error lists every problem.
    pub fn set(&self, lists: AllowLists) -> Result<(), Vec<AccessError>> {
        let parsed = lists.parse()?;
        let bytes = serde_json::to_vec_pretty(&lists).map_err(|e| vec![AccessError::Encode(e)])?;
        let mut g = self.given.write().expect("access lock");
        write_whole(&self.path, &bytes, 0o600).map_err(|e| vec![AccessError::Save(e)])?;
        *g = (lists, parsed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_match_v4_v6_and_mapped_addresses_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = Access::open(dir.path()).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(
            a.allows(Area::Management, ip("203.0.113.9")),
            "no list: everyone"
        );
        a.set(AllowLists {
            management: Some(vec![
                "10.0.0.0/8".into(),
                "fd00::/8".into(),
                "192.0.2.7".into(),
            ]),
            consumers: Some(vec![]),
        })
        .unwrap();
        assert!(a.allows(Area::Management, ip("10.1.2.3")));
        assert!(a.allows(Area::Management, ip("::ffff:10.1.2.3")));
        assert!(a.allows(Area::Management, ip("fd12::1")));
        assert!(a.allows(Area::Management, ip("192.0.2.7")));
        assert!(!a.allows(Area::Management, ip("192.0.2.8")));
        assert!(!a.allows(Area::Management, ip("2001:db8::1")));
        assert!(
            !a.allows(Area::Consumers, ip("10.1.2.3")),
            "an empty list: nobody"
        );
        let again = Access::open(dir.path()).unwrap();
        assert!(!again.allows(Area::Management, ip("192.0.2.8")));
        let bad = AllowLists {
            management: Some(vec!["10.0.0.0/33".into()]),
            consumers: Some(vec!["nope".into()]),
        };
        let problems = a.set(bad.clone()).unwrap_err();
        assert_eq!(problems.len(), 2);
        assert_eq!(
            problems[1].to_string(),
            "consumers: \"nope\" is not an address or a CIDR block like 10.0.0.0/8 or fd00::/8"
        );
        // The same lists in the file: opening names the file and every problem.
        std::fs::write(
            dir.path().join("access.json"),
            serde_json::to_vec(&bad).unwrap(),
        )
        .unwrap();
        let e = Access::open(dir.path()).err().unwrap();
        assert!(matches!(&e, AccessError::Invalid { problems, .. } if problems.len() == 2));
        assert!(e.to_string().contains("access.json: management: "), "{e}");
        assert!(
            a.allows(Area::Management, ip("10.1.2.3")),
            "a refused change changes nothing"
        );
    }
}
