//! The fake's refresh queue and leases.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::{
    Connection, ConnectionId, ConnectionParts, Grant, Lease, RefreshSchedule, Status,
};

use crate::{RefreshLeaseStore, StoreError};

use super::{lease_is_live, FakeStore};

#[async_trait]
impl RefreshLeaseStore for FakeStore {
    async fn due_for_refresh(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        self.enter("due_for_refresh")?;
        let t = self.tables();
        // Earliest deadline (token expiry) first, then due time; no expiry sorts last.
        type Key = (bool, Option<DateTime<Utc>>, DateTime<Utc>, ConnectionId);
        let mut due: Vec<(Key, ConnectionId)> = t
            .connections
            .values()
            .filter(|c| c.status() == Status::Active && !lease_is_live(c, now))
            .filter_map(|c| {
                let expires = c.grant().and_then(|g| g.expires_at);
                c.refresh
                    .due_at
                    .filter(|d| *d <= now)
                    .map(|d| ((expires.is_none(), expires, d, c.id), c.id))
            })
            .collect();
        due.sort();
        Ok(due
            .into_iter()
            .take(limit as usize)
            .map(|(_, id)| id)
            .collect())
    }

    async fn past_expiry(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        self.enter("past_expiry")?;
        let t = self.tables();
        // Earliest expiry first, then by id, as the real store orders them.
        let mut lapsed: Vec<_> = t
            .connections
            .values()
            .filter(|c| c.status() == Status::Active)
            .filter_map(|c| {
                let expires = c.grant().and_then(|g| g.expires_at)?;
                (expires <= now).then_some((expires, c.id))
            })
            .collect();
        lapsed.sort();
        Ok(lapsed
            .into_iter()
            .take(limit as usize)
            .map(|(_, id)| id)
            .collect())
    }

    async fn claim_refresh(
        &self,
        id: ConnectionId,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<Option<Connection>, StoreError> {
        self.enter("claim_refresh")?;
        let mut t = self.tables();
        let Some(c) = t.connections.get_mut(&id) else {
            return Ok(None);
        };
        // Free when there is no lease or its deadline is before `now`.
        let free = c.refresh.lease.as_ref().is_none_or(|l| l.until < now);
        if c.status() != Status::Active || !free {
            return Ok(None);
        }
        c.refresh.lease = Some(lease.clone());
        Ok(Some(c.clone()))
    }

    async fn claim_due_refreshes(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Connection>, StoreError> {
        let ids = self.due_for_refresh(now, limit).await?;
        self.enter("claim_due_refreshes")?;
        let mut t = self.tables();
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                let c = t.connections.get_mut(&id)?;
                c.refresh.lease = Some(lease.clone());
                Some(c.clone())
            })
            .collect())
    }

    async fn save_refreshed_grant(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        grant: &Grant,
        schedule: &RefreshSchedule,
        updated_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.enter("save_refreshed_grant")?;
        let mut t = self.tables();
        let Some(c) = t.connections.get_mut(&id) else {
            return Err(StoreError::Conflict);
        };
        let ours = c.refresh.lease.as_ref().is_some_and(|l| l.owner == owner);
        if c.version != expected_version || !ours {
            return Err(StoreError::Conflict);
        }
        *c = Connection::restore(ConnectionParts {
            grant: Some(grant.clone()),
            ..c.clone().into_parts()
        });
        c.refresh = RefreshSchedule {
            lease: None,
            ..schedule.clone()
        };
        c.last_error = None;
        c.updated_at = updated_at;
        c.version += 1;
        Ok(())
    }

    async fn release_refresh(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        schedule: &RefreshSchedule,
        last_error: Option<String>,
    ) -> Result<bool, StoreError> {
        self.enter("release_refresh")?;
        let mut t = self.tables();
        let Some(c) = t.connections.get_mut(&id) else {
            return Ok(false);
        };
        if c.refresh.lease.as_ref().is_none_or(|l| l.owner != owner)
            || c.version != expected_version
        {
            return Ok(false);
        }
        c.refresh = RefreshSchedule {
            lease: None,
            ..schedule.clone()
        };
        c.last_error = last_error;
        Ok(true)
    }

    async fn drop_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError> {
        self.enter("drop_lease")?;
        let mut t = self.tables();
        let Some(c) = t.connections.get_mut(&id) else {
            return Ok(false);
        };
        if c.refresh.lease.as_ref().is_none_or(|l| l.owner != owner) {
            return Ok(false);
        }
        c.refresh.lease = None;
        Ok(true)
    }
}
