//! The refresh engine: one refresh of one grant, exactly one at a time, never losing a
//! rotated refresh token. The background cycles (refresh_cycle.rs) and credentials on
//! demand (refresh_on_demand.rs) both run it; the domain decides what each outcome
//! does to the connection, this module makes it so through the ports.
//!
//! Across processes the store's lease (claim → provider call outside any transaction →
//! compare-and-set write) makes one worker the refresher; within a process a lock per
//! connection makes concurrent callers wait for that one refresh instead of claiming.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use secrecy::SecretString;

use latchkey_domain::oauth::ResolvedProvider;
use latchkey_domain::sealed::fields;
use latchkey_domain::{
    Connection, ConnectionEvent, ConnectionId, ExpiryReason, Lease, RefreshFailure,
    RefreshSchedule, Status,
};
use latchkey_ports::{OAuthError, RefreshExchange};

use crate::cas::{Attempts, Cas, Edit};
use crate::refresh_save::Saved;
use crate::{AppError, Latchkey};

pub(crate) type LockMap = Mutex<HashMap<ConnectionId, Arc<tokio::sync::Mutex<()>>>>;

/// Beyond this many connections, the locks nobody holds or waits for are forgotten.
const MAX_IDLE_LOCKS: usize = 1024;
/// How often a claim is redone when the connection's settings changed while its
/// provider was being resolved.
const PREPARE_ATTEMPTS: u32 = 3;
/// How often giving the lease back is tried against unrelated writes (a rename).
const GIVE_BACK_ATTEMPTS: u32 = 3;
/// How often writing an expiry is tried against unrelated writes.
const EXPIRE_ATTEMPTS: Attempts = Attempts(3);

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

