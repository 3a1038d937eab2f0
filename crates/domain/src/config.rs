//! Validation of a connection's `config` per type, splitting it into the part that is
//! shown back (public) and the part that is sealed (secrets).

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use crate::connection::ConnectionType;
use crate::provider::{Provider, TokenAuthMethod};
use crate::DomainError;

const MAX_FIELD_CHARS: usize = 8192;
const MAX_CUSTOM_FIELDS: usize = 64;

/// Secret configuration values by field name. Serialized only on purpose, for sealing.
#[derive(Debug, Default, Clone)]
pub struct SecretFields(pub BTreeMap<String, SecretString>);

impl SecretFields {
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.0.get(name)
    }

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

/// The non-secret OAuth settings of a connection (or of a reusable client).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuthSettings {
    /// `None`: use the provider's default scopes.
    pub scopes: Option<Vec<String>>,
    pub client_id: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub redirect_uri: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub issuer: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub token_endpoint_auth_method: Option<TokenAuthMethod>,
    pub extra_authorization_params: BTreeMap<String, String>,
    pub pkce: Option<bool>,
    /// Microsoft's tenant (`common` by default).
    pub tenant: Option<String>,
}

impl OAuthSettings {
    /// Reads back what [`OAuthSettings::to_public_json`] wrote (from the store).
    pub fn from_public_json(config: &Value) -> Self {
        let o = config.get("oauth2_config").cloned().unwrap_or(Value::Null);
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        Self {
            scopes: config.get("scopes").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            }),
            client_id: s("client_id"),
            authorization_endpoint: s("authorization_endpoint"),
            token_endpoint: s("token_endpoint"),
            redirect_uri: s("redirect_uri"),
            userinfo_endpoint: s("userinfo_endpoint"),
            issuer: s("issuer"),
            revocation_endpoint: s("revocation_endpoint"),
            token_endpoint_auth_method: s("token_endpoint_auth_method")
                .and_then(|m| m.parse().ok()),
            extra_authorization_params: o
                .get("extra_authorization_params")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
            pkce: o.get("pkce").and_then(Value::as_bool),
            tenant: s("tenant"),
        }
    }

    pub fn to_public_json(&self) -> Value {
        let mut o = Map::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                o.insert(k.to_owned(), Value::String(v.clone()));
            }
        };
        put("client_id", &self.client_id);
        put("authorization_endpoint", &self.authorization_endpoint);
        put("token_endpoint", &self.token_endpoint);
        put("redirect_uri", &self.redirect_uri);
        put("userinfo_endpoint", &self.userinfo_endpoint);
        put("issuer", &self.issuer);
        put("revocation_endpoint", &self.revocation_endpoint);
        put("tenant", &self.tenant);
        if let Some(m) = self.token_endpoint_auth_method {
            o.insert("token_endpoint_auth_method".into(), json!(m.as_str()));
        }
        if !self.extra_authorization_params.is_empty() {
            o.insert(
                "extra_authorization_params".into(),
                json!(self.extra_authorization_params),
            );
        }
        if let Some(p) = self.pkce {
            o.insert("pkce".into(), json!(p));
        }
        let mut top = Map::new();
        if let Some(scopes) = &self.scopes {
            top.insert("scopes".into(), json!(scopes));
        }
        top.insert("oauth2_config".into(), Value::Object(o));
        Value::Object(top)
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct ParsedConfig {
    /// Shown back by the management API.
    pub public: Value,
    /// Sealed before storage.
    pub secrets: SecretFields,
    /// For OAuth types.
    pub oauth: Option<OAuthSettings>,
}

/// Rules for URLs in configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlPolicy {
    /// Permit `http://` to loopback addresses (tests, local development).
    pub allow_insecure_loopback: bool,
}

impl UrlPolicy {
    pub fn check(&self, field: &str, raw: &str) -> Result<url::Url, DomainError> {
        let u = url::Url::parse(raw)
            .map_err(|e| DomainError::field(field, format!("not a valid URL: {e}")))?;
        match u.scheme() {
            "https" => Ok(u),
            "http" if self.allow_insecure_loopback && is_loopback(&u) => Ok(u),
            "http" => Err(DomainError::field(
                field,
                "must use https (plain http is allowed only for loopback addresses when LATCHKEY_ALLOW_INSECURE_LOOPBACK=true)",
            )),
            other => Err(DomainError::field(field, format!("unsupported URL scheme {other:?}"))),
        }
    }
}

