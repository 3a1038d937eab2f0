//! Refreshing OAuth grants: on demand and in background cycles, exactly one refresh per
//! grant at a time, never losing a rotated refresh token.
//!
//! Across processes the store's lease (claim → provider call outside any transaction →
//! compare-and-set write) makes one worker the refresher; within a process a lock per
//! connection makes concurrent callers wait for that one refresh instead of claiming.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Duration;
use futures::FutureExt;
use secrecy::SecretString;

use latchkey_domain::oauth::{ResolvedProvider, TokenResponse};
use latchkey_domain::refresh::is_past_expiry;
use latchkey_domain::sealed::fields;
use latchkey_domain::{
    Connection, ConnectionId, Grant, Lease, LifecycleEvent, RefreshSchedule, SealContext, Status,
};
use latchkey_ports::{OAuthError, RefreshExchange, Revocation, StoreError};

use crate::connections::Credentials;
use crate::{AppError, Latchkey, StateCode};

pub(crate) type LockMap = Mutex<HashMap<ConnectionId, Arc<tokio::sync::Mutex<()>>>>;

/// The background refresh's concurrency: a limit in total and one per provider host, so
/// that a host that hangs holds at most its own share of the slots; and the connections
/// whose background refresh is queued or running, so a scheduling pass never starts a
/// second one.
#[derive(Debug)]
pub(crate) struct RefreshSlots {
    total: Arc<tokio::sync::Semaphore>,
    per_host_limit: usize,
    per_host: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    in_flight: Mutex<HashSet<ConnectionId>>,
    counters: RefreshCounters,
}

impl RefreshSlots {
    pub(crate) fn new(total: usize, per_host: usize) -> Self {
        Self {
            total: Arc::new(tokio::sync::Semaphore::new(total.max(1))),
            per_host_limit: per_host.max(1),
            per_host: Mutex::default(),
            in_flight: Mutex::default(),
            counters: RefreshCounters::default(),
        }
    }

    fn host(&self, key: &str) -> Arc<tokio::sync::Semaphore> {
        let mut map = self.per_host.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1024 {
            // Forget hosts nobody waits on: their semaphore is whole again.
            let limit = self.per_host_limit;
            map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() != limit);
        }
        map.entry(key.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_host_limit)))
            .clone()
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<ConnectionId>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes a connection out of the in-flight set when its background refresh ends, however
/// it ends (a panic or a cancelled task included).
struct InFlight<'a> {
    slots: &'a RefreshSlots,
    id: ConnectionId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.slots.in_flight().remove(&self.id);
    }
}

/// Totals of the background refresh since start, for the job's log.
#[derive(Debug, Default)]
struct RefreshCounters {
    refreshed: AtomicU64,
    failed: AtomicU64,
    expired: AtomicU64,
    panicked: AtomicU64,
}

/// A snapshot of [`Latchkey::refresh_totals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshTotals {
    pub refreshed: u64,
    pub failed: u64,
    pub expired: u64,
    /// Refreshes that panicked: contained, logged, and the connection backed off.
    pub panicked: u64,
}

/// How often saving a refreshed grant is retried when the database fails: the provider
/// may have rotated the refresh token, so giving up would lose the grant.
/// Saving refreshed tokens is retried at least this often, and then for as long as the
/// lease still has a second to run: once it lapses another worker may take over.
const SAVE_MIN_ATTEMPTS: u32 = 3;
const SAVE_MAX_ATTEMPTS: u32 = 60;
/// How long a credentials request waits for another process's refresh.
const WAIT_FOR_OTHER_REFRESH: std::time::Duration = std::time::Duration::from_secs(20);

/// What one refresh attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// New tokens were saved.
    Refreshed,
    /// Nothing to do: not due (someone refreshed meanwhile) or nothing to refresh with.
    NotDue,
    /// Another worker holds the lease, or the connection is not active.
    Busy,
    /// A newer grant replaced the one being refreshed (a reconnect or another worker).
    Superseded,
    /// The provider rejected the grant: the connection is now expired.
    Expired(String),
    /// A transient or configuration failure; the connection keeps its current token
    /// and is retried after a back-off.
    Failed(String),
    /// The refresh panicked. The panic was contained (the job goes on), logged, and the
    /// connection backs off like after a failure.
    Panicked(String),
}

/// How saving refreshed tokens ended.
enum Saved {
    Yes,
    /// A newer grant replaced the one refreshed; ours is dropped.
    Superseded,
    /// The connection was deleted meanwhile: what we obtained must not stay alive.
    Deleted,
}

