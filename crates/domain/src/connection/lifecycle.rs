//! The lifecycle of the connection aggregate: the state machine ([`transition`]) and
//! the methods that apply it. Each method makes the transition and every field change
//! that goes with it, at `now`, so that the consent callback, the refresh and the
//! expiry job cannot drift apart in what a step means.

use chrono::{DateTime, Utc};

use super::{Connection, ConnectionType, Grant, RefreshSchedule, Status};
use crate::config::ConnectionConfig;
use crate::refresh::{is_past_expiry, RefreshFailure, RefreshPolicy};
use crate::sealed::Sealed;
use crate::DomainError;

/// Something that happens to a connection and may change its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// The consent flow completed and a new grant was stored.
    Authorized,
    /// The provider issued fresh tokens for the current grant.
    Refreshed,
    /// The provider refused the refresh token (`invalid_grant`): the grant is dead.
    RefreshRejected,
    /// The access token passed its expiry and could not be refreshed.
    Lapsed,
    /// The secret fields of a non-OAuth connection were replaced.
    SecretReplaced,
}

impl LifecycleEvent {
    /// The event's name, as recorded in a connection's history.
    pub fn as_str(&self) -> &'static str {
        match self {
            LifecycleEvent::Authorized => "authorized",
            LifecycleEvent::Refreshed => "refreshed",
            LifecycleEvent::RefreshRejected => "refresh_rejected",
            LifecycleEvent::Lapsed => "lapsed",
            LifecycleEvent::SecretReplaced => "secret_replaced",
        }
    }
}

/// The state machine: the status after `event`, or why the event is illegal.
pub fn transition(
    kind: ConnectionType,
    from: Status,
    event: LifecycleEvent,
) -> Result<Status, DomainError> {
    use LifecycleEvent as E;
    use Status as S;
    let illegal = || DomainError::IllegalTransition {
        from,
        event: event.as_str(),
        kind: kind.as_str(),
    };
    match (kind.is_oauth(), from, event) {
        (true, _, E::Authorized) => Ok(S::Active),
        (true, S::Active, E::Refreshed) => Ok(S::Active),
        (true, S::Active, E::RefreshRejected | E::Lapsed) => Ok(S::Expired),
        (false, S::Active, E::SecretReplaced) => Ok(S::Active),
        _ => Err(illegal()),
    }
}

/// The status a new connection of `kind` starts in.
pub fn initial_status(kind: ConnectionType) -> Status {
    if kind.is_oauth() {
        Status::Incomplete
    } else {
        Status::Active
    }
}

/// Tokens a provider just issued (by a code exchange or a refresh), sealed, before they
/// become the connection's grant.
#[derive(Clone, Debug, PartialEq)]
pub struct IssuedTokens {
    /// The sealed access token.
    pub access_token: Sealed,
    /// `None` when the token response carried none.
    pub refresh_token: Option<Sealed>,
    /// The token type the provider gave (`Bearer`).
    pub token_type: String,
    /// `None` when the provider did not say which scopes it granted.
    pub scopes: Option<Vec<String>>,
    /// When the token request was sent (expiry counts from there, erring early).
    pub obtained_at: DateTime<Utc>,
    /// When the access token expires; `None` for tokens that do not.
    pub expires_at: Option<DateTime<Utc>>,
}

impl IssuedTokens {
    /// A new grant; without granted scopes, the requested ones are assumed.
    pub fn into_grant(self, requested_scopes: &[String]) -> Grant {
        Grant {
            access_token: self.access_token,
            refresh_token: self.refresh_token,
            token_type: self.token_type,
            scopes: self.scopes.unwrap_or_else(|| requested_scopes.to_vec()),
            obtained_at: self.obtained_at,
            expires_at: self.expires_at,
        }
    }
}

