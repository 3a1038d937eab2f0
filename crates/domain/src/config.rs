//! Validation of a connection's `config` per type, splitting it into the part that is
//! shown back (public) and the part that is sealed (secrets).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use crate::connection::ConnectionType;
use crate::net::{is_localhost_name, AddressClass, AddressRules, IpNet};
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

/// Rules for URLs in configuration, and for the addresses behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Permit loopback addresses, and `http://` to them (tests, local development).
    pub allow_insecure_loopback: bool,
    /// Non-public ranges opened by the operator (`LATCHKEY_ALLOW_PRIVATE_NETWORKS`).
    pub private_networks: Vec<IpNet>,
}

impl UrlPolicy {
    /// The address rules every connection to a provider is held to.
    pub fn address_rules(&self) -> AddressRules {
        AddressRules {
            allow_loopback: self.allow_insecure_loopback,
            allowed_networks: self.private_networks.clone(),
        }
    }

    /// A URL Latchkey will connect to: https (http only to loopback when allowed), and a
    /// host that is not a non-public address literal. Names are checked after resolution,
    /// at connection time, by the adapter.
    pub fn check(&self, field: &str, raw: &str) -> Result<url::Url, DomainError> {
        let u = self.check_scheme(field, raw)?;
        self.check_host(field, &u)?;
        Ok(u)
    }

