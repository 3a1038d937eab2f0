//! Managing connections: create, read, list, update (rename, replace the secret) and
//! delete with revocation.

use serde_json::Value;

use latchkey_domain::sealed::fields;
use latchkey_domain::{
    parse_config, Connection, ConnectionEvent, ConnectionId, ConnectionName, ConnectionType,
    DomainError, Lease, NewConnection, OAuthClientId, ProjectId, Scope, SealContext, Status, Usage,
};
use latchkey_ports::{ConnectionQuery, StoreError};

use crate::cas::{Attempts, Cas, Edit};
use crate::{AppError, Latchkey, Principal};

/// Input of [`Latchkey::create_connection`], as the API received it. Its `Debug` leaves
/// the configuration out: it holds the secrets.
#[derive(Clone)]
pub struct CreateConnection {
    pub project_id: String,
    pub name: String,
    pub kind: String,
    pub config: Value,
    pub oauth2_client_id: Option<String>,
}

impl std::fmt::Debug for CreateConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateConnection")
            .field("project_id", &self.project_id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("config", &"[REDACTED]")
            .field("oauth2_client_id", &self.oauth2_client_id)
            .finish()
    }
}

/// Input of [`Latchkey::update_connection`]: every field optional. Its `Debug` leaves
/// the configuration out: it holds the secrets.
#[derive(Clone, Default)]
pub struct UpdateConnection {
    pub name: Option<String>,
    /// Replaces the whole configuration (and so the secret fields) of a non-OAuth connection.
    pub config: Option<Value>,
    /// When given, the update applies only to this version (optimistic concurrency).
    pub version: Option<i64>,
}

impl std::fmt::Debug for UpdateConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateConnection")
            .field("name", &self.name)
            .field("config", &self.config.as_ref().map(|_| "[REDACTED]"))
            .field("version", &self.version)
            .finish()
    }
}

/// A connection with where it is used.
#[derive(Debug, Clone)]
pub struct ConnectionDetails {
    pub connection: Connection,
    /// The [`USED_BY_LIMIT`] most recently used flows, most recent first.
    pub used_by: Vec<Usage>,
    /// How many distinct flows used the connection (within the retention period).
    pub used_by_total: u64,
}

/// How many flows a connection's details list at most.
pub const USED_BY_LIMIT: u32 = 100;

/// What a listing asks for, as the caller gave it (validated by `list_connections`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    pub project_id: Option<&'a str>,
    pub status: Option<&'a str>,
    pub kind: Option<&'a str>,
    /// Name contains this text (ASCII case folded).
    pub name_contains: Option<&'a str>,
    pub after: Option<&'a str>,
    pub limit: Option<u32>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Connection>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_cursor: Option<ConnectionId>,
}

/// How many connections a page holds at most.
pub const MAX_PAGE: u32 = 200;
/// How often an update without a client version is tried against concurrent writes.
const UPDATE_ATTEMPTS: Attempts = Attempts(10);

/// Where the sealed secrets of connection `id` of `project` belong.
fn secrets_ctx(project: &ProjectId, id: ConnectionId) -> SealContext {
    SealContext::new(project.as_str(), id, fields::SECRETS)
}

/// How many items a page holds when the caller does not say.
const DEFAULT_PAGE: u32 = 50;
/// How much longer than a lease a delete waits for a refresh in flight to end.
const DELETE_LEASE_GRACE: chrono::Duration = chrono::Duration::seconds(5);
/// How often a waiting delete tries to take the refresh lease.
const DELETE_LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// A page size as given (default [`DEFAULT_PAGE`]), checked against [`MAX_PAGE`].
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, AppError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(DomainError::InvalidField {
            field: "limit".into(),
            reason: format!("must be 1 to {MAX_PAGE}"),
        }
        .into());
    }
    Ok(limit)
}

impl Latchkey {
    pub(crate) fn secrets_ctx(c: &Connection) -> SealContext {
        secrets_ctx(&c.project_id, c.id)
    }

    /// Loads a connection the caller may see, or NotFound.
    pub(crate) async fn visible_connection(
        &self,
        principal: &Principal,
        id: ConnectionId,
    ) -> Result<Connection, AppError> {
        match self.svc.connections.get_connection(id).await? {
            Some(c) if principal.sees(&c.project_id) => Ok(c),
            _ => Err(AppError::NotFound("connection")),
        }
    }

    pub(crate) fn event(
        &self,
        c: &Connection,
        from: Option<Status>,
        kind: &str,
        reason: Option<String>,
    ) -> ConnectionEvent {
        ConnectionEvent {
            id: self.new_event_id(),
            connection_id: c.id,
            at: self.now(),
            from,
            to: c.status(),
            kind: kind.to_owned(),
            reason,
        }
    }