impl Grant {
    /// The grant after a refresh. A refresh token the provider did not resend stays valid
    /// (RFC 6749 §6) and is kept, as are the scopes when the response names none.
    pub fn refreshed(&self, tokens: IssuedTokens) -> Grant {
        Grant {
            refresh_token: tokens
                .refresh_token
                .clone()
                .or_else(|| self.refresh_token.clone()),
            ..tokens.into_grant(&self.scopes)
        }
    }
}

/// Why a grant is lost and its connection expires.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpiryReason {
    /// The provider answered the refresh with `invalid_grant`, with its description.
    RefreshRejected {
        /// The provider's `error_description`, if it sent one.
        description: Option<String>,
    },
    /// The access token expired and there is no refresh token to get another.
    Lapsed,
}

impl ExpiryReason {
    /// The lifecycle event this expiry is.
    pub fn event(&self) -> LifecycleEvent {
        match self {
            ExpiryReason::RefreshRejected { .. } => LifecycleEvent::RefreshRejected,
            ExpiryReason::Lapsed => LifecycleEvent::Lapsed,
        }
    }

    /// The reason as kept on the connection and its history, with what to do about it.
    pub fn message(&self) -> String {
        match self {
            ExpiryReason::RefreshRejected { description } => format!(
                "the provider rejected the refresh token (invalid_grant){}; authorize the connection again",
                description
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            ExpiryReason::Lapsed => "the access token expired and the provider issued no refresh token; authorize the connection again".into(),
        }
    }
}

impl Connection {
    /// Stores a grant obtained through the consent flow: the first authorization of an
    /// incomplete connection, or a reconnect of an active or expired one, whose new grant
    /// replaces the old (a refresh of the old grant still in flight then loses its
    /// compare-and-set write). The refresh schedule starts over and the last error is
    /// cleared. Returns the status before.
    pub fn authorize(
        &mut self,
        tokens: IssuedTokens,
        requested_scopes: &[String],
        authorized_user: Option<serde_json::Value>,
        policy: &RefreshPolicy,
        now: DateTime<Utc>,
    ) -> Result<Status, DomainError> {
        let from = self.status;
        self.apply(LifecycleEvent::Authorized, now)?;
        let grant = tokens.into_grant(requested_scopes);
        self.refresh = RefreshSchedule {
            due_at: policy.due_at(&grant),
            failures: 0,
            lease: None,
        };
        self.grant = Some(grant);
        self.authorized_user = authorized_user;
        self.last_error = None;
        Ok(from)
    }

    /// Stores the tokens of a refresh of the current grant (see [`Grant::refreshed`]):
    /// the schedule follows the new grant, the failures and last error are cleared.
    pub fn refreshed(
        &mut self,
        tokens: IssuedTokens,
        policy: &RefreshPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let Some(grant) = self.grant.as_ref().map(|g| g.refreshed(tokens)) else {
            return Err(self.illegal(LifecycleEvent::Refreshed));
        };
        self.apply(LifecycleEvent::Refreshed, now)?;
        self.refresh = RefreshSchedule {
            due_at: policy.due_at(&grant),
            failures: 0,
            lease: None,
        };
        self.grant = Some(grant);
        self.last_error = None;
        Ok(())
    }

    /// A refresh attempt failed without the grant being lost: the connection keeps its
    /// token, counts one more failure, keeps `message` as its last error, and is tried
    /// again when the policy says (see [`RefreshPolicy::retry_at`]). `jitter` in `[0, 1)`
    /// spreads the retries of many connections.
    pub fn refresh_failed(
        &mut self,
        failure: RefreshFailure,
        message: String,
        policy: &RefreshPolicy,
        jitter: f64,
        now: DateTime<Utc>,
    ) {
        let failures = self.refresh.failures.saturating_add(1);
        let expires_at = self.grant.as_ref().and_then(|g| g.expires_at);
        self.refresh = RefreshSchedule {
            due_at: Some(policy.retry_at(failure, failures, jitter, expires_at, now)),
            failures,
            lease: None,
        };
        self.last_error = Some(message);
    }

