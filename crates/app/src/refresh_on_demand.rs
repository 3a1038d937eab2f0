//! Credentials on demand: the access token of an active connection, refreshed first
//! when due. Callers in this process share one refresh (the per-connection lock); a
//! refresh running in another process is waited for rather than duplicated. The refresh
//! itself runs as a task that finishes even if the caller goes away.

use std::sync::Arc;

use secrecy::SecretString;

use latchkey_domain::refresh::is_past_expiry;
use latchkey_domain::sealed::fields;
use latchkey_domain::{Connection, ConnectionId, ExpiryReason, Status};

use crate::credentials::Credentials;
use crate::refresh::RefreshOutcome;
use crate::{AppError, Latchkey, StateCode};

/// How long a credentials request waits for another process's refresh.
const WAIT_FOR_OTHER_REFRESH: std::time::Duration = std::time::Duration::from_secs(20);
/// How often a waiting credentials request looks for the other process's new grant.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl Latchkey {
    /// The access token of an active connection, refreshed first when due.
    pub(crate) async fn oauth_credentials(
        self: &Arc<Self>,
        c: Connection,
    ) -> Result<Credentials, AppError> {
        let mut c = check_usable(c)?;
        if self.settings.refresh.wants_refresh(&c, self.now()) {
            let lock = self.lock_for(c.id);
            let _guard = lock.lock().await;
            // Another caller in this process may have refreshed while we waited.
            c = check_usable(self.reload(c.id).await?)?;
            if self.settings.refresh.wants_refresh(&c, self.now()) {
                let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER_REFRESH;
                let owner = self.new_lease_owner();
                let mut outcome = self.refresh_locked_to_the_end(c.id, &owner).await;
                // Busy: another process is refreshing. Wait for its grant; if it died (its
                // lease lapsed) or gave up without one, the refresh is still to be done:
                // claim again. Busy calls no provider, so this stays one refresh at most.
                while matches!(outcome, Ok(RefreshOutcome::Busy))
                    && tokio::time::Instant::now() < deadline
                {
                    let before = c.clone();
                    c = self.wait_for_other_refresh(&c, deadline).await?;
                    let unchanged = c.holds_same_grant(&before);
                    let now = self.now();
                    let lease_gone = c.refresh.lease.as_ref().is_none_or(|l| l.until < now);
                    outcome = if c.status() == Status::Active
                        && unchanged
                        && lease_gone
                        && self.settings.refresh.wants_refresh(&c, self.now())
                    {
                        self.refresh_locked_to_the_end(c.id, &owner).await
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
            .grant()
            .ok_or_else(|| AppError::Internal("active OAuth connection without a grant".into()))?;
        let now = self.now();
        if is_past_expiry(grant, now) {
            if grant.refresh_token.is_none() {
                return Err(AppError::State {
                    code: StateCode::ConnectionExpired,
                    message: ExpiryReason::Lapsed.message(),
                });
            }
            // The grant lives on; the provider could not refresh it yet. Retry once the
            // back-off is over (at least a second, at most the back-off cap).
            let retry_after = self
                .settings
                .refresh
                .caller_retry_after(c.refresh.due_at, now);
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

    /// `refresh_locked` as a refresh task: what the provider answered is saved even if
    /// this caller goes away meanwhile (its client hung up).
    async fn refresh_locked_to_the_end(
        self: &Arc<Self>,
        id: ConnectionId,
        owner: &str,
    ) -> Result<RefreshOutcome, AppError> {
        let app = Arc::clone(self);
        let owner = owner.to_owned();
        self.refresh_to_the_end(async move { app.refresh_locked(id, false, &owner).await })
            .await
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
        loop {
            tokio::time::sleep(WAIT_POLL).await;
            let now_c = self.reload(c.id).await?;
            let changed = !now_c.holds_same_grant(c);
            // A lease that lapsed is one whose holder died: waiting longer brings nothing.
            let now = self.now();
            let lease_gone = now_c.refresh.lease.as_ref().is_none_or(|l| l.until < now);
            if changed || lease_gone || now_c.status() != Status::Active {
                return Ok(now_c);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(now_c);
            }
        }
    }
}

fn check_usable(c: Connection) -> Result<Connection, AppError> {
    match c.status() {
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
