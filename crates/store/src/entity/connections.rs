//! The `connections` table: one row per connection, its config, sealed secrets and grant.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub kind: String,
    pub status: String,
    #[sea_orm(column_type = "Text")]
    pub config: String,
    pub secrets: Option<Vec<u8>>,
    pub oauth2_client_id: Option<String>,
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub token_type: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub scopes: Option<String>,
    pub obtained_at: Option<i64>,
    pub expires_at: Option<i64>,
    #[sea_orm(column_type = "Text", nullable)]
    pub authorized_user: Option<String>,
    pub refresh_due_at: Option<i64>,
    pub refresh_failures: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
    pub version: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
