//! Test doubles for the app's ports: an in-memory store faithful to the trait docs, a
//! cipher that really transforms bytes and checks its context, a settable clock, a
//! deterministic entropy source and a scriptable provider.
//!
//! Shared by every test binary; each uses a different subset.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde_json::{json, Value};

use latchkey_app::{
    CallbackParams, CreateConnection, DefaultClient, Latchkey, Principal, Services, Settings,
};
use latchkey_domain::oauth::{DiscoveredMetadata, TokenResponse};
use latchkey_domain::sealed::fields;
use latchkey_domain::{
    AccessKey, AccessKeyId, AuthSession, Connection, ConnectionEvent, ConnectionId, EventCursor,
    FlowId, Grant, Lease, OAuthClient, OAuthClientId, ProjectId, Provider, RefreshSchedule, Scope,
    SealContext, Sealed, Status, Usage,
};
use latchkey_ports::{
    AccessKeyStore, ActivityStore, AuthSessionStore, Cipher, CipherError, Clock, CodeExchange,
    ConnectionQuery, ConnectionStore, Entropy, EventPage, EventQuery, OAuthClientStore, OAuthError,
    ProviderClient, RefreshExchange, RefreshLeaseStore, Revocation, StoreError, UniqueKey,
};

// ---------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------

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

/// One in-memory database behind all four store ports.
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
    fn push_events(&mut self, events: &[ConnectionEvent]) {
        for e in events {
            self.next_seq += 1;
            self.events.push((self.next_seq, e.clone()));
        }
    }
}

impl FakeStore {
    /// Makes the next `n` calls of `op` (a trait method name) fail with `Backend`.
    pub fn fail_next(&self, op: &'static str, n: u32) {
        self.failures.lock().unwrap().insert(op, n);
    }

