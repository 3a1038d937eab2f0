//! Reusable OAuth client registrations.

use secrecy::SecretString;
use serde_json::{Map, Value};

use latchkey_domain::{
    parse_config, ConnectionName, ConnectionType, DomainError, OAuthClient, OAuthClientId,
    ProjectId, Scope,
};
use latchkey_ports::StoreError;

use crate::{AppError, Latchkey, Principal};

/// Input of [`Latchkey::create_oauth_client`]. Its `Debug` names the settings without
/// their values (a misplaced secret there must not reach a log).
#[derive(Clone)]
pub struct CreateOAuthClient {
    pub name: String,
    /// `None`: usable by every project (admin only).
    pub project_id: Option<String>,
    pub kind: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// For `oauth2` clients: the endpoint fields of `oauth2_config`.
    pub settings: Map<String, Value>,
}

impl std::fmt::Debug for CreateOAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateOAuthClient")
            .field("name", &self.name)
            .field("project_id", &self.project_id)
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Latchkey {
    pub async fn create_oauth_client(
        &self,
        principal: &Principal,
        input: CreateOAuthClient,
    ) -> Result<OAuthClient, AppError> {
        principal.require(Scope::ConnectionsWrite)?;
        let project_id = match &input.project_id {
            Some(p) => {
                let p = ProjectId::parse(p)?;
                if !principal.sees(&p) {
                    return Err(AppError::Forbidden(
                        "this access key belongs to another project".into(),
                    ));
                }
                Some(p)
            }
            None => {
                principal.require_admin().map_err(|_| {
                    AppError::Forbidden("only the admin token may register a client for every project; give project_id".into())
                })?;
                None
            }
        };
        let name = ConnectionName::parse(&input.name)?;
        let kind: ConnectionType = input.kind.parse()?;
        if !kind.is_oauth() {
            return Err(DomainError::InvalidField {
                field: "type".into(),
                reason: format!("an OAuth client is for an OAuth provider type, not {kind}"),
            }
            .into());
        }
        if input.client_id.trim().is_empty() {
            return Err(DomainError::InvalidField {
                field: "client_id".into(),
                reason: "is required".into(),
            }
            .into());
        }
        // Validated with the same rules as a connection's oauth2_config.
        let mut oc = input.settings.clone();
        for k in ["client_id", "client_secret"] {
            if oc.contains_key(k) {
                return Err(DomainError::InvalidField {
                    field: k.into(),
                    reason: "give it at the top level".into(),
                }
                .into());
            }
        }
        oc.insert("client_id".into(), Value::String(input.client_id.clone()));
        if let Some(s) = &input.client_secret {
            oc.insert(
                "client_secret".into(),
                Value::String(secrecy::ExposeSecret::expose_secret(s).to_owned()),
            );
        }
        let mut config = Map::new();
        config.insert("oauth2_config".into(), Value::Object(oc));
        let parsed = parse_config(kind, &Value::Object(config), &self.settings.url_policy)
            .map_err(|e| {
                // The client's settings are given at the top level of its request.
                match e
                    .field_name()
                    .map(|f| f.trim_start_matches("config.oauth2_config.").to_owned())
                {
                    Some(top) => e.with_field(top),
                    None => e,
                }
            })?;
        let mut client = OAuthClient {
            id: OAuthClientId::from_random_bytes(self.random()),
            name,
            project_id,
            kind,
            // `kind` is an OAuth type (checked above), which parses to OAuth settings.
            config: parsed.config.oauth().cloned().unwrap_or_default(),
            client_secret: None,
            created_at: self.now(),
        };
        if let Some(secret) = parsed.secrets.get("client_secret") {
            client.client_secret = Some(self.seal_client_secret(&client, secret)?);
        }
        self.svc
            .clients
            .insert_oauth_client(&client)
            .await
            .map_err(|e| match e {
                StoreError::Duplicate(_) => AppError::NameTaken("oauth2 client"),
                other => other.into(),
            })?;
        Ok(client)
    }

    pub async fn get_oauth_client(
        &self,
        principal: &Principal,
        id: OAuthClientId,
    ) -> Result<OAuthClient, AppError> {
        principal.require(Scope::ConnectionsRead)?;
        match self.svc.clients.get_oauth_client(id).await? {
            Some(c) if c.project_id.as_ref().is_none_or(|p| principal.sees(p)) => Ok(c),
            _ => Err(AppError::NotFound("oauth2 client")),
        }
    }

    pub async fn list_oauth_clients(
        &self,
        principal: &Principal,
    ) -> Result<Vec<OAuthClient>, AppError> {
        principal.require(Scope::ConnectionsRead)?;
        Ok(self
            .svc
            .clients
            .list_oauth_clients(principal.project().cloned())
            .await?)
    }

    pub async fn delete_oauth_client(
        &self,
        principal: &Principal,
        id: OAuthClientId,
    ) -> Result<(), AppError> {
        principal.require(Scope::ConnectionsWrite)?;
        let client = self.get_oauth_client(principal, id).await?;
        if client.project_id.is_none() {
            principal.require_admin()?;
        }
        match self.svc.clients.delete_oauth_client(id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AppError::NotFound("oauth2 client")),
            Err(StoreError::InUse { references }) => Err(AppError::InUse(match references {
                0 | 1 => "the OAuth client is used by a connection".to_owned(),
                n => format!("the OAuth client is used by {n} connections"),
            })),
            Err(e) => Err(e.into()),
        }
    }
}
