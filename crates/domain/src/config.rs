//! A connection's configuration, typed. It comes in as JSON, is validated once per type
//! by [`parse_config`] and split into [`ConnectionConfig`], the part that is kept and shown
//! back, and [`SecretFields`], the part that is sealed. By concern: custom fields
//! (`custom.rs`), OAuth settings (`oauth_settings.rs`), the rules for URLs
//! (`url_policy.rs`), and reading JSON fields with their paths (`fields.rs`).

mod custom;
mod fields;
mod oauth_settings;
mod url_policy;

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use crate::connection::ConnectionType;
use crate::DomainError;
use fields::{only_keys, required_string};

pub use custom::{CustomField, CustomFields, MAX_CUSTOM_FIELDS, MAX_FIELD_NAME_LEN};
pub use fields::MAX_FIELD_CHARS;
pub use oauth_settings::{
    OAuthSettings, ENDPOINT_FIELDS, REGISTRATION_FIELDS, RESERVED_AUTHORIZATION_PARAMS,
};
pub use url_policy::{is_loopback, scheme_allowed, UrlPolicy};

/// Secret configuration values by field name. Serialized only on purpose, for sealing.
#[derive(Debug, Default, Clone)]
pub struct SecretFields(pub BTreeMap<String, SecretString>);

impl SecretFields {
    /// The secret value of field `name`.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.0.get(name)
    }

    /// Whether there is no secret at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The plaintext JSON to seal. The result holds secrets: keep it in a secret type.
    pub fn to_plaintext_json(&self) -> Vec<u8> {
        let map: Map<String, Value> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.expose_secret().to_owned())))
            .collect();
        // Serializing a map of strings cannot fail.
        serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
    }

    /// Reads back what [`SecretFields::to_plaintext_json`] wrote, once opened.
    pub fn from_plaintext_json(bytes: &[u8]) -> Result<Self, DomainError> {
        let map: BTreeMap<String, String> = serde_json::from_slice(bytes).map_err(|_| {
            DomainError::field("secrets", "sealed secrets are not a JSON object of strings")
        })?;
        Ok(Self(
            map.into_iter()
                .map(|(k, v)| (k, SecretString::from(v)))
                .collect(),
        ))
    }
}

/// The non-secret configuration of a connection, by type: what the store keeps in the
/// `config` column and the management API shows back. Secrets are never part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// Most connections are OAuth ones, so boxing the large variant would save little.
#[allow(clippy::large_enum_variant)]
pub enum ConnectionConfig {
    /// An API key: the key is sealed, nothing is shown.
    ApiKey,
    /// HTTP basic authentication: the password is sealed.
    Basic {
        /// Shown back and handed out with the password.
        username: String,
    },
    /// Named fields, the secret ones sealed.
    Custom(CustomFields),
    /// An OAuth connection's settings (an inline client secret is sealed).
    OAuth(OAuthSettings),
}

impl ConnectionConfig {
    /// The OAuth settings, for an OAuth connection.
    pub fn oauth(&self) -> Option<&OAuthSettings> {
        match self {
            ConnectionConfig::OAuth(s) => Some(s),
            _ => None,
        }
    }

    /// The username, for a basic-auth connection.
    pub fn username(&self) -> Option<&str> {
        match self {
            ConnectionConfig::Basic { username } => Some(username),
            _ => None,
        }
    }

    /// The fields, for a custom connection.
    pub fn custom_fields(&self) -> Option<&CustomFields> {
        match self {
            ConnectionConfig::Custom(f) => Some(f),
            _ => None,
        }
    }

    /// The JSON the store keeps and the management API shows.
    pub fn to_public_json(&self) -> Value {
        match self {
            ConnectionConfig::ApiKey => json!({}),
            ConnectionConfig::Basic { username } => json!({ "username": username }),
            ConnectionConfig::Custom(fields) => fields.to_public_json(),
            ConnectionConfig::OAuth(settings) => settings.to_public_json(),
        }
    }

