//! The `auth_sessions` table: pending consent flows, by state hash, taken once.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "auth_sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub state_hash: String,
    pub connection_id: String,
    pub project_id: String,
    pub pkce_verifier: Option<Vec<u8>>,
    #[sea_orm(column_type = "Text")]
    pub token_endpoint: String,
    #[sea_orm(column_type = "Text")]
    pub redirect_uri: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub issuer: Option<String>,
    pub require_iss: bool,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
