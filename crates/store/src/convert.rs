//! Domain values <-> rows. Reading never panics: anything the database holds that the
//! domain would refuse is reported as `StoreError::Backend`, naming the row and column
//! but never a value that could be secret.

use std::str::FromStr;

use latchkey_domain::{
    AccessKey, AuthSession, Connection, ConnectionConfig, ConnectionEvent, ConnectionName,
    ConnectionParts, ConnectionType, Grant, Lease, OAuthClient, OAuthSettings, RefreshSchedule,
    Sealed, Status, Usage,
};
use latchkey_ports::StoreError;
use sea_orm::ActiveValue::{NotSet, Set};

use crate::entity::{
    access_keys, auth_sessions, connection_events, connection_usages, connections, oauth_clients,
};
use crate::time::{from_millis, opt_from_millis, to_millis};

fn corrupt(table: &str, id: &str, column: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!(
        "corrupt row in {table} ({id}): column {column}: {why}"
    ))
}

fn parse<T>(table: &str, id: &str, column: &str, value: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| corrupt(table, id, column, e))
}

fn json_value(
    table: &str,
    id: &str,
    column: &str,
    value: &str,
) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(value).map_err(|e| corrupt(table, id, column, e))
}

fn json_strings(
    table: &str,
    id: &str,
    column: &str,
    value: &str,
) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(value).map_err(|e| corrupt(table, id, column, e))
}

