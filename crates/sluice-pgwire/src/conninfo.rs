//! Connection parameters in libpq's forms: `postgres://` / `postgresql://` URLs and
//! `key=value` strings, with `PG*` environment variables filling what the string leaves
//! out. The password never appears in `Debug` or `Display` output.

use std::fmt;
use std::path::PathBuf;

/// How TLS is negotiated, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// Try TLS, fall back to plain text when the server does not offer it (libpq's default).
    Prefer,
    /// TLS without verifying the server's certificate.
    Require,
    /// TLS, certificate chain verified against `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConnInfoError(format!(
                "unknown sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
            )))
            }
        })
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A directory holding the server's Unix socket.
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A malformed connection string or parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection string: {0}")]
pub struct ConnInfoError(pub String);

/// Everything needed to open a connection.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub hosts: Vec<Host>,
    /// The first host's port.
    pub port: u16,
    /// Each host's port, in the order of `hosts` (libpq: one port for every host, or one
    /// per host).
    pub ports: Vec<u16>,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: std::time::Duration,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("hosts", &self.hosts)
            .field("ports", &self.ports)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .finish()
    }
}

impl fmt::Display for ConnInfo {
    /// A form safe for logs: no password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self
            .hosts
            .first()
            .map(|h| h.to_string())
            .unwrap_or_default();
        write!(f, "{}@{}:{}/{}", self.user, host, self.port, self.dbname)
    }
}

impl ConnInfo {
    /// Parses a URL or `key=value` string, with the process environment for defaults.
    pub fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// As [`ConnInfo::parse`], reading `PG*` variables through `env`.
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConnInfoError> {
        let s = s.trim();
        let pairs = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            parse_url(s)?
        } else {
            parse_keyvalue(s)?
        };
        let get = |key: &str, var: &str| -> Option<String> {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
                .or_else(|| env(var).filter(|v| !v.is_empty()))
        };
        for (k, _) in &pairs {
            if !KNOWN_KEYS.contains(&k.as_str()) {
                return Err(ConnInfoError(format!(
                    "unknown parameter {k:?} (known: {})",
                    KNOWN_KEYS.join(", ")
                )));
            }
        }
        let host_list = get("host", "PGHOST").or_else(|| get("hostaddr", "PGHOSTADDR"));
        let hosts = match host_list {
            Some(list) => list
                .split(',')
                .map(|h| {
                    if h.starts_with('/') {
                        Host::Unix(PathBuf::from(h))
                    } else {
                        Host::Tcp(h.trim_matches(|c| c == '[' || c == ']').to_owned())
                    }
                })
                .collect(),
            None if std::path::Path::new("/var/run/postgresql").is_dir() => {
                vec![Host::Unix(PathBuf::from("/var/run/postgresql"))]
            }
            None => vec![Host::Tcp("localhost".into())],
        };
        let mut ports = match get("port", "PGPORT") {
            Some(list) => list
                .split(',')
                .map(|p| match p.trim() {
                    "" => Ok(5432),
                    p => p
                        .parse()
                        .map_err(|_| ConnInfoError(format!("port {p:?} is not a number"))),
                })
                .collect::<Result<Vec<u16>, _>>()?,
            None => vec![5432],
        };
        if ports.len() == 1 {
            ports = vec![ports[0]; hosts.len()];
        } else if ports.len() != hosts.len() {
            return Err(ConnInfoError(format!(
                "{} ports for {} hosts: give one port for all hosts or one per host",
                ports.len(),
                hosts.len()
            )));
        }
        let port = ports[0];
        let user = get("user", "PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".into());
        let dbname = get("dbname", "PGDATABASE").unwrap_or_else(|| user.clone());
        let sslmode = match get("sslmode", "PGSSLMODE") {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let connect_timeout = match get("connect_timeout", "PGCONNECT_TIMEOUT") {
            Some(t) => std::time::Duration::from_secs(
                t.parse::<u64>()
                    .map_err(|_| ConnInfoError(format!("connect_timeout {t:?} is not seconds")))?
                    .max(2),
            ),
            None => std::time::Duration::from_secs(10),
        };
        Ok(ConnInfo {
            hosts,
            port,
            ports,
            password: get("password", "PGPASSWORD"),
            dbname,
            sslrootcert: get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from),
            application_name: get("application_name", "PGAPPNAME")
                .unwrap_or_else(|| "sluice".into()),
            sslmode,
            connect_timeout,
            user,
        })
    }
}

const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "application_name",
    "connect_timeout",
];

