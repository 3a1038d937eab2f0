//! Refreshing OAuth grants: on demand and in background cycles, exactly one refresh per
//! grant at a time, never losing a rotated refresh token.
//!
//! Across processes the store's lease (claim → provider call outside any transaction →
//! compare-and-set write) makes one worker the refresher; within a process a lock per
//! connection makes concurrent callers wait for that one refresh instead of claiming.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Duration;
use futures::StreamExt;
use secrecy::SecretString;

use latchkey_domain::refresh::is_past_expiry;
use latchkey_domain::sealed::fields;
use latchkey_domain::{
    Connection, ConnectionId, Grant, Lease, LifecycleEvent, RefreshSchedule, SealContext, Status,
};
use latchkey_ports::{OAuthError, RefreshExchange, StoreError};

use crate::connections::Credentials;
use crate::{AppError, Latchkey};

pub(crate) type LockMap = Mutex<HashMap<ConnectionId, Arc<tokio::sync::Mutex<()>>>>;

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
}

/// What a background cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    pub picked: usize,
    pub refreshed: usize,
    pub failed: usize,
    pub expired: usize,
}

impl Latchkey {
    fn lock_for(&self, id: ConnectionId) -> Arc<tokio::sync::Mutex<()>> {
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

    /// Refreshes one connection if it is due (or `force`), holding the lease while the
    /// provider is called.
    pub async fn refresh_connection(
        &self,
        id: ConnectionId,
        force: bool,
    ) -> Result<RefreshOutcome, AppError> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        self.refresh_locked(id, force).await
    }