    /// Nothing to refresh right now (someone refreshed meanwhile, or there is nothing to
    /// refresh with): the schedule follows the grant again, failures kept.
    pub fn reschedule(&mut self, policy: &RefreshPolicy) {
        self.refresh = match &self.grant {
            Some(g) => RefreshSchedule {
                due_at: policy.due_at(g),
                failures: self.refresh.failures,
                lease: None,
            },
            None => RefreshSchedule::default(),
        };
    }

    /// The grant is lost: the connection expires, keeps the reason as its last error, and
    /// is no longer scheduled for refresh. Returns the status before.
    pub fn expire(
        &mut self,
        reason: &ExpiryReason,
        now: DateTime<Utc>,
    ) -> Result<Status, DomainError> {
        let from = self.status;
        self.apply(reason.event(), now)?;
        self.last_error = Some(reason.message());
        self.refresh = RefreshSchedule::default();
        Ok(from)
    }

    /// Whether the connection is active on an access token past its expiry with no
    /// refresh token: it can only expire ([`ExpiryReason::Lapsed`]). One with a refresh
    /// token is never lapsed: only the provider's `invalid_grant` ends that grant.
    pub fn has_lapsed(&self, now: DateTime<Utc>) -> bool {
        self.status == Status::Active
            && self
                .grant
                .as_ref()
                .is_some_and(|g| g.refresh_token.is_none() && is_past_expiry(g, now))
    }

    /// Whether the secret may be replaced: the configuration of an OAuth connection is
    /// locked once created (its grant belongs to that configuration).
    pub fn check_secret_replaceable(&self) -> Result<(), DomainError> {
        if self.kind.is_oauth() {
            return Err(DomainError::ConfigLocked);
        }
        Ok(())
    }

    /// Replaces the whole configuration and sealed secrets of a non-OAuth connection.
    /// Returns the status before (for the history: who rotated what, when).
    pub fn replace_secret(
        &mut self,
        config: ConnectionConfig,
        secrets: Option<Sealed>,
        now: DateTime<Utc>,
    ) -> Result<Status, DomainError> {
        self.check_secret_replaceable()?;
        let from = self.status;
        self.apply(LifecycleEvent::SecretReplaced, now)?;
        self.config = config;
        self.secrets = secrets;
        Ok(from)
    }

    /// Keeps a problem (a provider error on callback) without changing status or grant.
    pub fn note_error(&mut self, message: String, now: DateTime<Utc>) {
        self.last_error = Some(message);
        self.updated_at = now;
    }

    fn illegal(&self, event: LifecycleEvent) -> DomainError {
        DomainError::IllegalTransition {
            from: self.status,
            event: event.as_str(),
            kind: self.kind.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::connection::{ConnectionName, NewConnection};
    use LifecycleEvent as E;
    use Status as S;

    use crate::ids::{ConnectionId, ProjectId};
    use crate::provider::Provider;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            margin: Duration::seconds(300),
            lease: Duration::seconds(30),
            backoff_base: Duration::seconds(4),
            backoff_cap: Duration::seconds(60),
        }
    }

    fn connection(kind: ConnectionType) -> Connection {
        Connection::new(
            NewConnection {
                id: ConnectionId::from_random_bytes([7; 16]),
                project_id: ProjectId::parse("p1").unwrap(),
                name: ConnectionName::parse("c").unwrap(),
                kind,
                config: match kind {
                    ConnectionType::OAuth(_) => ConnectionConfig::OAuth(Default::default()),
                    _ => ConnectionConfig::ApiKey,
                },
                secrets: None,
                oauth2_client_id: None,
            },
            t(0),
        )
    }

    const GOOGLE: ConnectionType = ConnectionType::OAuth(Provider::Google);

