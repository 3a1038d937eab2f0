//! The `connection_events` table: a connection's history.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connection_events")]
pub struct Model {
    /// Insertion order: breaks ties between events of the same millisecond.
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub id: String,
    pub connection_id: String,
    pub at: i64,
    pub from_status: Option<String>,
    pub to_status: String,
    pub kind: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
