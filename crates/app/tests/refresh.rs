//! Refreshing OAuth grants: one refresh per grant at a time, never losing a rotated
//! refresh token, expiring only grants that are really dead, and the background cycles.
//!
//! Grants are set up through the real consent flow (fake provider), with the token
//! obtained at `t0()` for 3600 s: the refresh is due at t0 + 55 min (5 min margin).

mod support;

use std::sync::Arc;

use chrono::Duration;
use secrecy::SecretBox;
use serde_json::json;

use latchkey_app::{AppError, CycleReport, Latchkey, RefreshOutcome, UpdateConnection};
use latchkey_domain::sealed::fields;
use latchkey_domain::{ConnectionId, Grant, Lease, Status};
use latchkey_ports::{Cipher, OAuthError};

use support::*;

async fn google(h: &Harness, p: &FakeProvider, name: &str, refresh: Option<&str>) -> ConnectionId {
    connected(
        h,
        p,
        name,
        "google",
        tokens(&format!("at-{name}"), refresh, Some(3600)),
    )
    .await
}

/// Past the due time (t0 + 55 min) but before expiry (t0 + 60 min).
const DUE: i64 = 56;

async fn fetch(app: &Arc<Latchkey>, id: ConnectionId) -> Result<String, AppError> {
    app.fetch_credentials(&admin(), id, Some("flow-1"))
        .await
        .map(|c| access_token(&c))
}

fn transient(
    retry_after: Option<i64>,
) -> Result<latchkey_domain::oauth::TokenResponse, OAuthError> {
    Err(OAuthError::Transient {
        reason: "503 from the token endpoint".into(),
        retry_after: retry_after.map(Duration::seconds),
    })
}

// ---------------------------------------------------------------------------------------
// on demand
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_share_exactly_one_refresh() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    // A slow provider, so the callers overlap with the refresh in flight.
    p.set_refresh_delay(std::time::Duration::from_millis(150));
    p.push_refresh(Ok(tokens("at-2", None, Some(3600))));

    let callers: Vec<_> = (0..50)
        .map(|_| {
            let app = h.app.clone();
            tokio::spawn(async move { fetch(&app, id).await })
        })
        .collect();
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap(), "at-2");
    }
    assert_eq!(p.refreshes(), 1);
    assert_eq!(h.stored_tokens(id), ("at-2".into(), Some("rt-1".into())));
    let usage = &h.app.get_connection(&admin(), id).await.unwrap().used_by[0];
    assert_eq!(usage.count, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_one_refresh_through_the_lease() {
    let p = Arc::new(FakeProvider::default());
    let parts = parts(p.clone());
    let one = Arc::new(Latchkey::new(parts.services.clone(), settings()));
    let two = Arc::new(Latchkey::new(
        parts.services.clone(),
        latchkey_app::Settings {
            worker_id: "other-process".into(),
            ..settings()
        },
    ));
    let h = Harness {
        app: one.clone(),
        store: parts.store.clone(),
        cipher: parts.cipher.clone(),
        clock: parts.clock.clone(),
        entropy: parts.entropy.clone(),
    };
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    p.set_refresh_delay(std::time::Duration::from_millis(300));
    p.push_refresh(Ok(tokens("at-2", Some("rt-2"), Some(3600))));

    let callers: Vec<_> = (0..20)
        .map(|i| {
            let app = if i % 2 == 0 { one.clone() } else { two.clone() };
            tokio::spawn(async move { fetch(&app, id).await })
        })
        .collect();
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap(), "at-2");
    }
    assert_eq!(p.refreshes(), 1);
    assert_eq!(h.stored_tokens(id), ("at-2".into(), Some("rt-2".into())));
}

#[tokio::test]
async fn a_token_not_yet_due_makes_no_provider_call() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(54));
    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-a");
    assert_eq!(p.refreshes(), 0);
    assert_eq!(h.store.calls("claim_refresh"), 0);
    // A background refresh of a connection that is not due gives its lease back untouched.
    assert_eq!(
        h.app.refresh_connection(id, false).await.unwrap(),
        RefreshOutcome::NotDue
    );
    assert_eq!(p.refreshes(), 0);
    assert_eq!(h.store.connection(id).refresh.lease, None);
}

