//! Pure OAuth 2.0 pieces: PKCE, state, the consent URL, and the resolution of a
//! connection's effective provider settings from catalog, configuration and client.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::config::OAuthSettings;
use crate::provider::{Provider, ProviderSpec, TokenAuthMethod};
use crate::DomainError;

/// How long a consent URL's state stays valid.
pub const STATE_TTL: Duration = Duration::minutes(10);

/// A fresh `state` value (256 random bits) and the hash under which it is stored.
#[derive(Debug)]
pub struct State {
    /// The value sent in the consent URL.
    pub value: SecretString,
    /// Its hex SHA-256, the only form stored.
    pub hash: String,
}

impl State {
    /// A state from 32 random bytes.
    pub fn from_random(bytes: [u8; 32]) -> Self {
        let value = URL_SAFE_NO_PAD.encode(bytes);
        let hash = Self::hash(&value);
        Self {
            value: SecretString::from(value),
            hash,
        }
    }

    /// The lookup key of a state: hex SHA-256, so the database never holds a usable state.
    pub fn hash(value: &str) -> String {
        crate::hex::lower(&Sha256::digest(value.as_bytes()))
    }
}

/// A PKCE (RFC 7636) verifier and its S256 challenge.
#[derive(Debug)]
pub struct Pkce {
    /// The verifier, kept sealed until the code is exchanged.
    pub verifier: SecretString,
    /// The S256 challenge sent in the consent URL.
    pub challenge: String,
}

impl Pkce {
    /// A verifier from 32 random bytes.
    pub fn from_random(bytes: [u8; 32]) -> Self {
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = Self::challenge_of(&verifier);
        Self {
            verifier: SecretString::from(verifier),
            challenge,
        }
    }

    /// The S256 challenge of `verifier` (RFC 7636 §4.2).
    pub fn challenge_of(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }
}

/// A client registration: who we are at the provider.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id at the provider.
    pub client_id: String,
    /// The client secret; `None` for a public client.
    pub client_secret: Option<SecretString>,
    /// How the client authenticates at the token endpoint.
    pub auth_method: TokenAuthMethod,
}

/// Endpoints and behaviour learnt from an issuer's discovery document (RFC 8414).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveredMetadata {
    /// The issuer the document names.
    pub issuer: String,
    /// Where the user consents.
    pub authorization_endpoint: String,
    /// Where codes and refresh tokens are exchanged.
    pub token_endpoint: String,
    /// Where the user's profile is read.
    pub userinfo_endpoint: Option<String>,
    /// Where grants are revoked.
    pub revocation_endpoint: Option<String>,
    /// RFC 9207: the provider promises an `iss` parameter on every authorization response.
    pub authorization_response_iss_parameter_supported: bool,
    /// The client authentication methods the server accepts.
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// Everything needed to talk to the provider for one connection.
#[derive(Debug, Clone)]
pub struct ResolvedProvider {
    /// Where the user consents.
    pub authorization_endpoint: String,
    /// Where codes and refresh tokens are exchanged.
    pub token_endpoint: String,
    /// Where grants are revoked, if the provider has such an endpoint.
    pub revocation_endpoint: Option<String>,
    /// Where the user's profile is read, if anywhere.
    pub userinfo_endpoint: Option<String>,
    /// The issuer, for the `iss` check (RFC 9207).
    pub issuer: Option<String>,
    /// The callback must carry `iss` (RFC 9207) rather than merely match it when present.
    pub require_iss: bool,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// Extra parameters of the consent URL.
    pub extra_authorization_params: BTreeMap<String, String>,
    /// Whether PKCE is used.
    pub pkce: bool,
    /// Where the provider sends the user back.
    pub redirect_uri: String,
    /// Who Latchkey is at the provider.
    pub client: ClientCredentials,
}

/// Inputs to [`resolve`]: the connection's settings and where its client comes from.
#[derive(Debug)]
pub struct ResolveInput<'a> {
    /// The connection's provider.
    pub provider: Provider,
    /// The connection's own OAuth settings.
    pub settings: &'a OAuthSettings,
    /// A reusable client registration named by the connection, or the deployment default:
    /// its settings (endpoints for generic clients) and secret.
    pub registered_client: Option<(&'a OAuthSettings, Option<SecretString>)>,
    /// The connection's own inline client secret.
    pub inline_secret: Option<SecretString>,
    /// The issuer's discovery document, when one was fetched.
    pub discovered: Option<&'a DiscoveredMetadata>,
    /// Our callback URL, used when the connection names no redirect_uri.
    pub default_redirect_uri: &'a str,
}

