//! An in-memory store keeping the store contract (`latchkey_ports::contract`, which it is
//! run through like the sea-orm store), for tests where a behaving store is the point.
//! It also lets a test inject failures, count calls and write behind the app's back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

mod activity;
mod leases;
mod records;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::{
    AccessKey, AccessKeyId, AuthSession, Connection, ConnectionEvent, ConnectionId, OAuthClient,
    OAuthClientId, Usage,
};

use crate::{ConnectionQuery, ConnectionStore, StoreError, UniqueKey};

/// Locks `m`. A poisoned lock only means another test thread panicked mid-write; the
/// maps are still usable, and that test has already failed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Tables {
    connections: BTreeMap<ConnectionId, Connection>,
    /// With their insertion sequence number, as the real store keeps it.
    events: Vec<(i64, ConnectionEvent)>,
    next_seq: i64,
    usages: Vec<Usage>,
    sessions: HashMap<String, AuthSession>,
    clients: BTreeMap<OAuthClientId, OAuthClient>,
    keys: BTreeMap<AccessKeyId, AccessKey>,
}

/// One in-memory database behind every store port but the sealed values.
#[derive(Default)]
pub struct FakeStore {
    t: Mutex<Tables>,
    /// Operation name → how many of its next calls fail with `Backend`.
    failures: Mutex<HashMap<&'static str, u32>>,
    calls: Mutex<HashMap<&'static str, usize>>,
}

impl std::fmt::Debug for FakeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeStore")
    }
}

fn lease_is_live(c: &Connection, now: DateTime<Utc>) -> bool {
    c.refresh.lease.as_ref().is_some_and(|l| l.until >= now)
}

impl Tables {
    /// What the real store's foreign key refuses: a connection on a client that does
    /// not exist.
    fn check_client(&self, c: &Connection) -> Result<(), StoreError> {
        match c.oauth2_client_id {
            Some(id) if !self.clients.contains_key(&id) => Err(StoreError::Backend(
                "the connection refers to an OAuth client that does not exist".into(),
            )),
            _ => Ok(()),
        }
    }

    fn push_events(&mut self, events: &[ConnectionEvent]) {
        for e in events {
            self.next_seq += 1;
            self.events.push((self.next_seq, e.clone()));
        }
    }
}

