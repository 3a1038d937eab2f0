//! Handing out the usable secret of a connection to a workflow execution.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use latchkey_domain::{ConnectionId, ConnectionType, FlowId, Scope};

use crate::{AppError, Latchkey, Principal};

/// The usable secret of a connection, for a workflow execution.
#[derive(Debug)]
pub enum Credentials {
    ApiKey {
        api_key: SecretString,
    },
    Basic {
        username: String,
        password: SecretString,
    },
    /// Every field, secret or not, by name.
    Custom {
        fields: BTreeMap<String, SecretString>,
    },
    OAuth {
        /// The provider type (`google`, `oauth2`, ...).
        kind: ConnectionType,
        access_token: SecretString,
        token_type: String,
        expires_at: Option<DateTime<Utc>>,
        scopes: Vec<String>,
    },
}

impl Credentials {
    /// The connection type name these credentials belong to.
    pub fn type_name(&self) -> &'static str {
        match self {
            Credentials::ApiKey { .. } => ConnectionType::ApiKey.as_str(),
            Credentials::Basic { .. } => ConnectionType::Basic.as_str(),
            Credentials::Custom { .. } => ConnectionType::Custom.as_str(),
            Credentials::OAuth { kind, .. } => kind.as_str(),
        }
    }
}

impl Latchkey {
    /// The usable secret for a workflow execution. OAuth tokens inside the refresh
    /// margin are refreshed first. Records the use (and the flow, when named) in memory,
    /// for the next [`Latchkey::flush_usage`].
    pub async fn fetch_credentials(
        self: &Arc<Self>,
        principal: &Principal,
        id: ConnectionId,
        flow: Option<&str>,
    ) -> Result<Credentials, AppError> {
        principal.require(Scope::CredentialsRead)?;
        let flow = flow.map(FlowId::parse).transpose()?;
        let c = self.visible_connection(principal, id).await?;
        let creds = match c.kind {
            ConnectionType::OAuth(_) => self.oauth_credentials(c).await?,
            _ => {
                let secrets = self.open_fields(c.secrets.as_ref(), &Self::secrets_ctx(&c))?;
                let take = |k: &str| {
                    secrets
                        .get(k)
                        .cloned()
                        .ok_or_else(|| AppError::Internal(format!("stored secrets lack {k}")))
                };
                match c.kind {
                    ConnectionType::ApiKey => Credentials::ApiKey {
                        api_key: take("api_key")?,
                    },
                    ConnectionType::Basic => Credentials::Basic {
                        username: c.config.username().unwrap_or_default().to_owned(),
                        password: take("password")?,
                    },
                    _ => {
                        let mut fields: BTreeMap<String, SecretString> = secrets.0.clone();
                        if let Some(custom) = c.config.custom_fields() {
                            for (k, value) in custom.public_values() {
                                fields.insert(k.to_owned(), SecretString::from(value.to_owned()));
                            }
                        }
                        Credentials::Custom { fields }
                    }
                }
            }
        };
        // In memory only: no write on the fetch path (see usage.rs).
        self.usage.record(id, flow, self.now());
        Ok(creds)
    }
}