#[tokio::test]
async fn a_response_without_refresh_token_keeps_the_old_one() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    p.push_refresh(Ok(tokens("at-2", None, Some(1800))));
    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-2");

    assert_eq!(*p.presented_refresh_tokens.lock().unwrap(), ["rt-1"]);
    assert_eq!(h.stored_tokens(id), ("at-2".into(), Some("rt-1".into())));
    let c = h.store.connection(id);
    let g = c.grant().unwrap();
    let now = t0() + Duration::minutes(DUE);
    assert_eq!(g.obtained_at, now);
    assert_eq!(g.expires_at, Some(now + Duration::seconds(1800)));
    assert_eq!(c.refresh.due_at, Some(now + Duration::seconds(1500)));
    assert_eq!((c.refresh.failures, c.refresh.lease.clone()), (0, None));
    assert_eq!(c.status(), Status::Active);
}

#[tokio::test]
async fn a_rotated_refresh_token_is_saved_and_used_next_time() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    p.push_refresh(Ok(tokens("at-2", Some("rt-2"), Some(3600))));
    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-2");
    assert_eq!(h.stored_tokens(id), ("at-2".into(), Some("rt-2".into())));

    h.clock.advance(Duration::minutes(DUE));
    p.push_refresh(Ok(tokens("at-3", None, Some(3600))));
    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-3");
    assert_eq!(
        *p.presented_refresh_tokens.lock().unwrap(),
        ["rt-1", "rt-2"]
    );
    assert_eq!(h.stored_tokens(id), ("at-3".into(), Some("rt-2".into())));
}

#[tokio::test]
async fn a_store_failure_right_after_a_rotation_retries_the_save() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    // The provider has already invalidated rt-1 when the database fails.
    p.push_refresh(Ok(tokens("at-2", Some("rt-2"), Some(3600))));
    h.store.fail_next("save_refreshed_grant", 2);

    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-2");
    assert_eq!(h.store.calls("save_refreshed_grant"), 3);
    assert_eq!(p.refreshes(), 1);
    assert_eq!(h.stored_tokens(id), ("at-2".into(), Some("rt-2".into())));
    assert_eq!(h.store.connection(id).refresh.lease, None);
}

#[tokio::test]
async fn invalid_grant_expires_the_connection_with_a_reason() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    p.push_refresh(Err(OAuthError::InvalidGrant(Some(
        "Token has been expired or revoked.".into(),
    ))));

    let err = fetch(&h.app, id).await.unwrap_err();
    assert!(
        matches!(err, AppError::State { code: latchkey_app::StateCode::ConnectionExpired, ref message } if message.contains("invalid_grant")),
        "{err:?}"
    );
    let c = h.store.connection(id);
    assert_eq!(c.status(), Status::Expired);
    let reason = c.last_error.clone().unwrap();
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert!(
        reason.contains("Token has been expired or revoked."),
        "{reason}"
    );
    assert_eq!(c.refresh.due_at, None);
    assert_eq!(c.refresh.lease, None);
    let ev = h.store.events(id).pop().unwrap();
    assert_eq!(ev.kind, "refresh_rejected");
    assert_eq!((ev.from, ev.to), (Some(Status::Active), Status::Expired));
    assert_eq!(ev.reason.as_deref(), Some(reason.as_str()));

    // Expired stays expired: no further provider calls.
    let err = fetch(&h.app, id).await.unwrap_err();
    assert!(
        matches!(
            err,
            AppError::State {
                code: latchkey_app::StateCode::ConnectionExpired,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(p.refreshes(), 1);
}

#[tokio::test]
async fn invalid_grant_after_another_worker_refreshed_does_not_expire() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    // While our request is in flight another worker refreshes (rotating rt-1 away), so
    // the provider rejects our now-stale refresh token.
    let (store, cipher, now) = (
        h.store.clone(),
        h.cipher.clone(),
        t0() + Duration::minutes(DUE),
    );
    p.on_refresh(move |_| {
        let c = store.connection(id);
        let seal = |v: &str, f| {
            cipher
                .seal(
                    &SecretBox::from(v.as_bytes().to_vec().into_boxed_slice()),
                    &ctx(&c, f),
                )
                .unwrap()
        };
        let grant = Grant {
            access_token: seal("at-other", fields::ACCESS_TOKEN),
            refresh_token: Some(seal("rt-other", fields::REFRESH_TOKEN)),
            token_type: "Bearer".into(),
            scopes: vec![],
            obtained_at: now,
            expires_at: Some(now + Duration::seconds(3600)),
        };
        store.write_behind_our_back(id, |c| *c = with_grant(c.clone(), Some(grant)));
    });
    p.push_refresh(Err(OAuthError::InvalidGrant(None)));

    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-other");
    let c = h.store.connection(id);
    assert_eq!(c.status(), Status::Active);
    assert_eq!(c.refresh.lease, None, "the lease is given back");
    assert!(h
        .store
        .events(id)
        .iter()
        .all(|e| e.kind != "refresh_rejected"));
    assert_eq!(
        h.stored_tokens(id),
        ("at-other".into(), Some("rt-other".into()))
    );
}

#[tokio::test]
async fn transient_errors_back_off_and_keep_serving_the_valid_token() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let now = t0() + Duration::minutes(DUE);
    p.push_refresh(transient(Some(120)));

    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-a");
    let c = h.store.connection(id);
    assert_eq!(c.status(), Status::Active);
    assert_eq!(c.refresh.failures, 1);
    let due = c.refresh.due_at.unwrap();
    assert!(
        due >= now + Duration::seconds(120),
        "retry-after honoured: {due}"
    );
    assert!(c.last_error.as_deref().unwrap().contains("will retry"));
    assert_eq!(c.refresh.lease, None);
    assert_eq!(h.stored_tokens(id), ("at-a".into(), Some("rt-1".into())));

    // The background cycle does not pick it up before the back-off is over...
    assert_eq!(
        h.app.run_refresh_cycle().await.unwrap(),
        CycleReport::default()
    );
    // ...then fails again (one more failure, a longer back-off)...
    h.clock.set(due);
    p.push_refresh(transient(None));
    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!((report.picked, report.failed), (1, 1));
    let c = h.store.connection(id);
    assert_eq!(c.refresh.failures, 2);
    assert!(c.refresh.due_at.unwrap() > due);
    // ...and succeeds at last, clearing the failures.
    h.clock.set(c.refresh.due_at.unwrap());
    p.push_refresh(Ok(tokens("at-2", None, Some(3600))));
    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!((report.picked, report.refreshed), (1, 1));
    let c = h.store.connection(id);
    assert_eq!((c.refresh.failures, c.last_error.clone()), (0, None));
    assert_eq!(p.refreshes(), 3);
}

