//! The OAuth consent flow: consent URL, callback, and the provider settings behind both.

use secrecy::{ExposeSecret, SecretString};

use latchkey_domain::oauth::{self, Pkce, ResolveInput, ResolvedProvider, State};
use latchkey_domain::sealed::fields;
use latchkey_domain::{
    AuthSession, Connection, ConnectionId, OAuthClient, OAuthSettings, ProjectId, Provider, Scope,
    SealContext, Status,
};
use latchkey_ports::{CodeExchange, Revocation};

use crate::cas::{Attempts, Cas, Edit};
use crate::{AppError, CallbackError, Latchkey, Principal, StateCode};

/// How often the callback tries its write when a refresh or rename raced it.
const CALLBACK_WRITE_ATTEMPTS: Attempts = Attempts(5);
/// How often recording a callback's error is tried against concurrent writes; it is
/// only a note, so it gives up sooner.
const NOTE_ERROR_ATTEMPTS: Attempts = Attempts(3);
/// A state longer than any we issue is refused unread.
const MAX_STATE_CHARS: usize = 512;
/// How much of a provider's `error` and `error_description` is kept on the connection.
const MAX_PROVIDER_ERROR_CHARS: usize = 64;
const MAX_PROVIDER_DESCRIPTION_CHARS: usize = 300;

/// The query of a callback request. Its `Debug` leaves out the state (a single-use
/// credential until the callback ends); the code is a secret type.
#[derive(Default, Clone)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<SecretString>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

impl std::fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackParams")
            .field("state", &self.state.as_ref().map(|_| "[REDACTED]"))
            .field("code", &self.code)
            .field("error", &self.error)
            .field("error_description", &self.error_description)
            .field("iss", &self.iss)
            .finish()
    }
}

/// A completed authorization.
#[derive(Debug, Clone)]
pub struct CallbackOutcome {
    pub connection_id: ConnectionId,
    pub project_id: ProjectId,
    pub name: String,
    pub status: Status,
}