    pub async fn create_connection(
        &self,
        principal: &Principal,
        input: CreateConnection,
    ) -> Result<Connection, AppError> {
        principal.require(Scope::ConnectionsWrite)?;
        let project_id = ProjectId::parse(&input.project_id)?;
        if !principal.sees(&project_id) {
            return Err(AppError::Forbidden(
                "this access key belongs to another project".into(),
            ));
        }
        let name = ConnectionName::parse(&input.name)?;
        let kind: ConnectionType = input.kind.parse()?;
        let mut config = input.config;
        // The reference API puts oauth2_client_id at the top level; accept it inside config too.
        let client_ref = match input.oauth2_client_id {
            Some(id) => Some(id),
            None => config
                .get("oauth2_client_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        if let Some(obj) = config.as_object_mut() {
            obj.remove("oauth2_client_id");
        }
        if config.is_null() && kind.is_oauth() {
            config = Value::Object(Default::default());
        }
        if client_ref.is_some() {
            if let Some(obj) = config.as_object_mut() {
                // Marks the reference for validation, which then needs no client_id of its own.
                obj.insert("oauth2_client_id".into(), Value::Bool(true));
            }
        }
        let parsed = parse_config(kind, &config, &self.settings.url_policy)?;
        let oauth2_client_id = match client_ref {
            None => None,
            Some(raw) => {
                if !kind.is_oauth() {
                    return Err(DomainError::InvalidField {
                        field: "oauth2_client_id".into(),
                        reason: "only OAuth connections use a client registration".into(),
                    }
                    .into());
                }
                let id: OAuthClientId = raw.parse()?;
                let client = self.svc.clients.get_oauth_client(id).await?;
                match client {
                    Some(c) if c.project_id.as_ref().is_none_or(|p| *p == project_id) => {
                        if c.kind != kind {
                            return Err(DomainError::InvalidField {
                                field: "oauth2_client_id".into(),
                                reason: format!(
                                    "the client is registered for {}, not {}",
                                    c.kind, kind
                                ),
                            }
                            .into());
                        }
                        Some(id)
                    }
                    _ => return Err(AppError::NotFound("oauth2 client")),
                }
            }
        };
        let id = ConnectionId::from_random_bytes(self.random());
        // Sealed before anything is written: a cipher failure saves nothing.
        let secrets = self.seal_fields(&parsed.secrets, &secrets_ctx(&project_id, id))?;
        let connection = Connection::new(
            NewConnection {
                id,
                project_id,
                name,
                kind,
                config: parsed.config,
                secrets,
                oauth2_client_id,
            },
            self.now(),
        );
        let event = self.event(&connection, None, "created", None);
        self.svc
            .connections
            .insert_connection_capped(
                &connection,
                &event,
                self.settings.max_connections_per_project,
            )
            .await
            .map_err(|e| match e {
                StoreError::Duplicate(_) => AppError::NameTaken("connection"),
                other => other.into(),
            })?;
        tracing::info!(connection = %connection.id, project = %connection.project_id, kind = %kind, "connection created");
        Ok(connection)
    }

    pub async fn get_connection(
        &self,
        principal: &Principal,
        id: ConnectionId,
    ) -> Result<ConnectionDetails, AppError> {
        principal.require(Scope::ConnectionsRead)?;
        let mut connection = self.visible_connection(principal, id).await?;
        let mut used_by = self.svc.activity.list_usages(id, USED_BY_LIMIT).await?;
        // Counted only when the list may be cut short: below the limit it is complete.
        let mut used_by_total = if used_by.len() < USED_BY_LIMIT as usize {
            used_by.len() as u64
        } else {
            self.svc.activity.count_usages(id).await?
        };
        // Use not yet flushed: flows new to the list add to the total (a flow beyond the
        // listed ones may be counted twice until the flush).
        used_by_total += self.usage.overlay(&mut connection, &mut used_by) as u64;
        used_by.truncate(USED_BY_LIMIT as usize);
        Ok(ConnectionDetails {
            connection,
            used_by,
            used_by_total,
        })
    }

    pub async fn list_connections(
        &self,
        principal: &Principal,
        filter: ListFilter<'_>,
    ) -> Result<ListPage, AppError> {
        let ListFilter {
            project_id,
            status,
            kind,
            name_contains,
            after,
            limit,
        } = filter;
        principal.require(Scope::ConnectionsRead)?;
        let project = match (
            project_id.map(ProjectId::parse).transpose()?,
            principal.project(),
        ) {
            (Some(p), Some(mine)) if &p != mine => {
                return Ok(ListPage {
                    items: vec![],
                    next_cursor: None,
                })
            }
            (Some(p), _) => Some(p),
            (None, mine) => mine.cloned(),
        };
        let limit = page_limit(limit)?;
        let query = ConnectionQuery {
            project_id: project,
            status: status.map(str::parse).transpose()?,
            kind: kind.map(str::parse).transpose()?,
            name_contains: match name_contains.map(str::trim) {
                Some(t) if t.chars().count() > ConnectionName::MAX_CHARS => {
                    return Err(DomainError::InvalidField {
                        field: "q".into(),
                        reason: format!("must be at most {} characters", ConnectionName::MAX_CHARS),
                    }
                    .into())
                }
                Some("") | None => None,
                Some(t) => Some(t.to_owned()),
            },
            after: after.map(str::parse).transpose()?,
            limit: limit + 1,
        };
        let mut items = self.svc.connections.list_connections(&query).await?;
        self.usage.overlay_last_used(&mut items);
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|c| c.id)
        } else {
            None
        };
        Ok(ListPage { items, next_cursor })
    }

    pub async fn update_connection(
        &self,
        principal: &Principal,
        id: ConnectionId,
        patch: UpdateConnection,
    ) -> Result<Connection, AppError> {
        principal.require(Scope::ConnectionsWrite)?;
        let name = patch
            .name
            .as_deref()
            .map(ConnectionName::parse)
            .transpose()?;
        let attempts = if patch.version.is_some() {
            Attempts(1)
        } else {
            UPDATE_ATTEMPTS
        };
        let written = self
            .modify_connection(id, attempts, |c| {
                if !principal.sees(&c.project_id) {
                    return Err(AppError::NotFound("connection"));
                }
                if let Some(v) = patch.version {
                    if v != c.version {
                        return Err(AppError::VersionConflict {
                            current: Some(c.version),
                        });
                    }
                }
                let now = self.now();
                let mut events = Vec::new();
                if let Some(name) = &name {
                    c.rename(name.clone(), now);
                }
                if let Some(config) = &patch.config {
                    c.check_secret_replaceable()?;
                    let parsed = parse_config(c.kind, config, &self.settings.url_policy)?;
                    let secrets = self.seal_fields(&parsed.secrets, &Self::secrets_ctx(c))?;
                    let from = c.replace_secret(parsed.config, secrets, now)?;
                    // Not a status change, but worth a line in the history: who rotated
                    // what, when.
                    events.push(self.event(c, Some(from), "secret_replaced", None));
                }
                Ok(Edit::Write(events))
            })
            .await;
        match written {
            Ok(Cas::Written(c)) => Ok(*c),
            Ok(Cas::Refused(e)) => Err(e),
            Ok(Cas::Gone) | Err(StoreError::NotFound) => Err(AppError::NotFound("connection")),
            Ok(Cas::Skipped | Cas::Exhausted) => {
                let current = self
                    .svc
                    .connections
                    .get_connection(id)
                    .await?
                    .map(|c| c.version);
                Err(AppError::VersionConflict { current })
            }
            Err(StoreError::Duplicate(_)) => Err(AppError::NameTaken("connection")),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a connection. An OAuth grant is revoked at the provider first when it has
    /// a revocation endpoint; the stored tokens are deleted whatever the provider answers.
    pub async fn delete_connection(
        &self,
        principal: &Principal,
        id: ConnectionId,
    ) -> Result<(), AppError> {
        principal.require(Scope::ConnectionsWrite)?;
        let mut c = self.visible_connection(principal, id).await?;
        // A refresh in flight could rotate the refresh token after we revoked the old one
        // and leave the new one alive at the provider: take the refresh lease first
        // (waiting for a refresh in flight to end), then revoke what is stored by then.
        let owner = self.new_lease_owner();
        if self.take_lease_for_delete(&c, &owner).await? {
            c = self.visible_connection(principal, id).await?;
        }
        if c.grant().is_some() {
            if let Err(e) = self.revoke_grant(&c).await {
                tracing::warn!(connection = %c.id, error = %e, "revoking the grant at the provider failed; deleting the stored tokens anyway");
            }
        }
        self.usage.forget(id);
        if self.svc.connections.delete_connection(id).await? {
            tracing::info!(connection = %id, "connection deleted");
            Ok(())
        } else {
            Err(AppError::NotFound("connection"))
        }
    }

    /// Holds the refresh lease of a connection that could be refreshed, so that no
    /// refresh runs while it is deleted. Waits for a live lease of another worker for at
    /// most a lease's length (its holder's provider call ends within it). `false` when
    /// there is nothing to hold (no refresh possible) or the wait ran out.
    async fn take_lease_for_delete(&self, c: &Connection, owner: &str) -> Result<bool, AppError> {
        let refreshable =
            c.status() == Status::Active && c.grant().is_some_and(|g| g.refresh_token.is_some());
        if !refreshable {
            return Ok(false);
        }
        // Every refresher, in this process or another, claims the store's lease: waiting
        // for it is enough.
        let wait = (self.settings.refresh.lease + DELETE_LEASE_GRACE)
            .to_std()
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = self.now();
            let lease = Lease {
                owner: owner.to_owned(),
                until: now + self.settings.refresh.lease,
            };
            if self
                .svc
                .leases
                .claim_refresh(c.id, &lease, now)
                .await?
                .is_some()
            {
                return Ok(true);
            }
            match self.svc.connections.get_connection(c.id).await? {
                None => return Err(AppError::NotFound("connection")),
                Some(now_c) if now_c.status() != Status::Active => return Ok(false),
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(connection = %c.id, "a refresh lease outlived the wait; deleting anyway");
                return Ok(false);
            }
            tokio::time::sleep(DELETE_LEASE_POLL).await;
        }
    }
}
