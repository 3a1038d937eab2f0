//! The in-process cache of connections and access keys: a decorator of the store ports,
//! so the credentials path reads memory instead of the database.
//!
//! What is cached is what the store returns: secrets stay sealed in memory and are
//! opened per request. The cache is correct because:
//! - every write through this decorator drops the written record, whatever the store
//!   answered (a conflict proves the cached copy stale);
//! - writes made elsewhere (another process, or code writing the store directly) arrive
//!   through the [`ChangeFeed`], which drops the record or, on `Resync`, everything;
//! - while the feed is down nothing is served from or put into the cache;
//! - a value read from the store is kept only if no invalidation happened while it was
//!   being read (a generation counter), so a read racing a write cannot resurrect the
//!   old value.
//!
//! Only single-record reads are cached (`get_connection`, `get_access_key`); listings
//! and every decision that needs the database's word (claims, compare-and-set writes)
//! go to the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::{
    AccessKey, AccessKeyId, Connection, ConnectionEvent, ConnectionId, FlowId, Grant, Lease,
    ProjectId, RefreshSchedule, Usage,
};
use latchkey_ports::{
    AccessKeyStore, ActivityStore, Change, ChangeFeed, ConnectionQuery, ConnectionStore, EventPage,
    EventQuery, RefreshLeaseStore, StoreError,
};

/// How many connections (and, separately, access keys) are kept at most. Beyond it an
/// arbitrary entry makes room: memory stays bounded with any number of connections.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

#[derive(Default)]
struct CacheState {
    /// Whether the change feed is listening; until then the cache is bypassed.
    serving: bool,
    /// Bumped by every invalidation; a read from the store is kept only if unchanged.
    generation: u64,
    connections: HashMap<ConnectionId, Connection>,
    keys: HashMap<AccessKeyId, AccessKey>,
}

/// The caching decorator of [`ConnectionStore`] and [`AccessKeyStore`]. It also
/// decorates [`ActivityStore`] and [`RefreshLeaseStore`], whose writes change a cached
/// connection (its `last_used_at`, its lease and grant), to drop what they wrote.
pub struct CachedStore {
    connections: Arc<dyn ConnectionStore>,
    activity: Arc<dyn ActivityStore>,
    leases: Arc<dyn RefreshLeaseStore>,
    keys: Arc<dyn AccessKeyStore>,
    capacity: usize,
    state: RwLock<CacheState>,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("CachedStore")
            .field("serving", &s.serving)
            .field("connections", &s.connections.len())
            .field("keys", &s.keys.len())
            .finish()
    }
}

/// The generation a read from the store starts at, or `None` if the cache is off.
fn fill_generation(s: &CacheState) -> Option<u64> {
    s.serving.then_some(s.generation)
}

fn insert_bounded<K: std::hash::Hash + Eq + Copy, V>(
    map: &mut HashMap<K, V>,
    capacity: usize,
    k: K,
    v: V,
) {
    if map.len() >= capacity && !map.contains_key(&k) {
        if let Some(evict) = map.keys().next().copied() {
            map.remove(&evict);
        }
    }
    map.insert(k, v);
}

impl CachedStore {
    /// A cache in front of the stores, not serving until [`CachedStore::follow`] has
    /// heard the feed's first `Resync` (or [`CachedStore::serve_without_feed`] is called).
    pub fn new<S>(store: Arc<S>, capacity: usize) -> Self
    where
        S: ConnectionStore + ActivityStore + RefreshLeaseStore + AccessKeyStore + 'static,
    {
        Self {
            connections: store.clone(),
            activity: store.clone(),
            leases: store.clone(),
            keys: store,
            capacity: capacity.max(1),
            state: RwLock::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, CacheState> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves from memory with no feed: for a process that is the only writer of its
    /// database (tests, embedding).
    pub fn serve_without_feed(&self) {
        self.write().serving = true;
    }

    /// Drops everything. `serving` says whether the cache may be used afterwards.
    fn reset(&self, serving: bool) {
        let mut s = self.write();
        s.generation += 1;
        s.serving = serving;
        s.connections.clear();
        s.keys.clear();
    }

    fn invalidate_connection(&self, id: ConnectionId) {
        let mut s = self.write();
        s.generation += 1;
        s.connections.remove(&id);
    }

    fn invalidate_key(&self, id: AccessKeyId) {
        let mut s = self.write();
        s.generation += 1;
        s.keys.remove(&id);
    }

    /// Applies one change from the feed.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Connection(id) => self.invalidate_connection(id),
            Change::AccessKey(id) => self.invalidate_key(id),
            Change::Resync => self.reset(true),
        }
    }

