//! # latchkey-oauth
//!
//! The [`ProviderClient`] adapter: token requests through the `oauth2` crate, everything
//! else (revocation, userinfo, discovery) directly on reqwest, all of it under one
//! outbound policy: https only (loopback excepted on request), public addresses only
//! (checked on the resolved address that is connected to), no proxy, timeouts, no
//! redirects, bounded bodies, and failures classified for the refresh engine.

mod discovery;
mod errors;
mod resolve;
mod token;
mod transport;

pub use crate::resolve::{HostLookup, LookupFuture, SystemLookup};

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use latchkey_domain::config::scheme_allowed;
use latchkey_domain::net::{AddressRules, IpNet};
use latchkey_domain::oauth::{ClientCredentials, DiscoveredMetadata, TokenResponse};
use latchkey_domain::provider::TokenAuthMethod;
use latchkey_ports::{CodeExchange, OAuthError, ProviderClient, RefreshExchange, Revocation};
use oauth2::basic::BasicTokenIntrospectionResponse;
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    PkceCodeVerifier, RedirectUrl, RefreshToken, Scope, StandardRevocableToken, TokenUrl,
};
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use url::form_urlencoded;
use url::Url;

use crate::errors::{auth_param, classify, oauth_error_in, token_error, Redactor, WireError};
use crate::resolve::{check_literal, PolicyResolver};
use crate::token::WireToken;
use crate::transport::{display_url, Fetched, PerThread, Transport};

pub use crate::transport::MAX_BODY_BYTES as MAX_RESPONSE_BYTES;

/// The default of [`OutboundPolicy::keep_alive`]: long enough that a busy provider host
/// (many grants refreshing) reuses its connections, short enough to close before common
/// servers do.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Idle connections kept per provider host: above the default per-host refresh
/// concurrency, so a busy host's refreshes all find one.
const MAX_IDLE_PER_HOST: usize = 8;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// How Latchkey talks to the outside world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Permit loopback addresses, and plain `http://` to them (tests, local development).
    pub allow_insecure_loopback: bool,
    /// Non-public ranges that may be connected to (an internal identity provider).
    pub private_networks: Vec<IpNet>,
    /// Whole-request deadline, connection included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub user_agent: String,
    /// How long an idle connection to a provider is kept for the next call; zero keeps
    /// none. Keep it below the providers' own keep-alive timeouts (5 s for Node.js and
    /// Apache, 75 s for nginx): a connection the server closes just as a request goes out
    /// fails ambiguously (see `with_lookup`).
    pub keep_alive: Duration,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        Self {
            allow_insecure_loopback: false,
            private_networks: Vec::new(),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            user_agent: concat!("latchkey/", env!("CARGO_PKG_VERSION")).to_owned(),
            keep_alive: DEFAULT_KEEP_ALIVE,
        }
    }
}

/// The HTTP client could not be built (an invalid user agent, no TLS backend).
#[derive(Debug, thiserror::Error)]
#[error("could not build the outbound HTTP client")]
pub struct ClientBuildError(#[from] reqwest::Error);

/// [`ProviderClient`] over HTTP. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct HttpProviderClient {
    transport: Transport,
    allow_insecure_loopback: bool,
    rules: AddressRules,
}

/// The `oauth2` client shape we use: only the token endpoint is set.
type TokenClient = oauth2::Client<
    WireError,
    WireToken,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    WireError,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The reqwest client of `settings`: the outbound policy baked in.
fn build_http(
    settings: &OutboundPolicy,
    lookup: Arc<dyn HostLookup>,
    rules: &AddressRules,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(PolicyResolver {
            lookup,
            rules: rules.clone(),
        }))
        // A proxy would resolve and connect on our behalf, out of the resolver's sight.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .user_agent(settings.user_agent.as_str())
        // Second line of defence behind `check_url`.
        .https_only(!settings.allow_insecure_loopback)
        // Idle connections are kept only briefly. A pooled connection the provider
        // closes while we send on it fails ambiguously, and a refresh with a
        // rotating refresh token can be neither trusted nor retried then; hyper
        // retries by itself only when the close came before the request was
        // written. Closing well before the server does makes that race rare, while a
        // busy host (many grants refreshing) skips a TCP and TLS handshake per call.
        // A connection is checked against the address rules when it is made, so a
        // reused one was checked too.
        .pool_idle_timeout(settings.keep_alive)
        .pool_max_idle_per_host(if settings.keep_alive.is_zero() {
            0
        } else {
            MAX_IDLE_PER_HOST
        })
        .build()
}

impl HttpProviderClient {
    pub fn new(settings: OutboundPolicy) -> Result<Self, ClientBuildError> {
        Self::with_lookup(settings, Arc::new(SystemLookup))
    }

