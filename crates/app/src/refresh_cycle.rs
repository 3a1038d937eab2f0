//! The background refresh: scheduling passes over the due connections with limited
//! concurrency (in total and per provider host), containment of failures and panics,
//! and the status job that expires grants that lapsed without a refresh token.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;

use latchkey_domain::{Connection, ConnectionId, ExpiryReason, Lease, RefreshFailure};
use latchkey_ports::StoreError;

use crate::cas::Edit;
use crate::refresh::RefreshOutcome;
use crate::{AppError, Latchkey};

/// Beyond this many provider hosts, the semaphores of idle hosts are forgotten.
const MAX_IDLE_HOSTS: usize = 1024;

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
    /// Connections claimed by a cycle whose task has not started its refresh yet, with
    /// the batch's lease owner: a caller in this process that needs one of them now
    /// (credentials on demand) takes the claim over instead of waiting for the queue.
    queued: Mutex<HashMap<ConnectionId, String>>,
    counters: RefreshCounters,
}

impl RefreshSlots {
    pub(crate) fn new(total: usize, per_host: usize) -> Self {
        Self {
            total: Arc::new(tokio::sync::Semaphore::new(total.max(1))),
            per_host_limit: per_host.max(1),
            per_host: Mutex::default(),
            in_flight: Mutex::default(),
            queued: Mutex::default(),
            counters: RefreshCounters::default(),
        }
    }

    fn host(&self, key: &str) -> Arc<tokio::sync::Semaphore> {
        let mut map = self.per_host.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > MAX_IDLE_HOSTS {
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

    fn queued(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, String>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the queued claim of `id`, if any: its lease owner.
    pub(crate) fn take_queued(&self, id: ConnectionId) -> Option<String> {
        self.queued().remove(&id)
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
        self.slots.queued().remove(&self.id);
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
    /// One scheduling pass of the background refresh: claims the due connections,
    /// earliest deadline (token expiry) first, in one store call under one lease, and
    /// starts a task for each. Returns at once with the started tasks.
    ///
    /// Each task waits for a slot of its provider host and then a slot of the total, so a
    /// host that hangs holds at most its own share and the other hosts' refreshes go on;
    /// and the next pass does not wait for the tasks of this one. A task left with less
    /// of the lease than a provider call needs (`provider_call_budget`) claims its
    /// connection afresh; a caller in this process that needs a queued connection at
    /// once takes its claim over (see [`RefreshSlots::take_queued`]).
    pub async fn start_due_refreshes(
        self: &Arc<Self>,
    ) -> Result<Vec<(ConnectionId, tokio::task::JoinHandle<RefreshOutcome>)>, AppError> {
        if self.refresh_tasks.stopping() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let lease = Lease {
            owner: self.new_lease_owner(),
            until: now + self.settings.refresh.lease,
        };
        let claimed = self
            .svc
            .leases
            .claim_due_refreshes(&lease, now, self.settings.refresh_batch)
            .await?;
        let mut started = Vec::with_capacity(claimed.len());
        for c in claimed {
            let id = c.id;
            if !self.slots.in_flight().insert(id) {
                // Still queued here from an earlier pass whose lease lapsed: that task
                // claims afresh when its turn comes; this claim is given back.
                self.drop_lease(id, &lease.owner).await;
                continue;
            }
            self.slots.queued().insert(id, lease.owner.clone());
            let app = self.clone();
            let lease = lease.clone();
            let handle = self
                .refresh_tasks
                .spawn(async move { app.background_refresh(c, lease).await });
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
    async fn background_refresh(
        self: Arc<Self>,
        claimed: Connection,
        lease: Lease,
    ) -> RefreshOutcome {
        let id = claimed.id;
        let _in_flight = InFlight {
            slots: &self.slots,
            id,
        };
        let run = AssertUnwindSafe(self.refresh_in_slot(claimed, &lease))
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
                self.back_off_after_panic(id, &lease.owner).await;
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
    /// refreshes the connection as claimed by the batch: no read and no claim of its own
    /// unless the wait left the lease too short for a provider call.
    async fn refresh_in_slot(
        &self,
        claimed: Connection,
        lease: &Lease,
    ) -> Result<RefreshOutcome, AppError> {
        let id = claimed.id;
        let host = self.slots.host(&provider_host(&claimed));
        let lock = self.lock_for(id);
        let turn = async {
            // The semaphores are never closed, so acquiring cannot fail.
            let host_slot = host.acquire().await;
            let slot = self.slots.total.acquire().await;
            let guard = lock.lock().await;
            (host_slot, slot, guard)
        };
        let turn = tokio::select! {
            biased;
            () = self.refresh_tasks.stopped() => None,
            turn = turn => Some(turn),
        };
        let Some((host_slot, slot, _guard)) = turn else {
            // Stopping before its turn came: the claim goes back for another worker (or
            // this one after its restart) instead of lapsing with the lease.
            if self.slots.take_queued(id).is_some() {
                self.drop_lease(id, &lease.owner).await;
            }
            return Ok(RefreshOutcome::NotDue);
        };
        let (_host_slot, _slot) = (
            host_slot.map_err(|_| AppError::Internal("refresh slots closed".into()))?,
            slot.map_err(|_| AppError::Internal("refresh slots closed".into()))?,
        );
        if self.slots.take_queued(id).is_none() {
            // Taken over meanwhile by a caller that refreshed it (or found it fresh).
            return Ok(RefreshOutcome::NotDue);
        }
        let policy = self.settings.refresh;
        let worth_preparing = claimed
            .grant()
            .is_some_and(|g| g.refresh_token.is_some() && policy.needs_refresh(g, self.now()));
        let prepared = if worth_preparing {
            Some(self.prepare(&claimed).await)
        } else {
            None
        };
        // The provider call and the save must fit in what is left of the lease.
        if lease.until - self.now() < self.settings.provider_call_budget {
            self.drop_lease(id, &lease.owner).await;
            let owner = self.new_lease_owner();
            return self.refresh_locked(id, false, &owner).await;
        }
        self.refresh_claimed(claimed, prepared, false, &lease.owner, lease.until)
            .await
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
        let message = "refresh failed with an internal error; will retry";
        let mut next = c.clone();
        next.refresh_failed(
            RefreshFailure::Internal,
            message.into(),
            &self.settings.refresh,
            self.jitter(),
            now,
        );
        self.give_back(&c, owner, &next.refresh, Some(message.into()))
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
            // One with a refresh token is the refresh job's business (a lapsed grant is
            // due with the earliest deadline); calling the provider here would make this
            // loop wait on it.
            if !c.has_lapsed(self.now()) {
                continue;
            }
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
            let still_lapsed = current.has_lapsed(self.now()) && current.holds_same_grant(&c);
            if !still_lapsed {
                self.drop_lease(id, &owner).await;
                continue;
            }
            let mut current = current;
            let written = match self.expire_edit(&mut current, &ExpiryReason::Lapsed) {
                Ok(Edit::Write(events)) => self
                    .write_connection(&mut current, &events)
                    .await
                    .map(|()| true),
                _ => Ok(false),
            };
            self.drop_lease(id, &owner).await;
            match written {
                Ok(true) => {
                    expired += 1;
                    let reason = ExpiryReason::Lapsed.message();
                    tracing::warn!(connection = %id, reason, "connection expired");
                }
                Ok(false) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(expired)
    }
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
