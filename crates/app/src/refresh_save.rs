//! Saving the tokens of a refresh under the lease, and what to do with them when the
//! connection went away meanwhile. The provider may have rotated the refresh token, so
//! these tokens are the grant: a failed save is retried while the lease lasts.

use chrono::Duration;

use latchkey_domain::oauth::{ResolvedProvider, TokenResponse};
use latchkey_domain::{Connection, ConnectionId, Status};
use latchkey_ports::{Revocation, StoreError};

use crate::{AppError, Latchkey};

/// How often saving a refreshed grant is retried when the database fails: the provider
/// may have rotated the refresh token, so giving up would lose the grant.
/// Saving refreshed tokens is retried at least this often, and then for as long as the
/// lease still has a second to run: once it lapses another worker may take over.
const SAVE_MIN_ATTEMPTS: u32 = 3;
const SAVE_MAX_ATTEMPTS: u32 = 60;
/// The first pause after a failed save; it doubles per failure up to [`SAVE_MAX_DELAY`].
const SAVE_FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(50);
const SAVE_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(2);
/// The lease must still have this long to run for another save attempt.
const SAVE_LEASE_MARGIN: Duration = Duration::seconds(1);

/// How saving refreshed tokens ended.
/// How saving refreshed tokens ended.
pub(crate) enum Saved {
    Yes,
    /// A newer grant replaced the one refreshed; ours is dropped.
    Superseded,
    /// The connection was deleted meanwhile: what we obtained must not stay alive.
    Deleted,
}

impl Latchkey {
    /// The connection was deleted while its refresh was in flight: the tokens the
    /// provider just issued belong to nobody, so they are revoked rather than left alive.
    pub(crate) async fn revoke_orphaned(
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
    pub(crate) async fn save_refreshed(
        &self,
        claimed: &Connection,
        owner: &str,
        refreshed: &Connection,
        lease_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Saved, AppError> {
        let (Some(grant), schedule) = (refreshed.grant(), &refreshed.refresh) else {
            return Err(AppError::Internal(
                "a refreshed connection without a grant".into(),
            ));
        };
        let mut version = claimed.version;
        let mut delay = SAVE_FIRST_DELAY;
        let mut last_error = String::new();
        // Measured on the monotonic timer: the budget is real waiting, not domain time.
        let budget = (lease_until - self.now() - SAVE_LEASE_MARGIN)
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
                    if current.holds_same_grant(claimed)
                        && still_ours
                        && current.status() == Status::Active
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
                    delay = (delay * 2).min(SAVE_MAX_DELAY);
                }
            }
        }
        tracing::error!(connection = %claimed.id, error = %last_error, "could not save refreshed tokens");
        Err(AppError::Internal(format!(
            "saving refreshed tokens failed: {last_error}"
        )))
    }
}