    /// How many times `op` was called (including injected failures).
    pub fn calls(&self, op: &'static str) -> usize {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    fn enter(&self, op: &'static str) -> Result<(), StoreError> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        let mut f = self.failures.lock().unwrap();
        match f.get_mut(op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(StoreError::Backend(format!("injected failure of {op}")))
            }
            _ => Ok(()),
        }
    }

    /// The stored connection, bypassing the ports (for assertions).
    pub fn connection(&self, id: ConnectionId) -> Connection {
        self.t.lock().unwrap().connections[&id].clone()
    }

    /// Changes a stored connection as another process's write would: bumps the version.
    pub fn write_behind_our_back(&self, id: ConnectionId, f: impl FnOnce(&mut Connection)) {
        let mut t = self.t.lock().unwrap();
        let c = t.connections.get_mut(&id).unwrap();
        f(c);
        c.version += 1;
    }

    pub fn events(&self, id: ConnectionId) -> Vec<ConnectionEvent> {
        let t = self.t.lock().unwrap();
        t.events
            .iter()
            .filter(|(_, e)| e.connection_id == id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Every usage of a connection, bypassing the ports.
    pub fn usages(&self, id: ConnectionId) -> Vec<Usage> {
        let t = self.t.lock().unwrap();
        t.usages
            .iter()
            .filter(|u| u.connection_id == id)
            .cloned()
            .collect()
    }

    pub fn sessions(&self) -> Vec<AuthSession> {
        self.t.lock().unwrap().sessions.values().cloned().collect()
    }

    pub fn access_keys(&self) -> Vec<AccessKey> {
        self.t.lock().unwrap().keys.values().cloned().collect()
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
        let mut t = self.t.lock().unwrap();
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
        let mut t = self.t.lock().unwrap();
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
        Ok(self.t.lock().unwrap().connections.get(&id).cloned())
    }

    async fn list_connections(&self, q: &ConnectionQuery) -> Result<Vec<Connection>, StoreError> {
        self.enter("list_connections")?;
        let t = self.t.lock().unwrap();
        Ok(t.connections
            .values()
            .filter(|c| q.project_id.as_ref().is_none_or(|p| *p == c.project_id))
            .filter(|c| q.status.is_none_or(|s| s == c.status))
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
            .take(q.limit as usize)
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
        let mut t = self.t.lock().unwrap();
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
        let mut t = self.t.lock().unwrap();
        let existed = t.connections.remove(&id).is_some();
        t.events.retain(|(_, e)| e.connection_id != id);
        t.usages.retain(|u| u.connection_id != id);
        t.sessions.retain(|_, s| s.connection_id != id);
        Ok(existed)
    }
}

#[async_trait]
impl ActivityStore for FakeStore {
    async fn record_usage(
        &self,
        id: ConnectionId,
        flow: Option<FlowId>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.enter("record_usage")?;
        let mut t = self.t.lock().unwrap();
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
        let mut t = self.t.lock().unwrap();
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
        let t = self.t.lock().unwrap();
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
        let mut t = self.t.lock().unwrap();
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
        let mut t = self.t.lock().unwrap();
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

#[async_trait]
impl RefreshLeaseStore for FakeStore {
    async fn due_for_refresh(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        self.enter("due_for_refresh")?;
        let t = self.t.lock().unwrap();
        // Earliest deadline (token expiry) first, then due time; no expiry sorts last.
        type Key = (bool, Option<DateTime<Utc>>, DateTime<Utc>, ConnectionId);
        let mut due: Vec<(Key, ConnectionId)> = t
            .connections
            .values()
            .filter(|c| c.status == Status::Active && !lease_is_live(c, now))
            .filter_map(|c| {
                let expires = c.grant.as_ref().and_then(|g| g.expires_at);
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
        let t = self.t.lock().unwrap();
        Ok(t.connections
            .values()
            .filter(|c| c.status == Status::Active)
            .filter(|c| {
                c.grant
                    .as_ref()
                    .and_then(|g| g.expires_at)
                    .is_some_and(|e| e <= now)
            })
            .take(limit as usize)
            .map(|c| c.id)
            .collect())
    }

    async fn claim_refresh(
        &self,
        id: ConnectionId,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<Option<Connection>, StoreError> {
        self.enter("claim_refresh")?;
        let mut t = self.t.lock().unwrap();
        let Some(c) = t.connections.get_mut(&id) else {
            return Ok(None);
        };
        // Free when there is no lease or its deadline is before `now`.
        let free = c.refresh.lease.as_ref().is_none_or(|l| l.until < now);
        if c.status != Status::Active || !free {
            return Ok(None);
        }
        c.refresh.lease = Some(lease.clone());
        Ok(Some(c.clone()))
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
        let mut t = self.t.lock().unwrap();
        let Some(c) = t.connections.get_mut(&id) else {
            return Err(StoreError::Conflict);
        };
        let ours = c.refresh.lease.as_ref().is_some_and(|l| l.owner == owner);
        if c.version != expected_version || !ours {
            return Err(StoreError::Conflict);
        }
        c.grant = Some(grant.clone());
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
        let mut t = self.t.lock().unwrap();
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
        let mut t = self.t.lock().unwrap();
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

#[async_trait]
impl AuthSessionStore for FakeStore {
    async fn insert_auth_session(&self, session: &AuthSession) -> Result<(), StoreError> {
        self.enter("insert_auth_session")?;
        let mut t = self.t.lock().unwrap();
        if t.sessions.contains_key(&session.state_hash) {
            return Err(StoreError::Duplicate(UniqueKey::State));
        }
        t.sessions
            .insert(session.state_hash.clone(), session.clone());
        Ok(())
    }

    async fn take_auth_session(&self, state_hash: &str) -> Result<Option<AuthSession>, StoreError> {
        self.enter("take_auth_session")?;
        Ok(self.t.lock().unwrap().sessions.remove(state_hash))
    }

    async fn purge_auth_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.enter("purge_auth_sessions")?;
        let mut t = self.t.lock().unwrap();
        let before = t.sessions.len();
        t.sessions.retain(|_, s| s.expires_at >= now);
        Ok((before - t.sessions.len()) as u64)
    }
}

#[async_trait]
impl OAuthClientStore for FakeStore {
    async fn insert_oauth_client(&self, client: &OAuthClient) -> Result<(), StoreError> {
        self.enter("insert_oauth_client")?;
        let mut t = self.t.lock().unwrap();
        if t.clients
            .values()
            .any(|c| c.project_id == client.project_id && c.name == client.name)
        {
            return Err(StoreError::Duplicate(UniqueKey::Name));
        }
        t.clients.insert(client.id, client.clone());
        Ok(())
    }

    async fn get_oauth_client(&self, id: OAuthClientId) -> Result<Option<OAuthClient>, StoreError> {
        self.enter("get_oauth_client")?;
        Ok(self.t.lock().unwrap().clients.get(&id).cloned())
    }

    async fn list_oauth_clients(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<OAuthClient>, StoreError> {
        self.enter("list_oauth_clients")?;
        let t = self.t.lock().unwrap();
        Ok(t.clients
            .values()
            .filter(|c| match &project {
                None => true,
                Some(p) => c.project_id.as_ref().is_none_or(|cp| cp == p),
            })
            .cloned()
            .collect())
    }

    async fn delete_oauth_client(&self, id: OAuthClientId) -> Result<bool, StoreError> {
        self.enter("delete_oauth_client")?;
        let mut t = self.t.lock().unwrap();
        let references = t
            .connections
            .values()
            .filter(|c| c.oauth2_client_id == Some(id))
            .count() as u64;
        if references > 0 {
            return Err(StoreError::InUse { references });
        }
        Ok(t.clients.remove(&id).is_some())
    }
}

#[async_trait]
impl AccessKeyStore for FakeStore {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError> {
        self.enter("insert_access_key")?;
        self.t.lock().unwrap().keys.insert(key.id, key.clone());
        Ok(())
    }

    async fn get_access_key(&self, id: AccessKeyId) -> Result<Option<AccessKey>, StoreError> {
        self.enter("get_access_key")?;
        Ok(self.t.lock().unwrap().keys.get(&id).cloned())
    }

    async fn list_access_keys(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<AccessKey>, StoreError> {
        self.enter("list_access_keys")?;
        let t = self.t.lock().unwrap();
        Ok(t.keys
            .values()
            .filter(|k| project.as_ref().is_none_or(|p| *p == k.project_id))
            .cloned()
            .collect())
    }

    async fn delete_access_key(&self, id: AccessKeyId) -> Result<bool, StoreError> {
        self.enter("delete_access_key")?;
        Ok(self.t.lock().unwrap().keys.remove(&id).is_some())
    }
}

// ---------------------------------------------------------------------------------------
// Cipher
// ---------------------------------------------------------------------------------------

const MAGIC: &[u8] = b"FAKE1";
const KEY: &[u8] = b"not-a-real-key-but-it-changes-every-byte";

/// XOR with a per-value nonce, plus a hash of the context appended as a tag: values
/// really change, are never equal twice (like a real AEAD), and fail to open elsewhere.
#[derive(Debug, Default)]
pub struct FakeCipher {
    nonce: AtomicU64,
    pub fail_seal: AtomicBool,
    pub fail_open: AtomicBool,
    pub seals: AtomicUsize,
    pub opens: AtomicUsize,
}

fn aad_tag(ctx: &SealContext) -> [u8; 8] {
    let mut h = DefaultHasher::new();
    ctx.to_aad().hash(&mut h);
    h.finish().to_be_bytes()
}

fn keystream(nonce: u64, i: usize) -> u8 {
    KEY[i % KEY.len()] ^ (nonce.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> ((i % 8) * 8)) as u8 ^ 0xA5
}

impl FakeCipher {
    /// Opens a stored value as a string (for assertions).
    pub fn peek(&self, sealed: &Sealed, ctx: &SealContext) -> String {
        let b = self.open(sealed, ctx).expect("opens in its context");
        String::from_utf8(b.expose_secret().to_vec()).unwrap()
    }
}

impl Cipher for FakeCipher {
    fn seal(&self, plaintext: &SecretBox<[u8]>, ctx: &SealContext) -> Result<Sealed, CipherError> {
        self.seals.fetch_add(1, Ordering::SeqCst);
        if self.fail_seal.load(Ordering::SeqCst) {
            return Err(CipherError::UnknownKey("k-missing".into()));
        }
        let nonce = self.nonce.fetch_add(1, Ordering::SeqCst) + 1;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&nonce.to_be_bytes());
        out.extend(
            plaintext
                .expose_secret()
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ keystream(nonce, i)),
        );
        out.extend_from_slice(&aad_tag(ctx));
        Ok(Sealed(out))
    }

    fn open(&self, sealed: &Sealed, ctx: &SealContext) -> Result<SecretBox<[u8]>, CipherError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        if self.fail_open.load(Ordering::SeqCst) {
            return Err(CipherError::Authentication);
        }
        let b = &sealed.0;
        if b.len() < MAGIC.len() + 16 || !b.starts_with(MAGIC) {
            return Err(CipherError::Malformed("not a fake-sealed value"));
        }
        let (head, tag) = b.split_at(b.len() - 8);
        if tag != aad_tag(ctx) {
            return Err(CipherError::Authentication);
        }
        let nonce = u64::from_be_bytes(head[MAGIC.len()..MAGIC.len() + 8].try_into().unwrap());
        let plain: Vec<u8> = head[MAGIC.len() + 8..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ keystream(nonce, i))
            .collect();
        Ok(SecretBox::from(plain.into_boxed_slice()))
    }

    fn sealed_key_id(&self, sealed: &Sealed) -> Result<String, CipherError> {
        if sealed.0.starts_with(MAGIC) {
            Ok("fake".into())
        } else {
            Err(CipherError::Malformed("not a fake-sealed value"))
        }
    }

    fn ring_key_ids(&self) -> Vec<String> {
        vec!["fake".into()]
    }
}

// ---------------------------------------------------------------------------------------
// Clock and entropy
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct FakeClock(pub Arc<Mutex<DateTime<Utc>>>);

impl FakeClock {
    pub fn at(t: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
    pub fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Counter-based bytes: every fill differs from every other, runs are reproducible.
#[derive(Debug, Default)]
pub struct CountingEntropy(AtomicU64);

impl Entropy for CountingEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let counter = n.to_be_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = match counter.get(i) {
                Some(c) => *c,
                None => (i as u8).wrapping_mul(37) ^ (n as u8),
            };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------

pub fn tokens(access: &str, refresh: Option<&str>, expires_in: Option<i64>) -> TokenResponse {
    TokenResponse {
        access_token: SecretString::from(access.to_owned()),
        refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
        token_type: "Bearer".into(),
        expires_in: expires_in.map(Duration::seconds),
        scopes: None,
    }
}

/// Lets a test hold a provider call in flight: the provider signals `entered`, then
/// waits for `release`.
#[derive(Debug, Default)]
pub struct Gate {
    pub entered: tokio::sync::Notify,
    pub release: tokio::sync::Notify,
}

type Hook = Arc<dyn Fn(&RefreshExchange) + Send + Sync>;

/// A provider scripted per call, with counters, an optional delay and hooks, for tests
/// with many or interleaved calls where mockall expectations get in the way.
#[derive(Default)]
pub struct FakeProvider {
    pub refresh_calls: AtomicUsize,
    pub exchange_calls: AtomicUsize,
    refresh_script: Mutex<VecDeque<Result<TokenResponse, OAuthError>>>,
    /// Answers by presented refresh token, before the ordered script: for concurrent calls.
    refresh_by_token: Mutex<HashMap<String, Result<TokenResponse, OAuthError>>>,
    exchange_script: Mutex<VecDeque<Result<TokenResponse, OAuthError>>>,
    /// The refresh tokens presented, in order.
    pub presented_refresh_tokens: Mutex<Vec<String>>,
    refresh_delay: Mutex<Option<std::time::Duration>>,
    refresh_gate: Mutex<Option<Arc<Gate>>>,
    refresh_hook: Mutex<Option<Hook>>,
    /// What userinfo answers; `None`: `{"email": "ada@example.com"}`.
    pub userinfo_answer: Mutex<Option<Value>>,
    /// The tokens revoked, in order.
    pub revoked_tokens: Mutex<Vec<String>>,
    /// What discovery answers (any issuer), and a gate to hold it in flight.
    pub discovery: Mutex<Option<DiscoveredMetadata>>,
    pub discover_calls: AtomicUsize,
    discover_gate: Mutex<Option<Arc<Gate>>>,
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeProvider")
    }
}

impl FakeProvider {
    pub fn push_refresh(&self, r: Result<TokenResponse, OAuthError>) {
        self.refresh_script.lock().unwrap().push_back(r);
    }
    pub fn answer_refresh_of(&self, refresh_token: &str, r: Result<TokenResponse, OAuthError>) {
        self.refresh_by_token
            .lock()
            .unwrap()
            .insert(refresh_token.to_owned(), r);
    }
    pub fn push_exchange(&self, r: Result<TokenResponse, OAuthError>) {
        self.exchange_script.lock().unwrap().push_back(r);
    }
    pub fn set_refresh_delay(&self, d: std::time::Duration) {
        *self.refresh_delay.lock().unwrap() = Some(d);
    }
    pub fn gate_refresh(&self) -> Arc<Gate> {
        let g = Arc::new(Gate::default());
        *self.refresh_gate.lock().unwrap() = Some(g.clone());
        g
    }
    /// Runs inside the refresh call, after the request arrived and before the answer.
    pub fn on_refresh(&self, hook: impl Fn(&RefreshExchange) + Send + Sync + 'static) {
        *self.refresh_hook.lock().unwrap() = Some(Arc::new(hook));
    }
    pub fn gate_discovery(&self) -> Arc<Gate> {
        let g = Arc::new(Gate::default());
        *self.discover_gate.lock().unwrap() = Some(g.clone());
        g
    }
    pub fn refreshes(&self) -> usize {
        self.refresh_calls.load(Ordering::SeqCst)
    }
    pub fn exchanges(&self) -> usize {
        self.exchange_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ProviderClient for FakeProvider {
    async fn exchange_code(&self, _request: CodeExchange) -> Result<TokenResponse, OAuthError> {
        let n = self.exchange_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let scripted = self.exchange_script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| {
            Ok(tokens(
                &format!("at-code-{n}"),
                Some(&format!("rt-code-{n}")),
                Some(3600),
            ))
        })
    }

    async fn refresh(&self, request: RefreshExchange) -> Result<TokenResponse, OAuthError> {
        let n = self.refresh_calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.presented_refresh_tokens
            .lock()
            .unwrap()
            .push(request.refresh_token.expose_secret().to_owned());
        let gate = self.refresh_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.entered.notify_one();
            g.release.notified().await;
        }
        let delay = *self.refresh_delay.lock().unwrap();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        // Called outside the lock: a hook may panic (and must not poison it).
        let hook = self.refresh_hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(&request);
        }
        let by_token = self
            .refresh_by_token
            .lock()
            .unwrap()
            .remove(request.refresh_token.expose_secret());
        let scripted = by_token.or_else(|| self.refresh_script.lock().unwrap().pop_front());
        scripted.unwrap_or_else(|| Ok(tokens(&format!("at-refreshed-{n}"), None, Some(3600))))
    }

    async fn revoke(&self, request: Revocation) -> Result<(), OAuthError> {
        self.revoked_tokens
            .lock()
            .unwrap()
            .push(request.token.expose_secret().to_owned());
        Ok(())
    }

    async fn userinfo(
        &self,
        _endpoint: String,
        _access_token: SecretString,
    ) -> Result<Value, OAuthError> {
        Ok(self
            .userinfo_answer
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| json!({"email": "ada@example.com"})))
    }

    async fn discover(&self, issuer: String) -> Result<DiscoveredMetadata, OAuthError> {
        self.discover_calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.discover_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.entered.notify_one();
            g.release.notified().await;
        }
        let meta = self.discovery.lock().unwrap().clone();
        meta.ok_or_else(|| OAuthError::Protocol(format!("no discovery for {issuer}")))
    }
}

// ---------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

pub const PROJECT: &str = "proj-a";
pub const OTHER_PROJECT: &str = "proj-b";

pub fn settings() -> Settings {
    let mut default_clients = HashMap::new();
    for p in [Provider::Google, Provider::Notion, Provider::Box] {
        default_clients.insert(
            p,
            DefaultClient {
                client_id: format!("{p}-client"),
                client_secret: Some(SecretString::from(format!("{p}-secret"))),
            },
        );
    }
    Settings {
        callback_url: "https://latchkey.example/v1/connections/oauth2/callback".into(),
        default_clients,
        worker_id: "test-worker".into(),
        ..Settings::default()
    }
}

/// The fakes behind a [`Latchkey`], kept for assertions and knobs.
pub struct Harness {
    pub app: Arc<Latchkey>,
    pub store: Arc<FakeStore>,
    pub cipher: Arc<FakeCipher>,
    pub clock: FakeClock,
    pub entropy: Arc<CountingEntropy>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Harness")
    }
}

/// Fakes for everything; `provider` for the provider port.
pub struct Parts {
    pub store: Arc<FakeStore>,
    pub cipher: Arc<FakeCipher>,
    pub clock: FakeClock,
    pub entropy: Arc<CountingEntropy>,
    pub services: Services,
}

pub fn parts(provider: Arc<dyn ProviderClient>) -> Parts {
    let store = Arc::new(FakeStore::default());
    let cipher = Arc::new(FakeCipher::default());
    let clock = FakeClock::at(t0());
    let entropy = Arc::new(CountingEntropy::default());
    let services = Services {
        connections: store.clone(),
        activity: store.clone(),
        leases: store.clone(),
        sessions: store.clone(),
        clients: store.clone(),
        keys: store.clone(),
        cipher: cipher.clone(),
        provider,
        clock: Arc::new(clock.clone()),
        entropy: entropy.clone(),
    };
    Parts {
        store,
        cipher,
        clock,
        entropy,
        services,
    }
}

pub fn harness_with(provider: Arc<dyn ProviderClient>) -> Harness {
    let p = parts(provider);
    Harness {
        app: Arc::new(Latchkey::new(p.services, settings())),
        store: p.store,
        cipher: p.cipher,
        clock: p.clock,
        entropy: p.entropy,
    }
}

/// A harness over a [`FakeProvider`].
pub fn harness() -> (Harness, Arc<FakeProvider>) {
    let provider = Arc::new(FakeProvider::default());
    (harness_with(provider.clone()), provider)
}

pub fn admin() -> Principal {
    Principal::Admin
}

/// A key of `project` with the given scopes.
pub fn key(project: &str, scopes: &[Scope]) -> Principal {
    Principal::Key {
        id: AccessKeyId::from_random_bytes([9; 16]),
        project: ProjectId::parse(project).unwrap(),
        scopes: scopes.to_vec(),
    }
}

pub fn full_key(project: &str) -> Principal {
    key(project, &Scope::ALL)
}

pub fn create_input(name: &str, kind: &str, config: Value) -> CreateConnection {
    CreateConnection {
        project_id: PROJECT.into(),
        name: name.into(),
        kind: kind.into(),
        config,
        oauth2_client_id: None,
    }
}

pub fn ctx(c: &Connection, field: &'static str) -> SealContext {
    SealContext::new(c.project_id.as_str(), c.id, field)
}

impl Harness {
    pub async fn create(&self, name: &str, kind: &str, config: Value) -> Connection {
        self.app
            .create_connection(&admin(), create_input(name, kind, config))
            .await
            .unwrap()
    }

    /// Starts a consent flow and returns the `state` of the consent URL.
    pub async fn start(&self, id: ConnectionId) -> String {
        let url = self.app.start_authorization(&admin(), id).await.unwrap();
        query(&url, "state").expect("the consent URL has a state")
    }

    pub async fn callback(
        &self,
        state: &str,
    ) -> Result<latchkey_app::CallbackOutcome, latchkey_app::CallbackError> {
        self.app
            .complete_authorization(CallbackParams {
                state: Some(state.into()),
                code: Some(SecretString::from("the-code")),
                ..Default::default()
            })
            .await
    }

    /// The stored access and refresh tokens, opened.
    pub fn stored_tokens(&self, id: ConnectionId) -> (String, Option<String>) {
        let c = self.store.connection(id);
        let g = c.grant.as_ref().expect("a grant");
        (
            self.cipher
                .peek(&g.access_token, &ctx(&c, fields::ACCESS_TOKEN)),
            g.refresh_token
                .as_ref()
                .map(|r| self.cipher.peek(r, &ctx(&c, fields::REFRESH_TOKEN))),
        )
    }
}

/// Creates a connection of `kind` and authorizes it through the real consent flow, the
/// fake provider answering the code exchange with `answer`.
pub async fn connected(
    h: &Harness,
    provider: &FakeProvider,
    name: &str,
    kind: &str,
    answer: TokenResponse,
) -> ConnectionId {
    let c = h.create(name, kind, json!({})).await;
    let state = h.start(c.id).await;
    provider.push_exchange(Ok(answer));
    h.callback(&state).await.expect("authorized");
    c.id
}

pub fn query(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The access token of a credentials answer.
pub fn access_token(c: &latchkey_app::Credentials) -> String {
    match c {
        latchkey_app::Credentials::OAuth { access_token, .. } => {
            access_token.expose_secret().to_owned()
        }
        other => panic!("not OAuth credentials: {other:?}"),
    }
}
