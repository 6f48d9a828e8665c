//! A private PostgreSQL server per test: `initdb` into a fresh temporary directory, started
//! with `pg_ctl` on a free 127.0.0.1 port, stopped and deleted on drop.
//!
//! Layout of the temporary directory (also the Unix socket directory):
//!
//! ```text
//! /tmp/sluice-pg-XXXXXX/      0755, owned by the server user
//!   data/                     the cluster (postgresql.conf, pg_hba.conf, postmaster.pid)
//!   postgres.log              server log (pg_ctl -l), appended across restarts
//!   tls/                      ca.crt, server.crt, server.key when built with .ssl(true)
//!   .s.PGSQL.<port>           the Unix socket
//! ```
//!
//! Invariants: the port never changes after the first start (restarts reuse it, so URLs
//! handed out stay valid); every wait is bounded; `Drop` never panics and never signals a
//! process unless its command line names this server's data directory, so a stale
//! `postmaster.pid` whose number was reused cannot hurt an unrelated process.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::bindir::pg_bindir;
use crate::process::{
    children_of, clear_pg_env, describe, is_alive, is_zombie, run, run_ok, sigkill, ServerUser,
};
use crate::tls::{self, TlsFiles};
use crate::{free_port, wait_until};

const HOST: &str = "127.0.0.1";
/// How often a first start may pick another port because the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 8;
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
/// Passed to `pg_ctl -t`; crash recovery after `kill9` happens inside it.
const PG_CTL_WAIT_SECS: u64 = 60;
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(PG_CTL_WAIT_SECS + 30);
const PSQL_TIMEOUT: Duration = Duration::from_secs(300);

const DEFAULT_HBA: &str = "\
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
host    all          all   ::1/128       trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
host    replication  all   ::1/128       trust
";

/// Configures a [`PgServer`] before it starts. Obtain one with [`PgServer::builder`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until .start() is called"]
pub struct PgServerBuilder {
    settings: Vec<(String, String)>,
    hba: Vec<String>,
    ssl: bool,
    /// The server certificate's names, in place of `localhost` and `127.0.0.1`.
    ssl_names: Option<String>,
}

impl PgServerBuilder {
    /// Adds `name = value` to postgresql.conf after the testkit's defaults, so it wins over
    /// them (e.g. `.setting("fsync", "off")` for a test that does not care about crashes).
    /// The value is quoted for you; a value already in single quotes is written verbatim.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Adds a pg_hba.conf line placed before the default `trust` lines, so it takes
    /// precedence for what it matches, e.g.
    /// `"host all alice 127.0.0.1/32 scram-sha-256"`.
    pub fn hba(mut self, line: impl Into<String>) -> Self {
        self.hba.push(line.into());
        self
    }

    /// With `true`, generates a throw-away CA and a server certificate for `localhost` and
    /// `127.0.0.1` and starts the server with `ssl = on`; see [`PgServer::ca_cert_path`].
    /// Clients may still connect without TLS unless an `hostssl`-only [`hba`](Self::hba)
    /// line says otherwise.
    pub fn ssl(mut self, on: bool) -> Self {
        self.ssl = on;
        self
    }

    /// With TLS, a server certificate for these names only (`DNS:db.example`,
    /// `IP:10.0.0.1`, comma-separated) instead of `localhost` and `127.0.0.1`: a client
    /// that connects by 127.0.0.1 and checks the name must then refuse it.
    pub fn ssl_names(mut self, names: impl Into<String>) -> Self {
        self.ssl = true;
        self.ssl_names = Some(names.into());
        self
    }

    /// Creates the cluster and starts it; returns once it accepts connections.
    pub fn start(self) -> Result<PgServer> {
        PgServer::create(self)
    }
}

/// A running private PostgreSQL server. See the crate documentation for its guarantees.
#[derive(Debug)]
pub struct PgServer {
    bindir: PathBuf,
    user: ServerUser,
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    tls: Option<TlsFiles>,
    /// The postmaster's pid while we believe it runs.
    pid: Mutex<Option<u32>>,
    /// Declared last: removed only after `Drop::drop` has stopped the server.
    dir: TempDir,
}