/// Whether a URL points at this machine.
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Validates `config` for a connection of `kind`.
pub fn parse_config(
    kind: ConnectionType,
    config: &Value,
    urls: UrlPolicy,
) -> Result<ParsedConfig, DomainError> {
    let obj = config
        .as_object()
        .ok_or_else(|| DomainError::field("config", "must be a JSON object"))?;
    match kind {
        ConnectionType::ApiKey => {
            only_keys(obj, "config", &["api_key"])?;
            let key = required_string(obj, "config", "api_key")?;
            Ok(ParsedConfig {
                public: json!({}),
                secrets: SecretFields([("api_key".to_owned(), SecretString::from(key))].into()),
                oauth: None,
            })
        }
        ConnectionType::Basic => {
            only_keys(obj, "config", &["username", "password"])?;
            let username = required_string(obj, "config", "username")?;
            let password = required_string(obj, "config", "password")?;
            Ok(ParsedConfig {
                public: json!({ "username": username }),
                secrets: SecretFields(
                    [("password".to_owned(), SecretString::from(password))].into(),
                ),
                oauth: None,
            })
        }
        ConnectionType::Custom => parse_custom(obj),
        ConnectionType::OAuth(provider) => parse_oauth(provider, obj, urls),
    }
}

fn parse_custom(obj: &Map<String, Value>) -> Result<ParsedConfig, DomainError> {
    only_keys(obj, "config", &["fields"])?;
    let fields = obj
        .get("fields")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            DomainError::field(
                "config.fields",
                "is required and must be an object of fields",
            )
        })?;
    if fields.is_empty() {
        return Err(DomainError::field(
            "config.fields",
            "must contain at least one field",
        ));
    }
    if fields.len() > MAX_CUSTOM_FIELDS {
        return Err(DomainError::field("config.fields", "at most 64 fields"));
    }
    let mut public = Map::new();
    let mut secrets = BTreeMap::new();
    for (name, spec) in fields {
        let path = format!("config.fields.{name}");
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(DomainError::field(
                &path,
                "field names are 1 to 64 of A-Z a-z 0-9 _ -",
            ));
        }
        let spec = spec.as_object().ok_or_else(|| {
            DomainError::field(
                &path,
                r#"must be an object like {"value": "...", "secret": true}"#,
            )
        })?;
        only_keys(spec, &path, &["value", "secret"])?;
        let value = required_string(spec, &path, "value")?;
        // Secret unless said otherwise: a forgotten flag must not leak a value.
        let secret = match spec.get("secret") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(DomainError::field(
                    format!("{path}.secret"),
                    "must be true or false",
                ))
            }
        };
        if secret {
            public.insert(name.clone(), json!({ "secret": true }));
            secrets.insert(name.clone(), SecretString::from(value));
        } else {
            public.insert(name.clone(), json!({ "value": value, "secret": false }));
        }
    }
    Ok(ParsedConfig {
        public: json!({ "fields": public }),
        secrets: SecretFields(secrets),
        oauth: None,
    })
}