    /// Tokens sealed as `[n]` (access) and `[n + 100]` (refresh), obtained at `at`.
    fn tokens(n: u8, at: i64, lifetime: Option<i64>, refresh: bool) -> IssuedTokens {
        IssuedTokens {
            access_token: Sealed(vec![n]),
            refresh_token: refresh.then(|| Sealed(vec![n + 100])),
            token_type: "Bearer".into(),
            scopes: None,
            obtained_at: t(at),
            expires_at: lifetime.map(|l| t(at + l)),
        }
    }

    /// An OAuth connection in `status`, holding grant 1 (an hour, with a refresh token).
    fn oauth_in(status: Status) -> Connection {
        let mut c = connection(GOOGLE);
        if status != Status::Incomplete {
            c.authorize(tokens(1, 0, Some(3600), true), &[], None, &policy(), t(0))
                .unwrap();
        }
        if status == Status::Expired {
            c.expire(&ExpiryReason::RefreshRejected { description: None }, t(1))
                .unwrap();
        }
        assert_eq!(c.status(), status);
        c
    }

    #[test]
    fn transition_table() {
        let oauth = ConnectionType::OAuth(Provider::Google);
        let key = ConnectionType::ApiKey;
        let table: &[(ConnectionType, Status, LifecycleEvent, Option<Status>)] = &[
            (oauth, S::Incomplete, E::Authorized, Some(S::Active)),
            (oauth, S::Active, E::Authorized, Some(S::Active)),
            (oauth, S::Expired, E::Authorized, Some(S::Active)),
            (oauth, S::Active, E::Refreshed, Some(S::Active)),
            (oauth, S::Incomplete, E::Refreshed, None),
            (oauth, S::Expired, E::Refreshed, None),
            (oauth, S::Active, E::RefreshRejected, Some(S::Expired)),
            (oauth, S::Active, E::Lapsed, Some(S::Expired)),
            (oauth, S::Incomplete, E::Lapsed, None),
            (oauth, S::Expired, E::Lapsed, None),
            (oauth, S::Expired, E::RefreshRejected, None),
            (oauth, S::Active, E::SecretReplaced, None),
            (key, S::Active, E::SecretReplaced, Some(S::Active)),
            (key, S::Active, E::Authorized, None),
            (key, S::Active, E::Refreshed, None),
            (key, S::Active, E::Lapsed, None),
            (ConnectionType::Basic, S::Active, E::RefreshRejected, None),
        ];
        for &(kind, from, event, want) in table {
            let got = transition(kind, from, event).ok();
            assert_eq!(got, want, "{kind} {from} --{event:?}-->");
        }
    }

    #[test]
    fn illegal_transition_error_names_everything() {
        let err = transition(ConnectionType::Custom, S::Active, E::Refreshed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a custom connection in status active cannot be refreshed"
        );
    }

    #[test]
    fn initial_status_depends_on_type() {
        for t in ConnectionType::ALL {
            let want = if t.is_oauth() {
                S::Incomplete
            } else {
                S::Active
            };
            assert_eq!(initial_status(t), want, "{t}");
        }
    }

    #[test]
    fn new_connections_start_in_their_initial_status_at_version_one() {
        for kind in ConnectionType::ALL {
            let c = connection(kind);
            assert_eq!(c.status(), crate::initial_status(kind), "{kind}");
            assert_eq!((c.version, c.grant(), c.created_at), (1, None, t(0)));
        }
    }

