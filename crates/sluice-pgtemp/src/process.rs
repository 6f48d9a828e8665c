//! Running helper programs (initdb, pg_ctl, psql, openssl) with bounded waits, and the
//! OS-user rule PostgreSQL imposes: its server programs refuse to run as root, so under
//! uid 0 they run as the `postgres` OS user through `runuser`.
//!
//! Invariants: every child is waited for with a deadline and killed when it passes it;
//! error messages name the program and its arguments but never its environment, which may
//! hold a password (`PGPASSWORD`).

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// What a finished child printed.
pub(crate) struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// `program arg arg ...` for error messages (no environment: it may hold secrets).
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, feeding it `stdin`, and kills it if it outlives `timeout`.
/// A non-zero exit is not an error here; callers decide what it means.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Result<RunOutput> {
    let what = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{what}`"))?;

    // Writer and readers run on their own threads so a chatty child can never deadlock
    // against a full pipe while we wait for it.
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_owned();
            Some(thread::spawn(move || {
                // A child that exits early closes its end; that is reported by its status.
                let _ = pipe.write_all(input.as_bytes());
            }))
        }
        _ => None,
    };
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());

    let status = match wait_with_deadline(&mut child, timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {timeout:?}; killed it");
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(RunOutput {
        status,
        stdout: join_reader(stdout),
        stderr: join_reader(stderr),
    })
}

/// Like [`run`], but a non-zero exit is an error carrying the child's output.
pub(crate) fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<RunOutput> {
    let out = run(cmd, None, timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            out.stdout.trim_end(),
            out.stderr.trim_end()
        );
    }
    Ok(out)
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<String>> {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
}

fn join_reader(h: Option<JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Removes every `PG*` variable inherited from the caller's environment, so a developer's
/// `PGHOST`, `PGDATA`, `PGPASSWORD` or `PGSSLMODE` cannot redirect or alter a test.
pub(crate) fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
}

/// The OS user the PostgreSQL server programs run as.
#[derive(Debug, Clone)]
pub(crate) enum ServerUser {
    /// Not root: run directly as ourselves.
    Current,
    /// Root: run as the `postgres` OS user through `runuser`.
    Postgres { uid: u32, gid: u32 },
}

impl ServerUser {
    pub(crate) fn detect() -> Result<ServerUser> {
        if current_uid()? != 0 {
            return Ok(ServerUser::Current);
        }
        let uid = id_of("-u")?;
        let gid = id_of("-g")?;
        if Command::new("runuser")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("running as root, but `runuser` (util-linux) is missing; it is needed to run PostgreSQL as the `postgres` OS user");
        }
        Ok(ServerUser::Postgres { uid, gid })
    }

    /// A command that runs `program` as this user, with the caller's `PG*` variables removed.
    pub(crate) fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = match self {
            ServerUser::Current => Command::new(program),
            ServerUser::Postgres { .. } => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
        };
        // The caller's working directory may be unreadable for `postgres` (e.g. /root).
        cmd.current_dir(cwd);
        clear_pg_env(&mut cmd);
        cmd
    }

    /// Hands `path` to the server user (a no-op when we are that user).
    pub(crate) fn own(&self, path: &Path) -> Result<()> {
        if let ServerUser::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .with_context(|| format!("could not chown {} to postgres", path.display()))?;
        }
        Ok(())
    }
}

fn current_uid() -> Result<u32> {
    // /proc/self belongs to the effective uid of the reading process.
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let out = run_ok(Command::new("id").arg("-u"), Duration::from_secs(10))?;
    out.stdout
        .trim()
        .parse()
        .context("could not parse the output of `id -u`")
}

fn id_of(flag: &str) -> Result<u32> {
    let out = run(
        Command::new("id").args([flag, "postgres"]),
        None,
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!(
            "running as root, but there is no `postgres` OS user to run PostgreSQL as \
             (install postgresql, which creates it: apt-get install postgresql; or useradd postgres)"
        );
    }
    out.stdout
        .trim()
        .parse()
        .map_err(|e| anyhow!("could not parse `id {flag} postgres`: {e}"))
}

/// True while `pid` is a live process. A zombie (exited but not reaped, e.g. a postmaster
/// re-parented to an init that does not reap) counts as dead.
pub(crate) fn is_alive(pid: u32) -> bool {
    match proc_stat(pid) {
        Some((state, _)) => state != 'Z' && state != 'X',
        None => false,
    }
}

/// True when `pid` exists only as a zombie.
pub(crate) fn is_zombie(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(('Z', _)))
}

/// The live children of `pid`.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| matches!(proc_stat(p), Some((s, ppid)) if ppid == pid && s != 'Z'))
        .collect()
}

/// (state, parent pid) from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Sends SIGKILL to `pid` (we own it, or we are root).
pub(crate) fn sigkill(pid: u32) -> Result<()> {
    let out = run(
        Command::new("kill").args(["-KILL", &pid.to_string()]),
        None,
        Duration::from_secs(10),
    )?;
    if !out.status.success() && is_alive(pid) {
        bail!("kill -KILL {pid} failed: {}", out.stderr.trim());
    }
    Ok(())
}