    /// How many connections and access keys are held (for tests and diagnostics).
    pub fn len(&self) -> (usize, usize) {
        let s = self.read();
        (s.connections.len(), s.keys.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Whether reads are served from memory (the feed is listening).
    pub fn is_serving(&self) -> bool {
        self.read().serving
    }

    /// Applies the feed's changes for as long as the process runs. While the feed is
    /// down, the cache is bypassed; it serves again, empty, after the next `Resync`.
    pub async fn follow(self: Arc<Self>, feed: Arc<dyn ChangeFeed>) {
        let mut delay = Duration::from_millis(100);
        loop {
            match feed.next_change().await {
                Ok(change) => {
                    if change == Change::Resync {
                        tracing::debug!("change feed listening: cache (re)started empty");
                        delay = Duration::from_millis(100);
                    }
                    self.apply(change);
                }
                Err(e) => {
                    if self.is_serving() {
                        tracing::warn!(error = %e, "change feed lost: reading from the database until it is back");
                    }
                    self.reset(false);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[async_trait]
impl ConnectionStore for CachedStore {
    async fn insert_connection(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
    ) -> Result<(), StoreError> {
        let r = self.connections.insert_connection(connection, event).await;
        self.invalidate_connection(connection.id);
        r
    }

    async fn insert_connection_capped(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
        max_in_project: u64,
    ) -> Result<(), StoreError> {
        let r = self
            .connections
            .insert_connection_capped(connection, event, max_in_project)
            .await;
        self.invalidate_connection(connection.id);
        r
    }

    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError> {
        let generation = {
            let s = self.read();
            if let (true, Some(c)) = (s.serving, s.connections.get(&id)) {
                return Ok(Some(c.clone()));
            }
            fill_generation(&s)
        };
        let loaded = self.connections.get_connection(id).await?;
        if let (Some(generation), Some(c)) = (generation, &loaded) {
            let mut s = self.write();
            if s.serving && s.generation == generation {
                insert_bounded(&mut s.connections, self.capacity, id, c.clone());
            }
        }
        Ok(loaded)
    }

    async fn list_connections(
        &self,
        query: &ConnectionQuery,
    ) -> Result<Vec<Connection>, StoreError> {
        self.connections.list_connections(query).await
    }

    async fn update_connection(
        &self,
        connection: &Connection,
        events: &[ConnectionEvent],
    ) -> Result<i64, StoreError> {
        let r = self.connections.update_connection(connection, events).await;
        self.invalidate_connection(connection.id);
        r
    }

    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        let r = self.connections.delete_connection(id).await;
        self.invalidate_connection(id);
        r
    }
}

#[async_trait]
impl ActivityStore for CachedStore {
    async fn record_usage(
        &self,
        id: ConnectionId,
        flow: Option<FlowId>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let r = self.activity.record_usage(id, flow, at).await;
        self.invalidate_connection(id);
        r
    }

    async fn record_usages(
        &self,
        last_used: &[(ConnectionId, DateTime<Utc>)],
        flows: &[Usage],
    ) -> Result<(), StoreError> {
        let r = self.activity.record_usages(last_used, flows).await;
        // last_used_at changed: drop them so a read shows the stored time.
        let mut s = self.write();
        s.generation += 1;
        for (id, _) in last_used {
            s.connections.remove(id);
        }
        r
    }

    async fn list_usages(&self, id: ConnectionId, limit: u32) -> Result<Vec<Usage>, StoreError> {
        self.activity.list_usages(id, limit).await
    }

    async fn count_usages(&self, id: ConnectionId) -> Result<u64, StoreError> {
        self.activity.count_usages(id).await
    }

    async fn list_events(
        &self,
        id: ConnectionId,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError> {
        self.activity.list_events(id, query).await
    }

    /// Events and usages are not cached: nothing to drop.
    async fn purge_events(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        self.activity.purge_events(before, batch).await
    }

    async fn purge_usages(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        self.activity.purge_usages(before, batch).await
    }
}

#[async_trait]
impl RefreshLeaseStore for CachedStore {
    async fn due_for_refresh(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        self.leases.due_for_refresh(now, limit).await
    }

    async fn past_expiry(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        self.leases.past_expiry(now, limit).await
    }

    async fn claim_refresh(
        &self,
        id: ConnectionId,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<Option<Connection>, StoreError> {
        let r = self.leases.claim_refresh(id, lease, now).await;
        self.invalidate_connection(id);
        r
    }

    async fn claim_due_refreshes(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Connection>, StoreError> {
        let r = self.leases.claim_due_refreshes(lease, now, limit).await;
        let mut s = self.write();
        s.generation += 1;
        match &r {
            Ok(claimed) => claimed.iter().for_each(|c| {
                s.connections.remove(&c.id);
            }),
            // Which rows were claimed is unknown: none of the cached ones can be trusted.
            Err(_) => s.connections.clear(),
        }
        r
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
        let r = self
            .leases
            .save_refreshed_grant(id, owner, expected_version, grant, schedule, updated_at)
            .await;
        self.invalidate_connection(id);
        r
    }

    async fn release_refresh(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        schedule: &RefreshSchedule,
        last_error: Option<String>,
    ) -> Result<bool, StoreError> {
        let r = self
            .leases
            .release_refresh(id, owner, expected_version, schedule, last_error)
            .await;
        self.invalidate_connection(id);
        r
    }

    async fn drop_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError> {
        let r = self.leases.drop_lease(id, owner).await;
        self.invalidate_connection(id);
        r
    }
}

#[async_trait]
impl AccessKeyStore for CachedStore {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError> {
        let r = self.keys.insert_access_key(key).await;
        self.invalidate_key(key.id);
        r
    }

    /// Only keys that exist are cached: an unknown id always asks the store, so a key
    /// created by another process works at once and guessing fills no memory.
    async fn get_access_key(&self, id: AccessKeyId) -> Result<Option<AccessKey>, StoreError> {
        let generation = {
            let s = self.read();
            if let (true, Some(k)) = (s.serving, s.keys.get(&id)) {
                return Ok(Some(k.clone()));
            }
            fill_generation(&s)
        };
        let loaded = self.keys.get_access_key(id).await?;
        if let (Some(generation), Some(k)) = (generation, &loaded) {
            let mut s = self.write();
            if s.serving && s.generation == generation {
                insert_bounded(&mut s.keys, self.capacity, id, k.clone());
            }
        }
        Ok(loaded)
    }

    async fn list_access_keys(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<AccessKey>, StoreError> {
        self.keys.list_access_keys(project).await
    }

    async fn delete_access_key(&self, id: AccessKeyId) -> Result<bool, StoreError> {
        let r = self.keys.delete_access_key(id).await;
        self.invalidate_key(id);
        r
    }
}
