//! # latchkey-cipher
//!
//! The cipher adapter: XChaCha20-Poly1305 under a ring of named 256-bit keys.
//!
//! The first key of the ring seals; every key opens, so keys rotate by prepending a
//! new key and keeping the old ones until every value has been re-sealed.
//!
//! A sealed value is laid out as
//!
//! ```text
//! [version = 1][key id length][key id bytes][24-byte nonce][ciphertext + 16-byte tag]
//! ```
//!
//! and authenticated with `SealContext::to_aad()` followed by the header (version,
//! key id length and key id), so a value moved to another project, record or field,
//! or relabelled with another key id or version, fails to open.
//!
//! ```
//! use latchkey_cipher::KeyRing;
//! use latchkey_domain::SealContext;
//! use latchkey_ports::Cipher;
//! use secrecy::{ExposeSecret, SecretBox};
//!
//! let ring = KeyRing::generate("k1", &mut rand::rngs::OsRng)?;
//! let ctx = SealContext::new("project", "record", "secrets");
//! let secret = SecretBox::<[u8]>::from(b"hunter2".to_vec());
//! let sealed = ring.seal(&secret, &ctx)?;
//! assert_eq!(ring.open(&sealed, &ctx)?.expose_secret(), b"hunter2");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use latchkey_domain::{SealContext, Sealed};
use latchkey_ports::{Cipher, CipherError};
use rand::{CryptoRng, RngCore};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::{Zeroize, Zeroizing};

/// The only sealed format this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Key length in bytes (XChaCha20-Poly1305).
pub const KEY_LEN: usize = 32;
/// Longest key id accepted; it must fit the one-byte length in the header.
pub const MAX_KEY_ID_LEN: usize = 32;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Standard alphabet, padding optional: key files are written by hand as often as not.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a key ring spec was refused. Positions are 1-based entry numbers. No variant
/// carries key material; an id is named only once it is known to be a valid id (an
/// invalid "id" may be a key pasted in the wrong place).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    #[error("the key ring is empty: expected comma-separated `id:base64-key` entries")]
    Empty,
    #[error("key ring entry {position} is empty")]
    EmptyEntry { position: usize },
    #[error("key ring entry {position} is not of the form `id:base64-key`")]
    MissingSeparator { position: usize },
    #[error(
        "key ring entry {position} has an invalid key id: expected 1-{MAX_KEY_ID_LEN} characters of A-Z, a-z, 0-9, `_` or `-`"
    )]
    InvalidId { position: usize },
    #[error("key ring entry {position} repeats key id {id:?}")]
    DuplicateId { id: String, position: usize },
    #[error("key {id:?} (key ring entry {position}) is not valid standard base64")]
    InvalidBase64 { id: String, position: usize },
    #[error("key {id:?} (key ring entry {position}) is {len} bytes long; expected {KEY_LEN}")]
    WrongLength {
        id: String,
        position: usize,
        len: usize,
    },
}

/// One named key. The bytes live on the heap in a `SecretBox`, which zeroizes them on
/// drop and never moves them.
struct RingKey {
    id: String,
    key: SecretBox<[u8; KEY_LEN]>,
}

impl RingKey {
    fn cipher(&self) -> XChaCha20Poly1305 {
        // The cipher holds a copy of the key and zeroizes it on drop (chacha20poly1305
        // implements `ZeroizeOnDrop`); building one per call costs a 32-byte copy.
        XChaCha20Poly1305::new(Key::from_slice(self.key.expose_secret()))
    }
}

