//! Secrets at rest: the registry keeps every secret of a configuration (passwords in
//! URLs, webhook secrets, headers, tokens) sealed with AES-256-GCM under the server's
//! secret key; everything else stays readable JSON.
//!
//! Invariants:
//! - A sealed value is a string `sluice-sealed:v1:<base64 of nonce ‖ ciphertext ‖ tag>`
//!   whose plaintext is the JSON of the original value, so any value (a string, a table
//!   of headers) seals and opens to itself.
//! - Every seal draws a fresh random 96-bit nonce from the system's generator.
//! - Opening tries the current key, then the previous one (during a rotation); a value
//!   neither key opens is an error that says which key is missing, never a guess.
//! - Which values are secret is decided by [`crate::secrets`], the same walk as
//!   redaction, so what the API hides is what the disk seals.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use crate::secrets::{map_secrets, Declared, Found};

const PREFIX: &str = "sluice-sealed:v1:";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where the keys come from: the environment first, then the files.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// `--secret-key-file`; default `<data-dir>/secret.key`, created at first start.
    pub file: Option<PathBuf>,
    /// `--previous-secret-key-file`: the key being rotated away from.
    pub previous_file: Option<PathBuf>,
}

/// The server's secret key, and during a rotation the previous one.
pub struct SecretKeys {
    current: LessSafeKey,
    previous: Option<LessSafeKey>,
    rng: SystemRandom,
}

/// `SLUICE_SECRET_KEY`: the key itself (base64 of 32 bytes), instead of a file.
pub const KEY_ENV: &str = "SLUICE_SECRET_KEY";
/// `SLUICE_PREVIOUS_SECRET_KEY`: the previous key itself, instead of a file.
pub const PREVIOUS_KEY_ENV: &str = "SLUICE_PREVIOUS_SECRET_KEY";

/// What a key must be.
const KEY_FORM: &str =
    "a secret key is the base64 of 32 random bytes (e.g. `openssl rand -base64 32`)";
/// What the operator does when a value was sealed under a key the server does not have.
const WRONG_KEY_FIX: &str = "start the server with the key it was sealed with (SLUICE_SECRET_KEY or --secret-key-file), or give that key as --previous-secret-key-file while rotating";

/// Why the server's secret keys could not be had. Each is the operator's to fix (a key's
/// text, a file, its permissions), so none passes by retrying. Never holds a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key in `var` is not a key.
    #[error("{var}: {KEY_FORM}")]
    BadEnv { var: &'static str },
    /// The key file at `path` holds no key.
    #[error("{}: {KEY_FORM}", path.display())]
    BadFile { path: PathBuf },
    #[error("cannot read the secret key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the secret key file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the system's random generator failed")]
    Random,
}

impl KeyError {
    /// What the operator can change, where the error names it.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            KeyError::BadEnv { .. } | KeyError::BadFile { .. } => Some(KEY_FORM),
            _ => None,
        }
    }
}

/// Why a secret could not be sealed or opened. The texts never hold the secret.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the system's random generator failed")]
    Random,
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot seal a secret")]
    Seal,
    #[error("a sealed secret is damaged (not base64)")]
    NotBase64,
    #[error("a sealed secret is damaged (too short)")]
    TooShort,
    /// Neither the current key nor the previous one opens it.
    #[error("a secret was sealed with another key than the server's: {WRONG_KEY_FIX}")]
    WrongKey,
}

impl SealError {
    /// What the operator can change, where the error names it.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            SealError::WrongKey => Some(WRONG_KEY_FIX),
            _ => None,
        }
    }
}