    /// A client that resolves host names with `lookup` (then checks every address it
    /// answers, as always).
    pub fn with_lookup(
        settings: OutboundPolicy,
        lookup: Arc<dyn HostLookup>,
    ) -> Result<Self, ClientBuildError> {
        let rules = AddressRules {
            allow_loopback: settings.allow_insecure_loopback,
            allowed_networks: settings.private_networks.clone(),
        };
        let build = {
            let rules = rules.clone();
            let settings = settings.clone();
            move || build_http(&settings, lookup.clone(), &rules)
        };
        let http = PerThread::new(Arc::new(build))?;
        Ok(Self {
            transport: Transport {
                http,
                rules: rules.clone(),
            },
            allow_insecure_loopback: settings.allow_insecure_loopback,
            rules,
        })
    }

    /// Applies the outbound policy to a URL before anything is sent to it.
    fn check_url(&self, raw: &str) -> Result<Url, OAuthError> {
        let u = Url::parse(raw)
            .map_err(|e| OAuthError::InsecureUrl(format!("an invalid URL ({e})")))?;
        if !scheme_allowed(&u, self.allow_insecure_loopback) {
            return Err(OAuthError::InsecureUrl(display_url(&u)));
        }
        check_literal(&self.rules, &u)?;
        Ok(u)
    }