/// A ring of XChaCha20-Poly1305 keys. The first key seals; all keys open.
pub struct KeyRing {
    /// Never empty: every constructor checks it.
    keys: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl KeyRing {
    /// Parses `id:base64,id:base64,...`. Whitespace around entries is ignored (a spec
    /// read from a file usually ends with a newline).
    pub fn parse(spec: &str) -> Result<Self, KeyRingError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(KeyRingError::Empty);
        }
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for (index, entry) in spec.split(',').enumerate() {
            let position = index + 1;
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(KeyRingError::EmptyEntry { position });
            }
            let (id, b64) = entry
                .split_once(':')
                .ok_or(KeyRingError::MissingSeparator { position })?;
            let id = id.trim();
            if !valid_id(id) {
                return Err(KeyRingError::InvalidId { position });
            }
            if !seen.insert(id) {
                return Err(KeyRingError::DuplicateId {
                    id: id.to_owned(),
                    position,
                });
            }
            let key = decode_key(b64.trim()).map_err(|e| match e {
                DecodeKeyError::Base64 => KeyRingError::InvalidBase64 {
                    id: id.to_owned(),
                    position,
                },
                DecodeKeyError::Length(len) => KeyRingError::WrongLength {
                    id: id.to_owned(),
                    position,
                    len,
                },
            })?;
            keys.push(RingKey {
                id: id.to_owned(),
                key,
            });
        }
        Ok(Self { keys })
    }

    /// A ring of one fresh random key, for writing a first key file with [`to_spec`].
    ///
    /// [`to_spec`]: KeyRing::to_spec
    pub fn generate(id: &str, rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, KeyRingError> {
        if !valid_id(id) {
            return Err(KeyRingError::InvalidId { position: 1 });
        }
        let key = SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| rng.fill_bytes(k));
        Ok(Self {
            keys: vec![RingKey {
                id: id.to_owned(),
                key,
            }],
        })
    }

    /// The ring as a spec that [`parse`] reads back (padded standard base64). Secret.
    ///
    /// [`parse`]: KeyRing::parse
    pub fn to_spec(&self) -> SecretString {
        const B64_LEN: usize = KEY_LEN.div_ceil(3) * 4;
        // Sized exactly so that neither pushing nor `into_boxed_str` reallocates and
        // leaves an unzeroized copy of the keys behind.
        let len = self
            .keys
            .iter()
            .map(|k| k.id.len() + 1 + B64_LEN)
            .sum::<usize>()
            + self.keys.len().saturating_sub(1);
        let mut out = String::with_capacity(len);
        let mut buf = Zeroizing::new([0u8; B64_LEN]);
        for (i, k) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&k.id);
            out.push(':');
            // Cannot fail: `buf` is exactly the encoded length of a key, and base64
            // output is ASCII so `from_utf8` accepts it.
            if let Ok(n) = STANDARD.encode_slice(k.key.expose_secret(), &mut buf[..]) {
                out.push_str(std::str::from_utf8(&buf[..n]).unwrap_or_default());
            }
        }
        SecretString::from(out)
    }

    /// The id of the key that seals.
    pub fn primary_key_id(&self) -> &str {
        // `keys` is never empty (checked by every constructor).
        self.keys.first().map(|k| k.id.as_str()).unwrap_or_default()
    }

    /// Every key id, the sealing one first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    fn key(&self, id: &str) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

enum DecodeKeyError {
    Base64,
    Length(usize),
}

fn decode_key(b64: &str) -> Result<SecretBox<[u8; KEY_LEN]>, DecodeKeyError> {
    // Room for the decoder's conservative estimate up front: a reallocation would free
    // a copy of the key without zeroizing it.
    let mut decoded = Zeroizing::new(Vec::with_capacity(b64.len() / 4 * 3 + 3));
    LENIENT_B64
        .decode_vec(b64, &mut decoded)
        .map_err(|_| DecodeKeyError::Base64)?;
    if decoded.len() != KEY_LEN {
        return Err(DecodeKeyError::Length(decoded.len()));
    }
    Ok(SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| {
        k.copy_from_slice(&decoded)
    }))
}

/// `[version][id length][id]`: the header, also authenticated.
fn header(key_id: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(2 + key_id.len());
    h.push(FORMAT_VERSION);
    // Key ids are at most MAX_KEY_ID_LEN (32) bytes, checked on construction.
    h.push(key_id.len() as u8);
    h.extend_from_slice(key_id.as_bytes());
    h
}

fn aad(context: &SealContext, header: &[u8]) -> Vec<u8> {
    // `to_aad` is self-delimiting (length-prefixed parts), so appending is unambiguous.
    let mut aad = context.to_aad();
    aad.extend_from_slice(header);
    aad
}