/// Merges catalog, connection settings, client registration and discovery into the
/// effective settings. Precedence: the connection, then its client, then discovery, then
/// the catalog.
pub fn resolve(input: ResolveInput<'_>) -> Result<ResolvedProvider, DomainError> {
    let spec: Option<&ProviderSpec> = input.provider.spec();
    let conn = input.settings;
    let reg = input.registered_client.as_ref().map(|(s, _)| *s);
    let pick = |f: fn(&OAuthSettings) -> Option<String>| f(conn).or_else(|| reg.and_then(f));
    let tenant = pick(|s| s.tenant.clone())
        .or_else(|| spec.and_then(|s| s.default_tenant).map(str::to_owned));
    let disc = input.discovered;
    if input.registered_client.is_some() {
        // The registration's secret and codes go only where the registration says, also
        // for connections stored before create refused such fields.
        let own = [
            ("client_id", conn.client_id.is_some()),
            ("client_secret", input.inline_secret.is_some()),
            ("redirect_uri", conn.redirect_uri.is_some()),
            (
                "authorization_endpoint",
                conn.authorization_endpoint.is_some(),
            ),
            ("token_endpoint", conn.token_endpoint.is_some()),
            ("userinfo_endpoint", conn.userinfo_endpoint.is_some()),
            ("revocation_endpoint", conn.revocation_endpoint.is_some()),
            ("issuer", conn.issuer.is_some()),
            (
                "token_endpoint_auth_method",
                conn.token_endpoint_auth_method.is_some(),
            ),
        ];
        if let Some((field, _)) = own.iter().find(|(_, set)| *set) {
            return Err(DomainError::config(
                format!("oauth2_config.{field}"),
                "is set by the connection, but the client registration it runs on owns it; create the connection again without it",
            ));
        }
    }
    let from_spec = |f: fn(&ProviderSpec) -> Option<&'static str>| {
        spec.and_then(f)
            .map(|t| ProviderSpec::endpoint(t, tenant.as_deref()))
    };

    let (client_id, client_secret) = match (&conn.client_id, &input.registered_client) {
        (Some(id), _) => (id.clone(), input.inline_secret.clone()),
        (None, Some((reg, secret))) => match &reg.client_id {
            Some(id) => (id.clone(), secret.clone()),
            None => {
                return Err(DomainError::field(
                    "oauth2_client_id",
                    "the registered client has no client_id",
                ))
            }
        },
        (None, None) => {
            return Err(DomainError::NoOAuthClient {
                field: "oauth2_config.client_id".to_owned(),
                provider: input.provider,
            })
        }
    };
    let authorization_endpoint = pick(|s| s.authorization_endpoint.clone())
        .or_else(|| disc.map(|d| d.authorization_endpoint.clone()))
        .or_else(|| from_spec(|s| Some(s.authorization_endpoint)))
        .ok_or_else(|| {
            DomainError::field("oauth2_config.authorization_endpoint", "is not configured")
        })?;
    let token_endpoint = pick(|s| s.token_endpoint.clone())
        .or_else(|| disc.map(|d| d.token_endpoint.clone()))
        .or_else(|| from_spec(|s| Some(s.token_endpoint)))
        .ok_or_else(|| DomainError::field("oauth2_config.token_endpoint", "is not configured"))?;
    let userinfo_endpoint = pick(|s| s.userinfo_endpoint.clone())
        .or_else(|| disc.and_then(|d| d.userinfo_endpoint.clone()))
        .or_else(|| from_spec(|s| s.userinfo_endpoint));
    let revocation_endpoint = pick(|s| s.revocation_endpoint.clone())
        .or_else(|| disc.and_then(|d| d.revocation_endpoint.clone()))
        .or_else(|| from_spec(|s| s.revocation_endpoint));
    let issuer = pick(|s| s.issuer.clone())
        .or_else(|| disc.map(|d| d.issuer.clone()))
        .or_else(|| from_spec(|s| s.issuer));
    let require_iss = disc.is_some_and(|d| d.authorization_response_iss_parameter_supported);

    let auth_method = conn
        .token_endpoint_auth_method
        .or_else(|| reg.and_then(|r| r.token_endpoint_auth_method))
        .or_else(|| spec.map(|s| s.token_auth))
        .unwrap_or(if client_secret.is_some() {
            TokenAuthMethod::ClientSecretBasic
        } else {
            TokenAuthMethod::None
        });
    if auth_method != TokenAuthMethod::None && client_secret.is_none() {
        return Err(DomainError::field(
            "oauth2_config.client_secret",
            format!(
                "the client authenticates with {} but has no client secret",
                auth_method.as_str()
            ),
        ));
    }

    let mut scopes: Vec<String> = match &conn.scopes {
        Some(s) => s.clone(),
        None => spec
            .map(|s| s.default_scopes.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default(),
    };
    for req in spec.map(|s| s.required_scopes).unwrap_or(&[]) {
        if !scopes.iter().any(|s| s == req) {
            scopes.push((*req).to_owned());
        }
    }
    let mut extra: BTreeMap<String, String> = spec
        .map(|s| {
            s.extra_authorization_params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(r) = reg {
        extra.extend(r.extra_authorization_params.clone());
    }
    extra.extend(conn.extra_authorization_params.clone());
    let pkce = conn
        .pkce
        .or_else(|| reg.and_then(|r| r.pkce))
        .unwrap_or_else(|| spec.is_none_or(|s| s.pkce));
    let redirect_uri =
        pick(|s| s.redirect_uri.clone()).unwrap_or_else(|| input.default_redirect_uri.to_owned());

    Ok(ResolvedProvider {
        authorization_endpoint,
        token_endpoint,
        revocation_endpoint,
        userinfo_endpoint,
        issuer,
        require_iss,
        scopes,
        extra_authorization_params: extra,
        pkce,
        redirect_uri,
        client: ClientCredentials {
            client_id,
            client_secret,
            auth_method,
        },
    })
}

/// The mix-up defence when no issuer is known (RFC 9207 §2.4 asks for the issuer; without
/// one, the authorization server is known only by its authorization endpoint): an `iss`
/// on the callback must then be same-origin (scheme, host, port) with that endpoint.
pub fn iss_matches_authorization_endpoint(iss: &str, authorization_endpoint: &str) -> bool {
    match (
        url::Url::parse(iss),
        url::Url::parse(authorization_endpoint),
    ) {
        (Ok(iss), Ok(endpoint)) => {
            let origin = iss.origin();
            // Opaque origins (data:, file:) never name a server.
            origin.is_tuple() && origin == endpoint.origin()
        }
        _ => false,
    }
}

/// Builds the consent URL.
pub fn authorization_url(
    provider: &ResolvedProvider,
    state: &State,
    pkce: Option<&Pkce>,
) -> Result<url::Url, DomainError> {
    let mut url = url::Url::parse(&provider.authorization_endpoint).map_err(|e| {
        DomainError::field("authorization_endpoint", format!("not a valid URL: {e}"))
    })?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code");
        q.append_pair("client_id", &provider.client.client_id);
        q.append_pair("redirect_uri", &provider.redirect_uri);
        if !provider.scopes.is_empty() {
            q.append_pair("scope", &provider.scopes.join(" "));
        }
        q.append_pair("state", state.value.expose_secret());
        if let Some(p) = pkce {
            q.append_pair("code_challenge", &p.challenge);
            q.append_pair("code_challenge_method", "S256");
        }
        for (k, v) in &provider.extra_authorization_params {
            q.append_pair(k, v);
        }
    }
    Ok(url)
}

/// The longest access-token lifetime Latchkey believes: 10 years. A provider's larger
/// `expires_in` is clamped to it (dates beyond would overflow, and no real token lives
/// that long).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::seconds(10 * 365 * 24 * 3600);

/// A provider's `expires_in`, in seconds as sent (a JSON number or a numeric string,
/// already read as a number), as the lifetime Latchkey works with. Every value is
/// handled explicitly, none panics:
/// - above [`MAX_TOKEN_LIFETIME`] (or +infinity): clamped to it;
/// - fractional: rounded down to whole seconds (never believe a token lives longer);
/// - zero, negative or NaN: no usable lifetime, treated like an absent `expires_in`
///   (the token is used until the provider's API rejects it, and not refreshed on a
///   schedule). Refreshing "already expired" tokens on every request would hammer the
///   provider for a value that is, in practice, a provider's way of saying "no expiry".
pub fn token_lifetime(expires_in_seconds: f64) -> Option<Duration> {
    if expires_in_seconds.is_nan() {
        return None;
    }
    let whole = expires_in_seconds.floor();
    if whole <= 0.0 {
        return None;
    }
    if whole >= MAX_TOKEN_LIFETIME.num_seconds() as f64 {
        return Some(MAX_TOKEN_LIFETIME);
    }
    // In range (0, 10 years): exact as an integer.
    Some(Duration::seconds(whole as i64))
}

/// What a token endpoint answered, already parsed.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    /// The new access token.
    pub access_token: SecretString,
    /// A new refresh token, when the provider sent one.
    pub refresh_token: Option<SecretString>,
    /// The token type (`Bearer`).
    pub token_type: String,
    /// The access token's lifetime as the provider said it.
    pub expires_in: Option<Duration>,
    /// Granted scopes, when the provider says (else the requested ones stand).
    pub scopes: Option<Vec<String>>,
}