impl FakeStore {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        lock(&self.t)
    }

    /// Makes the next `n` calls of `op` (a trait method name) fail with `Backend`.
    pub fn fail_next(&self, op: &'static str, n: u32) {
        lock(&self.failures).insert(op, n);
    }

    /// How many times `op` was called (including injected failures).
    pub fn calls(&self, op: &'static str) -> usize {
        lock(&self.calls).get(op).copied().unwrap_or(0)
    }

    fn enter(&self, op: &'static str) -> Result<(), StoreError> {
        *lock(&self.calls).entry(op).or_default() += 1;
        let mut f = lock(&self.failures);
        match f.get_mut(op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(StoreError::Backend(format!("injected failure of {op}")))
            }
            _ => Ok(()),
        }
    }

    /// The stored connection, bypassing the ports (for assertions). Panics if there is
    /// none: a test asking for one it never stored is wrong.
    pub fn connection(&self, id: ConnectionId) -> Connection {
        self.tables().connections[&id].clone()
    }

    /// Changes a stored connection as another process's write would: bumps the version.
    /// Does nothing to a connection that does not exist.
    pub fn write_behind_our_back(&self, id: ConnectionId, f: impl FnOnce(&mut Connection)) {
        if let Some(c) = self.tables().connections.get_mut(&id) {
            f(c);
            c.version += 1;
        }
    }

    pub fn events(&self, id: ConnectionId) -> Vec<ConnectionEvent> {
        let t = self.tables();
        t.events
            .iter()
            .filter(|(_, e)| e.connection_id == id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Every usage of a connection, bypassing the ports.
    pub fn usages(&self, id: ConnectionId) -> Vec<Usage> {
        let t = self.tables();
        t.usages
            .iter()
            .filter(|u| u.connection_id == id)
            .cloned()
            .collect()
    }

    pub fn sessions(&self) -> Vec<AuthSession> {
        self.tables().sessions.values().cloned().collect()
    }

    pub fn access_keys(&self) -> Vec<AccessKey> {
        self.tables().keys.values().cloned().collect()
    }
}

#[async_trait]
impl ConnectionStore for FakeStore {
    async fn insert_connection(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
    ) -> Result<(), StoreError> {
        self.enter("insert_connection")?;
        let mut t = self.tables();
        t.check_client(connection)?;
        if t.connections
            .values()
            .any(|c| c.project_id == connection.project_id && c.name == connection.name)
        {
            return Err(StoreError::Duplicate(UniqueKey::Name));
        }
        if t.connections.contains_key(&connection.id) {
            return Err(StoreError::Duplicate(UniqueKey::Id));
        }
        t.connections.insert(connection.id, connection.clone());
        t.push_events(std::slice::from_ref(event));
        Ok(())
    }

    async fn insert_connection_capped(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
        max_in_project: u64,
    ) -> Result<(), StoreError> {
        self.enter("insert_connection_capped")?;
        let mut t = self.tables();
        t.check_client(connection)?;
        if t.connections
            .values()
            .any(|c| c.project_id == connection.project_id && c.name == connection.name)
        {
            return Err(StoreError::Duplicate(UniqueKey::Name));
        }
        let in_project = t
            .connections
            .values()
            .filter(|c| c.project_id == connection.project_id)
            .count() as u64;
        if in_project >= max_in_project {
            return Err(StoreError::LimitReached {
                limit: max_in_project,
            });
        }
        t.connections.insert(connection.id, connection.clone());
        t.push_events(std::slice::from_ref(event));
        Ok(())
    }

    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.enter("get_connection")?;
        Ok(self.tables().connections.get(&id).cloned())
    }

    async fn list_connections(&self, q: &ConnectionQuery) -> Result<Vec<Connection>, StoreError> {
        self.enter("list_connections")?;
        let t = self.tables();
        Ok(t.connections
            .values()
            .filter(|c| q.project_id.as_ref().is_none_or(|p| *p == c.project_id))
            .filter(|c| q.status.is_none_or(|s| s == c.status()))
            .filter(|c| q.kind.is_none_or(|k| k == c.kind))
            .filter(|c| {
                q.name_contains.as_deref().is_none_or(|n| {
                    c.name
                        .as_str()
                        .to_ascii_lowercase()
                        .contains(&n.to_ascii_lowercase())
                })
            })
            .filter(|c| q.after.is_none_or(|a| c.id > a))
            // A limit of 0 means no limit, as in the real store.
            .take(if q.limit == 0 {
                usize::MAX
            } else {
                q.limit as usize
            })
            .cloned()
            .collect())
    }

    async fn update_connection(
        &self,
        connection: &Connection,
        events: &[ConnectionEvent],
    ) -> Result<i64, StoreError> {
        self.enter("update_connection")?;
        let expected_version = connection.version;
        let mut t = self.tables();
        t.check_client(connection)?;
        let Some(stored) = t.connections.get(&connection.id) else {
            return Err(StoreError::NotFound);
        };
        if stored.version != expected_version {
            return Err(StoreError::Conflict);
        }
        let lease = stored.refresh.lease.clone();
        if t.connections.values().any(|c| {
            c.id != connection.id
                && c.project_id == connection.project_id
                && c.name == connection.name
        }) {
            return Err(StoreError::Duplicate(UniqueKey::Name));
        }
        let mut next = connection.clone();
        // The lease columns are not written by this method.
        next.refresh.lease = lease;
        next.version = expected_version + 1;
        t.connections.insert(next.id, next);
        t.push_events(events);
        Ok(expected_version + 1)
    }

    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        self.enter("delete_connection")?;
        let mut t = self.tables();
        let existed = t.connections.remove(&id).is_some();
        t.events.retain(|(_, e)| e.connection_id != id);
        t.usages.retain(|u| u.connection_id != id);
        t.sessions.retain(|_, s| s.connection_id != id);
        Ok(existed)
    }
}