    /// Reads back what [`ConnectionConfig::to_public_json`] wrote for a connection of
    /// `kind` (from the store).
    pub fn from_public_json(kind: ConnectionType, config: &Value) -> Result<Self, DomainError> {
        Ok(match kind {
            ConnectionType::ApiKey => ConnectionConfig::ApiKey,
            ConnectionType::Basic => ConnectionConfig::Basic {
                username: config
                    .get("username")
                    .and_then(Value::as_str)
                    .ok_or_else(|| DomainError::field("config.username", "is not stored"))?
                    .to_owned(),
            },
            ConnectionType::Custom => {
                ConnectionConfig::Custom(CustomFields::from_public_json(config)?)
            }
            ConnectionType::OAuth(_) => {
                ConnectionConfig::OAuth(OAuthSettings::from_public_json(config))
            }
        })
    }
}

impl serde::Serialize for ConnectionConfig {
    /// As [`ConnectionConfig::to_public_json`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_public_json().serialize(s)
    }
}

/// A validated configuration, split.
#[derive(Debug, Clone)]
pub struct ParsedConfig {
    /// Kept, and shown back by the management API.
    pub config: ConnectionConfig,
    /// Sealed before storage.
    pub secrets: SecretFields,
}

/// Validates `config` for a connection of `kind`. For an OAuth type, an
/// `oauth2_client_id` key (any non-null value) says the connection runs on a registered
/// client, which then owns the client id, secret and endpoints.
pub fn parse_config(
    kind: ConnectionType,
    config: &Value,
    urls: &UrlPolicy,
) -> Result<ParsedConfig, DomainError> {
    let obj = config
        .as_object()
        .ok_or_else(|| DomainError::field("config", "must be a JSON object"))?;
    let (config, secrets) = match kind {
        ConnectionType::ApiKey => {
            only_keys(obj, "config", &["api_key"])?;
            let key = required_string(obj, "config", "api_key")?;
            (
                ConnectionConfig::ApiKey,
                SecretFields([("api_key".to_owned(), SecretString::from(key))].into()),
            )
        }
        ConnectionType::Basic => {
            only_keys(obj, "config", &["username", "password"])?;
            let username = required_string(obj, "config", "username")?;
            let password = required_string(obj, "config", "password")?;
            (
                ConnectionConfig::Basic { username },
                SecretFields([("password".to_owned(), SecretString::from(password))].into()),
            )
        }
        ConnectionType::Custom => {
            let (fields, secrets) = custom::parse_custom(obj)?;
            (ConnectionConfig::Custom(fields), secrets)
        }
        ConnectionType::OAuth(provider) => {
            let (settings, secrets) = oauth_settings::parse_oauth(provider, obj, urls)?;
            (ConnectionConfig::OAuth(settings), secrets)
        }
    };
    Ok(ParsedConfig { config, secrets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: &str, config: Value) -> Result<ParsedConfig, DomainError> {
        parse_config(kind.parse().unwrap(), &config, &UrlPolicy::default())
    }

    #[test]
    fn simple_types_split_public_and_secret() {
        let p = parse("api_key", json!({"api_key": "sk-1"})).unwrap();
        assert_eq!(p.config.to_public_json(), json!({}));
        assert_eq!(p.secrets.get("api_key").unwrap().expose_secret(), "sk-1");

        let p = parse("basic", json!({"username": "u", "password": "pw"})).unwrap();
        assert_eq!(p.config.to_public_json(), json!({"username": "u"}));
        assert_eq!(p.secrets.get("password").unwrap().expose_secret(), "pw");

        let p = parse(
            "custom",
            json!({"fields": {"host": {"value": "db.local", "secret": false}, "token": {"value": "t0k"}}}),
        )
        .unwrap();
        assert_eq!(
            p.config.to_public_json(),
            json!({"fields": {"host": {"value": "db.local", "secret": false}, "token": {"secret": true}}})
        );
        assert_eq!(p.secrets.get("token").unwrap().expose_secret(), "t0k");
        assert!(!p.config.to_public_json().to_string().contains("t0k"));
    }

    #[test]
    fn the_stored_form_reads_back_as_written() {
        for (kind, config) in [
            ("api_key", json!({"api_key": "k"})),
            ("basic", json!({"username": "ü", "password": "pw"})),
            (
                "custom",
                json!({"fields": {"host": {"value": "db", "secret": false}, "token": {"value": "t"}}}),
            ),
            (
                "oauth2",
                json!({"scopes": ["a"], "oauth2_config": {"client_id": "c", "issuer": "https://i.example", "pkce": false}}),
            ),
            ("google", json!({})),
        ] {
            let kind: ConnectionType = kind.parse().unwrap();
            let p = parse_config(kind, &config, &UrlPolicy::default()).unwrap();
            let stored = serde_json::to_value(&p.config).unwrap();
            assert_eq!(stored, p.config.to_public_json());
            let back = ConnectionConfig::from_public_json(kind, &stored).unwrap();
            assert_eq!(back, p.config, "{kind}");
        }
        // A row whose config does not fit its type is reported, not guessed at.
        assert!(ConnectionConfig::from_public_json(ConnectionType::Basic, &json!({})).is_err());
        assert!(ConnectionConfig::from_public_json(
            ConnectionType::Custom,
            &json!({"fields": {"a": {}}})
        )
        .is_err());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let table: &[(&str, Value, &str)] = &[
            ("api_key", json!({}), "config.api_key: is required"),
            (
                "api_key",
                json!({"api_key": ""}),
                "config.api_key: must not be empty",
            ),
            (
                "api_key",
                json!({"api_key": 5}),
                "config.api_key: must be a string",
            ),
            (
                "api_key",
                json!({"api_key": "k", "extra": 1}),
                "config.extra: unknown field",
            ),
            ("api_key", json!([]), "config: must be a JSON object"),
            (
                "basic",
                json!({"username": "u"}),
                "config.password: is required",
            ),
            (
                "custom",
                json!({"fields": {}}),
                "config.fields: must contain at least one field",
            ),
            ("custom", json!({}), "config.fields: is required"),
            (
                "custom",
                json!({"fields": {"a b": {"value": "x"}}}),
                "config.fields.a b: field names",
            ),
            (
                "custom",
                json!({"fields": {"a": {"value": "x", "secret": "yes"}}}),
                "config.fields.a.secret",
            ),
            (
                "custom",
                json!({"fields": {"a": "x"}}),
                "config.fields.a: must be an object",
            ),
            (
                "oauth2",
                json!({"oauth2_config": {}}),
                "config.oauth2_config.client_id: is required",
            ),
            (
                "oauth2",
                json!({"oauth2_config": {"client_id": "c", "token_endpoint": "https://t"}}),
                "config.oauth2_config.authorization_endpoint: is required unless issuer",
            ),
            (
                "oauth2",
                json!({"oauth2_config": {"client_id": "c", "issuer": "http://idp.example"}}),
                "config.oauth2_config.issuer: must use https",
            ),
            (
                "oauth2",
                json!({"oauth2_config": {"client_id": "c", "issuer": "https://i", "token_endpoint_auth_method": "client_secret_jwt"}}),
                "token_endpoint_auth_method: unknown method",
            ),
            (
                "oauth2",
                json!({"oauth2_config": {"client_id": "c", "issuer": "https://i", "token_endpoint_auth_method": "client_secret_basic"}}),
                "client_secret: is required by the chosen",
            ),
            (
                "google",
                json!({"oauth2_config": {"token_endpoint": "https://evil"}}),
                "config.oauth2_config.token_endpoint: a google connection uses google's own endpoints",
            ),
            (
                "google",
                json!({"scopes": "a b"}),
                "config.scopes: must be an array",
            ),
            (
                "google",
                json!({"scopes": ["a b"]}),
                "config.scopes: each scope",
            ),
            (
                "google",
                json!({"oauth2_config": {"extra_authorization_params": {"state": "x"}}}),
                "cannot be overridden",
            ),
        ];
        for (kind, config, want) in table {
            let err = parse(kind, config.clone()).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{kind} {config}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn secret_fields_round_trip_through_plaintext_json() {
        let p = parse("basic", json!({"username": "u", "password": "pw"})).unwrap();
        let back = SecretFields::from_plaintext_json(&p.secrets.to_plaintext_json()).unwrap();
        assert_eq!(back.get("password").unwrap().expose_secret(), "pw");
        assert!(!format!("{back:?}").contains("pw"));
    }
}
