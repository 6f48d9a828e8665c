//! A private `clickhouse-server` for tests, optionally with a user that needs a password,
//! and HTTPS.
//!
//! The program is Debian's (`/usr/sbin/clickhouse-server`, 18.16, which
//! `scripts/install-deps.sh --tests` installs), else `clickhouse-server` on `PATH`. 18.16
//! is old: the sink's SQL is also checked against a current engine in-process (chdb, from
//! the tools virtualenv), and this server is what speaks the real HTTP interface, with
//! authentication and TLS.
//!
//! Invariants:
//! - Everything the server is told is in `config.xml` and `users.xml` in its directory,
//!   written again at each start (the ports may have changed), with every value
//!   XML-escaped. The root element is `<yandex>`, as in 18.16's own files (`<clickhouse>`
//!   came later). ClickHouse merges in only the `*.d/` directories beside those files,
//!   and there are none, so nothing in `/etc` changes it.
//! - It listens on `127.0.0.1` only: HTTP on [`ClickHouseServer::port`], the native
//!   protocol on [`ClickHouseServer::tcp_port`] and, with TLS, HTTPS as well; the plain
//!   HTTP port stays open then, for the readiness probe and [`ClickHouseServer::query`].
//!   Data, temporary files and logs (`clickhouse.log`, `err.log`) live in its directory,
//!   which a restart keeps.
//! - Ready means `GET /ping` on the HTTP port answered `Ok.` and, with TLS, the HTTPS
//!   port takes connections.
//! - Users: `default` without a password, from `127.0.0.1` only, which
//!   [`ClickHouseServer::query`] uses; and, when the builder names one, a user whose
//!   password is stored as its SHA-256 (`password_sha256_hex`), as a deployment keeps it.
//! - The server's time zone is UTC whatever the machine's, so `DateTime` values read back
//!   the same everywhere.
//! - The server is one process (18.16 forks no watchdog), so killing it kills all of it.
//! - With TLS, the certificate is valid for `127.0.0.1` and `localhost` and signed by a
//!   private CA made for this server ([`ClickHouseServer::ca_file`]); both live in its
//!   directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::certs::{make_certs, Certs};
use crate::daemon::{Daemon, Spec};
use crate::free_port;

/// Where Debian's package puts the server (`/usr/sbin` is not on a user's `PATH`).
const DEBIAN_SERVER: &str = "/usr/sbin/clickhouse-server";

/// How long [`ClickHouseServer::query`] waits for an answer: a test's query is small,
/// and a hung server should fail the test rather than hang it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// A user besides `default`, who must give a password.
#[derive(Debug, Clone)]
struct User {
    name: String,
    password: String,
}

/// Options of a [`ClickHouseServer`], from [`ClickHouseServer::builder`].
#[derive(Debug, Clone)]
pub struct ClickHouseServerBuilder {
    user: Option<User>,
    tls: bool,
}

impl ClickHouseServerBuilder {
    /// Adds the user `name`, who must give `password` (HTTP basic authentication, or the
    /// `X-ClickHouse-User`/`X-ClickHouse-Key` headers); a wrong one is refused with HTTP
    /// 401 and `Code: 193`. `name` becomes an XML element in `users.xml`, so it must be
    /// letters, digits, `_`, `-` or `.`, not starting with a digit, `-` or `.`, and not
    /// `default`.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.user = Some(User {
            name: name.to_owned(),
            password: password.to_owned(),
        });
        self
    }

    /// Adds an HTTPS port ([`ClickHouseServer::https_url`]) whose certificate
    /// [`ClickHouseServer::ca_file`] verifies.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Starts the server and waits until it answers.
    pub fn start(self) -> Result<ClickHouseServer> {
        if let Some(u) = &self.user {
            let mut chars = u.name.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            ensure!(
                first_ok && rest_ok && u.name != "default",
                "ClickHouse test user {:?}: the name must be an XML name other than `default`",
                u.name
            );
        }
        let spec = ClickHouse {
            user: self.user,
            tls: self.tls,
            tcp_port: 0,
            https_port: 0,
            certs: None,
        };
        Daemon::start(spec).map(ClickHouseServer)
    }
}

/// `clickhouse-server` in the foreground, configured through two files.
struct ClickHouse {
    user: Option<User>,
    tls: bool,
    /// Chosen again with the HTTP port, by `pick_ports`.
    tcp_port: u16,
    /// Only listened on when `tls` is set.
    https_port: u16,
    /// Made by `prepare` when `tls` is set.
    certs: Option<Certs>,
}

/// `s` with the characters XML gives a meaning escaped, for text and attribute values.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `path` as XML text; a directory's path ends with `/`, which ClickHouse requires of
/// `path` and `tmp_path`.
fn xml_path(path: &Path, dir: bool) -> String {
    let mut s = path.display().to_string();
    if dir && !s.ends_with('/') {
        s.push('/');
    }
    xml(&s)
}