#[tokio::test]
async fn on_demand_callers_respect_the_back_off() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    p.push_refresh(transient(Some(120)));
    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-a");
    assert_eq!(p.refreshes(), 1);

    // The provider asked for two minutes of quiet: every workflow run in between gets
    // the still-valid token without another token request.
    for _ in 0..5 {
        h.clock.advance(Duration::seconds(10));
        assert_eq!(fetch(&h.app, id).await.unwrap(), "at-a");
    }
    assert_eq!(p.refreshes(), 1);

    // Once the back-off is over, the next caller refreshes.
    h.clock.set(h.store.connection(id).refresh.due_at.unwrap());
    p.push_refresh(Ok(tokens("at-2", None, Some(3600))));
    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-2");
    assert_eq!(p.refreshes(), 2);
}

#[tokio::test]
async fn a_live_lease_of_another_worker_is_respected_until_it_lapses() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let now = t0() + Duration::minutes(DUE);
    h.store.write_behind_our_back(id, |c| {
        c.refresh.lease = Some(Lease {
            owner: "crashed-worker".into(),
            until: now + Duration::seconds(30),
        })
    });
    assert_eq!(
        h.app.refresh_connection(id, true).await.unwrap(),
        RefreshOutcome::Busy
    );
    assert_eq!(p.refreshes(), 0);
    // A crashed worker's lease lapses by itself.
    h.clock.advance(Duration::seconds(31));
    assert_eq!(
        h.app.refresh_connection(id, false).await.unwrap(),
        RefreshOutcome::Refreshed
    );
    assert_eq!(p.refreshes(), 1);
    assert_eq!(h.store.connection(id).refresh.lease, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_waiting_on_a_crashed_workers_lease_refreshes_once_it_lapses() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let now = t0() + Duration::minutes(DUE);
    h.store.write_behind_our_back(id, |c| {
        c.refresh.lease = Some(Lease {
            owner: "crashed-worker".into(),
            until: now + Duration::seconds(30),
        })
    });
    p.push_refresh(Ok(tokens("at-2", Some("rt-2"), Some(3600))));

    let app = h.app.clone();
    let started = std::time::Instant::now();
    let caller = tokio::spawn(async move { fetch(&app, id).await });
    // The caller found the lease taken and waits for its holder.
    while h.store.calls("claim_refresh") == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(p.refreshes(), 0);
    // The holder never comes back: once its lease lapses the waiting caller refreshes,
    // instead of waiting out its whole deadline (and a lock the refresh job needs).
    h.clock.advance(Duration::seconds(31));
    assert_eq!(caller.await.unwrap().unwrap(), "at-2");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(p.refreshes(), 1);
    assert_eq!(h.stored_tokens(id), ("at-2".into(), Some("rt-2".into())));
    assert_eq!(h.store.connection(id).refresh.lease, None);
}