enum StartError {
    PortInUse(anyhow::Error),
    Other(anyhow::Error),
}

impl PgServer {
    /// Starts a server with the default configuration.
    pub fn start() -> Result<PgServer> {
        PgServer::builder().start()
    }

    /// A builder for a server with extra settings, pg_hba.conf lines or TLS.
    pub fn builder() -> PgServerBuilder {
        PgServerBuilder::default()
    }

    fn create(b: PgServerBuilder) -> Result<PgServer> {
        for (name, _) in &b.settings {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                bail!("invalid PostgreSQL setting name {name:?}");
            }
        }
        let bindir = pg_bindir()?;
        let user = ServerUser::detect()?;
        let dir = make_dir(&user)?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");
        let tls = if b.ssl {
            let names = b.ssl_names.as_deref().unwrap_or(tls::LOCAL_NAMES);
            Some(tls::generate(dir.path(), &user, names)?)
        } else {
            None
        };

        let mut initdb = user.command(&bindir.join("initdb"), dir.path());
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-locale",
            ])
            // Skips only initdb's final fsync of the fresh cluster; the server itself keeps
            // fsync = on, which is what durability tests exercise.
            .arg("--no-sync");
        run_ok(&mut initdb, INITDB_TIMEOUT).context("initdb failed")?;

        write_config(&data_dir, dir.path(), tls.as_ref(), &b)?;

        let mut server = PgServer {
            bindir,
            user,
            port: 0,
            data_dir,
            log_path,
            tls,
            pid: Mutex::new(None),
            dir,
        };
        let mut last_clash = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(StartError::PortInUse(e)) => last_clash = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_clash
            .unwrap_or_else(|| anyhow!("no port attempts made"))
            .context(format!("no free port after {PORT_ATTEMPTS} attempts")))
    }

    /// The TCP port (fixed for the server's lifetime, also across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// `postgres://user@127.0.0.1:PORT/db`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{}@{HOST}:{}/{}",
            percent_encode(user),
            self.port,
            percent_encode(db)
        )
    }

    /// `postgres://user:password@127.0.0.1:PORT/db`, with user, password and db
    /// percent-encoded.
    pub fn url_with_password(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(db)
        )
    }

    /// The directory holding the server's Unix socket (the temporary directory).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log, appended across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The CA certificate that signed the server certificate, when built with `.ssl(true)`.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// The postmaster's pid, or `None` while stopped (or killed).
    pub fn pid(&self) -> Option<u32> {
        *self.lock_pid()
    }

    /// Runs `sql` as the superuser `postgres` on database `postgres`; returns stdout trimmed
    /// (unaligned, tuples only: one row per line, columns separated by `|`).
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_as("postgres", None, "postgres", sql)
    }

    /// Like [`psql`](Self::psql) on database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String> {
        self.psql_as("postgres", None, db, sql)
    }

    /// Runs `sql` through `psql` over TCP as `user` (with `password`, if any) on `db`.
    /// Statements run one by one and the first failure stops the script and is returned as
    /// the error, with psql's message. psql never prompts: a required but missing password
    /// is an error.
    pub fn psql_as(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
        sql: &str,
    ) -> Result<String> {
        let mut cmd = Command::new(self.bindir.join("psql"));
        clear_pg_env(&mut cmd);
        cmd.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", HOST, "-p", &self.port.to_string()])
            .args(["-U", user, "-d", db, "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10")
            // Keep a developer's ~/.pgpass out of authentication tests.
            .env("PGPASSFILE", self.dir.path().join("no-pgpass"))
            .current_dir(self.dir.path());
        if let Some(pw) = password {
            cmd.env("PGPASSWORD", pw);
        }
        let out = run(&mut cmd, Some(sql), PSQL_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "psql as {user:?} on database {db:?} failed ({}): {}",
                out.status,
                out.stderr.trim()
            );
        }
        Ok(out.stdout.trim().to_owned())
    }

    /// `CREATE DATABASE "name"`.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(&format!("CREATE DATABASE {}", quote_ident(name)))?;
        Ok(())
    }

    /// Fast shutdown (`pg_ctl stop -m fast`): sessions are ended, a shutdown checkpoint is
    /// written.
    pub fn stop(&self) -> Result<()> {
        let mut pid = self.lock_pid();
        if pid.is_none() {
            bail!("the server is not running");
        }
        let mut cmd = self.pg_ctl();
        cmd.args([
            "-m",
            "fast",
            "-w",
            "-t",
            &PG_CTL_WAIT_SECS.to_string(),
            "stop",
        ]);
        run_ok(&mut cmd, PG_CTL_TIMEOUT)
            .with_context(|| format!("stopping the server failed; log: {}", self.log_tail()))?;
        *pid = None;
        Ok(())
    }

    /// Starts the server again, on the same port, after [`stop`](Self::stop) or
    /// [`kill9`](Self::kill9) (crash recovery then runs before this returns).
    pub fn start_again(&self) -> Result<()> {
        if let Some(pid) = self.pid() {
            if is_alive(pid) {
                bail!("the server is already running (pid {pid})");
            }
        }
        match self.pg_ctl_start() {
            Ok(()) => Ok(()),
            Err(StartError::PortInUse(e)) => Err(e.context(format!(
                "port {} was taken by another process while the server was down",
                self.port
            ))),
            Err(StartError::Other(e)) => Err(e),
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again) on the same port.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Simulates a crash: SIGKILL to the postmaster, then waits until it and its children
    /// are gone, so [`start_again`](Self::start_again) can run crash recovery. The children
    /// exit on their own when they notice the postmaster's death; stragglers get SIGKILL too.
    pub fn kill9(&self) -> Result<()> {
        let mut guard = self.lock_pid();
        let Some(pid) = *guard else {
            bail!("the server is not running");
        };
        let children = children_of(pid);
        sigkill(pid)?;
        wait_until(
            Duration::from_secs(30),
            "the killed postmaster to exit",
            || (!is_alive(pid)).then_some(()),
        )?;
        let gone = |pids: &[u32]| pids.iter().all(|&p| !is_alive(p));
        let waited = wait_until(
            Duration::from_secs(15),
            "the postmaster's children to exit",
            || gone(&children).then_some(()),
        );
        if waited.is_err() {
            for &c in children.iter().filter(|&&c| is_alive(c)) {
                let _ = sigkill(c);
            }
            wait_until(
                Duration::from_secs(10),
                "the postmaster's children to exit after SIGKILL",
                || gone(&children).then_some(()),
            )?;
        }
        if is_zombie(pid) {
            // Nobody reaps the re-parented postmaster here, and PostgreSQL takes a zombie's
            // pid in its lock files for a live server. It is dead, so the locks are stale.
            let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
            let _ =
                std::fs::remove_file(self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port)));
        }
        *guard = None;
        Ok(())
    }

    fn lock_pid(&self) -> MutexGuard<'_, Option<u32>> {
        self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self
            .user
            .command(&self.bindir.join("pg_ctl"), self.dir.path());
        cmd.arg("-D").arg(&self.data_dir);
        cmd
    }

    fn pg_ctl_start(&self) -> std::result::Result<(), StartError> {
        let log_offset = std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut cmd = self.pg_ctl();
        cmd.arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string()])
            .args(["-o", &format!("-p {}", self.port), "start"]);
        let what = describe(&cmd);
        let out = run(&mut cmd, None, PG_CTL_TIMEOUT).map_err(StartError::Other)?;
        if out.status.success() {
            let pid = read_pid_file(&self.data_dir).ok_or_else(|| {
                StartError::Other(anyhow!("the server started but wrote no postmaster.pid"))
            })?;
            *self.lock_pid() = Some(pid);
            return Ok(());
        }
        let log = read_from(&self.log_path, log_offset);
        let err = anyhow!(
            "`{what}` failed ({}): {}\nserver log:\n{}",
            out.status,
            out.stdout.trim(),
            tail(&log, 4000)
        );
        // A timed-out start may leave a half-started server behind; do not leak it.
        self.stop_immediately();
        if log.contains("could not bind") || log.contains("Address already in use") {
            Err(StartError::PortInUse(err))
        } else {
            Err(StartError::Other(err))
        }
    }

    /// The postmaster from `postmaster.pid`, if it is alive and really serves our data dir.
    fn our_postmaster(&self) -> Option<u32> {
        let pid = read_pid_file(&self.data_dir)?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let data_dir = self.data_dir.to_string_lossy();
        (is_alive(pid) && String::from_utf8_lossy(&cmdline).contains(&*data_dir)).then_some(pid)
    }

    /// Best effort, never fails: `pg_ctl stop -m immediate`, then SIGKILL if needed.
    fn stop_immediately(&self) {
        let Some(pid) = self.our_postmaster() else {
            return;
        };
        let mut cmd = self.pg_ctl();
        cmd.args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        let _ = run(&mut cmd, None, Duration::from_secs(45));
        if is_alive(pid) {
            let _ = sigkill(pid);
        }
        *self.lock_pid() = None;
    }

    fn log_tail(&self) -> String {
        tail(&read_from(&self.log_path, 0), 4000).to_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_immediately();
        // `self.dir` (a TempDir) then removes the directory; it ignores errors.
    }
}