impl SecretKeys {
    /// Loads the keys for the server data dir `data_dir`. Without a key in the
    /// environment or a named file, `<data_dir>/secret.key` is used, and made (0600)
    /// if it does not exist; the returned flag says a key was made.
    pub fn load(data_dir: &Path, sources: &KeySources) -> Result<(SecretKeys, bool), KeyError> {
        let mut made = false;
        let current = match std::env::var(KEY_ENV) {
            Ok(text) => parse(&text).ok_or(KeyError::BadEnv { var: KEY_ENV })?,
            Err(_) => {
                let path = sources
                    .file
                    .clone()
                    .unwrap_or_else(|| data_dir.join("secret.key"));
                if sources.file.is_none() && !path.exists() {
                    make_key_file(&path)?;
                    made = true;
                }
                read_key_file(&path)?
            }
        };
        let previous = match std::env::var(PREVIOUS_KEY_ENV) {
            Ok(text) => Some(parse(&text).ok_or(KeyError::BadEnv {
                var: PREVIOUS_KEY_ENV,
            })?),
            Err(_) => match &sources.previous_file {
                Some(p) => Some(read_key_file(p)?),
                None => None,
            },
        };
        Ok((SecretKeys::new(current, previous), made))
    }

    /// A fresh random key kept nowhere: for a server whose data dir is thrown away
    /// with it (the demo).
    pub fn ephemeral() -> Result<SecretKeys, KeyError> {
        Ok(SecretKeys::new(random_key()?, None))
    }

    pub fn new(current: [u8; 32], previous: Option<[u8; 32]>) -> SecretKeys {
        let key = |k: [u8; 32]| {
            // 32 bytes is AES-256's key length: this cannot fail.
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("32-byte key"))
        };
        SecretKeys {
            current: key(current),
            previous: previous.map(key),
            rng: SystemRandom::new(),
        }
    }

    /// `value` with each secret sealed under the current key.
    pub fn seal(&self, value: &Value) -> Result<Value, SealError> {
        self.seal_with(value, Declared::current())
    }

    /// `value` with each secret that `declared` (and a password in a string) makes one
    /// sealed; one sealed already stays as it is.
    pub fn seal_with(&self, value: &Value, declared: &Declared) -> Result<Value, SealError> {
        map_secrets(value, declared, &mut |found| match found {
            Found::Setting(v) if is_sealed(v) => Ok(v.clone()),
            Found::Setting(v) => self.seal_one(v),
            Found::Text(s) => self.seal_one(&Value::String(s.to_owned())),
        })
    }

    fn seal_one(&self, value: &Value) -> Result<Value, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut data = serde_json::to_vec(value).map_err(SealError::Encode)?;
        self.current
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| SealError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(Value::String(format!("{PREFIX}{}", B64.encode(out))))
    }

    /// `value` with every sealed secret opened; the flag says the previous key was
    /// needed (the value should be sealed again under the current one).
    pub fn open(&self, value: &Value) -> Result<(Value, bool), SealError> {
        let mut old = false;
        let v = self.open_into(value, &mut old)?;
        Ok((v, old))
    }

    fn open_into(&self, value: &Value, old: &mut bool) -> Result<Value, SealError> {
        Ok(match value {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), self.open_into(v, old)?)))
                    .collect::<Result<_, SealError>>()?,
            ),
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|v| self.open_into(v, old))
                    .collect::<Result<_, _>>()?,
            ),
            Value::String(s) => match s.strip_prefix(PREFIX) {
                Some(sealed) => self.open_one(sealed, old)?,
                None => value.clone(),
            },
            v => v.clone(),
        })
    }

    fn open_one(&self, sealed: &str, old: &mut bool) -> Result<Value, SealError> {
        let bytes = B64.decode(sealed).map_err(|_| SealError::NotBase64)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::TooShort);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let attempt = |key: &LessSafeKey| {
            let mut data = data.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let plain = key.open_in_place(nonce, Aad::empty(), &mut data).ok()?;
            serde_json::from_slice::<Value>(plain).ok()
        };
        if let Some(v) = attempt(&self.current) {
            return Ok(v);
        }
        if let Some(v) = self.previous.as_ref().and_then(attempt) {
            *old = true;
            return Ok(v);
        }
        Err(SealError::WrongKey)
    }
}

fn is_sealed(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with(PREFIX))
}

/// A key's text form: base64 of 32 bytes; `None` if `text` is not one.
fn parse(text: &str) -> Option<[u8; 32]> {
    B64.decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}

fn read_key_file(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).ok_or_else(|| KeyError::BadFile {
        path: path.to_owned(),
    })
}

fn random_key() -> Result<[u8; 32], KeyError> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| KeyError::Random)?;
    Ok(key)
}

