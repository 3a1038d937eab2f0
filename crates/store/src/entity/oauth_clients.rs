//! The `oauth_clients` table: reusable OAuth client registrations.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_clients")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    pub project_id: Option<String>,
    /// `project_id`, or [`GLOBAL_SCOPE`] for a global client: NULLs are distinct in a
    /// unique index, so uniqueness of names among globals needs a non-null column.
    pub scope: String,
    pub kind: String,
    #[sea_orm(column_type = "Text")]
    pub config: String,
    pub client_secret: Option<Vec<u8>>,
    pub created_at: i64,
}

/// The `scope` of global clients; not a valid project id, so it cannot collide.
pub const GLOBAL_SCOPE: &str = "*";

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