impl Latchkey {
    fn client_secret_ctx(client: &OAuthClient) -> SealContext {
        let project = client
            .project_id
            .as_ref()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "*".into());
        SealContext::new(project, client.id, fields::CLIENT_SECRET)
    }

    pub(crate) fn seal_client_secret(
        &self,
        client: &OAuthClient,
        secret: &SecretString,
    ) -> Result<latchkey_domain::Sealed, AppError> {
        self.seal_str(secret, &Self::client_secret_ctx(client))
    }

    /// The effective provider settings of an OAuth connection.
    pub(crate) async fn resolve_provider(
        &self,
        c: &Connection,
    ) -> Result<ResolvedProvider, AppError> {
        let provider = c.kind.provider().ok_or_else(|| AppError::State {
            code: StateCode::NotOAuth,
            message: format!("a {} connection has no OAuth flow", c.kind),
        })?;
        let settings = c.config.oauth().cloned().unwrap_or_default();
        let inline_secret = self
            .open_fields(c.secrets.as_ref(), &Self::secrets_ctx(c))?
            .get("client_secret")
            .cloned();
        let registered: Option<(OAuthSettings, Option<SecretString>)> = match c.oauth2_client_id {
            Some(id) => {
                let client = self
                    .svc
                    .clients
                    .get_oauth_client(id)
                    .await?
                    .ok_or_else(|| AppError::State {
                        code: StateCode::OAuthClientMissing,
                        message: "the connection's OAuth client registration was deleted".into(),
                    })?;
                let secret = client
                    .client_secret
                    .as_ref()
                    .map(|s| self.open_str(s, &Self::client_secret_ctx(&client)))
                    .transpose()?;
                Some((client.config, secret))
            }
            None if settings.client_id.is_none() => {
                self.settings.default_clients.get(&provider).map(|d| {
                    (
                        OAuthSettings {
                            client_id: Some(d.client_id.clone()),
                            ..Default::default()
                        },
                        d.client_secret.clone(),
                    )
                })
            }
            None => None,
        };
        // On a registration, only the registration's issuer is discovered: the
        // connection's own (refused by resolve below) must not even be fetched.
        let issuer = match &registered {
            Some((r, _)) => r.issuer.clone(),
            None => settings.issuer.clone(),
        };
        let discovered = match (&issuer, provider) {
            (Some(iss), Provider::Generic) => Some(self.discovered(iss).await?),
            _ => None,
        };
        Ok(oauth::resolve(ResolveInput {
            provider,
            settings: &settings,
            registered_client: registered.as_ref().map(|(s, secret)| (s, secret.clone())),
            inline_secret,
            discovered: discovered.as_ref(),
            default_redirect_uri: &self.settings.callback_url,
        })?)
    }

    /// Makes a consent URL with a fresh single-use state and a PKCE challenge.
    pub async fn start_authorization(
        &self,
        principal: &Principal,
        id: ConnectionId,
    ) -> Result<url::Url, AppError> {
        principal.require(Scope::ConnectionsWrite)?;
        let c = self.visible_connection(principal, id).await?;
        let provider = self.resolve_provider(&c).await?;
        let state = State::from_random(self.random());
        let pkce = provider.pkce.then(|| Pkce::from_random(self.random()));
        let url = oauth::authorization_url(&provider, &state, pkce.as_ref())?;
        let now = self.now();
        let pkce_verifier = pkce
            .as_ref()
            .map(|p| {
                self.seal_str(
                    &p.verifier,
                    &SealContext::new(c.project_id.as_str(), &state.hash, fields::PKCE_VERIFIER),
                )
            })
            .transpose()?;
        let session = AuthSession {
            state_hash: state.hash.clone(),
            connection_id: c.id,
            project_id: c.project_id.clone(),
            pkce_verifier,
            token_endpoint: provider.token_endpoint.clone(),
            redirect_uri: provider.redirect_uri.clone(),
            issuer: provider.issuer.clone(),
            require_iss: provider.require_iss,
            created_at: now,
            expires_at: now + oauth::STATE_TTL,
        };
        self.svc.sessions.insert_auth_session(&session).await?;
        tracing::info!(connection = %c.id, "authorization started");
        Ok(url)
    }

    /// Handles the provider's redirect back to us. Every check that can refuse the
    /// callback runs before any request to the provider.
    pub async fn complete_authorization(
        &self,
        params: CallbackParams,
    ) -> Result<CallbackOutcome, CallbackError> {
        let state = params
            .state
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(CallbackError::MissingParameter("state"))?;
        if state.len() > MAX_STATE_CHARS {
            return Err(CallbackError::UnknownState);
        }
        let session = self
            .svc
            .sessions
            .take_auth_session(&State::hash(state))
            .await
            .map_err(|e| CallbackError::Internal(e.to_string()))?
            .ok_or(CallbackError::UnknownState)?;
        let now = self.now();
        if session.expires_at <= now {
            return Err(CallbackError::ExpiredState);
        }
        // RFC 9207: an `iss` that names another issuer means a mix-up attack.
        match (&session.issuer, &params.iss) {
            (Some(expected), Some(got)) if expected != got => {
                return Err(CallbackError::IssuerMismatch)
            }
            (Some(_), None) if session.require_iss => {
                return Err(CallbackError::MissingParameter("iss"))
            }
            _ => {}
        }
        let c = self
            .svc
            .connections
            .get_connection(session.connection_id)
            .await
            .map_err(|e| CallbackError::Internal(e.to_string()))?
            .ok_or(CallbackError::ConnectionGone)?;
        // With no issuer known, the server is known by its authorization endpoint: an
        // `iss` from another origin names another server. Resolving makes no provider
        // call here, since without an issuer there is nothing to discover.
        let mut resolved = None;
        if let (None, Some(got)) = (&session.issuer, &params.iss) {
            let provider = self.resolve_provider(&c).await?;
            if !oauth::iss_matches_authorization_endpoint(got, &provider.authorization_endpoint) {
                return Err(CallbackError::IssuerMismatch);
            }
            resolved = Some(provider);
        }
        if let Some(error) = &params.error {
            let error: String = error
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(MAX_PROVIDER_ERROR_CHARS)
                .collect();
            let description = params.error_description.as_deref().map(|d| {
                d.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_PROVIDER_DESCRIPTION_CHARS)
                    .collect::<String>()
            });
            let message = match description {
                Some(d) => format!("{error}: {d}"),
                None => error,
            };
            self.note_error(c.id, format!("authorization failed: {message}"))
                .await;
            return Err(CallbackError::Denied(message));
        }
        let code = params
            .code
            .clone()
            .filter(|c| !c.expose_secret().is_empty())
            .ok_or(CallbackError::MissingParameter("code"))?;
        let provider = match resolved {
            Some(p) => p,
            None => self.resolve_provider(&c).await?,
        };
        let verifier = session
            .pkce_verifier
            .as_ref()
            .map(|v| {
                self.open_str(
                    v,
                    &SealContext::new(
                        session.project_id.as_str(),
                        &session.state_hash,
                        fields::PKCE_VERIFIER,
                    ),
                )
            })
            .transpose()?;
        let sent_at = self.now();
        let tokens = match self
            .svc
            .provider
            .exchange_code(CodeExchange {
                // Only ever the endpoint chosen when the consent URL was made.
                token_endpoint: session.token_endpoint.clone(),
                client: provider.client.clone(),
                code,
                redirect_uri: session.redirect_uri.clone(),
                pkce_verifier: verifier,
            })
            .await
        {
            Ok(t) => t,
            Err(e) => {
                self.note_error(c.id, format!("token exchange failed: {e}"))
                    .await;
                return Err(CallbackError::Exchange(e));
            }
        };
        let authorized_user = match &provider.userinfo_endpoint {
            Some(endpoint) => match self
                .svc
                .provider
                .userinfo(endpoint.clone(), tokens.access_token.clone())
                .await
            {
                // Only a few short identifying claims are kept: the answer is the
                // provider's to shape, and it is shown to every reader of the project.
                Ok(u) => latchkey_domain::sanitize_authorized_user(&u),
                Err(e) => {
                    tracing::warn!(connection = %c.id, error = %e, "userinfo request failed; the connection is authorized without user details");
                    None
                }
            },
            None => None,
        };
        // The new grant replaces the old one in one compare-and-set write; a refresh of
        // the old grant that is still in flight then fails its own write.
        let issued = self.seal_issued(&c, &tokens, sent_at)?;
        let written = self
            .modify_connection(session.connection_id, CALLBACK_WRITE_ATTEMPTS, |c| {
                let from = c.authorize(
                    issued.clone(),
                    &provider.scopes,
                    authorized_user.clone(),
                    &self.settings.refresh,
                    self.now(),
                )?;
                Ok::<_, AppError>(Edit::Write(vec![self.event(
                    c,
                    Some(from),
                    "authorized",
                    None,
                )]))
            })
            .await
            .map_err(|e| CallbackError::Internal(e.to_string()))?;
        match written {
            Cas::Written(c) => {
                tracing::info!(connection = %c.id, "connection authorized");
                Ok(CallbackOutcome {
                    connection_id: c.id,
                    project_id: c.project_id.clone(),
                    name: c.name.to_string(),
                    status: c.status(),
                })
            }
            Cas::Refused(e) => Err(e.into()),
            Cas::Gone => Err(CallbackError::ConnectionGone),
            Cas::Skipped | Cas::Exhausted => Err(CallbackError::Internal(
                "the connection kept changing while the authorization was saved".into(),
            )),
        }
    }

    /// Records a problem on the connection without changing its status or grant.
    pub(crate) async fn note_error(&self, id: ConnectionId, message: String) {
        let noted = self
            .modify_connection(id, NOTE_ERROR_ATTEMPTS, |c| {
                c.note_error(message.clone(), self.now());
                Ok::<_, std::convert::Infallible>(Edit::Write(Vec::new()))
            })
            .await;
        if let Err(e) = noted {
            tracing::warn!(connection = %id, error = %e, "could not record the error on the connection");
        }
    }

    /// RFC 7009 revocation of the grant (its refresh token, else its access token).
    pub(crate) async fn revoke_grant(&self, c: &Connection) -> Result<(), AppError> {
        let Some(grant) = c.grant() else {
            return Ok(());
        };
        let provider = self.resolve_provider(c).await?;
        let Some(endpoint) = provider.revocation_endpoint.clone() else {
            return Ok(());
        };
        let (token, hint) = match &grant.refresh_token {
            Some(r) => (
                self.open_str(r, &Self::token_ctx(c, fields::REFRESH_TOKEN))?,
                "refresh_token",
            ),
            None => (
                self.open_str(
                    &grant.access_token,
                    &Self::token_ctx(c, fields::ACCESS_TOKEN),
                )?,
                "access_token",
            ),
        };
        self.svc
            .provider
            .revoke(Revocation {
                revocation_endpoint: endpoint,
                client: provider.client,
                token,
                token_type_hint: hint,
            })
            .await?;
        tracing::info!(connection = %c.id, "grant revoked at the provider");
        Ok(())
    }
}