fn parse_url(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let rest = s.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let (user, pass) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            out.push(("user".into(), percent_decode(user)?));
            if let Some(p) = pass {
                out.push(("password".into(), percent_decode(p)?));
            }
            hp
        }
        None => authority,
    };
    if !hostport.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for hp in hostport.split(',') {
            let (h, p) = if let Some(v6) = hp.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| ConnInfoError("unclosed '[' in host".into()))?;
                (h, after.strip_prefix(':'))
            } else {
                match hp.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (hp, None),
                }
            };
            hosts.push(percent_decode(h)?);
            ports.push(p.unwrap_or_default());
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".into(), hosts.join(",")));
        }
        // As libpq: a host without a port keeps an empty entry (the default port), so
        // the n-th port stays the n-th host's.
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), percent_decode(db)?));
    }
    if let Some(q) = query {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ConnInfoError(format!("query parameter {kv:?} has no '='")))?;
            out.push((percent_decode(k)?, percent_decode(v)?));
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConnInfoError("bad percent-encoding".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError("percent-encoding is not UTF-8".into()))
}

/// libpq `key=value` syntax: values may be single-quoted with `\'` and `\\` escapes.
fn parse_keyvalue(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnInfoError(format!("missing '=' after {key:?}")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().unwrap_or('\\')),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(ConnInfoError(format!("unterminated quote in {key:?}"))),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().unwrap_or('\\'));
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, env: &[(&str, &str)]) -> Result<ConnInfo, ConnInfoError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConnInfo::parse_with_env(s, move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn url_with_everything() {
        let c = parse(
            "postgresql://us%40er:p%3Ass@db.example:6543/shop?sslmode=verify-full&application_name=x",
            &[],
        )
        .unwrap();
        assert_eq!(c.hosts, vec![Host::Tcp("db.example".into())]);
        assert_eq!(
            (c.port, c.user.as_str(), c.dbname.as_str()),
            (6543, "us@er", "shop")
        );
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.application_name, "x");
        assert!(!format!("{c:?}{c}").contains("p:ss"));
    }

    #[test]
    fn url_socket_dir_ipv6_and_env_defaults() {
        let c = parse(
            "postgres:///shop?host=/tmp/sock",
            &[("PGUSER", "envuser"), ("PGPORT", "7")],
        )
        .unwrap();
        assert_eq!(c.hosts, vec![Host::Unix("/tmp/sock".into())]);
        assert_eq!((c.port, c.user.as_str()), (7, "envuser"));
        let c = parse("postgres://[::1]:5433/db", &[("PGPASSWORD", "pw")]).unwrap();
        assert_eq!(c.hosts, vec![Host::Tcp("::1".into())]);
        assert_eq!((c.port, c.password.as_deref()), (5433, Some("pw")));
    }

    #[test]
    fn each_host_has_its_own_port() {
        let c = parse("postgres://a:1,b:2,c/db", &[]).unwrap();
        assert_eq!(
            c.hosts,
            ["a", "b", "c"].map(|h| Host::Tcp(h.into())).to_vec()
        );
        assert_eq!((c.port, c.ports.as_slice()), (1, &[1, 2, 5432][..]));
        let c = parse("host=a,b port=7", &[]).unwrap();
        assert_eq!(c.ports, [7, 7]);
        let c = parse("host=a,b", &[("PGPORT", "8")]).unwrap();
        assert_eq!(c.ports, [8, 8]);
        assert!(parse("host=a,b,c port=1,2", &[])
            .unwrap_err()
            .0
            .contains("2 ports for 3 hosts"));
    }

    #[test]
    fn keyvalue_form() {
        let c = parse("host=h port=1 user=u dbname='my db' password='it\\'s'", &[]).unwrap();
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.password.as_deref(), Some("it's"));
        let c = parse(
            "",
            &[
                ("PGHOST", "envhost"),
                ("PGUSER", "me"),
                ("PGSSLMODE", "require"),
            ],
        )
        .unwrap();
        assert_eq!(c.hosts, vec![Host::Tcp("envhost".into())]);
        assert_eq!(
            (c.user.as_str(), c.dbname.as_str(), c.sslmode),
            ("me", "me", SslMode::Require)
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(parse("postgres://h/db?sslmode=sometimes", &[])
            .unwrap_err()
            .0
            .contains("sslmode"));
        assert!(parse("postgres://h:abc/db", &[])
            .unwrap_err()
            .0
            .contains("port"));
        assert!(parse("host=h bogus=1", &[])
            .unwrap_err()
            .0
            .contains("bogus"));
        assert!(parse("host", &[]).is_err());
        assert!(parse("password='open", &[]).is_err());
    }
}