fn sha256_hex(s: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl ClickHouse {
    fn config(&self, port: u16, dir: &Path) -> String {
        let p = |name: &str, is_dir: bool| xml_path(&dir.join(name), is_dir);
        let mut tls = String::new();
        if let Some(c) = &self.certs {
            // No dhParamsFile: 18.16 runs without one (ECDHE, TLS 1.3 with the system's
            // OpenSSL). verificationMode none: clients are not asked for a certificate.
            tls = format!(
                "  <https_port>{}</https_port>\n  <openSSL><server>\n    \
                 <certificateFile>{}</certificateFile>\n    \
                 <privateKeyFile>{}</privateKeyFile>\n    \
                 <verificationMode>none</verificationMode>\n    \
                 <loadDefaultCAFile>false</loadDefaultCAFile>\n    \
                 <cacheSessions>true</cacheSessions>\n    \
                 <disableProtocols>sslv2,sslv3</disableProtocols>\n    \
                 <preferServerCiphers>true</preferServerCiphers>\n  </server></openSSL>\n",
                self.https_port,
                xml_path(&c.cert, false),
                xml_path(&c.key, false),
            );
        }
        // Caches of 100 MB instead of the default 5 GB (marks) and 8 GB (uncompressed):
        // tests run several servers at once on small machines.
        format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{log}</log>
    <errorlog>{errorlog}</errorlog>
    <console>0</console>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{port}</http_port>
  <tcp_port>{tcp}</tcp_port>
{tls}  <path>{data}</path>
  <tmp_path>{tmp}</tmp_path>
  <user_files_path>{user_files}</user_files_path>
  <format_schema_path>{schemas}</format_schema_path>
  <users_config>{users}</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>104857600</mark_cache_size>
  <uncompressed_cache_size>104857600</uncompressed_cache_size>
  <mlock_executable>false</mlock_executable>
</yandex>
"#,
            log = p("clickhouse.log", false),
            errorlog = p("err.log", false),
            tcp = self.tcp_port,
            data = p("data", true),
            tmp = p("tmp", true),
            user_files = p("user_files", true),
            schemas = p("format_schemas", true),
            users = p("users.xml", false),
        )
    }

    fn users(&self) -> String {
        // Every user needs a profile and a quota by name; the quota counts nothing.
        let user = |name: &str, password: &str| {
            format!(
                "    <{name}>{password}<networks><ip>127.0.0.1</ip></networks>\
                 <profile>default</profile><quota>default</quota></{name}>\n"
            )
        };
        let mut users = user("default", "<password></password>");
        if let Some(u) = &self.user {
            let hash = sha256_hex(&u.password);
            let password = format!("<password_sha256_hex>{hash}</password_sha256_hex>");
            users.push_str(&user(&u.name, &password));
        }
        format!(
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users>
{users}  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#
        )
    }
}

impl Spec for ClickHouse {
    fn name(&self) -> &'static str {
        "clickhouse-server"
    }

    fn program(&self) -> PathBuf {
        Some(PathBuf::from(DEBIAN_SERVER))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| "clickhouse-server".into())
    }

    fn prepare(&mut self, dir: &Path) -> Result<()> {
        if self.tls {
            self.certs = Some(make_certs(dir, "clickhouse")?);
        }
        Ok(())
    }

    fn pick_ports(&mut self) {
        self.tcp_port = free_port();
        if self.tls {
            self.https_port = free_port();
        }
    }

    fn command(&self, port: u16, dir: &Path) -> Result<Command> {
        let (config, users) = (dir.join("config.xml"), dir.join("users.xml"));
        for (path, text) in [(&config, self.config(port, dir)), (&users, self.users())] {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let mut cmd = Command::new(self.program());
        cmd.arg(format!("--config-file={}", config.display()));
        Ok(cmd)
    }

    fn answers(&self, port: u16) -> bool {
        let pong = get(port, "/ping").is_ok_and(|(status, body)| status == 200 && body == "Ok.\n");
        pong && (!self.tls || TcpStream::connect(("127.0.0.1", self.https_port)).is_ok())
    }

    fn logs(&self) -> &'static [&'static str] {
        &["err.log"]
    }
}

/// One HTTP/1.1 request to `127.0.0.1:port` on a connection of its own; the status and
/// body of the answer (ClickHouse answers queries in chunks).
fn request(port: u16, head: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("cannot connect to ClickHouse on port {port}"))?;
    s.set_read_timeout(Some(QUERY_TIMEOUT))?;
    s.set_write_timeout(Some(QUERY_TIMEOUT))?;
    let head = format!(
        "{head}Host: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("no complete answer from ClickHouse on port {port}"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an HTTP answer without the end of its head")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    let body =
        String::from_utf8(body).context("ClickHouse answered with text that is not UTF-8")?;
    Ok((status, body))
}

