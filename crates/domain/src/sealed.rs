//! Opaque sealed (encrypted) values and the context that binds them to their place.

use std::fmt;

/// Ciphertext produced by the cipher port. The domain never looks inside; the store
/// keeps the bytes as they are.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// Where a sealed value lives. The cipher authenticates it as associated data, so a
/// value copied into another project, record or field fails to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealContext {
    /// The owning project; `*` for records that belong to no project (global OAuth clients).
    pub project: String,
    /// The id of the owning record (connection, OAuth client, authorization session).
    pub record: String,
    /// The field of that record.
    pub field: &'static str,
}

impl SealContext {
    /// The context of `field` of `record` in `project`.
    pub fn new(project: impl Into<String>, record: impl ToString, field: &'static str) -> Self {
        Self {
            project: project.into(),
            record: record.to_string(),
            field,
        }
    }

    /// The associated-data bytes: length-prefixed so that no two contexts collide.
    pub fn to_aad(&self) -> Vec<u8> {
        let mut out = b"latchkey/v1".to_vec();
        for part in [
            self.project.as_bytes(),
            self.record.as_bytes(),
            self.field.as_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// The sealed fields of records, named once so that seal and open agree.
pub mod fields {
    /// A connection's secret configuration fields.
    pub const SECRETS: &str = "secrets";
    /// A grant's access token.
    pub const ACCESS_TOKEN: &str = "access_token";
    /// A grant's refresh token.
    pub const REFRESH_TOKEN: &str = "refresh_token";
    /// A consent flow's PKCE verifier.
    pub const PKCE_VERIFIER: &str = "pkce_verifier";
    /// A registered OAuth client's secret.
    pub const CLIENT_SECRET: &str = "client_secret";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_is_unambiguous() {
        let a = SealContext::new("ab", "c", "secrets").to_aad();
        let b = SealContext::new("a", "bc", "secrets").to_aad();
        assert_ne!(a, b);
    }

    #[test]
    fn debug_hides_bytes() {
        assert_eq!(format!("{:?}", Sealed(vec![1, 2, 3])), "Sealed(3 bytes)");
    }
}
