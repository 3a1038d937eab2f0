//! The response shapes of the API as OpenAPI schemas (utoipa). Each mirrors a builder
//! in `views.rs`; the schema-driven fuzz test (`cargo xtask fuzz`) checks every
//! response against them, so a view that drifts from its schema fails CI.

#![allow(dead_code)] // Read by the OpenAPI derive only.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// `{"error":{"code","message"}}`: every error of the API. `code` is stable; each
/// response lists the codes it can carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: super::error::ErrorCode,
    /// For people; never contains a secret or internals.
    pub message: String,
    /// The request field the error is about (`name`, `config.api_key`,
    /// `config.fields.<name>`, `q`, ...), when it is about one; a form shows the message
    /// next to that field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Incomplete,
    Active,
    Expired,
}

/// OAuth 2.0 state of a connection (OAuth types only). No token, ever.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuth2State {
    pub scopes: Option<Vec<String>>,
    pub token_type: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub obtained_at: Option<DateTime<Utc>>,
    pub has_refresh_token: Option<bool>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub refresh_failures: i64,
    /// Claims of the authorized user (userinfo), if known.
    #[schema(value_type = Option<Object>)]
    pub authorized_user: Option<Value>,
}

/// One flow's use of a connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub flow_id: String,
    pub first_used_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub uses: i64,
}

/// A connection as the management API shows it: never a secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    #[schema(format = Uuid)]
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// `api_key`, `basic`, `custom`, `google`, `microsoft`, `dropbox`, `box`, `notion`,
    /// `github` or `oauth2`.
    #[serde(rename = "type")]
    pub kind: String,
    pub status: ConnectionStatus,
    /// The non-secret part of the config.
    #[schema(value_type = Object)]
    pub config: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// For `version` in a PATCH (compare-and-set).
    pub version: i64,
    /// OAuth types only.
    #[schema(format = Uuid)]
    pub oauth2_client_id: Option<String>,
    /// OAuth types only.
    pub oauth2: Option<OAuth2State>,
    /// Single-connection answers only: the most recent flows that fetched its
    /// credentials (at most 100).
    pub used_by: Option<Vec<UsageView>>,
    /// Single-connection answers only: how many distinct flows used it.
    pub used_by_total: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionData {
    pub data: ConnectionView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    pub data: Vec<ConnectionView>,
    pub page: Page,
}

/// A connection's credentials, for a workflow execution. Which fields are present
/// depends on `type`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsView {
    #[serde(rename = "type")]
    pub kind: String,
    pub api_key: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `custom`: every field, secret or not.
    pub fields: Option<std::collections::BTreeMap<String, String>>,
    pub access_token: Option<String>,
    pub token_type: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsData {
    pub data: CredentialsView,
}

/// A status change of a connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    #[schema(format = Uuid)]
    pub id: String,
    pub at: DateTime<Utc>,
    /// `created`, `authorized`, `refresh_rejected`, `lapsed`, ...
    pub kind: String,
    pub from: Option<ConnectionStatus>,
    pub to: ConnectionStatus,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub data: Vec<EventView>,
    pub page: Page,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizationUrl {
    /// Send the user here to consent.
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizationData {
    pub data: AuthorizationUrl,
}

/// A reusable OAuth client registration; never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthClientView {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    /// `null`: usable by every project.
    pub project_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Option<String>)]
    pub client_id: Option<Value>,
    #[schema(value_type = Object)]
    pub config: Value,
    pub has_client_secret: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthClientData {
    pub data: OAuthClientView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthClientList {
    pub data: Vec<OAuthClientView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessKeyView {
    #[schema(format = Uuid)]
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// `connections:read`, `connections:write`, `credentials:read`, `metrics:read`.
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A new access key: `key` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAccessKey {
    #[schema(format = Uuid)]
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The bearer token. Only its hash is kept.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAccessKeyData {
    pub data: CreatedAccessKey,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessKeyList {
    pub data: Vec<AccessKeyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Who the bearer is (`GET /v1/me`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    /// `admin` or `access_key`.
    pub kind: String,
    /// The access key's id (keys only).
    #[schema(format = Uuid)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The key's project; `null` for the admin, who sees every project.
    pub project_id: Option<String>,
    pub scopes: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeData {
    pub data: MeView,
}

/// A connection type as a form offers it (`GET /v1/connection-types`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionTypeView {
    /// The name to create it with (`api_key`, `google`, `oauth2`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// For people: `API key`, `Google`, `OAuth 2.0 (any provider)`, ...
    pub label: String,
    pub oauth: bool,
    /// OAuth types: requested when a connection names no scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_scopes: Option<Vec<String>>,
    /// OAuth types: always requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_scopes: Option<Vec<String>>,
    /// OAuth types: the deployment has its own app for this provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_default_app: Option<bool>,
    /// Microsoft: the default tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionTypeList {
    pub data: Vec<ConnectionTypeView>,
}
