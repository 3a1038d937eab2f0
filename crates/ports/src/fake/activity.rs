//! The fake's events and usages.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::{ConnectionEvent, ConnectionId, EventCursor, FlowId, Usage};

use crate::{ActivityStore, EventPage, EventQuery, StoreError};

use super::FakeStore;

#[async_trait]
impl ActivityStore for FakeStore {
    async fn record_usage(
        &self,
        id: ConnectionId,
        flow: Option<FlowId>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.enter("record_usage")?;
        let mut t = self.tables();
        let c = t.connections.get_mut(&id).ok_or(StoreError::NotFound)?;
        // Keeps the latest use; the version is untouched.
        c.last_used_at = Some(c.last_used_at.map_or(at, |l| l.max(at)));
        if let Some(flow) = flow {
            match t
                .usages
                .iter_mut()
                .find(|u| u.connection_id == id && u.flow_id == flow)
            {
                Some(u) => {
                    u.count += 1;
                    u.first_used_at = u.first_used_at.min(at);
                    u.last_used_at = u.last_used_at.max(at);
                }
                None => t.usages.push(Usage {
                    connection_id: id,
                    flow_id: flow,
                    first_used_at: at,
                    last_used_at: at,
                    count: 1,
                }),
            }
        }
        Ok(())
    }

    async fn record_usages(
        &self,
        last_used: &[(ConnectionId, DateTime<Utc>)],
        flows: &[Usage],
    ) -> Result<(), StoreError> {
        self.enter("record_usages")?;
        let mut t = self.tables();
        for (id, at) in last_used {
            // Gone connections are skipped; the latest use wins; the version is untouched.
            if let Some(c) = t.connections.get_mut(id) {
                c.last_used_at = Some(c.last_used_at.map_or(*at, |l| l.max(*at)));
            }
        }
        for new in flows {
            if !t.connections.contains_key(&new.connection_id) {
                continue;
            }
            match t
                .usages
                .iter_mut()
                .find(|u| u.connection_id == new.connection_id && u.flow_id == new.flow_id)
            {
                Some(u) => {
                    u.count += new.count;
                    u.first_used_at = u.first_used_at.min(new.first_used_at);
                    u.last_used_at = u.last_used_at.max(new.last_used_at);
                }
                None => t.usages.push(new.clone()),
            }
        }
        Ok(())
    }

    async fn list_usages(&self, id: ConnectionId, limit: u32) -> Result<Vec<Usage>, StoreError> {
        self.enter("list_usages")?;
        let mut u = self.usages(id);
        u.sort_by(|a, b| {
            b.last_used_at
                .cmp(&a.last_used_at)
                .then_with(|| a.flow_id.as_str().cmp(b.flow_id.as_str()))
        });
        u.truncate(limit as usize);
        Ok(u)
    }

    async fn count_usages(&self, id: ConnectionId) -> Result<u64, StoreError> {
        self.enter("count_usages")?;
        Ok(self.usages(id).len() as u64)
    }

    async fn list_events(
        &self,
        id: ConnectionId,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError> {
        self.enter("list_events")?;
        let t = self.tables();
        let mut rows: Vec<(EventCursor, ConnectionEvent)> = t
            .events
            .iter()
            .filter(|(_, e)| e.connection_id == id)
            .map(|(seq, e)| {
                let at_ms = e.at.timestamp_millis();
                (EventCursor { at_ms, seq: *seq }, e.clone())
            })
            .filter(|(cur, _)| query.after.is_none_or(|a| *cur > a))
            .collect();
        rows.sort_by_key(|(cur, _)| *cur);
        let limit = query.limit.max(1) as usize;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(EventPage {
            next_cursor: if more {
                rows.last().map(|(c, _)| *c)
            } else {
                None
            },
            events: rows.into_iter().map(|(_, e)| e).collect(),
        })
    }

    async fn purge_events(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        self.enter("purge_events")?;
        let mut t = self.tables();
        let mut old: Vec<(DateTime<Utc>, i64)> = t
            .events
            .iter()
            .filter(|(_, e)| e.at < before)
            .map(|(seq, e)| (e.at, *seq))
            .collect();
        old.sort();
        old.truncate(batch as usize);
        let gone: std::collections::HashSet<i64> = old.iter().map(|(_, s)| *s).collect();
        t.events.retain(|(seq, _)| !gone.contains(seq));
        Ok(gone.len() as u64)
    }

    async fn purge_usages(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        self.enter("purge_usages")?;
        let mut t = self.tables();
        let mut old: Vec<(DateTime<Utc>, ConnectionId, String)> = t
            .usages
            .iter()
            .filter(|u| u.last_used_at < before)
            .map(|u| {
                (
                    u.last_used_at,
                    u.connection_id,
                    u.flow_id.as_str().to_owned(),
                )
            })
            .collect();
        old.sort();
        old.truncate(batch as usize);
        let before_len = t.usages.len();
        t.usages.retain(|u| {
            !old.iter()
                .any(|(_, c, f)| *c == u.connection_id && f == u.flow_id.as_str())
        });
        Ok((before_len - t.usages.len()) as u64)
    }
}
