//! Where the PostgreSQL programs live: `$SLUICE_PG_BINDIR` if set, else `pg_config
//! --bindir` when that directory holds `initdb` (Debian's client-only `pg_config` may point
//! elsewhere), else the newest `/usr/lib/postgresql/<major>/bin`. Decided once per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::process::run;

const INSTALL_HINT: &str = "no PostgreSQL server binaries found (looked at $SLUICE_PG_BINDIR, `pg_config --bindir` and /usr/lib/postgresql/*/bin); install postgresql (apt-get install postgresql)";

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `psql`, `pg_recvlogical`, ...
pub fn pg_bindir() -> Result<PathBuf> {
    static BINDIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINDIR
        .get_or_init(find_bindir)
        .clone()
        .ok_or_else(|| anyhow!(INSTALL_HINT))
}

/// The path of the PostgreSQL program `name` (e.g. `"pg_recvlogical"`, `"pgbench"`) from the
/// same installation the test servers use.
///
/// # Panics
///
/// When no PostgreSQL installation is found; the message says how to install one.
pub fn pg_bin(name: &str) -> PathBuf {
    match pg_bindir() {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("{e}"),
    }
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_PG_BINDIR") {
        // An explicit choice that does not hold a server is an error, not a hint to guess.
        let dir = PathBuf::from(dir);
        return has_server(&dir).then_some(dir);
    }
    if let Ok(out) = run(
        Command::new("pg_config").arg("--bindir"),
        None,
        Duration::from_secs(10),
    ) {
        let dir = PathBuf::from(out.stdout.trim());
        if out.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    newest_debian_bindir(Path::new("/usr/lib/postgresql"))
}

fn newest_debian_bindir(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = version_key(e.file_name().to_str()?)?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// "9.6" -> [9, 6], "15" -> [15]; compared numerically so 10 > 9.6.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("10").unwrap() > version_key("9.6").unwrap());
        assert!(version_key("16").unwrap() > version_key("15").unwrap());
        assert_eq!(version_key("main"), None);
    }

    #[test]
    fn picks_newest_installed() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9.6", "13", "16"] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            if v != "16" {
                std::fs::write(bin.join("initdb"), "").unwrap();
                std::fs::write(bin.join("pg_ctl"), "").unwrap();
            }
        }
        // 16 has no server programs (a client-only package), so 13 wins.
        assert_eq!(
            newest_debian_bindir(root.path()),
            Some(root.path().join("13").join("bin"))
        );
    }
}