fn make_key_file(path: &Path) -> Result<(), KeyError> {
    let key = random_key()?;
    crate::files::write_whole(path, format!("{}\n", B64.encode(key)).as_bytes(), 0o600).map_err(
        |source| KeyError::Write {
            path: path.to_owned(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Value {
        json!({
            "pipeline": {"name": "p"},
            "source": {"url": "postgres://app:s3cret@db/app", "tables": ["public.t"]},
            "sinks": [
                {"name": "c", "type": "redis", "url": "rediss://:pw@cache:6380"},
                {"name": "w", "type": "webhook", "url": "https://hooks.example/x", "secret": "abc",
                 "headers": {"X-Key": "k"}}
            ]
        })
    }

    #[test]
    fn secrets_are_sealed_and_open_to_themselves() {
        let keys = SecretKeys::new([7; 32], None);
        let sealed = keys.seal(&config()).unwrap();
        let text = sealed.to_string();
        for secret in ["s3cret", "pw@", "\"abc\"", "X-Key"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // What is not secret stays readable.
        assert!(text.contains("https://hooks.example/x"), "{text}");
        assert!(text.contains("public.t"), "{text}");
        // Sealing twice gives different text (fresh nonces) and opens the same.
        assert_ne!(keys.seal(&config()).unwrap(), sealed);
        assert_eq!(keys.open(&sealed).unwrap(), (config(), false));
        // Sealing what is sealed leaves it be.
        assert_eq!(keys.seal(&sealed).unwrap(), sealed);
    }

    #[test]
    fn a_sink_types_declared_secret_is_sealed_whatever_its_name() {
        let keys = SecretKeys::new([5; 32], None);
        let declared = Declared::new(&[("broker", &["nkey_seed"])]);
        let config = json!({"sinks": [{"name": "b", "type": "broker", "nkey_seed": "SUAMK2FG", "subject": "s"}]});
        let sealed = keys.seal_with(&config, &declared).unwrap();
        assert!(is_sealed(&sealed["sinks"][0]["nkey_seed"]), "{sealed}");
        assert_eq!(sealed["sinks"][0]["subject"], "s");
        assert_eq!(keys.open(&sealed).unwrap(), (config, false));
    }

    #[test]
    fn a_rotation_opens_with_the_previous_key_and_a_wrong_key_is_an_error() {
        let old = SecretKeys::new([1; 32], None);
        let sealed = old.seal(&config()).unwrap();
        let wrong = SecretKeys::new([2; 32], None);
        let e = wrong.open(&sealed).unwrap_err();
        assert!(e.to_string().contains("--previous-secret-key-file"), "{e}");
        assert!(matches!(e, SealError::WrongKey), "{e}");
        assert!(e.fix().is_some_and(|f| e.to_string().ends_with(f)));
        let rotating = SecretKeys::new([2; 32], Some([1; 32]));
        assert_eq!(rotating.open(&sealed).unwrap(), (config(), true));
        // Sealed again under the new key, the old key is no longer needed.
        let resealed = rotating.seal(&config()).unwrap();
        assert_eq!(wrong.open(&resealed).unwrap(), (config(), false));
        // A damaged value is an error, not a panic.
        let mut text = resealed.to_string();
        text = text.replacen(PREFIX, &format!("{PREFIX}AAAA"), 1);
        let damaged: Value = serde_json::from_str(&text).unwrap();
        assert!(wrong.open(&damaged).is_err());
    }

    #[test]
    fn a_key_file_is_made_once_and_a_bad_key_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let (_, made) = SecretKeys::load(dir.path(), &KeySources::default()).unwrap();
        assert!(made);
        let mode = std::fs::metadata(dir.path().join("secret.key"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap();
        assert_eq!(mode, 0o600);
        let (_, made) = SecretKeys::load(dir.path(), &KeySources::default()).unwrap();
        assert!(!made);
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "short").unwrap();
        let e = SecretKeys::load(
            dir.path(),
            &KeySources {
                file: Some(bad),
                previous_file: None,
            },
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("openssl rand -base64 32"), "{e}");
        assert!(matches!(e, KeyError::BadFile { .. }), "{e}");
    }
}