/// A fresh directory the server user can own and every user can traverse. As root it is
/// under /tmp (mode 1777, so traversable), whatever $TMPDIR says, because `postgres` must
/// reach it through every parent.
fn make_dir(user: &ServerUser) -> Result<TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let mut builder = tempfile::Builder::new();
    builder.prefix("sluice-pg-");
    let dir = match user {
        ServerUser::Current => builder.tempdir(),
        ServerUser::Postgres { .. } => builder.tempdir_in("/tmp"),
    }
    .context("could not create a temporary directory")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    user.own(dir.path())?;
    Ok(dir)
}

fn write_config(
    data_dir: &Path,
    socket_dir: &Path,
    tls: Option<&TlsFiles>,
    b: &PgServerBuilder,
) -> Result<()> {
    let mut conf = String::from(
        "\n# Added by sluice-testkit. Later lines win, so builder settings come last.\n",
    );
    let mut set = |name: &str, value: &str| {
        let _ = writeln!(conf, "{name} = {}", conf_value(value));
    };
    set("listen_addresses", HOST);
    set("unix_socket_directories", &socket_dir.to_string_lossy());
    set("wal_level", "logical");
    set("max_replication_slots", "20");
    set("max_wal_senders", "20");
    set("shared_buffers", "128MB");
    set("logging_collector", "off");
    // Durability tests rely on it; a test may still opt out with .setting("fsync", "off").
    set("fsync", "on");
    if let Some(t) = tls {
        set("ssl", "on");
        set("ssl_cert_file", &t.server_cert.to_string_lossy());
        set("ssl_key_file", &t.server_key.to_string_lossy());
    }
    for (name, value) in &b.settings {
        set(name, value);
    }

    let conf_path = data_dir.join("postgresql.conf");
    // Appending and truncating keep the files' owner (the server user).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf_path)
        .with_context(|| format!("could not open {}", conf_path.display()))?;
    std::io::Write::write_all(&mut f, conf.as_bytes())?;

    let mut hba = String::from("# Added by sluice-testkit: builder lines first, then trust.\n");
    for line in &b.hba {
        hba.push_str(line);
        hba.push('\n');
    }
    hba.push_str(DEFAULT_HBA);
    std::fs::write(data_dir.join("pg_hba.conf"), hba)?;
    Ok(())
}

/// A postgresql.conf value: quoted (with `'` and `\` escaped) unless already quoted.
fn conf_value(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn read_pid_file(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_value("off"), "'off'");
        assert_eq!(conf_value("'127.0.0.1'"), "'127.0.0.1'");
        assert_eq!(conf_value("it's"), "'it''s'");
        assert_eq!(conf_value(r"a\b"), r"'a\\b'");
    }

    #[test]
    fn urls_are_percent_encoded() {
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
        assert_eq!(percent_encode("plain-user_1.x~"), "plain-user_1.x~");
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ééé", 3), "é");
    }

    #[test]
    fn bad_setting_names_are_rejected() {
        let err = PgServer::builder()
            .setting("fsync = off\nevil", "x")
            .start()
            .unwrap_err();
        assert!(err.to_string().contains("invalid PostgreSQL setting name"));
    }
}
