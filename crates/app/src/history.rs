//! A connection's history (its events) and the retention that bounds it.

use latchkey_domain::{ConnectionId, EventCursor, Scope};
use latchkey_ports::{EventPage, EventQuery};

use crate::connections::page_limit;
use crate::{AppError, Latchkey, Principal};

/// How many rows one retention batch deletes.
const RETENTION_BATCH: u32 = 1_000;
/// Bounds one retention cycle's work; the next cycle goes on where this one stopped.
const RETENTION_MAX_BATCHES: usize = 50;

impl Latchkey {
    /// One page of a connection's history, oldest first. `cursor` is the previous
    /// page's `next_cursor`; `limit` defaults to 50, at most 200.
    pub async fn connection_events(
        &self,
        principal: &Principal,
        id: ConnectionId,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<EventPage, AppError> {
        principal.require(Scope::ConnectionsRead)?;
        let limit = page_limit(limit)?;
        let after = cursor.map(str::parse::<EventCursor>).transpose()?;
        self.visible_connection(principal, id).await?;
        Ok(self
            .svc
            .activity
            .list_events(id, &EventQuery { after, limit })
            .await?)
    }

    /// Retention: deletes the events and flow usages older than the retention period,
    /// in batches. Returns how many rows went. Run by the background job.
    pub async fn run_retention_cycle(&self) -> Result<u64, AppError> {
        let before = self.now() - self.settings.event_retention;
        let mut purged = 0;
        for _ in 0..RETENTION_MAX_BATCHES {
            let n = self
                .svc
                .activity
                .purge_events(before, RETENTION_BATCH)
                .await?;
            purged += n;
            if n < u64::from(RETENTION_BATCH) {
                break;
            }
        }
        for _ in 0..RETENTION_MAX_BATCHES {
            let n = self
                .svc
                .activity
                .purge_usages(before, RETENTION_BATCH)
                .await?;
            purged += n;
            if n < u64::from(RETENTION_BATCH) {
                break;
            }
        }
        Ok(purged)
    }
}