impl TokenResponse {
    /// The expiry of the access token, counted from when the request was *sent*, so that
    /// network latency never makes us believe a token lives longer than it does.
    /// The lifetime is clamped here too (to `(0, MAX_TOKEN_LIFETIME]`, as
    /// [`token_lifetime`] does), so that no `expires_in`, however it was built, can
    /// overflow the date.
    pub fn expires_at(&self, sent_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let lifetime = self.expires_in?;
        if lifetime <= Duration::zero() {
            return None;
        }
        sent_at.checked_add_signed(lifetime.min(MAX_TOKEN_LIFETIME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_config, UrlPolicy};
    use crate::connection::ConnectionType;
    use serde_json::json;

    fn settings(kind: &str, config: serde_json::Value) -> OAuthSettings {
        let kind: ConnectionType = kind.parse().unwrap();
        parse_config(kind, &config, &UrlPolicy::default())
            .unwrap()
            .config
            .oauth()
            .cloned()
            .unwrap()
    }

    #[test]
    fn pkce_s256_matches_an_independent_implementation() {
        assert_eq!(
            Pkce::challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r7wW1gFWFOEjXk"),
            // python3: base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
            "bwWFMyPfdG9qreDhH2lmftFx_dFeLDalzcT1gb_j68g"
        );
        let p = Pkce::from_random([1; 32]);
        assert_eq!(p.verifier.expose_secret().len(), 43);
    }

    #[test]
    fn state_is_256_bits_and_hashed() {
        let a = State::from_random([1; 32]);
        let b = State::from_random([2; 32]);
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.hash, State::hash(a.value.expose_secret()));
        assert_eq!(a.hash.len(), 64);
    }

    #[test]
    fn google_consent_url_carries_its_quirks() {
        let s = settings(
            "google",
            json!({"oauth2_config": {"client_id": "cid", "client_secret": "cs"}}),
        );
        let r = resolve(ResolveInput {
            provider: Provider::Google,
            settings: &s,
            registered_client: None,
            inline_secret: Some(SecretString::from("cs")),
            discovered: None,
            default_redirect_uri: "https://lk.example/v1/connections/oauth2/callback",
        })
        .unwrap();
        let state = State::from_random([3; 32]);
        let pkce = Pkce::from_random([4; 32]);
        let url = authorization_url(&r, &state, Some(&pkce)).unwrap();
        let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(url.host_str(), Some("accounts.google.com"));
        assert_eq!(q["access_type"], "offline");
        assert_eq!(q["prompt"], "consent");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"], pkce.challenge);
        assert_eq!(
            q["redirect_uri"],
            "https://lk.example/v1/connections/oauth2/callback"
        );
        assert_eq!(
            q["scope"],
            "https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile https://www.googleapis.com/auth/drive.readonly"
        );
        assert_eq!(r.client.auth_method, TokenAuthMethod::ClientSecretPost);
    }

    #[test]
    fn microsoft_adds_offline_access_and_tenant() {
        let s = settings(
            "microsoft",
            json!({"scopes": ["User.Read"], "oauth2_config": {"client_id": "c", "client_secret": "s", "tenant": "contoso"}}),
        );
        let r = resolve(ResolveInput {
            provider: Provider::Microsoft,
            settings: &s,
            registered_client: None,
            inline_secret: Some(SecretString::from("s")),
            discovered: None,
            default_redirect_uri: "https://cb",
        })
        .unwrap();
        assert_eq!(r.scopes, ["User.Read", "offline_access"]);
        assert_eq!(
            r.token_endpoint,
            "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
        );
    }

    #[test]
    fn missing_client_says_how_to_configure_one() {
        let s = settings("box", json!({}));
        let err = resolve(ResolveInput {
            provider: Provider::Box,
            settings: &s,
            registered_client: None,
            inline_secret: None,
            discovered: None,
            default_redirect_uri: "https://cb",
        })
        .unwrap_err();
        assert_eq!(
            err,
            DomainError::NoOAuthClient {
                field: "oauth2_config.client_id".to_owned(),
                provider: Provider::Box
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("oauth2_client_id") && msg.contains("deployment's box app"),
            "{msg}"
        );
        // The deployment's own setting is named by the service that embeds the domain.
        assert!(!msg.contains("LATCHKEY_"), "{msg}");
    }

    #[test]
    fn registered_client_and_discovery_fill_the_gaps() {
        let conn = settings(
            "oauth2",
            json!({"oauth2_client_id": "x", "scopes": ["openid"]}),
        );
        let reg = OAuthSettings {
            client_id: Some("reg".into()),
            issuer: Some("https://idp".into()),
            ..Default::default()
        };
        let disc = DiscoveredMetadata {
            issuer: "https://idp".into(),
            authorization_endpoint: "https://idp/auth".into(),
            token_endpoint: "https://idp/token".into(),
            authorization_response_iss_parameter_supported: true,
            ..Default::default()
        };
        let r = resolve(ResolveInput {
            provider: Provider::Generic,
            settings: &conn,
            registered_client: Some((&reg, Some(SecretString::from("rs")))),
            inline_secret: None,
            discovered: Some(&disc),
            default_redirect_uri: "https://cb",
        })
        .unwrap();
        assert_eq!(r.client.client_id, "reg");
        assert_eq!(r.token_endpoint, "https://idp/token");
        assert!(r.require_iss);
        assert!(r.pkce);
        assert_eq!(r.client.auth_method, TokenAuthMethod::ClientSecretBasic);
    }

    #[test]
    fn a_registered_client_owns_its_endpoints_even_in_rows_stored_before_the_rule() {
        let reg = OAuthSettings {
            client_id: Some("reg".into()),
            authorization_endpoint: Some("https://idp.example/auth".into()),
            token_endpoint: Some("https://idp.example/token".into()),
            token_endpoint_auth_method: Some(TokenAuthMethod::ClientSecretBasic),
            ..Default::default()
        };
        let base = OAuthSettings {
            scopes: Some(vec!["openid".into()]),
            ..Default::default()
        };
        type Override = fn(&mut OAuthSettings);
        let overrides: [(&str, Override); 8] = [
            ("client_id", |s| s.client_id = Some("mine".into())),
            ("redirect_uri", |s| {
                s.redirect_uri = Some("https://attacker.example/cb".into())
            }),
            ("authorization_endpoint", |s| {
                s.authorization_endpoint = Some("https://attacker.example/a".into())
            }),
            ("token_endpoint", |s| {
                s.token_endpoint = Some("https://attacker.example/t".into())
            }),
            ("userinfo_endpoint", |s| {
                s.userinfo_endpoint = Some("https://attacker.example/u".into())
            }),
            ("revocation_endpoint", |s| {
                s.revocation_endpoint = Some("https://attacker.example/r".into())
            }),
            ("issuer", |s| {
                s.issuer = Some("https://attacker.example".into())
            }),
            ("token_endpoint_auth_method", |s| {
                s.token_endpoint_auth_method = Some(TokenAuthMethod::ClientSecretPost)
            }),
        ];
        for (field, set) in overrides {
            let mut conn = base.clone();
            set(&mut conn);
            for provider in [Provider::Generic, Provider::Google] {
                let err = resolve(ResolveInput {
                    provider,
                    settings: &conn,
                    registered_client: Some((&reg, Some(SecretString::from("reg-secret")))),
                    inline_secret: None,
                    discovered: None,
                    default_redirect_uri: "https://cb",
                })
                .unwrap_err();
                assert!(
                    matches!(&err, DomainError::InvalidConfig { field: f, .. } if f == &format!("oauth2_config.{field}")),
                    "{field}: {err:?}"
                );
            }
        }
        // An inline secret beside a registration is refused too.
        let err = resolve(ResolveInput {
            provider: Provider::Generic,
            settings: &base,
            registered_client: Some((&reg, Some(SecretString::from("reg-secret")))),
            inline_secret: Some(SecretString::from("mine")),
            discovered: None,
            default_redirect_uri: "https://cb",
        })
        .unwrap_err();
        assert!(matches!(err, DomainError::InvalidConfig { .. }), "{err:?}");
        // Untouched, the registration's endpoints and secret go together.
        let r = resolve(ResolveInput {
            provider: Provider::Generic,
            settings: &base,
            registered_client: Some((&reg, Some(SecretString::from("reg-secret")))),
            inline_secret: None,
            discovered: None,
            default_redirect_uri: "https://cb",
        })
        .unwrap();
        assert_eq!(r.token_endpoint, "https://idp.example/token");
        assert_eq!(
            r.client.client_secret.unwrap().expose_secret(),
            "reg-secret"
        );
    }

    #[test]
    fn iss_without_a_known_issuer_must_share_the_authorization_endpoints_origin() {
        let endpoint = "https://idp.example/oauth/authorize";
        let table: &[(&str, bool)] = &[
            ("https://idp.example", true),
            ("https://idp.example/", true),
            ("https://idp.example/tenant/v2", true),
            ("https://IDP.example:443", true),
            ("https://idp.example:8443", false),
            ("http://idp.example", false),
            ("https://evil.example", false),
            ("https://idp.example.evil.example", false),
            ("https://evil.example/https://idp.example", false),
            ("idp.example", false),
            ("", false),
            ("data:text/plain,x", false),
        ];
        for (iss, want) in table {
            assert_eq!(
                iss_matches_authorization_endpoint(iss, endpoint),
                *want,
                "{iss}"
            );
        }
        assert!(iss_matches_authorization_endpoint(
            "http://127.0.0.1:4000",
            "http://127.0.0.1:4000/auth"
        ));
        assert!(!iss_matches_authorization_endpoint(
            "http://127.0.0.1:4001",
            "http://127.0.0.1:4000/auth"
        ));
    }

    #[test]
    fn expiry_counts_from_the_request() {
        let sent = DateTime::from_timestamp(1_000, 0).unwrap();
        let t = TokenResponse {
            access_token: SecretString::from("a"),
            refresh_token: None,
            token_type: "Bearer".into(),
            expires_in: Some(Duration::seconds(60)),
            scopes: None,
        };
        assert_eq!(t.expires_at(sent), DateTime::from_timestamp(1_060, 0));
    }

    #[test]
    fn provider_lifetimes_are_clamped_to_a_documented_range() {
        let ten_years = 10 * 365 * 24 * 3600;
        let table: [(f64, Option<i64>); 13] = [
            (3600.0, Some(3600)),
            (59.9, Some(59)),
            (0.5, None),
            (1.0, Some(1)),
            (0.0, None),
            (-1.0, None),
            (-1e300, None),
            (f64::NAN, None),
            (10_000_000_000_000.0, Some(ten_years)),
            (u64::MAX as f64, Some(ten_years)),
            (f64::INFINITY, Some(ten_years)),
            (ten_years as f64, Some(ten_years)),
            ((ten_years - 1) as f64, Some(ten_years - 1)),
        ];
        for (raw, want) in table {
            assert_eq!(token_lifetime(raw), want.map(Duration::seconds), "{raw}");
        }
    }

    #[test]
    fn expiry_never_overflows_whatever_the_lifetime() {
        let sent = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let with = |d: Option<Duration>| TokenResponse {
            access_token: SecretString::from("a"),
            refresh_token: None,
            token_type: "Bearer".into(),
            expires_in: d,
            scopes: None,
        };
        let table = [
            (Some(Duration::MAX), Some(sent + MAX_TOKEN_LIFETIME)),
            (
                Some(Duration::seconds(10_000_000_000_000)),
                Some(sent + MAX_TOKEN_LIFETIME),
            ),
            (Some(Duration::zero()), None),
            (Some(Duration::seconds(-5)), None),
            (Some(Duration::MIN), None),
            (None, None),
            (
                Some(Duration::seconds(60)),
                Some(sent + Duration::seconds(60)),
            ),
        ];
        for (lifetime, want) in table {
            assert_eq!(with(lifetime).expires_at(sent), want, "{lifetime:?}");
        }
        // The latest representable time cannot take even the clamped lifetime.
        assert_eq!(
            with(Some(Duration::seconds(60))).expires_at(DateTime::<Utc>::MAX_UTC),
            None
        );
    }
}
