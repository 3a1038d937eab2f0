//! The master key ring: from configuration, or generated on a first run, and checked
//! against the data before the server touches it.

use std::io::Write;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretBox};

use latchkey_cipher::KeyRing;
use latchkey_domain::SealContext;
use latchkey_ports::{Cipher, CipherError};
use latchkey_store::SeaStore;

use crate::config::Config;

const KEY_FILE: &str = "master.key";
const CANARY_META: &str = "key_check";
const CANARY_PLAINTEXT: &[u8] = b"latchkey master key check";

/// Why the key ring cannot be used with this database. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("LATCHKEY_MASTER_KEYS is invalid: {0}")]
    Invalid(latchkey_cipher::KeyRingError),
    #[error("the key file {path} is invalid: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("could not write a new master key to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(
        "the database already holds sealed data but no master key is configured: set LATCHKEY_MASTER_KEYS to the key(s) it was sealed with (or restore {path})"
    )]
    MissingForExistingData { path: PathBuf },
    #[error(
        "the database's data was sealed with master key id {id:?}, which the configured key ring ({configured}) does not contain; add that key to LATCHKEY_MASTER_KEYS"
    )]
    UnknownKeyId { id: String, configured: String },
    #[error(
        "the configured master keys ({configured}) do not open this database's data: the key material is wrong for its key id; configure the key the data was sealed with"
    )]
    WrongKey { configured: String },
    #[error("checking the master key against the database failed: {0}")]
    Check(String),
}

/// Where the key ring came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File(PathBuf),
    Generated(PathBuf),
}

fn canary_ctx() -> SealContext {
    SealContext::new("*", "meta", "key_check")
}

/// Loads the key ring and proves it opens this database's data, before anything else
/// reads or writes sealed values.
pub async fn load_and_check(
    config: &Config,
    store: &SeaStore,
) -> Result<(KeyRing, KeySource), KeyError> {
    let path = config.data_dir.join(KEY_FILE);
    let (ring, source) = match &config.master_keys {
        Some(spec) => (
            KeyRing::parse(spec.expose_secret()).map_err(KeyError::Invalid)?,
            KeySource::Environment,
        ),
        None if path.exists() => {
            check_key_file_mode(&path, config.allow_insecure_key_file)?;
            (read_key_file(&path)?, KeySource::File(path.clone()))
        }
        None => {
            let empty = store
                .is_empty_db()
                .await
                .map_err(|e| KeyError::Check(e.to_string()))?;
            let has_canary = store
                .get_meta(CANARY_META)
                .await
                .map_err(|e| KeyError::Check(e.to_string()))?
                .is_some();
            if !empty || has_canary {
                return Err(KeyError::MissingForExistingData { path });
            }
            (
                generate_key_file(&path)?,
                KeySource::Generated(path.clone()),
            )
        }
    };
    let configured = ring.key_ids().join(", ");
    match store
        .get_meta(CANARY_META)
        .await
        .map_err(|e| KeyError::Check(e.to_string()))?
    {
        Some(bytes) => match ring.open(&latchkey_domain::Sealed(bytes), &canary_ctx()) {
            Ok(plain) if plain.expose_secret() == CANARY_PLAINTEXT => {}
            Ok(_) => return Err(KeyError::WrongKey { configured }),
            Err(CipherError::UnknownKey(id)) => {
                return Err(KeyError::UnknownKeyId { id, configured })
            }
            Err(CipherError::Authentication) => return Err(KeyError::WrongKey { configured }),
            Err(e) => return Err(KeyError::Check(e.to_string())),
        },
        None => {
            let plain: SecretBox<[u8]> =
                SecretBox::from(CANARY_PLAINTEXT.to_vec().into_boxed_slice());
            let sealed = ring
                .seal(&plain, &canary_ctx())
                .map_err(|e| KeyError::Check(e.to_string()))?;
            store
                .put_meta_if_absent(CANARY_META, &sealed.0)
                .await
                .map_err(|e| KeyError::Check(e.to_string()))?;
        }
    }
    Ok((ring, source))
}

/// A key file that group or others can read is refused (the keys open every stored
/// secret), unless `LATCHKEY_ALLOW_INSECURE_KEY_FILE` allows it with a warning.
fn check_key_file_mode(path: &Path, allow_insecure: bool) -> Result<(), KeyError> {
    let bad = |reason: String| KeyError::BadFile {
        path: path.to_owned(),
        reason,
    };
    match crate::files::shared_mode(path).map_err(|e| bad(e.to_string()))? {
        None => Ok(()),
        Some(mode) if allow_insecure => {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the master key file is accessible to group or others; LATCHKEY_ALLOW_INSECURE_KEY_FILE=true lets the server start anyway. Run chmod 600 on it.");
            Ok(())
        }
        Some(mode) => Err(bad(format!(
            "it is accessible to group or others (mode {mode:o}); run chmod 600 {}, or set LATCHKEY_ALLOW_INSECURE_KEY_FILE=true to start anyway",
            path.display()
        ))),
    }
}

fn read_key_file(path: &Path) -> Result<KeyRing, KeyError> {
    let bad = |reason: String| KeyError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    KeyRing::parse(text.trim()).map_err(|e| bad(e.to_string()))
}

fn generate_key_file(path: &Path) -> Result<KeyRing, KeyError> {
    let fail = |reason: String| KeyError::Write {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent() {
        crate::files::create_private_dir(dir).map_err(|e| fail(e.to_string()))?;
    }
    let ring =
        KeyRing::generate("local1", &mut rand::rngs::OsRng).map_err(|e| fail(e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| fail(e.to_string()))?;
    file.write_all(ring.to_spec().expose_secret().as_bytes())
        .and_then(|_| file.write_all(b"\n"))
        .and_then(|_| file.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    Ok(ring)
}