    fn token_client(
        &self,
        client: &ClientCredentials,
        token_url: Url,
    ) -> Result<TokenClient, OAuthError> {
        let secret = client_secret(client)?;
        let c = oauth2::Client::new(ClientId::new(client.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(token_url));
        Ok(match (client.auth_method, secret) {
            // The oauth2 crate form-urlencodes id and secret before base64 (RFC 6749 §2.3.1).
            (TokenAuthMethod::ClientSecretBasic, Some(s)) => c
                .set_auth_type(AuthType::BasicAuth)
                .set_client_secret(ClientSecret::new(s.expose_secret().to_owned())),
            (TokenAuthMethod::ClientSecretPost, Some(s)) => c
                .set_auth_type(AuthType::RequestBody)
                .set_client_secret(ClientSecret::new(s.expose_secret().to_owned())),
            // Without a secret the crate sends client_id in the body and no Authorization.
            _ => c.set_auth_type(AuthType::RequestBody),
        })
    }

    /// A form POST with client authentication as the token endpoint gets it, for the
    /// requests the oauth2 crate does not make for us.
    fn form_post<'a>(
        &self,
        url: Url,
        client: &'a ClientCredentials,
        mut params: Vec<(&'a str, &'a str)>,
    ) -> Result<reqwest::Request, OAuthError> {
        let secret = client_secret(client)?;
        let mut builder = self
            .transport
            .http
            .builder()
            .post(url)
            .header(ACCEPT, JSON)
            .header(CONTENT_TYPE, FORM);
        match (client.auth_method, secret) {
            (TokenAuthMethod::ClientSecretBasic, Some(s)) => {
                // RFC 6749 §2.3.1: form-urlencode id and secret, then Basic (base64).
                let id: String =
                    form_urlencoded::byte_serialize(client.client_id.as_bytes()).collect();
                let pw: String =
                    form_urlencoded::byte_serialize(s.expose_secret().as_bytes()).collect();
                builder = builder.basic_auth(id, Some(pw));
            }
            (TokenAuthMethod::ClientSecretPost, Some(s)) => {
                params.push(("client_id", &client.client_id));
                params.push(("client_secret", s.expose_secret()));
            }
            _ => params.push(("client_id", &client.client_id)),
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        builder
            .body(body)
            .build()
            .map_err(|_| OAuthError::Protocol("could not build the request".to_owned()))
    }

    async fn get_json(
        &self,
        url: Url,
        bearer: Option<&SecretString>,
    ) -> Result<Fetched, OAuthError> {
        let mut builder = self.transport.http.builder().get(url).header(ACCEPT, JSON);
        if let Some(t) = bearer {
            builder = builder.bearer_auth(t.expose_secret());
        }
        let request = builder
            .build()
            .map_err(|_| OAuthError::Protocol("could not build the request".to_owned()))?;
        self.transport.execute(request).await
    }
}

/// The client secret the auth method needs; `None` for public clients. A confidential
/// method without a secret is a broken registration, refused before anything is sent.
fn client_secret(client: &ClientCredentials) -> Result<Option<&SecretString>, OAuthError> {
    match (client.auth_method, &client.client_secret) {
        (TokenAuthMethod::None, _) => Ok(None),
        (_, Some(s)) if !s.expose_secret().is_empty() => Ok(Some(s)),
        (m, _) => Err(OAuthError::InvalidClient {
            error: "invalid_client".to_owned(),
            description: Some(format!(
                "the client authenticates with {} but has no client secret",
                m.as_str()
            )),
        }),
    }
}

fn secret_of(s: &Option<SecretString>) -> &str {
    s.as_ref().map(|s| s.expose_secret()).unwrap_or_default()
}

/// A non-success answer from an endpoint that is not the token endpoint.
fn answer_error(fetched: &Fetched, what: &str, r: &Redactor<'_>) -> OAuthError {
    if let Some((error, description)) = oauth_error_in(&fetched.body) {
        return classify(&error, description, r);
    }
    // RFC 6750 §3: resource servers put the error in the challenge, not the body.
    if let Some(challenge) = fetched
        .headers
        .get(WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
    {
        if let Some(error) = auth_param(challenge, "error") {
            return classify(&error, auth_param(challenge, "error_description"), r);
        }
    }
    OAuthError::Protocol(format!(
        "the {what} answered HTTP {} without an OAuth error response",
        fetched.status
    ))
}

#[async_trait]
impl ProviderClient for HttpProviderClient {
    async fn exchange_code(&self, request: CodeExchange) -> Result<TokenResponse, OAuthError> {
        let url = self.check_url(&request.token_endpoint)?;
        let client = self.token_client(&request.client, url)?;
        let redirect = RedirectUrl::new(request.redirect_uri.clone()).map_err(|e| {
            OAuthError::Protocol(format!("the redirect_uri is not a valid URL ({e})"))
        })?;
        let mut exchange = client
            .exchange_code(AuthorizationCode::new(
                request.code.expose_secret().to_owned(),
            ))
            .set_redirect_uri(Cow::Owned(redirect));
        if let Some(v) = &request.pkce_verifier {
            exchange =
                exchange.set_pkce_verifier(PkceCodeVerifier::new(v.expose_secret().to_owned()));
        }
        let redactor = Redactor::new([
            request.code.expose_secret(),
            secret_of(&request.pkce_verifier),
            secret_of(&request.client.client_secret),
        ]);
        exchange
            .request_async(&self.transport)
            .await
            .map_err(|e| token_error(e, &redactor))?
            .into_domain()
    }

    async fn refresh(&self, request: RefreshExchange) -> Result<TokenResponse, OAuthError> {
        let url = self.check_url(&request.token_endpoint)?;
        let client = self.token_client(&request.client, url)?;
        let refresh_token = RefreshToken::new(request.refresh_token.expose_secret().to_owned());
        let mut exchange = client.exchange_refresh_token(&refresh_token);
        if let Some(scopes) = &request.scopes {
            exchange = exchange.add_scopes(scopes.iter().cloned().map(Scope::new));
        }
        let redactor = Redactor::new([
            request.refresh_token.expose_secret(),
            secret_of(&request.client.client_secret),
        ]);
        exchange
            .request_async(&self.transport)
            .await
            .map_err(|e| token_error(e, &redactor))?
            .into_domain()
    }

    /// Built here rather than with the oauth2 crate, which refuses a non-https revocation
    /// URL even where the outbound policy allows loopback http.
    async fn revoke(&self, request: Revocation) -> Result<(), OAuthError> {
        let url = self.check_url(&request.revocation_endpoint)?;
        let http_request = self.form_post(
            url,
            &request.client,
            vec![
                ("token", request.token.expose_secret()),
                ("token_type_hint", request.token_type_hint),
            ],
        )?;
        let fetched = self.transport.execute(http_request).await?;
        // RFC 7009 §2.2 names 200; any 2xx means the same, the body is ignored.
        if fetched.status.is_success() {
            return Ok(());
        }
        let redactor = Redactor::new([
            request.token.expose_secret(),
            secret_of(&request.client.client_secret),
        ]);
        Err(answer_error(&fetched, "revocation endpoint", &redactor))
    }

    async fn userinfo(
        &self,
        endpoint: String,
        access_token: SecretString,
    ) -> Result<serde_json::Value, OAuthError> {
        let url = self.check_url(&endpoint)?;
        let fetched = self.get_json(url, Some(&access_token)).await?;
        if fetched.status != StatusCode::OK {
            let redactor = Redactor::new([access_token.expose_secret()]);
            return Err(answer_error(&fetched, "userinfo endpoint", &redactor));
        }
        match serde_json::from_slice::<serde_json::Value>(&fetched.body) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(OAuthError::Protocol(
                "the userinfo answer is not a JSON object".to_owned(),
            )),
            Err(_) => Err(OAuthError::Protocol(
                "the userinfo answer is not JSON".to_owned(),
            )),
        }
    }

    async fn discover(&self, issuer: String) -> Result<DiscoveredMetadata, OAuthError> {
        let issuer_url = self.check_url(&issuer)?;
        let [oidc, rfc8414] = discovery::metadata_urls(&issuer_url)?;
        let mut fetched = self.get_json(oidc, None).await?;
        if fetched.status == StatusCode::NOT_FOUND {
            fetched = self.get_json(rfc8414, None).await?;
        }
        if fetched.status != StatusCode::OK {
            return Err(OAuthError::Protocol(format!(
                "no discovery document for {}: HTTP {}",
                display_url(&issuer_url),
                fetched.status
            )));
        }
        discovery::parse_document(&fetched.body, &issuer, |u| self.check_url(u))
    }
}