impl Latchkey {
    pub(crate) fn lock_for(&self, id: ConnectionId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.refresh_locks.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() > MAX_IDLE_LOCKS {
            // Forget locks nobody holds or waits for.
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(id).or_default().clone()
    }

    /// A lease owner name unique to one attempt.
    pub(crate) fn new_lease_owner(&self) -> String {
        format!(
            "{}:{}",
            self.settings.worker_id,
            latchkey_domain::hex::lower(&self.random::<8>())
        )
    }

    /// Refreshes one connection if it is due (or `force`), holding the lease while the
    /// provider is called. Runs as a refresh task: it saves what the provider answered
    /// even if this caller goes away (see `refresh_tasks`).
    pub async fn refresh_connection(
        self: &Arc<Self>,
        id: ConnectionId,
        force: bool,
    ) -> Result<RefreshOutcome, AppError> {
        let app = Arc::clone(self);
        self.refresh_to_the_end(async move {
            let lock = app.lock_for(id);
            let _guard = lock.lock().await;
            let owner = app.new_lease_owner();
            app.refresh_locked(id, force, &owner).await
        })
        .await
    }

    /// Gives the lease back with a schedule and error for the grant that was claimed. If
    /// the connection changed since (a rename, a reconnect), the schedule is written only
    /// when the grant is still the one claimed; a newer authorization keeps its own
    /// schedule and error, and only the lease is cleared.
    pub(crate) async fn give_back(
        &self,
        claimed: &Connection,
        owner: &str,
        schedule: &RefreshSchedule,
        error: Option<String>,
    ) {
        let id = claimed.id;
        let mut version = claimed.version;
        for _ in 0..GIVE_BACK_ATTEMPTS {
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
            if current.status() == Status::Active && current.holds_same_grant(claimed) {
                version = current.version;
                continue;
            }
            break;
        }
        self.drop_lease(id, owner).await;
    }

    pub(crate) async fn drop_lease(&self, id: ConnectionId, owner: &str) {
        if let Err(e) = self.svc.leases.drop_lease(id, owner).await {
            tracing::warn!(connection = %id, error = %e, "could not release the refresh lease; it lapses by itself");
        }
    }

    /// Resolves the provider (discovery included) and opens the refresh token: the work
    /// done before the lease is claimed, so the lease only has to cover the token call.
    pub(crate) async fn prepare(
        &self,
        c: &Connection,
    ) -> Result<(ResolvedProvider, SecretString), AppError> {
        let sealed = c
            .grant()
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
        // A cycle of this process claimed it and its task waits in the queue: take the
        // claim over (the caller holds the connection's lock, which that task needs
        // before it starts, and finds its claim gone).
        if let Some(batch_owner) = self.slots.take_queued(id) {
            self.drop_lease(id, &batch_owner).await;
        }
        // The connection is read and its provider resolved (discovery may take a whole
        // HTTP timeout) before the lease is claimed; if its settings change in between,
        // the claim is given back and the work redone.
        for _ in 0..PREPARE_ATTEMPTS {
            let Some(pre) = self.svc.connections.get_connection(id).await? else {
                return Ok(RefreshOutcome::Busy);
            };
            if pre.status() != Status::Active {
                return Ok(RefreshOutcome::Busy);
            }
            let worth_preparing = pre.grant().is_some_and(|g| {
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
                || !claimed.holds_same_grant(&pre)
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

    pub(crate) async fn refresh_claimed(
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
        let due = claimed
            .grant()
            .is_some_and(|g| g.refresh_token.is_some() && (force || policy.needs_refresh(g, now)));
        let prepared = match prepared {
            Some(p) if due => p,
            _ => {
                let mut next = claimed.clone();
                next.reschedule(&policy);
                self.give_back(&claimed, owner, &next.refresh, claimed.last_error.clone())
                    .await;
                return Ok(RefreshOutcome::NotDue);
            }
        };
        // A failure keeps the grant: the connection counts it and backs off.
        let failed = |failure: RefreshFailure, message: &str| {
            // Only the back-offs that use jitter draw it (no entropy spent otherwise).
            let jitter = match failure {
                RefreshFailure::Configuration => 0.0,
                _ => self.jitter(),
            };
            let mut next = claimed.clone();
            next.refresh_failed(failure, message.to_owned(), &policy, jitter, now);
            next.refresh
        };
        let (provider, refresh_token) = match prepared {
            Ok(p) => p,
            Err(e) => {
                // Stored on the connection: classified text only, details to the log.
                let message = format!("refresh could not start: {}", e.public_message());
                tracing::error!(connection = %id, error = %e, "refresh could not start");
                let schedule = failed(RefreshFailure::Transient { retry_after: None }, &message);
                self.give_back(&claimed, owner, &schedule, Some(message.clone()))
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
                let mut refreshed = claimed.clone();
                refreshed.refreshed(self.seal_issued(&claimed, &tokens, sent_at)?, &policy, now)?;
                match self
                    .save_refreshed(&claimed, owner, &refreshed, lease_until)
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
                self.expire_if_unchanged(
                    &claimed,
                    owner,
                    ExpiryReason::RefreshRejected { description },
                )
                .await
            }
            Err(e @ OAuthError::InvalidClient { .. }) => {
                let message = format!("configuration error: {e}");
                tracing::warn!(connection = %id, error = %e, "refresh refused: client configuration");
                let schedule = failed(RefreshFailure::Configuration, &message);
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
                let schedule = failed(RefreshFailure::Transient { retry_after }, &message);
                tracing::warn!(connection = %id, error = %e, failures = schedule.failures, "refresh failed; backing off");
                self.give_back(&claimed, owner, &schedule, Some(message.clone()))
                    .await;
                Ok(RefreshOutcome::Failed(message))
            }
        }
    }

    /// Marks the connection expired, unless another worker or a reconnect changed its
    /// grant since it was claimed. The lease is given back in every case.
    async fn expire_if_unchanged(
        &self,
        claimed: &Connection,
        owner: &str,
        reason: ExpiryReason,
    ) -> Result<RefreshOutcome, AppError> {
        let id = claimed.id;
        let written = self
            .modify_connection(id, EXPIRE_ATTEMPTS, |c| {
                if !c.holds_same_grant(claimed) || c.status() != Status::Active {
                    return Ok(Edit::Skip);
                }
                self.expire_edit(c, &reason)
            })
            .await;
        if matches!(written, Ok(Cas::Gone)) {
            return Ok(RefreshOutcome::Superseded);
        }
        // The expiry wrote the schedule and reason; only the lease is left.
        self.drop_lease(id, owner).await;
        match written? {
            Cas::Written(_) => {
                let reason = reason.message();
                tracing::warn!(connection = %id, reason, "connection expired");
                Ok(RefreshOutcome::Expired(reason))
            }
            _ => Ok(RefreshOutcome::Superseded),
        }
    }

    /// Expires `c` for `reason` (see [`Connection::expire`]), with its history event.
    /// Refused when the expiry does not apply to its status.
    pub(crate) fn expire_edit(
        &self,
        c: &mut Connection,
        reason: &ExpiryReason,
    ) -> Result<Edit, latchkey_domain::DomainError> {
        let from = c.expire(reason, self.now())?;
        Ok(Edit::Write(vec![self.expiry_event(c, from, reason)]))
    }

    fn expiry_event(&self, c: &Connection, from: Status, reason: &ExpiryReason) -> ConnectionEvent {
        self.event(
            c,
            Some(from),
            reason.event().as_str(),
            Some(reason.message()),
        )
    }
}
