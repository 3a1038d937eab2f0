//! JSON shapes of responses. The management views never contain a secret, a token, a
//! state or a verifier: they are built field by field from non-secret data only.

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use latchkey_app::{ConnectionDetails, Credentials};
use std::collections::HashMap;

use latchkey_domain::{
    AccessKey, Connection, ConnectionEvent, ConnectionType, OAuthClient, Provider, Usage,
};

/// `used_by`: the most recently used flows and how many flows there are in all.
pub fn connection(c: &Connection, used_by: Option<(&[Usage], u64)>) -> Value {
    let mut v = json!({
        "id": c.id,
        "project_id": c.project_id,
        "name": c.name,
        "type": c.kind,
        "status": c.status(),
        "config": c.config,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "last_used_at": c.last_used_at,
        "last_error": c.last_error,
        "version": c.version,
    });
    if c.kind.is_oauth() {
        let grant = c.grant();
        v["oauth2_client_id"] = json!(c.oauth2_client_id);
        v["oauth2"] = json!({
            "scopes": grant.map(|g| g.scopes.clone()),
            "token_type": grant.map(|g| g.token_type.clone()),
            "expires_at": grant.and_then(|g| g.expires_at),
            "obtained_at": grant.map(|g| g.obtained_at),
            "has_refresh_token": grant.map(|g| g.refresh_token.is_some()),
            "next_refresh_at": c.refresh.due_at,
            "refresh_failures": c.refresh.failures,
            "authorized_user": c.authorized_user,
        });
    }
    if let Some((used_by, total)) = used_by {
        v["used_by"] = used_by
            .iter()
            .map(|u| json!({ "flow_id": u.flow_id, "first_used_at": u.first_used_at, "last_used_at": u.last_used_at, "uses": u.count }))
            .collect();
        v["used_by_total"] = json!(total);
    }
    v
}

/// A connection type as the management page offers it.
pub fn connection_type<V>(t: ConnectionType, default_clients: &HashMap<Provider, V>) -> Value {
    let label = match t {
        ConnectionType::ApiKey => "API key",
        ConnectionType::Basic => "Basic auth",
        ConnectionType::Custom => "Custom fields",
        ConnectionType::OAuth(p) => p.label(),
        // A type this server does not label yet: its name.
        _ => t.as_str(),
    };
    let mut v = json!({ "type": t, "label": label, "oauth": t.is_oauth() });
    if let ConnectionType::OAuth(p) = t {
        let spec = p.spec();
        v["default_scopes"] = json!(spec.map(|s| s.default_scopes).unwrap_or_default());
        v["required_scopes"] = json!(spec.map(|s| s.required_scopes).unwrap_or_default());
        v["has_default_app"] = json!(default_clients.contains_key(&p));
        v["tenant"] = json!(spec.and_then(|s| s.default_tenant));
    }
    v
}

pub fn details(d: &ConnectionDetails) -> Value {
    connection(&d.connection, Some((&d.used_by, d.used_by_total)))
}

pub fn event(e: &ConnectionEvent) -> Value {
    json!({ "id": e.id, "at": e.at, "kind": e.kind, "from": e.from, "to": e.to, "reason": e.reason })
}

pub fn oauth_client(c: &OAuthClient) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "project_id": c.project_id,
        "type": c.kind,
        "client_id": c.config.client_id,
        "config": c.config,
        "has_client_secret": c.client_secret.is_some(),
        "created_at": c.created_at,
    })
}

pub fn access_key(k: &AccessKey) -> Value {
    json!({ "id": k.id, "project_id": k.project_id, "name": k.name, "scopes": k.scopes, "created_at": k.created_at })
}

/// The one view that carries secrets: for workflow executions only.
pub fn credentials(c: &Credentials) -> Value {
    let kind = c.type_name();
    match c {
        Credentials::ApiKey { api_key } => {
            json!({ "type": kind, "api_key": api_key.expose_secret() })
        }
        Credentials::Basic { username, password } => {
            json!({ "type": kind, "username": username, "password": password.expose_secret() })
        }
        Credentials::Custom { fields } => json!({
            "type": kind,
            "fields": fields.iter().map(|(k, v)| (k.clone(), Value::String(v.expose_secret().to_owned()))).collect::<serde_json::Map<_, _>>(),
        }),
        Credentials::OAuth {
            access_token,
            token_type,
            expires_at,
            scopes,
            ..
        } => json!({
            "type": kind,
            "access_token": access_token.expose_secret(),
            "token_type": token_type,
            "expires_at": expires_at,
            "scopes": scopes,
        }),
    }
}
