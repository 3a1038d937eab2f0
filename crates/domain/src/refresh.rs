//! When to refresh an OAuth grant, how to back off, and when a grant is lost.

use chrono::{DateTime, Duration, Utc};

use crate::connection::Grant;

/// Tunables of the refresh policy (from configuration).
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    /// Refresh a token that expires within this margin.
    pub margin: Duration,
    /// How long a claimed refresh may take before another worker may take over.
    pub lease: Duration,
    /// First back-off after a transient failure; doubles per failure.
    pub backoff_base: Duration,
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
        let exp = failures.saturating_sub(1).min(20);
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
    fn past_expiry() {
        let g = grant(0, Some(10), true);
        assert!(!is_past_expiry(&g, t(9)));
        assert!(is_past_expiry(&g, t(10)));
        assert!(!is_past_expiry(&grant(0, None, false), t(1_000_000)));
    }
}