    #[test]
    fn authorize_and_reconnect_table() {
        // (status before, result) for an OAuth connection; non-OAuth ones never authorize.
        for (from, ok) in [
            (Status::Incomplete, true),
            (Status::Active, true),  // reconnect over a live grant
            (Status::Expired, true), // reconnect after the grant was lost
        ] {
            let mut c = oauth_in(from);
            c.last_error = Some("old".into());
            c.refresh.failures = 3;
            let user = Some(serde_json::json!({"email": "a@example.com"}));
            let got = c.authorize(
                tokens(9, 100, Some(3600), true),
                &["openid".to_owned()],
                user.clone(),
                &policy(),
                t(101),
            );
            assert_eq!(got.is_ok(), ok, "{from}");
            assert_eq!(got.unwrap(), from);
            assert_eq!(c.status(), Status::Active);
            let g = c.grant().unwrap();
            assert_eq!(
                g.access_token,
                Sealed(vec![9]),
                "the new grant replaces the old"
            );
            assert_eq!(
                g.scopes,
                vec!["openid".to_owned()],
                "requested scopes assumed"
            );
            assert_eq!(
                c.refresh,
                RefreshSchedule {
                    due_at: Some(t(100 + 3300)),
                    failures: 0,
                    lease: None
                }
            );
            assert_eq!(
                (c.last_error.as_deref(), &c.authorized_user, c.updated_at),
                (None, &user, t(101))
            );
        }
        for kind in [
            ConnectionType::ApiKey,
            ConnectionType::Basic,
            ConnectionType::Custom,
        ] {
            let mut c = connection(kind);
            let before = c.clone();
            assert!(c
                .authorize(tokens(1, 0, None, false), &[], None, &policy(), t(1))
                .is_err());
            assert_eq!(c, before, "a refused step changes nothing");
        }
    }

    #[test]
    fn refreshed_table() {
        // (new tokens carry a refresh token, scopes given, status, want refresh token, want scopes)
        let kept = Some(Sealed(vec![101]));
        let rotated = Some(Sealed(vec![102]));
        let table = [
            (
                true,
                None,
                Status::Active,
                Some(rotated.clone()),
                vec!["a".to_owned()],
            ),
            (
                false,
                None,
                Status::Active,
                Some(kept.clone()),
                vec!["a".to_owned()],
            ),
            (
                false,
                Some(vec!["b".to_owned()]),
                Status::Active,
                Some(kept),
                vec!["b".to_owned()],
            ),
            (true, None, Status::Expired, None, vec![]),
            (true, None, Status::Incomplete, None, vec![]),
        ];
        for (with_refresh, scopes, status, want_refresh, want_scopes) in table {
            let mut c = oauth_in(status);
            if let Some(g) = c.grant.as_mut() {
                g.scopes = vec!["a".to_owned()];
            }
            c.refresh.failures = 2;
            c.last_error = Some("refresh failed".into());
            let before = c.clone();
            let got = c.refreshed(
                IssuedTokens {
                    scopes: scopes.clone(),
                    ..tokens(2, 200, Some(60), with_refresh)
                },
                &policy(),
                t(201),
            );
            let label = format!("{with_refresh} {scopes:?} {status}");
            match want_refresh {
                None => {
                    assert!(got.is_err(), "{label}");
                    assert_eq!(c, before, "{label}: a refused step changes nothing");
                }
                Some(want) => {
                    got.unwrap();
                    let g = c.grant().unwrap();
                    assert_eq!(g.access_token, Sealed(vec![2]), "{label}");
                    assert_eq!(g.refresh_token, want, "{label}");
                    assert_eq!(g.scopes, want_scopes, "{label}");
                    // A 60 s token: due half-way through its life.
                    assert_eq!(
                        c.refresh,
                        RefreshSchedule {
                            due_at: Some(t(230)),
                            failures: 0,
                            lease: None
                        },
                        "{label}"
                    );
                    assert_eq!(
                        (c.last_error.as_deref(), c.updated_at),
                        (None, t(201)),
                        "{label}"
                    );
                }
            }
        }
    }