fn parse_oauth(
    provider: Provider,
    obj: &Map<String, Value>,
    urls: UrlPolicy,
) -> Result<ParsedConfig, DomainError> {
    only_keys(
        obj,
        "config",
        &["scopes", "oauth2_config", "oauth2_client_id"],
    )?;
    let scopes = match obj.get("scopes") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for s in a {
                let s = s
                    .as_str()
                    .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
                    .ok_or_else(|| {
                        DomainError::field(
                            "config.scopes",
                            "each scope must be a non-empty string without spaces",
                        )
                    })?;
                if !out.iter().any(|o: &String| o == s) {
                    out.push(s.to_owned());
                }
            }
            Some(out)
        }
        Some(_) => {
            return Err(DomainError::field(
                "config.scopes",
                "must be an array of strings",
            ))
        }
    };
    let empty = Map::new();
    let oc = match obj.get("oauth2_config") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(DomainError::field(
                "config.oauth2_config",
                "must be an object",
            ))
        }
    };
    let generic = provider == Provider::Generic;
    let allowed: &[&str] = if generic {
        &[
            "client_id",
            "client_secret",
            "authorization_endpoint",
            "token_endpoint",
            "redirect_uri",
            "userinfo_endpoint",
            "issuer",
            "revocation_endpoint",
            "token_endpoint_auth_method",
            "extra_authorization_params",
            "pkce",
        ]
    } else {
        &[
            "client_id",
            "client_secret",
            "redirect_uri",
            "tenant",
            "extra_authorization_params",
        ]
    };
    only_keys(oc, "config.oauth2_config", allowed)?;
    let p = "config.oauth2_config";
    let url_field = |k: &str| -> Result<Option<String>, DomainError> {
        optional_string(oc, p, k)?
            .map(|v| urls.check(&format!("{p}.{k}"), &v).map(|u| u.to_string()))
            .transpose()
    };
    // Identifiers the provider compares as exact strings (RFC 8414 §3.3, RFC 9207 §2.4,
    // RFC 6749 §3.1.2.3): checked like any URL but kept verbatim, since normalizing
    // would append a "/" to "https://idp.example" and make every comparison fail.
    let identifier_field = |k: &str| -> Result<Option<String>, DomainError> {
        optional_string(oc, p, k)?
            .map(|v| {
                urls.check(&format!("{p}.{k}"), &v)
                    .map(|_| v.trim().to_owned())
            })
            .transpose()
    };
    let mut settings = OAuthSettings {
        scopes,
        client_id: optional_string(oc, p, "client_id")?,
        authorization_endpoint: url_field("authorization_endpoint")?,
        token_endpoint: url_field("token_endpoint")?,
        redirect_uri: identifier_field("redirect_uri")?,
        userinfo_endpoint: url_field("userinfo_endpoint")?,
        issuer: identifier_field("issuer")?,
        revocation_endpoint: url_field("revocation_endpoint")?,
        token_endpoint_auth_method: optional_string(oc, p, "token_endpoint_auth_method")?
            .map(|m| m.parse())
            .transpose()?,
        extra_authorization_params: BTreeMap::new(),
        pkce: match oc.get("pkce") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(DomainError::field(
                    format!("{p}.pkce"),
                    "must be true or false",
                ))
            }
        },
        tenant: optional_string(oc, p, "tenant")?,
    };
    if let Some(t) = &settings.tenant {
        if !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(DomainError::field(
                format!("{p}.tenant"),
                "must be a tenant id or domain name",
            ));
        }
    }
    if let Some(extra) = oc.get("extra_authorization_params") {
        let m = extra.as_object().ok_or_else(|| {
            DomainError::field(
                format!("{p}.extra_authorization_params"),
                "must be an object of strings",
            )
        })?;
        for (k, v) in m {
            let v = v.as_str().ok_or_else(|| {
                DomainError::field(
                    format!("{p}.extra_authorization_params.{k}"),
                    "must be a string",
                )
            })?;
            if RESERVED_AUTHORIZATION_PARAMS.contains(&k.as_str()) {
                return Err(DomainError::field(
                    format!("{p}.extra_authorization_params.{k}"),
                    "is set by Latchkey and cannot be overridden",
                ));
            }
            settings
                .extra_authorization_params
                .insert(k.clone(), v.to_owned());
        }
    }
    let client_secret = optional_string(oc, p, "client_secret")?;
    let client_ref = obj
        .get("oauth2_client_id")
        .filter(|v| !v.is_null())
        .is_some();
    if generic && !client_ref {
        if settings.client_id.is_none() {
            return Err(DomainError::field(
                format!("{p}.client_id"),
                "is required for an oauth2 connection (or name a registered client with oauth2_client_id)",
            ));
        }
        if settings.issuer.is_none() {
            for k in ["authorization_endpoint", "token_endpoint"] {
                if oc.get(k).is_none() {
                    return Err(DomainError::field(
                        format!("{p}.{k}"),
                        "is required unless issuer is given (then it comes from the issuer's discovery document)",
                    ));
                }
            }
        }
    }
    if client_secret.is_some() && settings.client_id.is_none() {
        return Err(DomainError::field(
            format!("{p}.client_secret"),
            "needs a client_id beside it",
        ));
    }
    if settings
        .token_endpoint_auth_method
        .is_some_and(|m| m != TokenAuthMethod::None)
        && client_secret.is_none()
        && !client_ref
    {
        return Err(DomainError::field(
            format!("{p}.client_secret"),
            "is required by the chosen token_endpoint_auth_method",
        ));
    }
    let mut secrets = BTreeMap::new();
    if let Some(s) = client_secret {
        secrets.insert("client_secret".to_owned(), SecretString::from(s));
    }
    Ok(ParsedConfig {
        public: settings.to_public_json(),
        secrets: SecretFields(secrets),
        oauth: Some(settings),
    })
}

/// Parameters of the consent URL that Latchkey owns.
pub const RESERVED_AUTHORIZATION_PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