    /// A URL Latchkey only hands out (a redirect URI): the scheme rule alone, since no
    /// connection is made to it.
    pub fn check_scheme(&self, field: &str, raw: &str) -> Result<url::Url, DomainError> {
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

    fn check_host(&self, field: &str, u: &url::Url) -> Result<(), DomainError> {
        let rules = self.address_rules();
        let refused = |host: &str, class: AddressClass| {
            DomainError::AddressNotAllowed {
            field: field.to_owned(),
            reason: format!(
                "{host} is {}; Latchkey connects only to public addresses (an operator can open a range with LATCHKEY_ALLOW_PRIVATE_NETWORKS)",
                class.an_address()
            ),
        }
        };
        match u.host() {
            Some(url::Host::Ipv4(ip)) => rules
                .check(IpAddr::V4(ip))
                .map_err(|class| refused(&ip.to_string(), class)),
            Some(url::Host::Ipv6(ip)) => rules
                .check(IpAddr::V6(ip))
                .map_err(|class| refused(&format!("[{ip}]"), class)),
            Some(url::Host::Domain(name)) if is_localhost_name(name) => {
                // RFC 6761: these names are loopback whatever a resolver says.
                rules
                    .check(IpAddr::V4(Ipv4Addr::LOCALHOST))
                    .map_err(|class| refused(name, class))
            }
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(DomainError::field(field, "has no host")),
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
    urls: &UrlPolicy,
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
    urls: &UrlPolicy,
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
    let client_ref = obj
        .get("oauth2_client_id")
        .filter(|v| !v.is_null())
        .is_some();
    refuse_foreign_registration_fields(provider, oc, client_ref)?;
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
    // would append a "/" to "https://idp.example" and make every comparison fail. The
    // issuer is connected to (discovery); the redirect URI only handed out.
    let identifier_field = |k: &str, connected: bool| -> Result<Option<String>, DomainError> {
        optional_string(oc, p, k)?
            .map(|v| {
                let field = format!("{p}.{k}");
                let checked = if connected {
                    urls.check(&field, &v)
                } else {
                    urls.check_scheme(&field, &v)
                };
                checked.map(|_| v.trim().to_owned())
            })
            .transpose()
    };
    let mut settings = OAuthSettings {
        scopes,
        client_id: optional_string(oc, p, "client_id")?,
        authorization_endpoint: url_field("authorization_endpoint")?,
        token_endpoint: url_field("token_endpoint")?,
        redirect_uri: identifier_field("redirect_uri", false)?,
        userinfo_endpoint: url_field("userinfo_endpoint")?,
        issuer: identifier_field("issuer", true)?,
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

/// Where a client registration's codes and secret go, and how it authenticates.
pub const ENDPOINT_FIELDS: [&str; 6] = [
    "authorization_endpoint",
    "token_endpoint",
    "userinfo_endpoint",
    "revocation_endpoint",
    "issuer",
    "token_endpoint_auth_method",
];

/// What a client registration owns: its identity, its secret and every endpoint.
pub const REGISTRATION_FIELDS: [&str; 9] = [
    "client_id",
    "client_secret",
    "redirect_uri",
    "authorization_endpoint",
    "token_endpoint",
    "userinfo_endpoint",
    "revocation_endpoint",
    "issuer",
    "token_endpoint_auth_method",
];

/// A connection that runs on a registration it does not own (a registered client, the
/// deployment's app) must not choose where that registration's secret, codes or tokens
/// go, and a catalog provider's endpoints are the provider's.
fn refuse_foreign_registration_fields(
    provider: Provider,
    oc: &Map<String, Value>,
    client_ref: bool,
) -> Result<(), DomainError> {
    let p = "config.oauth2_config";
    let set = |k: &str| oc.get(k).is_some_and(|v| !v.is_null());
    if client_ref {
        if let Some(k) = REGISTRATION_FIELDS.iter().find(|k| set(k)) {
            return Err(DomainError::config(
                format!("{p}.{k}"),
                "comes from the registered client named by oauth2_client_id; a connection that uses a registered client cannot set its own",
            ));
        }
    }
    if provider != Provider::Generic {
        if let Some(k) = ENDPOINT_FIELDS.iter().find(|k| set(k)) {
            return Err(DomainError::config(
                format!("{p}.{k}"),
                format!("a {provider} connection uses {provider}'s own endpoints from the catalog; use type oauth2 for another server"),
            ));
        }
        if !client_ref && !set("client_id") && set("redirect_uri") {
            let up = provider.as_str().to_uppercase();
            return Err(DomainError::config(
                format!("{p}.redirect_uri"),
                format!("without a client_id of its own this connection runs on the deployment's app (LATCHKEY_OAUTH_{up}_CLIENT_ID), whose redirect URI is Latchkey's callback; give oauth2_config.client_id to use your own app"),
            ));
        }
    }
    Ok(())
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
        parse_config(kind.parse().unwrap(), &config, &UrlPolicy::default())
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
            ..UrlPolicy::default()
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

    fn parse_with(
        kind: &str,
        config: Value,
        urls: &UrlPolicy,
    ) -> Result<ParsedConfig, DomainError> {
        parse_config(kind.parse().unwrap(), &config, urls)
    }

    /// The marker the app puts in place of the registered client's id.
    fn on_registered_client(mut config: Value) -> Value {
        config["oauth2_client_id"] = json!(true);
        config
    }

    #[test]
    fn a_connection_on_a_registered_client_cannot_choose_where_its_secret_goes() {
        for kind in ["oauth2", "google", "microsoft", "github"] {
            for field in REGISTRATION_FIELDS {
                let value = match field {
                    "token_endpoint_auth_method" => "client_secret_post",
                    "client_id" | "client_secret" => "mine",
                    _ => "https://attacker.example/x",
                };
                let config = on_registered_client(json!({"oauth2_config": {field: value}}));
                let err = parse_with(kind, config, &UrlPolicy::default()).unwrap_err();
                let DomainError::InvalidConfig {
                    field: named,
                    reason,
                } = &err
                else {
                    panic!("{kind} {field}: {err:?}")
                };
                assert_eq!(named, &format!("config.oauth2_config.{field}"), "{kind}");
                assert!(
                    reason.contains("oauth2_client_id"),
                    "{kind} {field}: {reason}"
                );
            }
            // What stays the connection's own: its scopes and consent parameters.
            let ok = on_registered_client(json!({
                "scopes": ["openid"],
                "oauth2_config": {"extra_authorization_params": {"login_hint": "ada"}}
            }));
            parse_with(kind, ok, &UrlPolicy::default()).unwrap();
        }
    }

    #[test]
    fn a_catalog_connection_cannot_choose_endpoints_nor_redirect_the_deployment_app() {
        for kind in ["google", "microsoft", "dropbox", "box", "notion", "github"] {
            for field in ENDPOINT_FIELDS {
                for oc in [
                    json!({field: "https://attacker.example/x"}),
                    json!({"client_id": "c", "client_secret": "s", field: "https://attacker.example/x"}),
                ] {
                    let err = parse_with(kind, json!({"oauth2_config": oc}), &UrlPolicy::default())
                        .unwrap_err();
                    assert!(
                        matches!(&err, DomainError::InvalidConfig { field: f, .. } if f == &format!("config.oauth2_config.{field}")),
                        "{kind} {field}: {err:?}"
                    );
                }
            }
            // On the deployment's app: its redirect URI is Latchkey's callback.
            let err = parse_with(
                kind,
                json!({"oauth2_config": {"redirect_uri": "https://attacker.example/cb"}}),
                &UrlPolicy::default(),
            )
            .unwrap_err();
            assert!(
                matches!(&err, DomainError::InvalidConfig { field, reason } if field == "config.oauth2_config.redirect_uri" && reason.contains("deployment's app")),
                "{kind}: {err:?}"
            );
            // With an app of its own, the redirect URI is the connection's business.
            parse_with(
                kind,
                json!({"oauth2_config": {"client_id": "c", "client_secret": "s", "redirect_uri": "https://mine.example/cb"}}),
                &UrlPolicy::default(),
            )
            .unwrap();
        }
    }

    #[test]
    fn non_public_address_literals_are_refused_where_latchkey_connects() {
        let strict = UrlPolicy::default();
        let loopback = UrlPolicy {
            allow_insecure_loopback: true,
            ..UrlPolicy::default()
        };
        let internal = UrlPolicy {
            private_networks: crate::net::parse_networks("10.0.0.0/8,fd00::/8").unwrap(),
            ..UrlPolicy::default()
        };
        // (url, strict, with loopback allowed, with 10/8 and fd00::/8 opened)
        let table: &[(&str, bool, bool, bool)] = &[
            ("https://127.0.0.1/t", false, true, false),
            ("https://127.1.2.3/t", false, true, false),
            ("https://localhost/t", false, true, false),
            ("https://LOCALHOST./t", false, true, false),
            ("https://idp.localhost/t", false, true, false),
            ("https://[::1]/t", false, true, false),
            ("https://[::ffff:127.0.0.1]/t", false, true, false),
            ("https://0x7f.1/t", false, true, false),
            ("https://2130706433/t", false, true, false),
            ("https://10.0.0.1/t", false, false, true),
            ("https://[::ffff:10.0.0.1]/t", false, false, true),
            ("https://172.16.0.1/t", false, false, false),
            ("https://172.31.255.255/t", false, false, false),
            ("https://192.168.1.1/t", false, false, false),
            (
                "https://169.254.169.254/latest/meta-data",
                false,
                false,
                false,
            ),
            ("https://[fe80::1]/t", false, false, false),
            ("https://[fc00::1]/t", false, false, false),
            ("https://[fd00::1]/t", false, false, true),
            ("https://100.64.0.1/t", false, false, false),
            ("https://0.0.0.0/t", false, false, false),
            ("https://[::]/t", false, false, false),
            ("https://224.0.0.1/t", false, false, false),
            ("https://255.255.255.255/t", false, false, false),
            ("https://8.8.8.8/t", true, true, true),
            ("https://[2606:4700:4700::1111]/t", true, true, true),
            // Names are resolved and checked when connecting, not here.
            ("https://idp.example/t", true, true, true),
        ];
        for (url, s, l, i) in table {
            for (policy, want, name) in [
                (&strict, s, "strict"),
                (&loopback, l, "loopback"),
                (&internal, i, "internal"),
            ] {
                for field in ["token_endpoint", "issuer"] {
                    let r = parse_with(
                        "oauth2",
                        json!({"oauth2_config": {"client_id": "c", "authorization_endpoint": "https://idp.example/a", "token_endpoint": "https://idp.example/t", field: url}}),
                        policy,
                    );
                    match (r, want) {
                        (Ok(_), true) => {}
                        (Err(DomainError::AddressNotAllowed { field: f, reason }), false) => {
                            assert_eq!(f, format!("config.oauth2_config.{field}"));
                            assert!(reason.contains("public addresses"), "{reason}");
                        }
                        (other, _) => panic!("{url} under {name} as {field}: {other:?}"),
                    }
                }
            }
        }
        // Every endpoint is held to it, and registered clients too (same parser).
        for field in [
            "authorization_endpoint",
            "userinfo_endpoint",
            "revocation_endpoint",
        ] {
            let err = parse_with(
                "oauth2",
                json!({"oauth2_config": {"client_id": "c", "issuer": "https://idp.example", field: "https://192.168.0.1/x"}}),
                &strict,
            )
            .unwrap_err();
            assert!(
                matches!(err, DomainError::AddressNotAllowed { .. }),
                "{field}: {err:?}"
            );
        }
        // A redirect URI is only handed to the browser: its address is not our concern.
        parse_with(
            "oauth2",
            json!({"oauth2_config": {"client_id": "c", "issuer": "https://idp.example", "redirect_uri": "https://10.1.2.3/cb"}}),
            &strict,
        )
        .unwrap();
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