impl Cipher for KeyRing {
    fn seal(
        &self,
        plaintext: &SecretBox<[u8]>,
        context: &SealContext,
    ) -> Result<Sealed, CipherError> {
        let key = self
            .keys
            .first()
            .ok_or(CipherError::Malformed("the key ring is empty"))?;
        let header = header(&key.id);
        let aad = aad(context, &header);
        let mut nonce = XNonce::default();
        rand::rngs::OsRng.fill_bytes(&mut nonce);

        let plaintext = plaintext.expose_secret();
        let body_start = header.len() + NONCE_LEN;
        let mut out = Vec::with_capacity(body_start + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        match key
            .cipher()
            .encrypt_in_place_detached(&nonce, &aad, &mut out[body_start..])
        {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(Sealed(out))
            }
            Err(_) => {
                // Only possible for plaintexts beyond the cipher's limit (256 GiB);
                // the buffer still holds the plaintext, so wipe it.
                out.zeroize();
                Err(CipherError::Malformed("plaintext too long"))
            }
        }
    }

    fn open(&self, sealed: &Sealed, context: &SealContext) -> Result<SecretBox<[u8]>, CipherError> {
        let bytes = sealed.0.as_slice();
        let (id, rest) = read_header(bytes)?;
        let id_len = id.len();
        let key = self
            .key(id)
            .ok_or_else(|| CipherError::UnknownKey(id.to_owned()))?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CipherError::Malformed("truncated"));
        }
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);

        let aad = aad(context, &bytes[..2 + id_len]);
        // Decrypt into an exactly sized box: the plaintext is never in a buffer that
        // could be reallocated (and so copied) on its way into the `SecretBox`. The
        // tag is checked before anything is decrypted.
        let mut plaintext: Box<[u8]> = body.into();
        key.cipher()
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &aad,
                &mut plaintext,
                Tag::from_slice(tag),
            )
            .map_err(|_| CipherError::Authentication)?;
        Ok(SecretBox::new(plaintext))
    }

    fn sealed_key_id(&self, sealed: &Sealed) -> Result<String, CipherError> {
        read_header(&sealed.0).map(|(id, _)| id.to_owned())
    }

    fn ring_key_ids(&self) -> Vec<String> {
        self.key_ids().into_iter().map(str::to_owned).collect()
    }
}

