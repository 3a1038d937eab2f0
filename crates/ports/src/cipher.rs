//! Authenticated encryption of secrets, bound to their place.

use secrecy::SecretBox;

use latchkey_domain::{SealContext, Sealed};

#[cfg(feature = "mocks")]
use mockall::automock;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    /// The value names a key the ring does not hold.
    #[error("sealed with unknown key id {0:?}")]
    UnknownKey(String),
    /// Wrong key, tampered bytes, or a value moved to another place.
    #[error("sealed value failed authentication")]
    Authentication,
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    #[error("unsupported sealed format version {0}")]
    UnsupportedVersion(u8),
}

/// Authenticated encryption of secrets, bound to where they are stored.
#[cfg_attr(feature = "mocks", automock)]
pub trait Cipher: Send + Sync {
    fn seal(
        &self,
        plaintext: &SecretBox<[u8]>,
        context: &SealContext,
    ) -> Result<Sealed, CipherError>;
    fn open(&self, sealed: &Sealed, context: &SealContext) -> Result<SecretBox<[u8]>, CipherError>;
    /// The id of the key that sealed `sealed`, read from its header (nothing is
    /// decrypted; works on a value cut to its first 64 bytes).
    fn sealed_key_id(&self, sealed: &Sealed) -> Result<String, CipherError>;
    /// The ids of the ring, the sealing key first.
    fn ring_key_ids(&self) -> Vec<String>;
}