// ---------------------------------------------------------------------------------------
// races with writes of the management API
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_during_an_in_flight_refresh_keeps_the_refreshed_tokens() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let gate = p.gate_refresh();
    p.push_refresh(Ok(tokens("at-2", Some("rt-2"), Some(3600))));

    let app = h.app.clone();
    let caller = tokio::spawn(async move { fetch(&app, id).await });
    gate.entered.notified().await;
    let renamed = h
        .app
        .update_connection(
            &admin(),
            id,
            UpdateConnection {
                name: Some("renamed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    gate.release.notify_one();

    assert_eq!(caller.await.unwrap().unwrap(), "at-2");
    let c = h.store.connection(id);
    assert_eq!(c.name.as_str(), "renamed");
    assert_eq!(c.version, renamed.version + 1);
    assert_eq!(h.stored_tokens(id), ("at-2".into(), Some("rt-2".into())));
    assert_eq!(c.refresh.lease, None);
    assert_eq!(
        h.store.calls("save_refreshed_grant"),
        2,
        "one conflict, one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_during_an_in_flight_refresh_wins_over_the_slow_refresh() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let gate = p.gate_refresh();
    p.push_refresh(Ok(tokens("at-slow", Some("rt-slow"), Some(3600))));

    let app = h.app.clone();
    let caller = tokio::spawn(async move { fetch(&app, id).await });
    gate.entered.notified().await;
    // The user authorizes again meanwhile.
    let state = h.start(id).await;
    p.push_exchange(Ok(tokens("at-new", Some("rt-new"), Some(3600))));
    h.callback(&state).await.unwrap();
    gate.release.notify_one();

    assert_eq!(caller.await.unwrap().unwrap(), "at-new");
    assert_eq!(
        h.stored_tokens(id),
        ("at-new".into(), Some("rt-new".into()))
    );
    let c = h.store.connection(id);
    assert_eq!(c.status(), Status::Active);
    // The superseded refresh gives its lease back rather than blocking other workers.
    assert_eq!(c.refresh.lease, None);
    assert_eq!(
        c.refresh.due_at,
        Some(t0() + Duration::minutes(DUE) + Duration::minutes(55))
    );
}

// ---------------------------------------------------------------------------------------
// background cycles
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_expiry_cycle_expires_only_dead_grants() {
    // Dead: a lapsed token without a refresh token. Alive: a lapsed token whose refresh
    // keeps failing transiently (it recovers once the provider does), tokens without
    // expiry, and tokens still valid.
    let (h, p) = harness();
    let no_refresh = google(&h, &p, "no-refresh", None).await;
    let failing = google(&h, &p, "failing", Some("rt-failing")).await;
    let notion = connected(&h, &p, "notion", "notion", tokens("at-notion", None, None)).await;
    h.clock.advance(Duration::minutes(30));
    let fresh = google(&h, &p, "fresh", Some("rt-fresh")).await;
    h.clock.advance(Duration::minutes(31));
    p.answer_refresh_of("rt-failing", transient(None));

    // The failing grant is refreshed by the refresh job and fails there.
    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!((report.failed, report.expired), (1, 0));
    assert_eq!(h.app.run_expiry_cycle().await.unwrap(), 1);

    let c = h.store.connection(no_refresh);
    assert_eq!(c.status(), Status::Expired);
    assert!(c
        .last_error
        .as_deref()
        .unwrap()
        .contains("no refresh token"));
    let ev = h.store.events(no_refresh).pop().unwrap();
    assert_eq!((ev.kind.as_str(), ev.to), ("lapsed", Status::Expired));

    let c = h.store.connection(failing);
    assert_eq!(
        c.status(),
        Status::Active,
        "a transient failure never expires"
    );
    assert!(c.last_error.as_deref().unwrap().contains("will retry"));
    assert_eq!(c.refresh.lease, None);
    assert_eq!(c.refresh.failures, 1);
    assert_ne!(h.store.events(failing).pop().unwrap().kind, "lapsed");

    assert_eq!(
        h.store.connection(notion).status(),
        Status::Active,
        "tokens without expiry never lapse"
    );
    assert_eq!(h.store.connection(fresh).status(), Status::Active);
    // The expiry job itself calls no provider.
    assert_eq!(*p.presented_refresh_tokens.lock().unwrap(), ["rt-failing"]);
    assert_eq!(fetch(&h.app, notion).await.unwrap(), "at-notion");
}

#[tokio::test]
async fn the_expiry_cycle_keeps_a_grant_it_manages_to_refresh() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(61));
    p.push_refresh(Ok(tokens("at-2", None, Some(3600))));
    assert_eq!(h.app.run_expiry_cycle().await.unwrap(), 0);
    assert_eq!(h.store.connection(id).status(), Status::Active);
    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-2");
}

#[tokio::test]
async fn the_refresh_cycle_refreshes_only_due_connections() {
    let (h, p) = harness();
    let due = google(&h, &p, "due", Some("rt-due")).await;
    let _without_refresh_token = google(&h, &p, "plain", None).await;
    let _notion = connected(&h, &p, "notion", "notion", tokens("at-n", None, None)).await;
    let _incomplete = h.create("draft", "google", json!({})).await;
    // A consent flow that was never finished.
    let _abandoned = h.start(due).await;
    h.clock.advance(Duration::minutes(50));
    let later = google(&h, &p, "later", Some("rt-later")).await;
    h.clock.advance(Duration::minutes(DUE - 50));

    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!(
        report,
        CycleReport {
            picked: 1,
            refreshed: 1,
            failed: 0,
            expired: 0,
            panicked: 0,
        }
    );
    assert_eq!(*p.presented_refresh_tokens.lock().unwrap(), ["rt-due"]);
    assert_ne!(h.stored_tokens(due).0, "at-due");
    assert_eq!(h.stored_tokens(later).0, "at-later");
    assert!(
        h.store.sessions().is_empty(),
        "expired consent sessions are purged"
    );
    // Nothing is due any more.
    assert_eq!(h.app.run_refresh_cycle().await.unwrap().picked, 0);
}

#[tokio::test]
async fn the_refresh_cycle_counts_failures_and_expirations() {
    let (h, p) = harness();
    let ok = google(&h, &p, "ok", Some("rt-ok")).await;
    let rejected = google(&h, &p, "rejected", Some("rt-rejected")).await;
    let flaky = google(&h, &p, "flaky", Some("rt-flaky")).await;
    h.clock.advance(Duration::minutes(DUE));
    p.answer_refresh_of("rt-ok", Ok(tokens("at-ok-2", None, Some(3600))));
    p.answer_refresh_of("rt-rejected", Err(OAuthError::InvalidGrant(None)));
    p.answer_refresh_of("rt-flaky", transient(Some(60)));

    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!(
        report,
        CycleReport {
            picked: 3,
            refreshed: 1,
            failed: 1,
            expired: 1,
            panicked: 0,
        }
    );
    assert_eq!(h.stored_tokens(ok).0, "at-ok-2");
    assert_eq!(h.store.connection(rejected).status(), Status::Expired);
    assert_eq!(h.store.connection(flaky).status(), Status::Active);
    assert_eq!(h.store.connection(flaky).refresh.failures, 1);
}

#[tokio::test]
async fn back_off_without_retry_after_never_outlives_the_token() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    let expires_at = h
        .store
        .connection(id)
        .grant()
        .cloned()
        .unwrap()
        .expires_at
        .unwrap();
    h.clock.advance(Duration::minutes(DUE));
    // Failures pile up: the doubling back-off would soon reach past the token's expiry.
    let mut round = 0u32;
    while latchkey_ports::Clock::now(&h.clock) < expires_at - Duration::seconds(2) {
        round += 1;
        assert!(round <= 30, "the retries never got close to the expiry");
        p.push_refresh(transient(None));
        let report = h.app.run_refresh_cycle().await.unwrap();
        assert_eq!((report.picked, report.failed), (1, 1), "round {round}");
        let c = h.store.connection(id);
        assert_eq!(c.refresh.failures, round);
        let due = c.refresh.due_at.unwrap();
        assert!(
            due <= expires_at - Duration::seconds(1),
            "round {round}: retry at {due} is after the token lapses at {expires_at}"
        );
        h.clock.set(due);
    }
    // A late success still saves the grant.
    p.push_refresh(Ok(tokens("at-2", None, Some(3600))));
    h.app.run_refresh_cycle().await.unwrap();
    assert_eq!(h.stored_tokens(id).0, "at-2");
}
