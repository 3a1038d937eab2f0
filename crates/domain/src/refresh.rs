//! When to refresh an OAuth grant, how to back off, and when a grant is lost.

use chrono::{DateTime, Duration, Utc};

use crate::connection::{Connection, Grant};

/// Back-off doubles per failure at most this often (then the cap applies anyway), so
/// that the shift cannot overflow.
const MAX_BACKOFF_DOUBLINGS: u32 = 20;
/// A retry aimed before a live token lapses is made this long before its expiry...
const RETRY_BEFORE_EXPIRY: Duration = Duration::seconds(1);
/// ...but never sooner than this from now, so that a token about to lapse is not
/// retried in a tight loop.
const MIN_RETRY_DELAY: Duration = Duration::milliseconds(500);
/// The shortest wait a credentials caller is told to observe before asking again.
const MIN_CALLER_RETRY_AFTER: Duration = Duration::seconds(1);

/// How a refresh attempt failed, when the grant itself is not lost (an `invalid_grant`
/// is: see [`crate::ExpiryReason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshFailure {
    /// The provider or the network failed, or the refresh could not start; worth retrying
    /// soon. `retry_after` is the provider's own `Retry-After`, when it sent one.
    Transient {
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The provider refused our client (`invalid_client`): nothing changes until someone
    /// fixes the configuration, so retry only after the longest back-off.
    Configuration,
    /// The refresh failed inside Latchkey (it panicked): back off plainly.
    Internal,
}

/// Tunables of the refresh policy (from configuration).
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    /// Refresh a token that expires within this margin.
    pub margin: Duration,
    /// How long a claimed refresh may take before another worker may take over.
    pub lease: Duration,
    /// First back-off after a transient failure; doubles per failure.
    pub backoff_base: Duration,
    /// The longest back-off between failed attempts.
    pub backoff_cap: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            margin: Duration::minutes(5),
            lease: Duration::seconds(30),
            backoff_base: Duration::seconds(5),
            backoff_cap: Duration::minutes(5),
        }
    }
}

impl RefreshPolicy {
    /// When the grant should next be refreshed; `None` when it never needs to be (a
    /// token without expiry, or no refresh token to refresh with).
    ///
    /// Due `margin` before expiry, but never earlier than half-way through the token's
    /// life, so short-lived tokens are not refreshed in a loop.
    pub fn due_at(&self, grant: &Grant) -> Option<DateTime<Utc>> {
        let expires_at = grant.expires_at?;
        grant.refresh_token.as_ref()?;
        let half_life = grant.obtained_at + (expires_at - grant.obtained_at) / 2;
        Some((expires_at - self.margin).max(half_life))
    }

    /// Whether a caller asking for credentials at `now` should refresh first.
    pub fn needs_refresh(&self, grant: &Grant, now: DateTime<Utc>) -> bool {
        self.due_at(grant).is_some_and(|due| due <= now)
    }

    /// The delay before the next attempt after `failures` consecutive transient failures
    /// (1 for the first), with `jitter` in `[0, 1)` spreading retries of many connections.
    /// A provider's `Retry-After` is honoured when longer.
    pub fn backoff(&self, failures: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exp = failures.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS);
        let base_ms = self.backoff_base.num_milliseconds().max(1);
        let raw = base_ms
            .saturating_mul(1_i64 << exp)
            .min(self.backoff_cap.num_milliseconds());
        // Full jitter on half the delay: between 50% and 100% of it.
        let jitter = jitter.clamp(0.0, 1.0);
        let jittered = raw / 2 + ((raw / 2) as f64 * jitter) as i64;
        let d = Duration::milliseconds(jittered.max(1));
        match retry_after {
            Some(r) if r > d => r,
            _ => d,
        }
    }
}

impl RefreshPolicy {
    /// When to try again after the `failures`-th consecutive failure (1 for the first) of
    /// class `failure`, for a grant whose access token expires at `expires_at`.
    ///
    /// Unless the provider named its own Retry-After, a transient failure is retried
    /// before the current token lapses: a short-lived token must not die of one hiccup.
    /// Once it has lapsed, the plain back-off applies, so a provider that is down is not
    /// called on every cycle and every credentials request.
    pub fn retry_at(
        &self,
        failure: RefreshFailure,
        failures: u32,
        jitter: f64,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        match failure {
            RefreshFailure::Configuration => now + self.backoff_cap,
            RefreshFailure::Internal => now + self.backoff(failures, jitter, None),
            RefreshFailure::Transient { retry_after } => {
                let due = now + self.backoff(failures, jitter, retry_after);
                match (retry_after, expires_at) {
                    (None, Some(expires_at)) if expires_at > now => {
                        due.min((expires_at - RETRY_BEFORE_EXPIRY).max(now + MIN_RETRY_DELAY))
                    }
                    _ => due,
                }
            }
        }
    }

    /// Whether a credentials request at `now` should refresh first: the grant is due and
    /// no back-off after failed attempts (a provider's Retry-After included) is running,
    /// so that a struggling provider is not called again by every workflow run.
    pub fn wants_refresh(&self, c: &Connection, now: DateTime<Utc>) -> bool {
        let backing_off = c.refresh.failures > 0 && c.refresh.due_at.is_some_and(|d| d > now);
        !backing_off && c.grant().is_some_and(|g| self.needs_refresh(g, now))
    }