fn only_keys(obj: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), DomainError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(DomainError::field(
                format!("{path}.{k}"),
                format!("unknown field; accepted: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn required_string(obj: &Map<String, Value>, path: &str, key: &str) -> Result<String, DomainError> {
    optional_string(obj, path, key)?
        .ok_or_else(|| DomainError::field(format!("{path}.{key}"), "is required"))
}

fn optional_string(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, DomainError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(DomainError::field(
            format!("{path}.{key}"),
            "must not be empty",
        )),
        Some(Value::String(s)) if s.chars().count() > MAX_FIELD_CHARS => Err(DomainError::field(
            format!("{path}.{key}"),
            "is too long (at most 8192 characters)",
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(DomainError::field(
            format!("{path}.{key}"),
            "must be a string",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: &str, config: Value) -> Result<ParsedConfig, DomainError> {
        parse_config(kind.parse().unwrap(), &config, UrlPolicy::default())
    }

    #[test]
    fn simple_types_split_public_and_secret() {
        let p = parse("api_key", json!({"api_key": "sk-1"})).unwrap();
        assert_eq!(p.public, json!({}));
        assert_eq!(p.secrets.get("api_key").unwrap().expose_secret(), "sk-1");

        let p = parse("basic", json!({"username": "u", "password": "pw"})).unwrap();
        assert_eq!(p.public, json!({"username": "u"}));
        assert_eq!(p.secrets.get("password").unwrap().expose_secret(), "pw");

        let p = parse(
            "custom",
            json!({"fields": {"host": {"value": "db.local", "secret": false}, "token": {"value": "t0k"}}}),
        )
        .unwrap();
        assert_eq!(
            p.public,
            json!({"fields": {"host": {"value": "db.local", "secret": false}, "token": {"secret": true}}})
        );
        assert_eq!(p.secrets.get("token").unwrap().expose_secret(), "t0k");
        assert!(!p.public.to_string().contains("t0k"));
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
                "config.oauth2_config.token_endpoint: unknown field",
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
    fn oauth_config_keeps_client_secret_out_of_public() {
        let p = parse(
            "dynamiq.connections.OAuth2",
            json!({
                "scopes": ["openid", "openid", "email"],
                "oauth2_config": {
                    "client_id": "cid",
                    "client_secret": "shh",
                    "authorization_endpoint": "https://idp.example/auth",
                    "token_endpoint": "https://idp.example/token",
                    "pkce": false,
                    "extra_authorization_params": {"audience": "api"}
                }
            }),
        )
        .unwrap();
        assert!(!p.public.to_string().contains("shh"));
        assert_eq!(
            p.secrets.get("client_secret").unwrap().expose_secret(),
            "shh"
        );
        let o = p.oauth.unwrap();
        assert_eq!(
            o.scopes.as_deref(),
            Some(&["openid".to_owned(), "email".to_owned()][..])
        );
        assert_eq!(OAuthSettings::from_public_json(&p.public), o);
    }

    #[test]
    fn loopback_http_only_when_allowed() {
        let allow = UrlPolicy {
            allow_insecure_loopback: true,
        };
        assert!(allow.check("u", "http://127.0.0.1:9/x").is_ok());
        assert!(allow.check("u", "http://localhost/x").is_ok());
        assert!(allow.check("u", "http://[::1]/x").is_ok());
        assert!(allow.check("u", "http://10.0.0.1/x").is_err());
        assert!(UrlPolicy::default()
            .check("u", "http://127.0.0.1/x")
            .is_err());
        assert!(allow.check("u", "ftp://127.0.0.1/x").is_err());
        assert!(allow.check("u", "not a url").is_err());
    }

    #[test]
    fn issuer_and_redirect_uri_are_kept_verbatim() {
        // Compared as exact strings by the provider and by discovery: no "/" appended.
        let p = parse(
            "oauth2",
            json!({"oauth2_config": {"client_id": "c", "issuer": "https://idp.example", "redirect_uri": "https://cb.example", "token_endpoint": "https://idp.example"}}),
        )
        .unwrap();
        let o = p.oauth.unwrap();
        assert_eq!(o.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(o.redirect_uri.as_deref(), Some("https://cb.example"));
        assert_eq!(o.token_endpoint.as_deref(), Some("https://idp.example/"));
    }

    #[test]
    fn secret_fields_round_trip_through_plaintext_json() {
        let p = parse("basic", json!({"username": "u", "password": "pw"})).unwrap();
        let back = SecretFields::from_plaintext_json(&p.secrets.to_plaintext_json()).unwrap();
        assert_eq!(back.get("password").unwrap().expose_secret(), "pw");
        assert!(!format!("{back:?}").contains("pw"));
    }
}