fn strings_to_json<S: AsRef<str>>(items: &[S]) -> String {
    serde_json::Value::from(items.iter().map(|s| s.as_ref()).collect::<Vec<_>>()).to_string()
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

/// The grant columns of a connection row, in storage form.
pub(crate) struct GrantColumns {
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub token_type: Option<String>,
    pub scopes: Option<String>,
    pub obtained_at: Option<i64>,
    pub expires_at: Option<i64>,
}

pub(crate) fn grant_columns(grant: Option<&Grant>) -> GrantColumns {
    match grant {
        None => GrantColumns {
            access_token: None,
            refresh_token: None,
            token_type: None,
            scopes: None,
            obtained_at: None,
            expires_at: None,
        },
        Some(g) => GrantColumns {
            access_token: Some(g.access_token.0.clone()),
            refresh_token: g.refresh_token.as_ref().map(|s| s.0.clone()),
            token_type: Some(g.token_type.clone()),
            scopes: Some(strings_to_json(&g.scopes)),
            obtained_at: Some(to_millis(g.obtained_at)),
            expires_at: g.expires_at.map(to_millis),
        },
    }
}

/// Every column of the connection, as an active model with all fields set.
pub(crate) fn connection_row(c: &Connection) -> connections::ActiveModel {
    let g = grant_columns(c.grant());
    let lease = c.refresh.lease.as_ref();
    connections::ActiveModel {
        id: Set(c.id.to_string()),
        project_id: Set(c.project_id.as_str().to_owned()),
        name: Set(c.name.as_str().to_owned()),
        kind: Set(c.kind.as_str().to_owned()),
        status: Set(c.status().as_str().to_owned()),
        config: Set(c.config.to_public_json().to_string()),
        secrets: Set(c.secrets.as_ref().map(|s| s.0.clone())),
        oauth2_client_id: Set(c.oauth2_client_id.map(|id| id.to_string())),
        access_token: Set(g.access_token),
        refresh_token: Set(g.refresh_token),
        token_type: Set(g.token_type),
        scopes: Set(g.scopes),
        obtained_at: Set(g.obtained_at),
        expires_at: Set(g.expires_at),
        authorized_user: Set(c.authorized_user.as_ref().map(|v| v.to_string())),
        refresh_due_at: Set(c.refresh.due_at.map(to_millis)),
        refresh_failures: Set(i64::from(c.refresh.failures)),
        lease_owner: Set(lease.map(|l| l.owner.clone())),
        lease_until: Set(lease.map(|l| to_millis(l.until))),
        last_error: Set(c.last_error.clone()),
        created_at: Set(to_millis(c.created_at)),
        updated_at: Set(to_millis(c.updated_at)),
        last_used_at: Set(c.last_used_at.map(to_millis)),
        version: Set(c.version),
    }
}

pub(crate) fn connection_from_row(m: connections::Model) -> Result<Connection, StoreError> {
    const T: &str = "connections";
    let id = m.id.as_str();
    let grant = match m.access_token {
        None => None,
        Some(access_token) => {
            let missing = |col: &str| corrupt(T, id, col, "missing while access_token is set");
            Some(Grant {
                access_token: Sealed(access_token),
                refresh_token: m.refresh_token.map(Sealed),
                token_type: m.token_type.ok_or_else(|| missing("token_type"))?,
                scopes: match m.scopes {
                    Some(s) => json_strings(T, id, "scopes", &s)?,
                    None => Vec::new(),
                },
                obtained_at: from_millis(m.obtained_at.ok_or_else(|| missing("obtained_at"))?)?,
                expires_at: opt_from_millis(m.expires_at)?,
            })
        }
    };
    let lease = match (m.lease_owner, m.lease_until) {
        (Some(owner), Some(until)) => Some(Lease {
            owner,
            until: from_millis(until)?,
        }),
        // Both columns are always written together; a half lease is no lease.
        _ => None,
    };
    let kind = parse::<ConnectionType>(T, id, "kind", &m.kind)?;
    Ok(Connection::restore(ConnectionParts {
        id: parse(T, id, "id", id)?,
        project_id: parse(T, id, "project_id", &m.project_id)?,
        name: ConnectionName::parse(&m.name).map_err(|e| corrupt(T, id, "name", e))?,
        kind,
        status: parse::<Status>(T, id, "status", &m.status)?,
        config: ConnectionConfig::from_public_json(kind, &json_value(T, id, "config", &m.config)?)
            .map_err(|e| corrupt(T, id, "config", e))?,
        secrets: m.secrets.map(Sealed),
        oauth2_client_id: m
            .oauth2_client_id
            .as_deref()
            .map(|v| parse(T, id, "oauth2_client_id", v))
            .transpose()?,
        grant,
        authorized_user: m
            .authorized_user
            .as_deref()
            .map(|v| json_value(T, id, "authorized_user", v))
            .transpose()?,
        refresh: RefreshSchedule {
            due_at: opt_from_millis(m.refresh_due_at)?,
            failures: u32::try_from(m.refresh_failures)
                .map_err(|e| corrupt(T, id, "refresh_failures", e))?,
            lease,
        },
        last_error: m.last_error,
        created_at: from_millis(m.created_at)?,
        updated_at: from_millis(m.updated_at)?,
        last_used_at: opt_from_millis(m.last_used_at)?,
        version: m.version,
    }))
}

pub(crate) fn event_row(e: &ConnectionEvent) -> connection_events::ActiveModel {
    connection_events::ActiveModel {
        seq: NotSet,
        id: Set(e.id.to_string()),
        connection_id: Set(e.connection_id.to_string()),
        at: Set(to_millis(e.at)),
        from_status: Set(e.from.map(|s| s.as_str().to_owned())),
        to_status: Set(e.to.as_str().to_owned()),
        kind: Set(e.kind.clone()),
        reason: Set(e.reason.clone()),
    }
}

pub(crate) fn event_from_row(m: connection_events::Model) -> Result<ConnectionEvent, StoreError> {
    const T: &str = "connection_events";
    let id = m.id.as_str();
    Ok(ConnectionEvent {
        id: parse(T, id, "id", id)?,
        connection_id: parse(T, id, "connection_id", &m.connection_id)?,
        at: from_millis(m.at)?,
        from: m
            .from_status
            .as_deref()
            .map(|v| parse(T, id, "from_status", v))
            .transpose()?,
        to: parse(T, id, "to_status", &m.to_status)?,
        kind: m.kind,
        reason: m.reason,
    })
}

pub(crate) fn usage_from_row(m: connection_usages::Model) -> Result<Usage, StoreError> {
    const T: &str = "connection_usages";
    let id = format!("{}/{}", m.connection_id, m.flow_id);
    Ok(Usage {
        connection_id: parse(T, &id, "connection_id", &m.connection_id)?,
        flow_id: parse(T, &id, "flow_id", &m.flow_id)?,
        first_used_at: from_millis(m.first_used_at)?,
        last_used_at: from_millis(m.last_used_at)?,
        count: m.use_count,
    })
}

// ---------------------------------------------------------------------------------------
// Other records
// ---------------------------------------------------------------------------------------

pub(crate) fn auth_session_row(s: &AuthSession) -> auth_sessions::ActiveModel {
    auth_sessions::ActiveModel {
        state_hash: Set(s.state_hash.clone()),
        connection_id: Set(s.connection_id.to_string()),
        project_id: Set(s.project_id.as_str().to_owned()),
        pkce_verifier: Set(s.pkce_verifier.as_ref().map(|v| v.0.clone())),
        token_endpoint: Set(s.token_endpoint.clone()),
        redirect_uri: Set(s.redirect_uri.clone()),
        issuer: Set(s.issuer.clone()),
        require_iss: Set(s.require_iss),
        created_at: Set(to_millis(s.created_at)),
        expires_at: Set(to_millis(s.expires_at)),
    }
}

pub(crate) fn auth_session_from_row(m: auth_sessions::Model) -> Result<AuthSession, StoreError> {
    const T: &str = "auth_sessions";
    // The state hash is the key; it is a hash, not the state, so naming it is safe.
    let id = m.state_hash.as_str();
    Ok(AuthSession {
        connection_id: parse(T, id, "connection_id", &m.connection_id)?,
        project_id: parse(T, id, "project_id", &m.project_id)?,
        pkce_verifier: m.pkce_verifier.map(Sealed),
        token_endpoint: m.token_endpoint,
        redirect_uri: m.redirect_uri,
        issuer: m.issuer,
        require_iss: m.require_iss,
        created_at: from_millis(m.created_at)?,
        expires_at: from_millis(m.expires_at)?,
        state_hash: m.state_hash,
    })
}

pub(crate) fn oauth_client_row(c: &OAuthClient) -> oauth_clients::ActiveModel {
    oauth_clients::ActiveModel {
        id: Set(c.id.to_string()),
        name: Set(c.name.as_str().to_owned()),
        project_id: Set(c.project_id.as_ref().map(|p| p.as_str().to_owned())),
        scope: Set(c
            .project_id
            .as_ref()
            .map_or(oauth_clients::GLOBAL_SCOPE, |p| p.as_str())
            .to_owned()),
        kind: Set(c.kind.as_str().to_owned()),
        config: Set(c.config.to_public_json().to_string()),
        client_secret: Set(c.client_secret.as_ref().map(|s| s.0.clone())),
        created_at: Set(to_millis(c.created_at)),
    }
}

pub(crate) fn oauth_client_from_row(m: oauth_clients::Model) -> Result<OAuthClient, StoreError> {
    const T: &str = "oauth_clients";
    let id = m.id.as_str();
    Ok(OAuthClient {
        id: parse(T, id, "id", id)?,
        name: ConnectionName::parse(&m.name).map_err(|e| corrupt(T, id, "name", e))?,
        project_id: m
            .project_id
            .as_deref()
            .map(|v| parse(T, id, "project_id", v))
            .transpose()?,
        kind: parse(T, id, "kind", &m.kind)?,
        config: OAuthSettings::from_public_json(&json_value(T, id, "config", &m.config)?),
        client_secret: m.client_secret.map(Sealed),
        created_at: from_millis(m.created_at)?,
    })
}

pub(crate) fn access_key_row(k: &AccessKey) -> access_keys::ActiveModel {
    access_keys::ActiveModel {
        id: Set(k.id.to_string()),
        project_id: Set(k.project_id.as_str().to_owned()),
        name: Set(k.name.as_str().to_owned()),
        scopes: Set(strings_to_json(
            &k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        )),
        secret_hash: Set(k.secret_hash.clone()),
        created_at: Set(to_millis(k.created_at)),
    }
}

pub(crate) fn access_key_from_row(m: access_keys::Model) -> Result<AccessKey, StoreError> {
    const T: &str = "access_keys";
    let id = m.id.as_str();
    Ok(AccessKey {
        id: parse(T, id, "id", id)?,
        project_id: parse(T, id, "project_id", &m.project_id)?,
        name: ConnectionName::parse(&m.name).map_err(|e| corrupt(T, id, "name", e))?,
        scopes: json_strings(T, id, "scopes", &m.scopes)?
            .iter()
            .map(|s| parse(T, id, "scopes", s))
            .collect::<Result<_, _>>()?,
        secret_hash: m.secret_hash,
        created_at: from_millis(m.created_at)?,
    })
}
