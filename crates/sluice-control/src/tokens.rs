//! The server's API tokens: created, listed and revoked through the API, kept in
//! `<data_dir>/tokens.json` (mode 0600) as SHA-256 hashes only. The first start creates an
//! admin token and hands it back once, to be printed; it is never stored or logged.
//!
//! Invariants:
//! - A token's secret exists only in the response that created it; what is kept is its
//!   hash, and checking a presented token compares it against every hash in full
//!   (constant time per hash, whatever matches), so timing says nothing of which or how
//!   much matched.
//! - Revoking the last admin token is refused: nobody could manage the server after it.
//! - The file is written whole (temporary file, fsync, rename) before a change is
//!   acknowledged.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Scope {
    /// Everything: pipelines, tokens, allow-lists, every sink's data.
    Admin,
    /// Reading the management API (lists, status, configuration with secrets redacted);
    /// no changes and no row data.
    Read,
    /// Consuming one sink of one pipeline (its SSE stream, pull queue, waiting room).
    Consume { pipeline: String, sink: String },
}

/// A token as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Public identifier (to list and revoke by); not the secret.
    pub id: String,
    /// What it is for, as its creator put it.
    pub name: String,
    pub scope: Scope,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Hex SHA-256 of the secret.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    hash: String,
}

impl TokenInfo {
    /// The record without its hash, for listing.
    pub fn public(&self) -> TokenInfo {
        TokenInfo {
            hash: String::new(),
            ..self.clone()
        }
    }
}

/// Why a token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no token with id {0:?}")]
    NotFound(String),
    #[error("{0} is the last admin token: create another admin token first, or nobody could manage this server")]
    LastAdmin(String),
    #[error("cannot save the tokens ({0}): check the data dir's permissions and free space")]
    Io(#[from] std::io::Error),
}

pub struct Tokens {
    path: PathBuf,
    all: RwLock<Vec<TokenInfo>>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    // The system's randomness is always there on Linux; a failure is not survivable.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system's random number generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex SHA-256 of a token.
pub fn hash(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two strings are equal, in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Tokens {
    /// Opens the token file of data dir `root`; on the first start (no file) creates an
    /// admin token and returns its secret, to be shown once.
    pub fn open(root: &Path) -> Result<(Tokens, Option<String>), TokenError> {
        let path = root.join("tokens.json");
        let all: Vec<TokenInfo> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::other(format!("{} is not a token file: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let first = all.is_empty();
        let tokens = Tokens {
            path,
            all: RwLock::new(all),
        };
        if first {
            let (_, secret) = tokens.create("admin (created at first start)", Scope::Admin)?;
            return Ok((tokens, Some(secret)));
        }
        Ok((tokens, None))
    }

    fn save(&self, all: &[TokenInfo]) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(all).map_err(std::io::Error::other)?;
        crate::files::write_whole(&self.path, &bytes, 0o600)
    }

    /// Creates a token; returns its record and its secret (the only time it exists).
    pub fn create(&self, name: &str, scope: Scope) -> Result<(TokenInfo, String), TokenError> {
        let secret = format!("sluice_{}", random_hex(32));
        let info = TokenInfo {
            id: random_hex(6),
            name: name.to_string(),
            scope,
            created_ms: crate::registry::now_ms(),
            hash: hash(&secret),
        };
        let mut all = self.all.write().expect("tokens lock");
        let mut next = all.clone();
        next.push(info.clone());
        self.save(&next)?;
        *all = next;
        Ok((info.public(), secret))
    }

    /// Every token, without hashes.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.all
            .read()
            .expect("tokens lock")
            .iter()
            .map(TokenInfo::public)
            .collect()
    }

    /// Revokes token `id`; effective for the next request.
    pub fn revoke(&self, id: &str) -> Result<TokenInfo, TokenError> {
        let mut all = self.all.write().expect("tokens lock");
        let i = all
            .iter()
            .position(|t| t.id == id)
            .ok_or_else(|| TokenError::NotFound(id.to_string()))?;
        if all[i].scope == Scope::Admin
            && all.iter().filter(|t| t.scope == Scope::Admin).count() == 1
        {
            return Err(TokenError::LastAdmin(id.to_string()));
        }
        let mut next = all.clone();
        let gone = next.remove(i);
        self.save(&next)?;
        *all = next;
        Ok(gone.public())
    }

    /// The token `secret` is, if any.
    pub fn authenticate(&self, secret: &str) -> Option<TokenInfo> {
        let h = hash(secret.trim());
        let all = self.all.read().expect("tokens lock");
        let mut found = None;
        for t in all.iter() {
            if same(&t.hash, &h) {
                found = Some(t.public());
            }
        }
        found
    }

    /// Drops the consume tokens of a deleted pipeline, so a pipeline created later under
    /// the same name does not inherit its consumers.
    pub fn forget_pipeline(&self, pipeline: &str) -> Result<usize, TokenError> {
        let mut all = self.all.write().expect("tokens lock");
        let next: Vec<TokenInfo> = all
            .iter()
            .filter(|t| !matches!(&t.scope, Scope::Consume { pipeline: p, .. } if p == pipeline))
            .cloned()
            .collect();
        let gone = all.len() - next.len();
        if gone > 0 {
            self.save(&next)?;
            *all = next;
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_one_admin_token_kept_only_as_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, secret) = Tokens::open(dir.path()).unwrap();
        let secret = secret.expect("an admin token at first start");
        let file = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!file.contains(&secret), "the secret is not stored");
        assert!(file.contains(&hash(&secret)));
        let mode = std::fs::metadata(dir.path().join("tokens.json")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        assert_eq!(tokens.authenticate(&secret).unwrap().scope, Scope::Admin);
        assert!(tokens.authenticate("sluice_wrong").is_none());
        // The second start creates nothing.
        drop(tokens);
        let (tokens, again) = Tokens::open(dir.path()).unwrap();
        assert!(again.is_none());
        assert!(tokens.authenticate(&secret).is_some());
    }

    #[test]
    fn revoke_takes_effect_and_keeps_the_last_admin() {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, admin) = Tokens::open(dir.path()).unwrap();
        let admin_id = tokens.authenticate(&admin.unwrap()).unwrap().id;
        let consume = Scope::Consume {
            pipeline: "orders".into(),
            sink: "feed".into(),
        };
        let (info, secret) = tokens.create("web", consume.clone()).unwrap();
        assert_eq!(tokens.authenticate(&secret).unwrap().scope, consume);
        assert!(tokens.list().iter().all(|t| t.hash.is_empty()));
        tokens.revoke(&info.id).unwrap();
        assert!(tokens.authenticate(&secret).is_none());
        assert!(matches!(
            tokens.revoke(&admin_id),
            Err(TokenError::LastAdmin(_))
        ));
        assert!(matches!(
            tokens.revoke("nope"),
            Err(TokenError::NotFound(_))
        ));
        let (_, s2) = tokens.create("web2", consume).unwrap();
        assert_eq!(tokens.forget_pipeline("orders").unwrap(), 1);
        assert!(tokens.authenticate(&s2).is_none());
    }
}