    #[test]
    fn refresh_failed_table() {
        // (failure class, failures before, token expires after t(0), want due after now, want failures)
        let now = 1000;
        let table = [
            // Transient: the plain back-off (jitter 0: half of 4 s doubled per failure)...
            (
                RefreshFailure::Transient { retry_after: None },
                0,
                None,
                2,
                1,
            ),
            (
                RefreshFailure::Transient { retry_after: None },
                2,
                None,
                8,
                3,
            ),
            // ...but before a token that is still alive lapses...
            (
                RefreshFailure::Transient { retry_after: None },
                5,
                Some(now + 10),
                9,
                6,
            ),
            // ...at least half a second from now...
            (
                RefreshFailure::Transient { retry_after: None },
                5,
                Some(now + 1),
                0,
                6,
            ),
            // ...and not once it has lapsed.
            (
                RefreshFailure::Transient { retry_after: None },
                5,
                Some(now - 1),
                30,
                6,
            ),
            // The provider's Retry-After wins, even past the expiry.
            (
                RefreshFailure::Transient {
                    retry_after: Some(Duration::seconds(50)),
                },
                0,
                Some(now + 10),
                50,
                1,
            ),
            // A configuration error waits the whole cap; an internal error the plain back-off.
            (RefreshFailure::Configuration, 0, Some(now + 10), 60, 1),
            (RefreshFailure::Internal, 0, Some(now + 1), 2, 1),
        ];
        for (failure, before, expires, want_after, want_failures) in table {
            let mut c = oauth_in(Status::Active);
            c.grant.as_mut().unwrap().expires_at = expires.map(t);
            c.refresh.failures = before;
            let grant = c.grant.clone();
            c.refresh_failed(failure, "boom".into(), &policy(), 0.0, t(now));
            let due = c.refresh.due_at.unwrap();
            let want = if want_after == 0 {
                t(now) + Duration::milliseconds(500)
            } else {
                t(now + want_after)
            };
            assert_eq!(due, want, "{failure:?} {before} {expires:?}");
            assert_eq!(c.refresh.failures, want_failures, "{failure:?}");
            assert_eq!(c.status(), Status::Active, "a failure is not an expiry");
            assert_eq!(c.grant, grant, "the token is kept");
            assert_eq!(c.last_error.as_deref(), Some("boom"));
        }
    }

    #[test]
    fn expire_table() {
        let rejected = ExpiryReason::RefreshRejected {
            description: Some("revoked".into()),
        };
        let table = [
            (GOOGLE, Status::Active, &rejected, true),
            (GOOGLE, Status::Active, &ExpiryReason::Lapsed, true),
            (GOOGLE, Status::Expired, &ExpiryReason::Lapsed, false),
            (GOOGLE, Status::Incomplete, &rejected, false),
            (
                ConnectionType::ApiKey,
                Status::Active,
                &ExpiryReason::Lapsed,
                false,
            ),
        ];
        for (kind, from, reason, ok) in table {
            let mut c = if kind.is_oauth() {
                oauth_in(from)
            } else {
                connection(kind)
            };
            c.refresh.failures = 4;
            let before = c.clone();
            let got = c.expire(reason, t(50));
            assert_eq!(got.is_ok(), ok, "{kind} {from} {reason:?}");
            if !ok {
                assert_eq!(c, before);
                continue;
            }
            assert_eq!(got.unwrap(), from);
            assert_eq!(c.status(), Status::Expired);
            assert_eq!(c.refresh, RefreshSchedule::default(), "no longer scheduled");
            assert_eq!(c.last_error, Some(reason.message()));
            assert!(
                c.grant().is_some(),
                "the grant is kept, for revocation on delete"
            );
        }
        assert_eq!(
            rejected.message(),
            "the provider rejected the refresh token (invalid_grant): revoked; authorize the connection again"
        );
        assert_eq!(rejected.event().as_str(), "refresh_rejected");
        assert_eq!(ExpiryReason::Lapsed.event().as_str(), "lapsed");
    }

    #[test]
    fn lapsed_table() {
        // (status, has refresh token, token expires at, now, lapsed)
        let table = [
            (Status::Active, false, Some(10), 10, true),
            (Status::Active, false, Some(10), 9, false),
            (Status::Active, true, Some(10), 1_000, false),
            (Status::Active, false, None, 1_000, false),
            (Status::Expired, false, Some(10), 1_000, false),
        ];
        for (status, refresh, expires, now, want) in table {
            let mut c = oauth_in(Status::Active);
            c.authorize(tokens(3, 0, expires, refresh), &[], None, &policy(), t(0))
                .unwrap();
            if status == Status::Expired {
                c.expire(&ExpiryReason::Lapsed, t(0)).unwrap();
            }
            assert_eq!(
                c.has_lapsed(t(now)),
                want,
                "{status} {refresh} {expires:?} {now}"
            );
        }
    }