    /// How long a credentials caller should wait before asking again for a token that
    /// lapsed and could not be refreshed yet: until the back-off ends (`due_at`), at
    /// least a second and at most the back-off cap.
    pub fn caller_retry_after(
        &self,
        due_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Duration {
        due_at
            .map(|d| d - now)
            .unwrap_or(self.backoff_base)
            .max(MIN_CALLER_RETRY_AFTER)
            .min(self.backoff_cap.max(MIN_CALLER_RETRY_AFTER))
    }
}

/// Whether the access token is past its expiry at `now`.
pub fn is_past_expiry(grant: &Grant, now: DateTime<Utc>) -> bool {
    grant.expires_at.is_some_and(|e| e <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::Sealed;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn grant(obtained: i64, lifetime: Option<i64>, refresh: bool) -> Grant {
        Grant {
            access_token: Sealed(vec![1]),
            refresh_token: refresh.then(|| Sealed(vec![2])),
            token_type: "Bearer".into(),
            scopes: vec![],
            obtained_at: t(obtained),
            expires_at: lifetime.map(|l| t(obtained + l)),
        }
    }

    #[test]
    fn due_time_table() {
        let p = RefreshPolicy {
            margin: Duration::seconds(300),
            ..Default::default()
        };
        let table = [
            // (lifetime, has refresh token, due after obtained)
            (Some(3600), true, Some(3300)), // margin wins
            (Some(600), true, Some(300)),   // margin and half life agree
            (Some(60), true, Some(30)),     // short token: half its life
            (Some(4), true, Some(2)),
            (None, true, None),        // never expires (Notion, GitHub)
            (Some(3600), false, None), // nothing to refresh with
        ];
        for (lifetime, refresh, want) in table {
            let g = grant(0, lifetime, refresh);
            assert_eq!(p.due_at(&g), want.map(t), "{lifetime:?} {refresh}");
        }
    }

    #[test]
    fn needs_refresh_at_due_time() {
        let p = RefreshPolicy {
            margin: Duration::seconds(300),
            ..Default::default()
        };
        let g = grant(0, Some(3600), true);
        assert!(!p.needs_refresh(&g, t(3299)));
        assert!(p.needs_refresh(&g, t(3300)));
        assert!(!p.needs_refresh(&grant(0, None, true), t(1_000_000)));
    }

    #[test]
    fn backoff_doubles_caps_jitters_and_honours_retry_after() {
        let p = RefreshPolicy {
            backoff_base: Duration::seconds(4),
            backoff_cap: Duration::seconds(60),
            ..Default::default()
        };
        let table = [
            (1, 0.0, None, 2_000),
            (1, 0.999_999, None, 3_999),
            (2, 0.0, None, 4_000),
            (3, 0.5, None, 12_000),
            (10, 0.0, None, 30_000),
            (10, 0.999_999, None, 59_999),
            (1, 0.0, Some(Duration::seconds(120)), 120_000),
            (5, 0.0, Some(Duration::seconds(1)), 30_000),
        ];
        for (failures, jitter, retry_after, want_ms) in table {
            assert_eq!(
                p.backoff(failures, jitter, retry_after).num_milliseconds(),
                want_ms,
                "{failures} {jitter} {retry_after:?}"
            );
        }
    }

    #[test]
    fn wants_refresh_table() {
        use crate::connection::{ConnectionParts, RefreshSchedule, Status};
        let p = RefreshPolicy {
            margin: Duration::seconds(300),
            ..Default::default()
        };
        // (grant due at 3300, failures, schedule due, now, wants)
        let table = [
            (true, 0, Some(3300), 3299, false), // not due yet
            (true, 0, Some(3300), 3300, true),  // due
            (true, 2, Some(3400), 3350, false), // due, but backing off
            (true, 2, Some(3400), 3400, true),  // back-off over
            (true, 2, None, 3350, true),        // failures without a schedule: no back-off
            (false, 0, None, 9999, false),      // no grant
        ];
        for (with_grant, failures, due, now, want) in table {
            let c = Connection::restore(ConnectionParts {
                id: crate::ConnectionId::from_random_bytes([1; 16]),
                project_id: crate::ProjectId::parse("p").unwrap(),
                name: crate::ConnectionName::parse("n").unwrap(),
                kind: crate::ConnectionType::OAuth(crate::Provider::Google),
                status: Status::Active,
                config: crate::ConnectionConfig::OAuth(Default::default()),
                secrets: None,
                oauth2_client_id: None,
                grant: with_grant.then(|| grant(0, Some(3600), true)),
                authorized_user: None,
                refresh: RefreshSchedule {
                    due_at: due.map(t),
                    failures,
                    lease: None,
                },
                last_error: None,
                created_at: t(0),
                updated_at: t(0),
                last_used_at: None,
                version: 1,
            });
            assert_eq!(
                p.wants_refresh(&c, t(now)),
                want,
                "{with_grant} {failures} {due:?} {now}"
            );
        }
    }

    #[test]
    fn caller_retry_after_is_clamped() {
        let p = RefreshPolicy {
            backoff_base: Duration::seconds(5),
            backoff_cap: Duration::seconds(60),
            ..Default::default()
        };
        let table = [
            (Some(30), 10, 20),  // until the back-off ends
            (Some(10), 10, 1),   // at least a second
            (Some(5), 10, 1),    // even when the back-off is over
            (Some(500), 10, 60), // at most the cap
            (None, 10, 5),       // no schedule: the base
        ];
        for (due, now, want) in table {
            assert_eq!(
                p.caller_retry_after(due.map(t), t(now)),
                Duration::seconds(want),
                "{due:?} {now}"
            );
        }
        let tiny = RefreshPolicy {
            backoff_cap: Duration::milliseconds(10),
            ..p
        };
        assert_eq!(
            tiny.caller_retry_after(Some(t(100)), t(0)),
            Duration::seconds(1),
            "a cap below a second"
        );
    }

    #[test]
    fn past_expiry() {
        let g = grant(0, Some(10), true);
        assert!(!is_past_expiry(&g, t(9)));
        assert!(is_past_expiry(&g, t(10)));
        assert!(!is_past_expiry(&grant(0, None, false), t(1_000_000)));
    }
}