/// What a background cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    pub picked: usize,
    pub refreshed: usize,
    pub failed: usize,
    pub expired: usize,
    /// Refreshes that panicked (contained; the connection backs off).
    pub panicked: usize,
}

impl Latchkey {
    pub(crate) fn lock_for(&self, id: ConnectionId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.refresh_locks.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() > 1024 {
            // Forget locks nobody holds or waits for.
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(id).or_default().clone()
    }

    fn token_ctx(c: &Connection, field: &'static str) -> SealContext {
        SealContext::new(c.project_id.as_str(), c.id, field)
    }

    /// A lease owner name unique to one attempt.
    pub(crate) fn new_lease_owner(&self) -> String {
        format!("{}:{}", self.settings.worker_id, hex(&self.random::<8>()))
    }

    /// Refreshes one connection if it is due (or `force`), holding the lease while the
    /// provider is called.
    pub async fn refresh_connection(
        &self,
        id: ConnectionId,
        force: bool,
    ) -> Result<RefreshOutcome, AppError> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let owner = self.new_lease_owner();
        self.refresh_locked(id, force, &owner).await
    }

    /// Gives the lease back with a schedule and error for the grant that was claimed. If
    /// the connection changed since (a rename, a reconnect), the schedule is written only
    /// when the grant is still the one claimed; a newer authorization keeps its own
    /// schedule and error, and only the lease is cleared.
    async fn give_back(
        &self,
        claimed: &Connection,
        owner: &str,
        schedule: &RefreshSchedule,
        error: Option<String>,
    ) {
        let id = claimed.id;
        let mut version = claimed.version;
        for _ in 0..3 {
            match self
                .svc
                .leases
                .release_refresh(id, owner, version, schedule, error.clone())
                .await
            {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(connection = %id, error = %e, "could not release the refresh lease; it lapses by itself");
                    return;
                }
            }
            let current = match self.svc.connections.get_connection(id).await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(connection = %id, error = %e, "could not release the refresh lease; it lapses by itself");
                    return;
                }
            };
            if current
                .refresh
                .lease
                .as_ref()
                .is_none_or(|l| l.owner != owner)
            {
                return;
            }
            if current.status == Status::Active && same_grant(&current, claimed) {
                version = current.version;
                continue;
            }
            break;
        }
        self.drop_lease(id, owner).await;
    }

    async fn drop_lease(&self, id: ConnectionId, owner: &str) {
        if let Err(e) = self.svc.leases.drop_lease(id, owner).await {
            tracing::warn!(connection = %id, error = %e, "could not release the refresh lease; it lapses by itself");
        }
    }

    /// Resolves the provider (discovery included) and opens the refresh token: the work
    /// done before the lease is claimed, so the lease only has to cover the token call.
    async fn prepare(&self, c: &Connection) -> Result<(ResolvedProvider, SecretString), AppError> {
        let sealed = c
            .grant
            .as_ref()
            .and_then(|g| g.refresh_token.as_ref())
            .ok_or_else(|| AppError::Internal("no refresh token to prepare".into()))?;
        let provider = self.resolve_provider(c).await?;
        let token = self.open_str(sealed, &Self::token_ctx(c, fields::REFRESH_TOKEN))?;
        Ok((provider, token))
    }

    pub(crate) async fn refresh_locked(
        &self,
        id: ConnectionId,
        force: bool,
        owner: &str,
    ) -> Result<RefreshOutcome, AppError> {
        let policy = self.settings.refresh;
        // The connection is read and its provider resolved (discovery may take a whole
        // HTTP timeout) before the lease is claimed; if its settings change in between,
        // the claim is given back and the work redone.
        for _ in 0..3 {
            let Some(pre) = self.svc.connections.get_connection(id).await? else {
                return Ok(RefreshOutcome::Busy);
            };
            if pre.status != Status::Active {
                return Ok(RefreshOutcome::Busy);
            }
            let worth_preparing = pre.grant.as_ref().is_some_and(|g| {
                g.refresh_token.is_some() && (force || policy.needs_refresh(g, self.now()))
            });
            let prepared = if worth_preparing {
                Some(self.prepare(&pre).await)
            } else {
                None
            };
            let now = self.now();
            let lease = Lease {
                owner: owner.to_owned(),
                until: now + policy.lease,
            };
            let Some(claimed) = self.svc.leases.claim_refresh(id, &lease, now).await? else {
                return Ok(RefreshOutcome::Busy);
            };
            if claimed.config != pre.config
                || claimed.oauth2_client_id != pre.oauth2_client_id
                || claimed.secrets != pre.secrets
                || !same_grant(&claimed, &pre)
            {
                self.drop_lease(id, owner).await;
                continue;
            }
            return self
                .refresh_claimed(claimed, prepared, force, owner, lease.until)
                .await;
        }
        Ok(RefreshOutcome::Busy)
    }

    async fn refresh_claimed(
        &self,
        claimed: Connection,
        prepared: Option<Result<(ResolvedProvider, SecretString), AppError>>,
        force: bool,
        owner: &str,
        lease_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<RefreshOutcome, AppError> {
        let policy = self.settings.refresh;
        let id = claimed.id;
        let now = self.now();
        let Some(grant) = claimed.grant.clone() else {
            self.give_back(
                &claimed,
                owner,
                &RefreshSchedule::default(),
                claimed.last_error.clone(),
            )
            .await;
            return Ok(RefreshOutcome::NotDue);
        };
        let current_schedule = RefreshSchedule {
            lease: None,
            ..claimed.refresh.clone()
        };
        let Some(sealed_refresh) = grant.refresh_token.clone() else {
            self.give_back(
                &claimed,
                owner,
                &RefreshSchedule {
                    due_at: None,
                    ..current_schedule
                },
                claimed.last_error.clone(),
            )
            .await;
            return Ok(RefreshOutcome::NotDue);
        };
        let prepared = match prepared {
            Some(p) if force || policy.needs_refresh(&grant, now) => p,
            _ => {
                self.give_back(
                    &claimed,
                    owner,
                    &RefreshSchedule {
                        due_at: policy.due_at(&grant),
                        ..current_schedule
                    },
                    claimed.last_error.clone(),
                )
                .await;
                return Ok(RefreshOutcome::NotDue);
            }
        };
        let failures = claimed.refresh.failures.saturating_add(1);
        let backoff = |retry_after: Option<Duration>| {
            let mut due = now + policy.backoff(failures, self.jitter(), retry_after);
            // Unless the provider named its own Retry-After, try again before the current
            // token lapses: a short-lived token must not die of one hiccup. Once it has
            // lapsed, the plain back-off applies, so a provider that is down is not called
            // on every cycle and every credentials request.
            if let (None, Some(expires_at)) = (retry_after, grant.expires_at) {
                if expires_at > now {
                    let before_expiry =
                        (expires_at - Duration::seconds(1)).max(now + Duration::milliseconds(500));
                    due = due.min(before_expiry);
                }
            }
            RefreshSchedule {
                due_at: Some(due),
                failures,
                lease: None,
            }
        };
        let (provider, refresh_token) = match prepared {
            Ok(p) => p,
            Err(e) => {
                // Stored on the connection: classified text only, details to the log.
                let message = format!("refresh could not start: {}", e.public_message());
                tracing::error!(connection = %id, error = %e, "refresh could not start");
                self.give_back(&claimed, owner, &backoff(None), Some(message.clone()))
                    .await;
                return Ok(RefreshOutcome::Failed(message));
            }
        };
        let sent_at = self.now();
        let started = std::time::Instant::now();
        let result = self
            .svc
            .provider
            .refresh(RefreshExchange {
                token_endpoint: provider.token_endpoint.clone(),
                client: provider.client.clone(),
                refresh_token,
                scopes: None,
            })
            .await;
        crate::telemetry::refresh_call(claimed.kind, &result, started.elapsed());
        match result {
            Ok(tokens) => {
                let access = self.seal_str(
                    &tokens.access_token,
                    &Self::token_ctx(&claimed, fields::ACCESS_TOKEN),
                )?;
                // A response without a refresh token keeps the old one.
                let refresh = match &tokens.refresh_token {
                    Some(r) => {
                        self.seal_str(r, &Self::token_ctx(&claimed, fields::REFRESH_TOKEN))?
                    }
                    None => sealed_refresh,
                };
                let new_grant = Grant {
                    access_token: access,
                    refresh_token: Some(refresh),
                    token_type: tokens.token_type.clone(),
                    scopes: tokens
                        .scopes
                        .clone()
                        .unwrap_or_else(|| grant.scopes.clone()),
                    obtained_at: sent_at,
                    expires_at: tokens.expires_at(sent_at),
                };
                let schedule = RefreshSchedule {
                    due_at: policy.due_at(&new_grant),
                    failures: 0,
                    lease: None,
                };
                match self
                    .save_refreshed(&claimed, owner, &new_grant, &schedule, lease_until)
                    .await?
                {
                    Saved::Yes => Ok(RefreshOutcome::Refreshed),
                    Saved::Superseded => Ok(RefreshOutcome::Superseded),
                    Saved::Deleted => {
                        self.revoke_orphaned(id, &provider, &tokens).await;
                        Ok(RefreshOutcome::Superseded)
                    }
                }
            }
            Err(OAuthError::InvalidGrant(description)) => {
                let reason = format!(
                    "the provider rejected the refresh token (invalid_grant){}; authorize the connection again",
                    description.map(|d| format!(": {d}")).unwrap_or_default()
                );
                self.expire_if_unchanged(
                    &claimed,
                    owner,
                    LifecycleEvent::RefreshRejected,
                    "refresh_rejected",
                    &reason,
                )
                .await
            }
            Err(e @ OAuthError::InvalidClient { .. }) => {
                let message = format!("configuration error: {e}");
                tracing::warn!(connection = %id, error = %e, "refresh refused: client configuration");
                let schedule = RefreshSchedule {
                    due_at: Some(now + policy.backoff_cap),
                    failures,
                    lease: None,
                };
                self.give_back(&claimed, owner, &schedule, Some(message.clone()))
                    .await;
                Ok(RefreshOutcome::Failed(message))
            }
            Err(e) => {
                let retry_after = match &e {
                    OAuthError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let message = format!("refresh failed, will retry: {e}");
                tracing::warn!(connection = %id, error = %e, failures, "refresh failed; backing off");
                self.give_back(
                    &claimed,
                    owner,
                    &backoff(retry_after),
                    Some(message.clone()),
                )
                .await;
                Ok(RefreshOutcome::Failed(message))
            }
        }
    }

    /// The connection was deleted while its refresh was in flight: the tokens the
    /// provider just issued belong to nobody, so they are revoked rather than left alive.
    async fn revoke_orphaned(
        &self,
        id: ConnectionId,
        provider: &ResolvedProvider,
        tokens: &TokenResponse,
    ) {
        let Some(endpoint) = provider.revocation_endpoint.clone() else {
            tracing::warn!(connection = %id, "the connection was deleted during its refresh and its provider has no revocation endpoint; the new tokens expire by themselves");
            return;
        };
        let (token, hint) = match &tokens.refresh_token {
            Some(r) => (r.clone(), "refresh_token"),
            None => (tokens.access_token.clone(), "access_token"),
        };
        match self
            .svc
            .provider
            .revoke(Revocation {
                revocation_endpoint: endpoint,
                client: provider.client.clone(),
                token,
                token_type_hint: hint,
            })
            .await
        {
            Ok(()) => {
                tracing::info!(connection = %id, "revoked the tokens of a refresh that finished after the connection was deleted")
            }
            Err(e) => {
                tracing::warn!(connection = %id, error = %e, "revoking the tokens of a deleted connection failed")
            }
        }
    }

    /// Saves new tokens under the lease. The provider may have rotated the refresh
    /// token, so a database failure is retried, and a compare-and-set conflict caused by
    /// an unrelated write (a rename) is retried against the new version; only a newer
    /// grant wins over ours.
    async fn save_refreshed(
        &self,
        claimed: &Connection,
        owner: &str,
        grant: &Grant,
        schedule: &RefreshSchedule,
        lease_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Saved, AppError> {
        let mut version = claimed.version;
        let mut delay = std::time::Duration::from_millis(50);
        let mut last_error = String::new();
        // Measured on the monotonic timer: the budget is real waiting, not domain time.
        let budget = (lease_until - self.now() - Duration::seconds(1))
            .to_std()
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + budget;
        for attempt in 1..=SAVE_MAX_ATTEMPTS {
            if attempt > SAVE_MIN_ATTEMPTS && tokio::time::Instant::now() >= deadline {
                break;
            }
            match self
                .svc
                .leases
                .save_refreshed_grant(claimed.id, owner, version, grant, schedule, self.now())
                .await
            {
                Ok(()) => {
                    tracing::debug!(connection = %claimed.id, "grant refreshed");
                    return Ok(Saved::Yes);
                }
                Err(StoreError::Conflict) | Err(StoreError::NotFound) => {
                    let current = match self.svc.connections.get_connection(claimed.id).await {
                        Ok(Some(c)) => c,
                        Ok(None) => return Ok(Saved::Deleted),
                        Err(e) => {
                            last_error = e.to_string();
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                            continue;
                        }
                    };
                    let still_ours = current
                        .refresh
                        .lease
                        .as_ref()
                        .is_some_and(|l| l.owner == owner);
                    if same_grant(&current, claimed)
                        && still_ours
                        && current.status == Status::Active
                    {
                        version = current.version;
                        continue;
                    }
                    tracing::info!(connection = %claimed.id, "a newer grant replaced the one being refreshed; dropping the refreshed tokens");
                    if still_ours {
                        // Give the lease back so the new grant is not blocked until it lapses.
                        self.drop_lease(claimed.id, owner).await;
                    }
                    return Ok(Saved::Superseded);
                }
                Err(e) => {
                    last_error = e.to_string();
                    tracing::warn!(connection = %claimed.id, error = %e, "saving refreshed tokens failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
        tracing::error!(connection = %claimed.id, error = %last_error, "could not save refreshed tokens");
        Err(AppError::Internal(format!(
            "saving refreshed tokens failed: {last_error}"
        )))
    }

    /// Marks the connection expired, unless another worker or a reconnect changed its
    /// grant since it was claimed.
    async fn expire_if_unchanged(
        &self,
        claimed: &Connection,
        owner: &str,
        event: LifecycleEvent,
        kind: &str,
        reason: &str,
    ) -> Result<RefreshOutcome, AppError> {
        for _ in 0..3 {
            let Some(c) = self.svc.connections.get_connection(claimed.id).await? else {
                return Ok(RefreshOutcome::Superseded);
            };
            if !same_grant(&c, claimed) || c.status != Status::Active {
                self.drop_lease(c.id, owner).await;
                return Ok(RefreshOutcome::Superseded);
            }
            let id = c.id;
            match self.write_expiry(c, event, kind, reason).await {
                Ok(false) => {
                    self.drop_lease(id, owner).await;
                    return Ok(RefreshOutcome::Superseded);
                }
                Ok(true) => {
                    // The expiry wrote the schedule and reason; only the lease is left.
                    self.drop_lease(id, owner).await;
                    tracing::warn!(connection = %id, reason, "connection expired");
                    return Ok(RefreshOutcome::Expired(reason.to_owned()));
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => {
                    self.drop_lease(id, owner).await;
                    return Err(e.into());
                }
            }
        }
        self.drop_lease(claimed.id, owner).await;
        Ok(RefreshOutcome::Superseded)
    }

    /// One scheduling pass of the background refresh: takes the due connections,
    /// earliest deadline (token expiry) first, and starts a task for each one whose
    /// refresh is not already queued or running. Returns at once with the started tasks.
    ///
    /// Each task waits for a slot of its provider host and then a slot of the total, so a
    /// host that hangs holds at most its own share and the other hosts' refreshes go on;
    /// and the next pass does not wait for the tasks of this one.
    pub async fn start_due_refreshes(
        self: &Arc<Self>,
    ) -> Result<Vec<(ConnectionId, tokio::task::JoinHandle<RefreshOutcome>)>, AppError> {
        let now = self.now();
        let busy = self.slots.in_flight().len();
        // Asking for the queued ones too guarantees a full batch of new work, whatever
        // sits in the queue of a slow host.
        let limit = self
            .settings
            .refresh_batch
            .saturating_add(u32::try_from(busy).unwrap_or(u32::MAX));
        let ids = self.svc.leases.due_for_refresh(now, limit).await?;
        let mut started = Vec::new();
        for id in ids {
            if started.len() >= self.settings.refresh_batch as usize {
                break;
            }
            if !self.slots.in_flight().insert(id) {
                continue;
            }
            let app = self.clone();
            let handle = tokio::spawn(async move { app.background_refresh(id).await });
            started.push((id, handle));
        }
        Ok(started)
    }

    /// One whole background refresh cycle: starts the due refreshes and waits for them
    /// (tests and one-off runs; the job uses [`Latchkey::start_due_refreshes`] and does
    /// not wait), then purges expired consent sessions.
    pub async fn run_refresh_cycle(self: &Arc<Self>) -> Result<CycleReport, AppError> {
        let started = self.start_due_refreshes().await?;
        let mut report = CycleReport {
            picked: started.len(),
            ..Default::default()
        };
        for (id, handle) in started {
            match handle.await {
                Ok(RefreshOutcome::Refreshed) => report.refreshed += 1,
                Ok(RefreshOutcome::Expired(_)) => report.expired += 1,
                Ok(RefreshOutcome::Failed(_)) => report.failed += 1,
                Ok(RefreshOutcome::Panicked(_)) => report.panicked += 1,
                Ok(_) => {}
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(connection = %id, error = %e, "refresh task ended abnormally");
                }
            }
        }
        self.purge_auth_sessions().await;
        Ok(report)
    }

    /// Deletes consent sessions whose state expired.
    pub async fn purge_auth_sessions(&self) {
        if let Err(e) = self.svc.sessions.purge_auth_sessions(self.now()).await {
            tracing::warn!(error = %e, "purging expired authorization sessions failed");
        }
    }

    /// Totals of the background refresh since this process started.
    pub fn refresh_totals(&self) -> RefreshTotals {
        let c = &self.slots.counters;
        RefreshTotals {
            refreshed: c.refreshed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
        }
    }

    /// One connection's background refresh, in its own task: a failure or a panic here
    /// is contained, logged and counted, and the connection backs off.
    async fn background_refresh(self: Arc<Self>, id: ConnectionId) -> RefreshOutcome {
        let _in_flight = InFlight {
            slots: &self.slots,
            id,
        };
        let owner = self.new_lease_owner();
        let run = AssertUnwindSafe(self.refresh_in_slot(id, &owner))
            .catch_unwind()
            .await;
        let counters = &self.slots.counters;
        let outcome = match run {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::error!(connection = %id, error = %e, "refresh failed");
                RefreshOutcome::Failed(e.public_message())
            }
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                counters.panicked.fetch_add(1, Ordering::Relaxed);
                tracing::error!(connection = %id, panic = %message, "refresh panicked; the connection backs off and the job goes on");
                self.back_off_after_panic(id, &owner).await;
                RefreshOutcome::Panicked(message)
            }
        };
        match &outcome {
            RefreshOutcome::Refreshed => counters.refreshed.fetch_add(1, Ordering::Relaxed),
            RefreshOutcome::Failed(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
            RefreshOutcome::Expired(_) => counters.expired.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        outcome
    }

    /// Waits for a slot of the connection's provider host, then one of the total, then
    /// refreshes. The lease is claimed only once both are held, so waiting costs no
    /// lease time.
    async fn refresh_in_slot(
        &self,
        id: ConnectionId,
        owner: &str,
    ) -> Result<RefreshOutcome, AppError> {
        let Some(c) = self.svc.connections.get_connection(id).await? else {
            return Ok(RefreshOutcome::NotDue);
        };
        if c.status != Status::Active {
            return Ok(RefreshOutcome::NotDue);
        }
        let host = self.slots.host(&provider_host(&c));
        // The semaphores are never closed, so acquiring cannot fail.
        let _host_slot = host
            .acquire()
            .await
            .map_err(|_| AppError::Internal("refresh slots closed".into()))?;
        let _slot = self
            .slots
            .total
            .acquire()
            .await
            .map_err(|_| AppError::Internal("refresh slots closed".into()))?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        self.refresh_locked(id, false, owner).await
    }

    /// After a panic: the connection is taken under `owner` (or still held by it) and
    /// given back with one more failure and a back-off, so it is not retried at once and
    /// no other worker's lease is overwritten.
    async fn back_off_after_panic(&self, id: ConnectionId, owner: &str) {
        let now = self.now();
        let lease = Lease {
            owner: owner.to_owned(),
            until: now + self.settings.refresh.lease,
        };
        let c = match self.svc.leases.claim_refresh(id, &lease, now).await {
            Ok(Some(c)) => c,
            Ok(None) => match self.svc.connections.get_connection(id).await {
                Ok(Some(c)) if c.refresh.lease.as_ref().is_some_and(|l| l.owner == owner) => c,
                _ => return,
            },
            Err(e) => {
                tracing::warn!(connection = %id, error = %e, "could not back off after a panic");
                return;
            }
        };
        let failures = c.refresh.failures.saturating_add(1);
        let schedule = RefreshSchedule {
            due_at: Some(now + self.settings.refresh.backoff(failures, self.jitter(), None)),
            failures,
            lease: None,
        };
        self.give_back(
            &c,
            owner,
            &schedule,
            Some("refresh failed with an internal error; will retry".into()),
        )
        .await;
    }

    /// The status job: an active connection whose access token is past expiry and that
    /// has no refresh token becomes expired. One with a refresh token is never expired
    /// here, whatever the provider's failures: only a confirmed `invalid_grant`, in the
    /// refresh, does that. This job calls no provider.
    pub async fn run_expiry_cycle(&self) -> Result<usize, AppError> {
        let now = self.now();
        let ids = self
            .svc
            .leases
            .past_expiry(now, self.settings.refresh_batch)
            .await?;
        let mut expired = 0;
        for id in ids {
            let Some(c) = self.svc.connections.get_connection(id).await? else {
                continue;
            };
            let Some(grant) = c.grant.as_ref() else {
                continue;
            };
            if c.status != Status::Active || !is_past_expiry(grant, self.now()) {
                continue;
            }
            if grant.refresh_token.is_some() {
                // The refresh job's business (a lapsed grant is due with the earliest
                // deadline); calling the provider here would make this loop wait on it.
                continue;
            }
            let reason = "the access token expired and the provider issued no refresh token; authorize the connection again";
            // Under a lease of our own, so that no other worker's live lease is written
            // over, and under the in-process lock.
            let lock = self.lock_for(id);
            let _guard = lock.lock().await;
            let owner = self.new_lease_owner();
            let now = self.now();
            let lease = Lease {
                owner: owner.clone(),
                until: now + self.settings.refresh.lease,
            };
            let Some(current) = self.svc.leases.claim_refresh(id, &lease, now).await? else {
                continue;
            };
            let still_lapsed = current.status == Status::Active
                && current
                    .grant
                    .as_ref()
                    .is_some_and(|g| g.refresh_token.is_none() && is_past_expiry(g, self.now()))
                && same_grant(&current, &c);
            if !still_lapsed {
                self.drop_lease(id, &owner).await;
                continue;
            }
            let written = self
                .write_expiry(current, LifecycleEvent::Lapsed, "lapsed", reason)
                .await;
            self.drop_lease(id, &owner).await;
            match written {
                Ok(true) => {
                    expired += 1;
                    tracing::warn!(connection = %id, reason, "connection expired");
                }
                Ok(false) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(expired)
    }

    /// Writes the move of `c` to expired with its reason and event, compare-and-set on
    /// the version it was read at. `false` when the event does not apply to its status.
    async fn write_expiry(
        &self,
        mut c: Connection,
        event: LifecycleEvent,
        kind: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let Ok(Some((from, _))) = c.apply(event, self.now()) else {
            return Ok(false);
        };
        c.last_error = Some(reason.to_owned());
        c.refresh = RefreshSchedule::default();
        let ev = self.event(&c, Some(from), kind, Some(reason.to_owned()));
        self.svc
            .connections
            .update_connection(&c, &[ev])
            .await
            .map(|_| true)
    }

    /// The access token of an active connection, refreshed first when due.
    pub(crate) async fn oauth_credentials(&self, c: Connection) -> Result<Credentials, AppError> {
        let mut c = check_usable(c)?;
        if self.wants_refresh(&c) {
            let lock = self.lock_for(c.id);
            let _guard = lock.lock().await;
            // Another caller in this process may have refreshed while we waited.
            c = check_usable(self.reload(c.id).await?)?;
            if self.wants_refresh(&c) {
                let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER_REFRESH;
                let owner = self.new_lease_owner();
                let mut outcome = self.refresh_locked(c.id, false, &owner).await;
                // Busy: another process is refreshing. Wait for its grant; if it died (its
                // lease lapsed) or gave up without one, the refresh is still to be done:
                // claim again. Busy calls no provider, so this stays one refresh at most.
                while matches!(outcome, Ok(RefreshOutcome::Busy))
                    && tokio::time::Instant::now() < deadline
                {
                    let before = c.grant.as_ref().map(|g| g.access_token.clone());
                    c = self.wait_for_other_refresh(&c, deadline).await?;
                    let unchanged = c.grant.as_ref().map(|g| &g.access_token) == before.as_ref();
                    let now = self.now();
                    let lease_gone = c.refresh.lease.as_ref().is_none_or(|l| l.until < now);
                    outcome = if c.status == Status::Active
                        && unchanged
                        && lease_gone
                        && self.wants_refresh(&c)
                    {
                        self.refresh_locked(c.id, false, &owner).await
                    } else {
                        Ok(RefreshOutcome::NotDue)
                    };
                }
                match outcome {
                    Ok(RefreshOutcome::Expired(reason)) => {
                        return Err(AppError::State {
                            code: StateCode::ConnectionExpired,
                            message: reason,
                        })
                    }
                    Ok(RefreshOutcome::Failed(m)) => {
                        tracing::warn!(connection = %c.id, error = %m, "on-demand refresh failed")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(connection = %c.id, error = %e, "on-demand refresh failed")
                    }
                }
                c = check_usable(self.reload(c.id).await?)?;
            }
        }
        let grant = c
            .grant
            .as_ref()
            .ok_or_else(|| AppError::Internal("active OAuth connection without a grant".into()))?;
        let now = self.now();
        if is_past_expiry(grant, now) {
            if grant.refresh_token.is_none() {
                return Err(AppError::State {
                    code: StateCode::ConnectionExpired,
                    message: "the access token expired and the provider issued no refresh token; authorize the connection again".into(),
                });
            }
            // The grant lives on; the provider could not refresh it yet. Retry once the
            // back-off is over (at least a second, at most the back-off cap).
            let retry_after = c
                .refresh
                .due_at
                .map(|d| d - now)
                .unwrap_or_else(|| self.settings.refresh.backoff_base)
                .max(Duration::seconds(1))
                .min(self.settings.refresh.backoff_cap.max(Duration::seconds(1)));
            return Err(AppError::ProviderUnavailable {
                message: format!(
                    "the access token expired and the provider could not refresh it yet; the connection recovers by itself once the provider answers{}",
                    c.last_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
                retry_after_secs: u64::try_from(retry_after.num_milliseconds().saturating_add(999) / 1000)
                    .unwrap_or(1),
            });
        }
        let access_token: SecretString = self.open_str(
            &grant.access_token,
            &Self::token_ctx(&c, fields::ACCESS_TOKEN),
        )?;
        Ok(Credentials::OAuth {
            kind: c.kind,
            access_token,
            token_type: grant.token_type.clone(),
            expires_at: grant.expires_at,
            scopes: grant.scopes.clone(),
        })
    }

    /// Whether a credentials request should refresh first: the grant is due and no
    /// back-off after failed attempts (a provider's Retry-After included) is running, so
    /// that a struggling provider is not called again by every workflow run.
    fn wants_refresh(&self, c: &Connection) -> bool {
        let now = self.now();
        let backing_off = c.refresh.failures > 0 && c.refresh.due_at.is_some_and(|d| d > now);
        !backing_off
            && c.grant
                .as_ref()
                .is_some_and(|g| self.settings.refresh.needs_refresh(g, now))
    }

    async fn reload(&self, id: ConnectionId) -> Result<Connection, AppError> {
        self.svc
            .connections
            .get_connection(id)
            .await?
            .ok_or(AppError::NotFound("connection"))
    }

    /// Another process holds the refresh lease: wait until its new grant lands, the lease
    /// is given back or lapses, or a deadline passes.
    async fn wait_for_other_refresh(
        &self,
        c: &Connection,
        deadline: tokio::time::Instant,
    ) -> Result<Connection, AppError> {
        let before = c.grant.as_ref().map(|g| g.access_token.clone());
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now_c = self.reload(c.id).await?;
            let changed = now_c.grant.as_ref().map(|g| g.access_token.clone()) != before;
            // A lease that lapsed is one whose holder died: waiting longer brings nothing.
            let now = self.now();
            let lease_gone = now_c.refresh.lease.as_ref().is_none_or(|l| l.until < now);
            if changed || lease_gone || now_c.status != Status::Active {
                return Ok(now_c);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(now_c);
            }
        }
    }
}

fn check_usable(c: Connection) -> Result<Connection, AppError> {
    match c.status {
        Status::Active => Ok(c),
        Status::Incomplete => Err(AppError::State {
            code: StateCode::ConnectionIncomplete,
            message: "the connection has not been authorized yet; complete its OAuth consent flow"
                .into(),
        }),
        Status::Expired => Err(AppError::State {
            code: StateCode::ConnectionExpired,
            message: format!(
                "the connection is expired{}; authorize it again",
                c.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        }),
    }
}

/// Whether two reads of a connection hold the same grant (sealed values never repeat).
fn same_grant(a: &Connection, b: &Connection) -> bool {
    a.grant.as_ref().map(|g| &g.access_token) == b.grant.as_ref().map(|g| &g.access_token)
}

/// The provider host a connection's refreshes go to, for the per-host limit: the
/// authority of its token endpoint, else of its issuer, else its registered client or
/// catalog provider (each of which has one token endpoint). Known without any I/O, so
/// that discovery itself runs inside the host's limit.
fn provider_host(c: &Connection) -> String {
    let settings = c.config.oauth().cloned().unwrap_or_default();
    let authority = |u: &str| {
        url::Url::parse(u).ok().map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or_default(),
                u.port_or_known_default().unwrap_or_default()
            )
        })
    };
    settings
        .token_endpoint
        .as_deref()
        .and_then(authority)
        .or_else(|| settings.issuer.as_deref().and_then(authority))
        .or_else(|| c.oauth2_client_id.map(|id| format!("client:{id}")))
        .unwrap_or_else(|| format!("provider:{}", c.kind))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