/// Splits `[version][id length][id]` off a sealed value: its key id and the rest.
fn read_header(bytes: &[u8]) -> Result<(&str, &[u8]), CipherError> {
    let (&version, rest) = bytes.split_first().ok_or(CipherError::Malformed("empty"))?;
    if version != FORMAT_VERSION {
        return Err(CipherError::UnsupportedVersion(version));
    }
    let (&id_len, rest) = rest
        .split_first()
        .ok_or(CipherError::Malformed("truncated header"))?;
    let id_len = usize::from(id_len);
    if id_len == 0 || id_len > MAX_KEY_ID_LEN {
        return Err(CipherError::Malformed("invalid key id length"));
    }
    if rest.len() < id_len {
        return Err(CipherError::Malformed("truncated header"));
    }
    let (id, rest) = rest.split_at(id_len);
    let id = std::str::from_utf8(id)
        .ok()
        .filter(|id| valid_id(id))
        .ok_or(CipherError::Malformed("invalid key id"))?;
    Ok((id, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    fn ctx() -> SealContext {
        SealContext::new("proj-1", "conn-1", "secrets")
    }

    fn secret(bytes: &[u8]) -> SecretBox<[u8]> {
        SecretBox::from(bytes.to_vec())
    }

    fn ring(id: &str) -> KeyRing {
        KeyRing::generate(id, &mut OsRng).unwrap()
    }

    #[test]
    fn is_a_shareable_cipher() {
        let cipher: std::sync::Arc<dyn Cipher> = std::sync::Arc::new(ring("k1"));
        let sealed = cipher.seal(&secret(b"v"), &ctx()).unwrap();
        assert_eq!(cipher.open(&sealed, &ctx()).unwrap().expose_secret(), b"v");
    }

    #[test]
    fn round_trip() {
        let ring = ring("k1");
        for value in [&b""[..], b"x", b"{\"api_key\":\"sk-123\"}", &[0u8; 4096]] {
            let sealed = ring.seal(&secret(value), &ctx()).unwrap();
            assert_eq!(sealed.0[0], FORMAT_VERSION);
            assert_eq!(sealed.0.len(), 2 + 2 + NONCE_LEN + value.len() + TAG_LEN);
            assert_eq!(ring.open(&sealed, &ctx()).unwrap().expose_secret(), value);
        }
    }

    #[test]
    fn layout_names_the_key() {
        let ring = ring("primary_2024-01");
        let sealed = ring.seal(&secret(b"v"), &ctx()).unwrap();
        assert_eq!(sealed.0[1] as usize, "primary_2024-01".len());
        assert_eq!(&sealed.0[2..2 + 15], b"primary_2024-01");
    }

    #[test]
    fn tampering_any_byte_fails() {
        let ring = ring("k1");
        let sealed = ring.seal(&secret(b"top secret value"), &ctx()).unwrap();
        for i in 0..sealed.0.len() {
            for flip in [0x01u8, 0x80] {
                let mut bytes = sealed.0.clone();
                bytes[i] ^= flip;
                let result = ring.open(&Sealed(bytes), &ctx());
                assert!(result.is_err(), "flipping byte {i} with {flip:#x} opened");
                // Past the header, only authentication can notice.
                if i >= 4 {
                    assert_eq!(result.err(), Some(CipherError::Authentication), "byte {i}");
                }
            }
        }
    }

    #[test]
    fn appending_or_dropping_bytes_fails() {
        let ring = ring("k1");
        let sealed = ring.seal(&secret(b"value"), &ctx()).unwrap();
        let mut longer = sealed.0.clone();
        longer.push(0);
        assert_eq!(
            ring.open(&Sealed(longer), &ctx()).err(),
            Some(CipherError::Authentication)
        );
        let shorter = sealed.0[..sealed.0.len() - 1].to_vec();
        assert_eq!(
            ring.open(&Sealed(shorter), &ctx()).err(),
            Some(CipherError::Authentication)
        );
    }

    #[test]
    fn moved_value_fails() {
        let ring = ring("k1");
        let sealed = ring.seal(&secret(b"value"), &ctx()).unwrap();
        for other in [
            SealContext::new("proj-2", "conn-1", "secrets"),
            SealContext::new("proj-1", "conn-2", "secrets"),
            SealContext::new("proj-1", "conn-1", "access_token"),
            SealContext::new("*", "conn-1", "secrets"),
            // Same bytes re-split between parts: the length prefixes keep them apart.
            SealContext::new("proj-1c", "onn-1", "secrets"),
        ] {
            assert_eq!(
                ring.open(&sealed, &other).err(),
                Some(CipherError::Authentication),
                "{other:?}"
            );
        }
    }

    #[test]
    fn names_the_key_of_a_sealed_value_without_opening_it() {
        let old = ring("old");
        let sealed = old.seal(&secret(b"v"), &ctx()).unwrap();
        // Any ring reads the header, and 64 bytes of it are enough.
        let other = ring("other");
        assert_eq!(other.sealed_key_id(&sealed).unwrap(), "old");
        let cut = Sealed(sealed.0[..sealed.0.len().min(64)].to_vec());
        assert_eq!(other.sealed_key_id(&cut).unwrap(), "old");
        assert_eq!(
            other.sealed_key_id(&Sealed(vec![1, 0])).err(),
            Some(CipherError::Malformed("invalid key id length"))
        );
        assert_eq!(other.ring_key_ids(), ["other"]);
    }

    #[test]
    fn two_seals_differ() {
        let ring = ring("k1");
        let a = ring.seal(&secret(b"same"), &ctx()).unwrap();
        let b = ring.seal(&secret(b"same"), &ctx()).unwrap();
        assert_ne!(a, b);
        // The nonces differ, not just the ciphertexts.
        assert_ne!(a.0[4..4 + NONCE_LEN], b.0[4..4 + NONCE_LEN]);
    }

    #[test]
    fn unknown_key_id() {
        let sealed = ring("old").seal(&secret(b"v"), &ctx()).unwrap();
        assert_eq!(
            ring("other").open(&sealed, &ctx()).err(),
            Some(CipherError::UnknownKey("old".into()))
        );
    }

    #[test]
    fn same_id_other_key_fails_authentication() {
        let sealed = ring("k1").seal(&secret(b"v"), &ctx()).unwrap();
        assert_eq!(
            ring("k1").open(&sealed, &ctx()).err(),
            Some(CipherError::Authentication)
        );
    }

    #[test]
    fn rotation() {
        let old = ring("old");
        let old_spec = old.to_spec();
        let new_spec = ring("new").to_spec();
        let rotated = KeyRing::parse(&format!(
            "{},{}",
            new_spec.expose_secret(),
            old_spec.expose_secret()
        ))
        .unwrap();
        assert_eq!(rotated.primary_key_id(), "new");
        assert_eq!(rotated.key_ids(), ["new", "old"]);

        let by_old = old.seal(&secret(b"legacy"), &ctx()).unwrap();
        assert_eq!(
            rotated.open(&by_old, &ctx()).unwrap().expose_secret(),
            b"legacy"
        );

        let by_rotated = rotated.seal(&secret(b"fresh"), &ctx()).unwrap();
        assert_eq!(&by_rotated.0[1..5], b"\x03new");
        assert_eq!(
            rotated.open(&by_rotated, &ctx()).unwrap().expose_secret(),
            b"fresh"
        );
        // The old ring alone cannot open what the new key sealed.
        assert_eq!(
            old.open(&by_rotated, &ctx()).err(),
            Some(CipherError::UnknownKey("new".into()))
        );
    }

    #[test]
    fn truncated_input_is_malformed() {
        let ring = ring("k1");
        let sealed = ring.seal(&secret(b"value"), &ctx()).unwrap();
        // Everything shorter than header + nonce + tag: 4 + 24 + 16 = 44 bytes.
        for len in 0..(4 + NONCE_LEN + TAG_LEN) {
            let cut = Sealed(sealed.0[..len].to_vec());
            assert!(
                matches!(ring.open(&cut, &ctx()), Err(CipherError::Malformed(_))),
                "length {len}"
            );
        }
        assert_eq!(
            ring.open(&Sealed(vec![]), &ctx()).err(),
            Some(CipherError::Malformed("empty"))
        );
    }

    #[test]
    fn bad_header_is_malformed() {
        let ring = ring("k1");
        let body = [0u8; NONCE_LEN + TAG_LEN];
        for header in [&[1u8, 0][..], &[1, 33], &[1, 2, b'k', b'!'], &[1, 1, 0xff]] {
            let bytes = [header, &body[..]].concat();
            assert!(
                matches!(
                    ring.open(&Sealed(bytes), &ctx()),
                    Err(CipherError::Malformed(_))
                ),
                "{header:?}"
            );
        }
    }

    #[test]
    fn other_version_is_unsupported() {
        let ring = ring("k1");
        let mut sealed = ring.seal(&secret(b"value"), &ctx()).unwrap();
        sealed.0[0] = 2;
        assert_eq!(
            ring.open(&sealed, &ctx()).err(),
            Some(CipherError::UnsupportedVersion(2))
        );
        assert_eq!(
            ring.open(&Sealed(vec![0]), &ctx()).err(),
            Some(CipherError::UnsupportedVersion(0))
        );
    }

    #[test]
    fn debug_shows_ids_only() {
        let key = [0xABu8; KEY_LEN];
        let spec = format!("alpha:{},beta:{}", b64(&key), b64(&[7u8; KEY_LEN]));
        let ring = KeyRing::parse(&spec).unwrap();
        let debug = format!("{ring:?}");
        assert_eq!(debug, r#"KeyRing { key_ids: ["alpha", "beta"] }"#);
        let alt = format!("{ring:#?}");
        for needle in [
            b64(&key),
            b64(&[7u8; KEY_LEN]),
            "171".into(),
            "ab, ab".into(),
        ] {
            assert!(!debug.contains(&needle) && !alt.contains(&needle));
        }
    }

    #[test]
    fn spec_round_trip() {
        let ring = ring("k1");
        let spec = ring.to_spec();
        assert!(spec.expose_secret().starts_with("k1:"));
        assert_eq!(spec.expose_secret().len(), 3 + 44);
        let back = KeyRing::parse(spec.expose_secret()).unwrap();
        let sealed = ring.seal(&secret(b"v"), &ctx()).unwrap();
        assert_eq!(back.open(&sealed, &ctx()).unwrap().expose_secret(), b"v");
        assert_eq!(back.to_spec().expose_secret(), spec.expose_secret());
    }

    #[test]
    fn generate_refuses_bad_id() {
        for id in ["", "has space", "a:b", &"x".repeat(33)] {
            assert_eq!(
                KeyRing::generate(id, &mut OsRng).err(),
                Some(KeyRingError::InvalidId { position: 1 }),
                "{id:?}"
            );
        }
    }

    #[test]
    fn parse_accepts() {
        let k = b64(&[1u8; KEY_LEN]);
        let unpadded = k.trim_end_matches('=').to_owned();
        let id32 = "A".repeat(32);
        let cases: &[(String, &[&str])] = &[
            (format!("k1:{k}"), &["k1"]),
            (format!("k1:{unpadded}"), &["k1"]),
            (format!("  new:{k} , old:{unpadded}\n"), &["new", "old"]),
            (format!("a-b_C9:{k}"), &["a-b_C9"]),
            (format!("{id32}:{k}"), &[id32.as_str()]),
        ];
        for (spec, ids) in cases {
            let ring = KeyRing::parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert_eq!(ring.key_ids(), *ids, "{spec:?}");
            assert_eq!(ring.primary_key_id(), ids[0]);
        }
    }

    #[test]
    fn parse_errors() {
        let k = b64(&[0x5Au8; KEY_LEN]);
        let short = b64(&[0x5Au8; 16]);
        let long = b64(&[0x5Au8; 33]);
        let id33 = "A".repeat(33);
        use KeyRingError::*;
        let cases: Vec<(String, KeyRingError)> = vec![
            ("".into(), Empty),
            ("  \n".into(), Empty),
            (format!("k1:{k},"), EmptyEntry { position: 2 }),
            (format!(",k1:{k}"), EmptyEntry { position: 1 }),
            (k.clone(), MissingSeparator { position: 1 }),
            (format!("k1:{k},{k}"), MissingSeparator { position: 2 }),
            (format!(":{k}"), InvalidId { position: 1 }),
            (format!("k 1:{k}"), InvalidId { position: 1 }),
            (format!("k1:{k},{id33}:{k}"), InvalidId { position: 2 }),
            (format!("k.1:{k}"), InvalidId { position: 1 }),
            (
                format!("k1:{k},k2:{k},k1:{k}"),
                DuplicateId {
                    id: "k1".into(),
                    position: 3,
                },
            ),
            (
                "k1:not*base64!".into(),
                InvalidBase64 {
                    id: "k1".into(),
                    position: 1,
                },
            ),
            (
                format!("k1:{k},k2:{}", k.replace('W', "-")),
                InvalidBase64 {
                    id: "k2".into(),
                    position: 2,
                },
            ),
            (
                format!("k1:{short}"),
                WrongLength {
                    id: "k1".into(),
                    position: 1,
                    len: 16,
                },
            ),
            (
                format!("k1:{long}"),
                WrongLength {
                    id: "k1".into(),
                    position: 1,
                    len: 33,
                },
            ),
            (
                "k1:".into(),
                WrongLength {
                    id: "k1".into(),
                    position: 1,
                    len: 0,
                },
            ),
        ];
        for (spec, expected) in cases {
            let err = KeyRing::parse(&spec).err();
            assert_eq!(err.as_ref(), Some(&expected), "{spec:?}");
            // Messages never echo key material.
            let message = expected.to_string();
            for material in [&k, &short, &long] {
                assert!(!message.contains(material.as_str()), "{message}");
                assert!(!message.contains(&material[..8]), "{message}");
            }
        }
    }
}
