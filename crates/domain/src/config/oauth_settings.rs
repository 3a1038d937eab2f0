//! The OAuth settings of a connection or a registered client: validated from the
//! `scopes` and `oauth2_config` of a configuration, with the rules that keep a connection
//! from redirecting a client registration it does not own.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::{json, Map, Value};

use super::fields::{only_keys, optional_string};
use super::{SecretFields, UrlPolicy};
use crate::provider::{Provider, TokenAuthMethod};
use crate::DomainError;

/// The non-secret OAuth settings of a connection (or of a reusable client).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuthSettings {
    /// `None`: use the provider's default scopes.
    pub scopes: Option<Vec<String>>,
    /// The client (app) registered at the provider; `None`: a registered client's or the
    /// deployment's.
    pub client_id: Option<String>,
    /// Where the user consents (generic `oauth2` connections only, as are the other endpoints).
    pub authorization_endpoint: Option<String>,
    /// Where codes and refresh tokens are exchanged for tokens.
    pub token_endpoint: Option<String>,
    /// Where the provider sends the user back; `None`: Latchkey's callback. Kept verbatim.
    pub redirect_uri: Option<String>,
    /// Where the authorizing user's profile is read.
    pub userinfo_endpoint: Option<String>,
    /// The issuer, for discovery and the `iss` check (RFC 9207). Kept verbatim.
    pub issuer: Option<String>,
    /// Where a grant is revoked when its connection is deleted.
    pub revocation_endpoint: Option<String>,
    /// How the client authenticates at the token endpoint.
    pub token_endpoint_auth_method: Option<TokenAuthMethod>,
    /// Extra parameters of the consent URL (never one Latchkey sets itself).
    pub extra_authorization_params: BTreeMap<String, String>,
    /// Whether to use PKCE; `None`: the provider's default.
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

    /// The JSON the store keeps and the management API shows:
    /// `{"scopes": [...], "oauth2_config": {...}}`, without any secret.
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

impl serde::Serialize for OAuthSettings {
    /// As [`OAuthSettings::to_public_json`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_public_json().serialize(s)
    }
}

/// Validates the `config` of an OAuth connection of `provider`. An `oauth2_client_id`
/// key (any non-null value) marks a connection on a registered client.
pub(crate) fn parse_oauth(
    provider: Provider,
    obj: &Map<String, Value>,
    urls: &UrlPolicy,
) -> Result<(OAuthSettings, SecretFields), DomainError> {
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
    Ok((settings, SecretFields(secrets)))
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
            return Err(DomainError::RedirectOnDeploymentApp {
                field: format!("{p}.redirect_uri"),
                provider,
            });
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

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;
    use crate::config::{parse_config, ParsedConfig};

    fn parse(kind: &str, config: Value) -> Result<ParsedConfig, DomainError> {
        parse_with(kind, config, &UrlPolicy::default())
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
        assert!(!p.config.to_public_json().to_string().contains("shh"));
        assert_eq!(
            p.secrets.get("client_secret").unwrap().expose_secret(),
            "shh"
        );
        let o = p.config.oauth().cloned().unwrap();
        assert_eq!(
            o.scopes.as_deref(),
            Some(&["openid".to_owned(), "email".to_owned()][..])
        );
        assert_eq!(OAuthSettings::from_public_json(&o.to_public_json()), o);
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
                matches!(&err, DomainError::RedirectOnDeploymentApp { field, provider } if field == "config.oauth2_config.redirect_uri" && provider.as_str() == kind),
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
        let o = p.config.oauth().cloned().unwrap();
        assert_eq!(o.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(o.redirect_uri.as_deref(), Some("https://cb.example"));
        assert_eq!(o.token_endpoint.as_deref(), Some("https://idp.example/"));
    }
}