    async fn refresh_locked(
        &self,
        id: ConnectionId,
        force: bool,
    ) -> Result<RefreshOutcome, AppError> {
        let policy = self.settings.refresh;
        let now = self.now();
        let owner = format!("{}:{}", self.settings.worker_id, hex(&self.random::<8>()));
        let lease = Lease {
            owner: owner.clone(),
            until: now + policy.lease,
        };
        let Some(claimed) = self.svc.connections.claim_refresh(id, &lease, now).await? else {
            return Ok(RefreshOutcome::Busy);
        };
        let release = |schedule: RefreshSchedule, error: Option<String>| {
            let owner = owner.clone();
            async move {
                if let Err(e) = self
                    .svc
                    .connections
                    .release_refresh(id, &owner, &schedule, error)
                    .await
                {
                    tracing::warn!(connection = %id, error = %e, "could not release the refresh lease; it lapses by itself");
                }
            }
        };
        let Some(grant) = claimed.grant.clone() else {
            release(RefreshSchedule::default(), claimed.last_error.clone()).await;
            return Ok(RefreshOutcome::NotDue);
        };
        let current_schedule = RefreshSchedule {
            lease: None,
            ..claimed.refresh.clone()
        };
        let Some(sealed_refresh) = grant.refresh_token.clone() else {
            release(
                RefreshSchedule {
                    due_at: None,
                    ..current_schedule
                },
                claimed.last_error.clone(),
            )
            .await;
            return Ok(RefreshOutcome::NotDue);
        };
        if !force && !policy.needs_refresh(&grant, now) {
            release(
                RefreshSchedule {
                    due_at: policy.due_at(&grant),
                    ..current_schedule
                },
                claimed.last_error.clone(),
            )
            .await;
            return Ok(RefreshOutcome::NotDue);
        }
        let failures = claimed.refresh.failures.saturating_add(1);
        let backoff = |retry_after: Option<Duration>| {
            let mut due = now + policy.backoff(failures, self.jitter(), retry_after);
            // Unless the provider named its own Retry-After, try again before the current
            // token lapses: a short-lived token must not die of one hiccup.
            if let (None, Some(expires_at)) = (retry_after, grant.expires_at) {
                let before_expiry =
                    (expires_at - Duration::seconds(1)).max(now + Duration::milliseconds(500));
                due = due.min(before_expiry);
            }
            RefreshSchedule {
                due_at: Some(due),
                failures,
                lease: None,
            }
        };
        let prepared = async {
            let provider = self.resolve_provider(&claimed).await?;
            let token = self.open_str(
                &sealed_refresh,
                &Self::token_ctx(&claimed, fields::REFRESH_TOKEN),
            )?;
            Ok::<_, AppError>((provider, token))
        }
        .await;
        let (provider, refresh_token) = match prepared {
            Ok(p) => p,
            Err(e) => {
                // Stored on the connection: classified text only, details to the log.
                let message = format!("refresh could not start: {}", e.public_message());
                tracing::error!(connection = %id, error = %e, "refresh could not start");
                release(backoff(None), Some(message.clone())).await;
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
                self.save_refreshed(&claimed, &owner, &new_grant, &schedule, lease.until)
                    .await
            }
            Err(OAuthError::InvalidGrant(description)) => {
                let reason = format!(
                    "the provider rejected the refresh token (invalid_grant){}; authorize the connection again",
                    description.map(|d| format!(": {d}")).unwrap_or_default()
                );
                self.expire_if_unchanged(
                    &claimed,
                    &owner,
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
                release(schedule, Some(message.clone())).await;
                Ok(RefreshOutcome::Failed(message))
            }
            Err(e) => {
                let retry_after = match &e {
                    OAuthError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let message = format!("refresh failed, will retry: {e}");
                tracing::warn!(connection = %id, error = %e, failures, "refresh failed; backing off");
                release(backoff(retry_after), Some(message.clone())).await;
                Ok(RefreshOutcome::Failed(message))
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
    ) -> Result<RefreshOutcome, AppError> {
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
                .connections
                .save_refreshed_grant(claimed.id, owner, version, grant, schedule, self.now())
                .await
            {
                Ok(()) => {
                    tracing::debug!(connection = %claimed.id, "grant refreshed");
                    return Ok(RefreshOutcome::Refreshed);
                }
                Err(StoreError::Conflict) | Err(StoreError::NotFound) => {
                    let current = match self.svc.connections.get_connection(claimed.id).await {
                        Ok(Some(c)) => c,
                        Ok(None) => return Ok(RefreshOutcome::Superseded),
                        Err(e) => {
                            last_error = e.to_string();
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                            continue;
                        }
                    };
                    let same_grant = current.grant.as_ref().map(|g| &g.access_token)
                        == claimed.grant.as_ref().map(|g| &g.access_token);
                    let still_ours = current
                        .refresh
                        .lease
                        .as_ref()
                        .is_some_and(|l| l.owner == owner);
                    if same_grant && still_ours && current.status == Status::Active {
                        version = current.version;
                        continue;
                    }
                    tracing::info!(connection = %claimed.id, "a newer grant replaced the one being refreshed; dropping the refreshed tokens");
                    if still_ours {
                        // Give the lease back so the new grant is not blocked until it lapses.
                        let schedule = RefreshSchedule {
                            lease: None,
                            ..current.refresh.clone()
                        };
                        let _ = self
                            .svc
                            .connections
                            .release_refresh(
                                claimed.id,
                                owner,
                                &schedule,
                                current.last_error.clone(),
                            )
                            .await;
                    }
                    return Ok(RefreshOutcome::Superseded);
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
            let same_grant = c.grant.as_ref().map(|g| &g.access_token)
                == claimed.grant.as_ref().map(|g| &g.access_token);
            if !same_grant || c.status != Status::Active {
                let _ = self
                    .svc
                    .connections
                    .release_refresh(
                        c.id,
                        owner,
                        &RefreshSchedule {
                            lease: None,
                            ..c.refresh.clone()
                        },
                        c.last_error.clone(),
                    )
                    .await;
                return Ok(RefreshOutcome::Superseded);
            }
            let id = c.id;
            match self.write_expiry(c, event, kind, reason).await {
                Ok(false) => return Ok(RefreshOutcome::Superseded),
                Ok(true) => {
                    let _ = self
                        .svc
                        .connections
                        .release_refresh(
                            id,
                            owner,
                            &RefreshSchedule::default(),
                            Some(reason.to_owned()),
                        )
                        .await;
                    tracing::warn!(connection = %id, reason, "connection expired");
                    return Ok(RefreshOutcome::Expired(reason.to_owned()));
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(RefreshOutcome::Superseded)
    }

    /// One background refresh cycle: refreshes every connection that is due.
    pub async fn run_refresh_cycle(&self) -> Result<CycleReport, AppError> {
        let now = self.now();
        let ids = self
            .svc
            .connections
            .due_for_refresh(now, self.settings.refresh_batch)
            .await?;
        let mut report = CycleReport {
            picked: ids.len(),
            ..Default::default()
        };
        let mut results = futures::stream::iter(ids)
            .map(|id| async move { (id, self.refresh_connection(id, false).await) })
            .buffer_unordered(self.settings.refresh_concurrency.max(1));
        while let Some((id, r)) = results.next().await {
            match r {
                Ok(RefreshOutcome::Refreshed) => report.refreshed += 1,
                Ok(RefreshOutcome::Expired(_)) => report.expired += 1,
                Ok(RefreshOutcome::Failed(_)) => report.failed += 1,
                Ok(_) => {}
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(connection = %id, error = %e, "refresh failed");
                }
            }
        }
        if let Err(e) = self.svc.sessions.purge_auth_sessions(now).await {
            tracing::warn!(error = %e, "purging expired authorization sessions failed");
        }
        Ok(report)
    }

    /// The status job: an active connection whose access token is past expiry and cannot
    /// be refreshed becomes expired.
    pub async fn run_expiry_cycle(&self) -> Result<usize, AppError> {
        let now = self.now();
        let ids = self
            .svc
            .connections
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
            let reason = if grant.refresh_token.is_some() {
                match self.refresh_connection(id, true).await {
                    Ok(RefreshOutcome::Expired(_)) => {
                        expired += 1;
                        continue;
                    }
                    Ok(RefreshOutcome::Failed(m)) => {
                        format!("the access token expired and could not be refreshed: {m}")
                    }
                    Err(e) => format!(
                        "the access token expired and could not be refreshed: {}",
                        e.public_message()
                    ),
                    Ok(_) => continue,
                }
            } else {
                "the access token expired and the provider issued no refresh token; authorize the connection again".to_owned()
            };
            let lock = self.lock_for(id);
            let _guard = lock.lock().await;
            let Some(current) = self.svc.connections.get_connection(id).await? else {
                continue;
            };
            let still_lapsed = current.status == Status::Active
                && current
                    .grant
                    .as_ref()
                    .is_some_and(|g| is_past_expiry(g, self.now()))
                && current.grant.as_ref().map(|g| &g.access_token)
                    == c.grant.as_ref().map(|g| &g.access_token);
            if !still_lapsed {
                continue;
            }
            match self
                .write_expiry(current, LifecycleEvent::Lapsed, "lapsed", &reason)
                .await
            {
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
        let read_version = c.version;
        let Ok(Some((from, _))) = c.apply(event, self.now()) else {
            return Ok(false);
        };
        c.last_error = Some(reason.to_owned());
        c.refresh = RefreshSchedule::default();
        c.version = read_version + 1;
        let ev = self.event(&c, Some(from), kind, Some(reason.to_owned()));
        self.svc
            .connections
            .update_connection(&c, read_version, &[ev])
            .await
            .map(|()| true)
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
                let mut outcome = self.refresh_locked(c.id, false).await;
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
                        self.refresh_locked(c.id, false).await
                    } else {
                        Ok(RefreshOutcome::NotDue)
                    };
                }
                match outcome {
                    Ok(RefreshOutcome::Expired(reason)) => {
                        return Err(AppError::State {
                            code: "connection_expired",
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
        if is_past_expiry(grant, self.now()) {
            return Err(AppError::State {
                code: "token_unavailable",
                message: format!(
                    "the access token expired and could not be refreshed yet{}",
                    c.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
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
            code: "connection_incomplete",
            message: "the connection has not been authorized yet; complete its OAuth consent flow"
                .into(),
        }),
        Status::Expired => Err(AppError::State {
            code: "connection_expired",
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