/// The body of a chunked HTTP answer: chunks of `SIZE-IN-HEX\r\nBYTES\r\n`, the last
/// of size 0.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without its size line")?;
        let line = String::from_utf8_lossy(&rest[..eol]);
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16)
            .with_context(|| format!("not a chunk size: {line:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        ensure!(rest.len() >= size + 2, "the answer ends inside a chunk");
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn get(port: u16, path: &str) -> Result<(u16, String)> {
    request(port, &format!("GET {path} HTTP/1.1\r\n"), b"")
}

/// Runs `sql` through the HTTP interface as `user` (with `password`), and returns the
/// body of the answer; an error with the body (ClickHouse's `Code: N, ...` message) when
/// the status is not 200.
fn post(port: u16, user: &str, password: &str, sql: &str) -> Result<String> {
    ensure!(
        !format!("{user}{password}").contains(['\r', '\n']),
        "a ClickHouse user or password with a line break cannot go in an HTTP header"
    );
    // wait_end_of_query: the server buffers the whole result before it answers, so an
    // error half-way through comes as an error status rather than after a 200 and part of
    // the rows.
    let head = format!(
        "POST /?wait_end_of_query=1 HTTP/1.1\r\nX-ClickHouse-User: {user}\r\n\
         X-ClickHouse-Key: {password}\r\n"
    );
    let (status, body) = request(port, &head, sql.as_bytes())?;
    if status != 200 {
        bail!("HTTP {status}: {}", body.trim_end());
    }
    Ok(body)
}

/// A private `clickhouse-server` with its data in its own directory.
///
/// [`ClickHouseServer::start`] serves HTTP and the native protocol to the passwordless
/// `default` user; [`ClickHouseServer::builder`] adds a user with a password, and HTTPS:
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// let ch = sluice_testkit::ClickHouseServer::builder().user("u", "p").tls().start()?;
/// let (url, ca) = (ch.https_url(), ch.ca_file()); // https://127.0.0.1:PORT and its CA
/// assert_eq!(ch.query("SELECT 1")?, "1\n");
/// # Ok(()) }
/// ```
pub struct ClickHouseServer(Daemon<ClickHouse>);

impl ClickHouseServer {
    /// A server with the `default` user only, without TLS.
    pub fn start() -> Result<ClickHouseServer> {
        ClickHouseServer::builder().start()
    }

    /// Options for a server with a user that needs a password, or HTTPS.
    pub fn builder() -> ClickHouseServerBuilder {
        ClickHouseServerBuilder {
            user: None,
            tls: false,
        }
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// The native protocol's port (`clickhouse-client --port`).
    pub fn tcp_port(&self) -> u16 {
        self.0.spec.tcp_port
    }

    /// `http://127.0.0.1:PORT`, without a trailing `/`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }

    /// `https://127.0.0.1:PORT`, without a trailing `/`.
    ///
    /// # Panics
    /// If the server was not built with [`ClickHouseServerBuilder::tls`]: a test asking
    /// for it has a bug.
    pub fn https_url(&self) -> String {
        assert!(
            self.0.spec.tls,
            "https_url: this ClickHouseServer was started without TLS"
        );
        format!("https://127.0.0.1:{}", self.0.spec.https_port)
    }

    /// The PEM file of the CA that signed the server's certificate.
    ///
    /// # Panics
    /// If the server was not built with [`ClickHouseServerBuilder::tls`].
    pub fn ca_file(&self) -> &Path {
        match &self.0.spec.certs {
            Some(c) => &c.ca,
            None => panic!("ca_file: this ClickHouseServer was started without TLS"),
        }
    }

    /// Runs `sql` (one statement, sent as the body of `POST /`) as the `default` user and
    /// returns the body of the answer as it is, in the statement's `FORMAT` (by default
    /// `TabSeparated`, each row ending with `\n`). A status other than 200 is an error
    /// whose message is `HTTP {status}: ` and ClickHouse's `Code: N, ...` text.
    pub fn query(&self, sql: &str) -> Result<String> {
        post(self.0.port, "default", "", sql)
    }

    /// [`ClickHouseServer::query`] as `user` with `password`: a wrong password is the
    /// error `HTTP 401: Code: 193, ...`.
    pub fn query_as(&self, user: &str, password: &str, sql: &str) -> Result<String> {
        post(self.0.port, user, password, sql)
    }

    /// Kills the server and starts it again on the same ports, options and data.
    pub fn restart(&mut self) -> Result<()> {
        self.0.restart()
    }

    /// Kills the server; [`ClickHouseServer::start_again`] brings it back.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    pub fn start_again(&mut self) -> Result<()> {
        self.0.spawn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_keeps_the_last_version_of_a_row_and_refuses_a_wrong_password() {
        let ch = ClickHouseServer::builder()
            .user("sluice", "s3cret")
            .start()
            .unwrap();
        assert_eq!(ch.http_url(), format!("http://127.0.0.1:{}", ch.port()));
        // 18.16 names the zone Etc/UTC; what matters is the wall time it prints.
        let midnight = ch.query("SELECT toDateTime(86400)").unwrap();
        assert_eq!(midnight, "1970-01-02 00:00:00\n");
        ch.query(
            "CREATE TABLE t (id Int64, name Nullable(String), ver UInt64) \
             ENGINE = ReplacingMergeTree(ver) ORDER BY id",
        )
        .unwrap();
        // Two inserts, two parts: FINAL merges them as the query runs.
        ch.query("INSERT INTO t VALUES (1, 'a', 1), (2, NULL, 1)")
            .unwrap();
        ch.query("INSERT INTO t VALUES (1, 'b', 3), (1, 'old', 2)")
            .unwrap();
        let rows = ch
            .query("SELECT id, name, ver FROM t FINAL ORDER BY id FORMAT JSONEachRow")
            .unwrap();
        // 18.16 quotes 64-bit integers in JSON.
        assert_eq!(
            rows,
            "{\"id\":\"1\",\"name\":\"b\",\"ver\":\"3\"}\n{\"id\":\"2\",\"name\":null,\"ver\":\"1\"}\n"
        );

        let as_sluice = ch.query_as("sluice", "s3cret", "SELECT count() FROM t FINAL");
        assert_eq!(as_sluice.unwrap(), "2\n");
        let wrong = ch
            .query_as("sluice", "nope", "SELECT 1")
            .unwrap_err()
            .to_string();
        assert!(wrong.starts_with("HTTP 401: Code: 193"), "{wrong}");
        let err = ch.query("SELECT * FROM missing").unwrap_err().to_string();
        assert!(err.contains("Code: 60"), "{err}");
        // The password is stored as its hash only.
        let users = std::fs::read_to_string(ch.0.dir.path().join("users.xml")).unwrap();
        assert!(users.contains(&sha256_hex("s3cret")) && !users.contains("s3cret"));
    }

    #[test]
    fn clickhouse_keeps_its_data_over_a_restart() {
        let mut ch = ClickHouseServer::start().unwrap();
        let port = ch.port();
        ch.query("CREATE TABLE t (id Int64) ENGINE = MergeTree ORDER BY id")
            .unwrap();
        ch.query("INSERT INTO t VALUES (7)").unwrap();
        ch.kill();
        assert!(ch.query("SELECT 1").is_err());
        ch.start_again().unwrap();
        assert_eq!(ch.port(), port);
        assert_eq!(ch.query("SELECT id FROM t").unwrap(), "7\n");
        drop(ch);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn clickhouse_with_tls_serves_https_with_a_certificate_of_its_ca() {
        let ch = ClickHouseServer::builder().tls().start().unwrap();
        let url = ch.https_url();
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        // openssl, which made the certificates, as the client: it must verify the
        // server's certificate against the CA, and the server must answer over TLS.
        let host = url.trim_start_matches("https://");
        let mut client = Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error"])
            .args(["-connect", host, "-verify_ip", "127.0.0.1"])
            .arg("-CAfile")
            .arg(ch.ca_file())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // HTTP/1.0: the server closes the connection after its answer, so openssl ends.
        let stdin = client.stdin.as_mut().unwrap();
        stdin.write_all(b"GET /ping HTTP/1.0\r\n\r\n").unwrap();
        let out = client.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("HTTP/1.0 200") && stdout.ends_with("Ok.\n"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Plain HTTP stays open beside it.
        assert_eq!(ch.query("SELECT 1").unwrap(), "1\n");
    }

    #[test]
    fn clickhouse_that_cannot_start_says_why_from_its_error_log() {
        let mut ch = ClickHouseServer::start().unwrap();
        // Its native port taken by someone else: restart (unlike start) tries no other.
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        ch.0.spec.tcp_port = taken.local_addr().unwrap().port();
        let err = format!("{:#}", ch.restart().unwrap_err());
        assert!(err.contains("exited"), "{err}");
        assert!(
            err.contains("err.log ends:") && err.contains("Address already in use"),
            "{err}"
        );
    }

    #[test]
    fn clickhouse_refuses_a_user_name_that_is_not_an_xml_name() {
        for name in ["default", "a b", "1x", "<x>", ""] {
            let err = ClickHouseServer::builder().user(name, "p").start();
            assert!(err.is_err(), "{name:?} was accepted");
        }
    }
}
