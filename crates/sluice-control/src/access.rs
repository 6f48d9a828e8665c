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

fn parse_list(name: &str, list: &Option<Vec<String>>) -> Result<Option<Vec<IpNet>>, String> {
    let Some(list) = list else {
        return Ok(None);
    };
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{name}: {s:?} is not an address or a CIDR block like 10.0.0.0/8 or fd00::/8"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl AllowLists {
    fn parse(&self) -> Result<Parsed, Vec<String>> {
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
    pub fn open(root: &Path) -> Result<Access, String> {
        let path = root.join("access.json");
        let lists: AllowLists = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AllowLists::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let parsed = lists
            .parse()
            .map_err(|e| format!("{}: {}", path.display(), e.join("; ")))?;
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
    pub fn would_allow(lists: &AllowLists, ip: IpAddr) -> Result<bool, Vec<String>> {
        Ok(allows(&lists.parse()?.management, ip))
    }

    /// Replaces the lists: checked, written, then applied.
    pub fn set(&self, lists: AllowLists) -> Result<(), Vec<String>> {
        let parsed = lists.parse()?;
        let bytes = serde_json::to_vec_pretty(&lists).map_err(|e| vec![e.to_string()])?;
        let mut g = self.given.write().expect("access lock");
        write_whole(&self.path, &bytes, 0o600)
            .map_err(|e| vec![format!("cannot save the allow-lists: {e}")])?;
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
        assert_eq!(a.set(bad).unwrap_err().len(), 2);
        assert!(
            a.allows(Area::Management, ip("10.1.2.3")),
            "a refused change changes nothing"
        );
    }
}
