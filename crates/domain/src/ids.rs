//! Identifiers. Random ids are built from bytes the caller supplies, so the domain
//! stays deterministic under test.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DomainError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Builds a version 4 id from 16 random bytes.
            pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
                Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
            }
            /// The id holding `uuid`.
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
            /// The UUID inside.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| DomainError::InvalidId { what: $label, value: crate::error::echoed(s) })
            }
        }
    };
}

uuid_id!(
    /// Identifies a connection, globally.
    ConnectionId,
    "connection id"
);
uuid_id!(
    /// Identifies a reusable OAuth client registration.
    OAuthClientId,
    "oauth2 client id"
);
uuid_id!(
    /// Identifies an access key; the key's secret half is never stored.
    AccessKeyId,
    "access key id"
);
uuid_id!(
    /// Identifies one status-change event of a connection.
    EventId,
    "event id"
);

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks that `s` is a valid id of this kind.
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                let ok = !s.is_empty()
                    && s.len() <= 128
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(DomainError::InvalidId { what: $label, value: crate::error::echoed(s) })
                }
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

slug_id!(
    /// The project a connection belongs to. Chosen by the workflow engine: 1 to 128 of
    /// `A-Z a-z 0-9 - _ . :`.
    ProjectId,
    "project_id"
);
slug_id!(
    /// A workflow (flow) of a project that uses connections. Same alphabet as [`ProjectId`].
    FlowId,
    "flow_id"
);

/// Parses a UUID in its 32-hex-digit simple form (as used inside access keys).
pub fn parse_simple_uuid(s: &str) -> Result<Uuid, DomainError> {
    if s.len() != 32 {
        return Err(DomainError::InvalidId {
            what: "key id",
            value: crate::error::echoed(s),
        });
    }
    Uuid::try_parse(s).map_err(|_| DomainError::InvalidId {
        what: "key id",
        value: crate::error::echoed(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_bytes_are_v4_and_round_trip() {
        let id = ConnectionId::from_random_bytes([7; 16]);
        assert_eq!(id.as_uuid().get_version_num(), 4);
        assert_eq!(id.to_string().parse::<ConnectionId>().unwrap(), id);
    }

    #[test]
    fn project_ids_are_validated() {
        for (input, ok) in [
            ("proj-1", true),
            ("a", true),
            ("org:proj_2.x", true),
            ("", false),
            ("has space", false),
            ("ünïcode", false),
            (&"x".repeat(129), false),
        ] {
            assert_eq!(ProjectId::parse(input).is_ok(), ok, "{input:?}");
        }
        assert!("not-a-uuid".parse::<ConnectionId>().is_err());
    }
}