    #[test]
    fn same_grant_is_told_by_the_sealed_access_token() {
        let a = oauth_in(Status::Active);
        let mut renamed = a.clone();
        renamed.rename(ConnectionName::parse("other").unwrap(), t(5));
        assert!(a.holds_same_grant(&renamed));
        let mut reconnected = a.clone();
        reconnected
            .authorize(tokens(2, 5, Some(3600), true), &[], None, &policy(), t(5))
            .unwrap();
        assert!(!a.holds_same_grant(&reconnected));
        assert!(
            connection(GOOGLE).holds_same_grant(&connection(GOOGLE)),
            "no grant either side"
        );
        assert!(!a.holds_same_grant(&connection(GOOGLE)));
    }

    #[test]
    fn rename_replace_secret_and_note_error_table() {
        // Rename: any status, any type.
        for status in [Status::Incomplete, Status::Active, Status::Expired] {
            let mut c = oauth_in(status);
            c.rename(ConnectionName::parse("new").unwrap(), t(9));
            assert_eq!(
                (c.name.as_str(), c.status(), c.updated_at),
                ("new", status, t(9))
            );
        }
        // Replace secret: non-OAuth only, status unchanged.
        for (kind, ok) in [
            (ConnectionType::ApiKey, true),
            (ConnectionType::Basic, true),
            (ConnectionType::Custom, true),
            (GOOGLE, false),
        ] {
            let mut c = connection(kind);
            let before = c.clone();
            let config = ConnectionConfig::Basic {
                username: "u".into(),
            };
            let got = c.replace_secret(config.clone(), Some(Sealed(vec![5])), t(9));
            assert_eq!(got.is_ok(), ok, "{kind}");
            assert_eq!(c.check_secret_replaceable().is_ok(), ok, "{kind}");
            if ok {
                assert_eq!(got.unwrap(), Status::Active);
                assert_eq!((&c.secrets, c.updated_at), (&Some(Sealed(vec![5])), t(9)));
                assert_eq!(c.config, config);
            } else {
                assert_eq!(got.unwrap_err(), DomainError::ConfigLocked);
                assert_eq!(c, before);
            }
        }
        let mut c = oauth_in(Status::Active);
        c.note_error("token exchange failed".into(), t(7));
        assert_eq!(
            (c.last_error.as_deref(), c.status(), c.updated_at),
            (Some("token exchange failed"), Status::Active, t(7))
        );
    }

    #[test]
    fn reschedule_follows_the_grant_and_keeps_failures() {
        let mut c = oauth_in(Status::Active);
        c.refresh = RefreshSchedule {
            due_at: Some(t(5)),
            failures: 2,
            lease: None,
        };
        c.reschedule(&policy());
        assert_eq!(
            c.refresh,
            RefreshSchedule {
                due_at: Some(t(3300)),
                failures: 2,
                lease: None
            }
        );
        let mut no_refresh = oauth_in(Status::Active);
        no_refresh
            .authorize(tokens(4, 0, Some(3600), false), &[], None, &policy(), t(0))
            .unwrap();
        no_refresh.refresh.failures = 1;
        no_refresh.reschedule(&policy());
        assert_eq!(
            no_refresh.refresh,
            RefreshSchedule {
                due_at: None,
                failures: 1,
                lease: None
            }
        );
        let mut bare = connection(GOOGLE);
        bare.refresh.failures = 3;
        bare.reschedule(&policy());
        assert_eq!(bare.refresh, RefreshSchedule::default());
    }
}
