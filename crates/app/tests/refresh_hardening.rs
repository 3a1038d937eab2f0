//! Refresh against hostile or failing providers (issue 7): panics and absurd lifetimes are
//! contained, a hanging host cannot starve the others, races with reconnects, deletes
//! and other workers cannot lose or keep a grant wrongly, and transient failures never
//! cost a re-consent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Duration;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use latchkey_app::{AppError, Latchkey, RefreshOutcome, Settings};
use latchkey_domain::oauth::{DiscoveredMetadata, TokenResponse, MAX_TOKEN_LIFETIME};
use latchkey_domain::{ConnectionId, Lease, Status};
use latchkey_ports::{CodeExchange, OAuthError, ProviderClient, RefreshExchange, Revocation};

use support::*;

/// Past the due time of a 3600 s token obtained at t0 (t0 + 55 min), before its expiry.
const DUE: i64 = 56;

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

async fn fetch(app: &Arc<Latchkey>, id: ConnectionId) -> Result<String, AppError> {
    app.fetch_credentials(&admin(), id, Some("flow-1"))
        .await
        .map(|c| access_token(&c))
}

fn transient() -> Result<TokenResponse, OAuthError> {
    Err(OAuthError::Transient {
        reason: "503 from the token endpoint".into(),
        retry_after: None,
    })
}

fn harness_with_settings(provider: Arc<dyn ProviderClient>, settings: Settings) -> Harness {
    Harness::from_parts(parts(provider), settings)
}

/// One background refresh at a time: a second due connection waits in the queue.
fn one_slot() -> Settings {
    Settings {
        refresh_concurrency: 1,
        refresh_concurrency_per_host: 1,
        ..settings()
    }
}

/// Two Google connections (refresh tokens `rt-<name>`), both due now, `first` with the
/// earlier deadline.
async fn first_and_second_due(
    h: &Harness,
    p: &FakeProvider,
    first: &str,
    second: &str,
) -> (ConnectionId, ConnectionId) {
    let a = google(h, p, first, Some(&format!("rt-{first}"))).await;
    h.clock.advance(Duration::seconds(1));
    let b = google(h, p, second, Some(&format!("rt-{second}"))).await;
    h.clock.advance(Duration::minutes(DUE));
    (a, b)
}

/// Waits (on real time, bounded) until `cond` holds; `false` if it never did.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    cond()
}

// ---------------------------------------------------------------------------------------
// 2. absurd numbers and panics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_huge_expires_in_from_a_refresh_is_clamped_not_a_panic() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let mut huge = tokens("at-2", None, None);
    huge.expires_in = Some(Duration::seconds(10_000_000_000_000));
    p.push_refresh(Ok(huge));

    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!((report.refreshed, report.panicked), (1, 0));
    let g = h.store.connection(id).grant().cloned().unwrap();
    assert_eq!(
        g.expires_at,
        Some(t0() + Duration::minutes(DUE) + MAX_TOKEN_LIFETIME)
    );
    assert_eq!(fetch(&h.app, id).await.unwrap(), "at-2");
}

#[tokio::test]
async fn a_huge_expires_in_from_a_code_exchange_is_clamped_not_a_panic() {
    let (h, p) = harness();
    let mut huge = tokens("at-1", Some("rt-1"), None);
    huge.expires_in = Some(Duration::MAX);
    let id = connected(&h, &p, "a", "google", huge).await;
    let c = h.store.connection(id);
    assert_eq!(c.status(), Status::Active);
    assert_eq!(
        c.grant().cloned().unwrap().expires_at,
        Some(t0() + MAX_TOKEN_LIFETIME)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_refresh_is_contained_counted_and_backs_off() {
    let (h, p) = harness();
    let bad = google(&h, &p, "bad", Some("rt-bad")).await;
    let good = google(&h, &p, "good", Some("rt-good")).await;
    h.clock.advance(Duration::minutes(DUE));
    let now = t0() + Duration::minutes(DUE);
    p.on_refresh(|r| {
        if r.refresh_token.expose_secret() == "rt-bad" {
            panic!("a provider answer we did not foresee");
        }
    });

    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!(
        (report.picked, report.refreshed, report.panicked),
        (2, 1, 1),
        "{report:?}"
    );
    assert_ne!(
        h.stored_tokens(good).0,
        "at-good",
        "the other one refreshed"
    );
    let c = h.store.connection(bad);
    assert_eq!(c.status(), Status::Active);
    assert_eq!(c.refresh.lease, None, "the lease was given back");
    assert_eq!(c.refresh.failures, 1);
    assert!(c.refresh.due_at.unwrap() > now, "it backs off");
    assert!(c.last_error.as_deref().unwrap().contains("internal error"));
    assert_eq!(h.app.refresh_totals().panicked, 1);

    // The job goes on: the next cycle does not pick it during its back-off, and once the
    // bug is gone it is refreshed.
    assert_eq!(h.app.run_refresh_cycle().await.unwrap().picked, 0);
    h.clock.set(c.refresh.due_at.unwrap());
    p.on_refresh(|_| {});
    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!((report.picked, report.refreshed), (1, 1));
    assert_eq!(h.store.connection(bad).refresh.failures, 0);
}

// ---------------------------------------------------------------------------------------
// 4. fairness
// ---------------------------------------------------------------------------------------

/// Hangs forever on every refresh that `hangs` picks (a host, a refresh token); the rest
/// is the [`FakeProvider`].
struct Hanging {
    hangs: fn(&RefreshExchange) -> bool,
    inner: Arc<FakeProvider>,
    hanging: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl ProviderClient for Hanging {
    async fn exchange_code(&self, r: CodeExchange) -> Result<TokenResponse, OAuthError> {
        self.inner.exchange_code(r).await
    }
    async fn refresh(&self, r: RefreshExchange) -> Result<TokenResponse, OAuthError> {
        if (self.hangs)(&r) {
            self.hanging.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        self.inner.refresh(r).await
    }
    async fn revoke(&self, r: Revocation) -> Result<(), OAuthError> {
        self.inner.revoke(r).await
    }
    async fn userinfo(&self, e: String, t: SecretString) -> Result<Value, OAuthError> {
        self.inner.userinfo(e, t).await
    }
    async fn discover(&self, i: String) -> Result<DiscoveredMetadata, OAuthError> {
        self.inner.discover(i).await
    }
}

fn generic_config(host: &str) -> Value {
    json!({
        "scopes": ["read"],
        "oauth2_config": {
            "client_id": "cid",
            "client_secret": "secret",
            "authorization_endpoint": format!("https://{host}/authorize"),
            "token_endpoint": format!("https://{host}/token"),
        }
    })
}

async fn connect_generic(
    h: &Harness,
    p: &FakeProvider,
    name: &str,
    host: &str,
    answer: TokenResponse,
) -> ConnectionId {
    let c = h.create(name, "oauth2", generic_config(host)).await;
    let state = h.start(c.id).await;
    p.push_exchange(Ok(answer));
    h.callback(&state).await.expect("authorized");
    c.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_host_cannot_hold_back_another_hosts_refresh() {
    let fake = Arc::new(FakeProvider::default());
    let provider = Arc::new(Hanging {
        hangs: |r| r.token_endpoint.contains("slow.example"),
        inner: fake.clone(),
        hanging: Default::default(),
    });
    let h = harness_with_settings(
        provider.clone(),
        Settings {
            refresh_concurrency: 8,
            refresh_concurrency_per_host: 4,
            ..settings()
        },
    );
    // 24 connections at the hanging host, all due before the other host's one (and with
    // an earlier deadline too): neither the order nor the total limit may starve it.
    for i in 0..24 {
        let name = format!("slow-{i}");
        let rt = format!("rt-slow-{i}");
        connect_generic(
            &h,
            &fake,
            &name,
            "slow.example",
            tokens(&format!("at-{name}"), Some(&rt), Some(3600)),
        )
        .await;
    }
    h.clock.advance(Duration::seconds(30));
    let fast = connect_generic(
        &h,
        &fake,
        "fast",
        "fast.example",
        tokens("at-fast", Some("rt-fast"), Some(3600)),
    )
    .await;
    h.clock.advance(Duration::minutes(DUE));
    fake.answer_refresh_of("rt-fast", Ok(tokens("at-fast-2", None, Some(3600))));

    let app = h.app.clone();
    let cycle = tokio::spawn(async move { app.run_refresh_cycle().await });
    assert!(
        eventually(|| h.stored_tokens(fast).0 == "at-fast-2").await,
        "the other host's connection was not refreshed while one host hangs"
    );
    assert_eq!(
        provider.hanging.load(Ordering::SeqCst),
        4,
        "the hanging host holds exactly its own share of the slots"
    );
    // A second pass starts nothing twice: the hanging host's refreshes are still queued.
    let started = h.app.start_due_refreshes().await.unwrap();
    assert!(started.is_empty(), "{} started twice", started.len());
    cycle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_work_is_taken_earliest_deadline_first() {
    let fake = Arc::new(FakeProvider::default());
    let h = harness_with_settings(
        fake.clone(),
        Settings {
            refresh_concurrency: 1,
            ..settings()
        },
    );
    // Due at t0 + 55 min, lapses at t0 + 60 min.
    let _long = google(&h, &fake, "long", Some("rt-long")).await;
    // Obtained at t0 + 56 min for 120 s: due at t0 + 57 min (half its life), lapses at
    // t0 + 58 min: due later, but its deadline comes first.
    h.clock.advance(Duration::minutes(56));
    let _short = connected(
        &h,
        &fake,
        "short",
        "google",
        tokens("at-short", Some("rt-short"), Some(120)),
    )
    .await;
    h.clock.advance(Duration::minutes(1));
    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!(report.refreshed, 2);
    assert_eq!(
        *fake.presented_refresh_tokens.lock().unwrap(),
        ["rt-short", "rt-long"]
    );
}

// ---------------------------------------------------------------------------------------
// 7. races
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_never_writes_over_a_newer_authorization() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let gate = p.gate_refresh();
    p.push_refresh(transient());

    let app = h.app.clone();
    let refresh = tokio::spawn(async move { app.refresh_connection(id, false).await });
    gate.entered.notified().await;
    // The user authorizes again while the old grant's refresh is failing.
    let state = h.start(id).await;
    p.push_exchange(Ok(tokens("at-new", Some("rt-new"), Some(3600))));
    h.callback(&state).await.unwrap();
    gate.release.notify_one();
    assert!(matches!(
        refresh.await.unwrap().unwrap(),
        RefreshOutcome::Failed(_)
    ));

    let c = h.store.connection(id);
    assert_eq!(c.last_error, None, "the new grant carries no old error");
    assert_eq!(c.refresh.failures, 0);
    assert_eq!(
        c.refresh.due_at,
        Some(t0() + Duration::minutes(DUE) + Duration::minutes(55)),
        "the new grant's schedule stands"
    );
    assert_eq!(c.refresh.lease, None, "the lease was given back");
    assert_eq!(
        h.stored_tokens(id),
        ("at-new".into(), Some("rt-new".into()))
    );
}

#[tokio::test]
async fn the_expiry_job_never_writes_over_a_live_lease_of_another_worker() {
    let (h, p) = harness();
    let id = google(&h, &p, "no-refresh", None).await;
    h.clock.advance(Duration::minutes(61));
    let now = t0() + Duration::minutes(61);
    let theirs = Lease {
        owner: "other-worker".into(),
        until: now + Duration::seconds(30),
    };
    let lease = theirs.clone();
    h.store
        .write_behind_our_back(id, move |c| c.refresh.lease = Some(lease));

    assert_eq!(h.app.run_expiry_cycle().await.unwrap(), 0);
    let c = h.store.connection(id);
    assert_eq!(c.status(), Status::Active);
    assert_eq!(c.refresh.lease, Some(theirs), "their lease is untouched");

    // Once their lease is over, the dead grant is expired (and no lease is left behind).
    h.clock.advance(Duration::seconds(31));
    assert_eq!(h.app.run_expiry_cycle().await.unwrap(), 1);
    let c = h.store.connection(id);
    assert_eq!(c.status(), Status::Expired);
    assert_eq!(c.refresh.lease, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_refresh_revokes_the_rotated_refresh_token() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let gate = p.gate_refresh();
    p.push_refresh(Ok(tokens("at-2", Some("rt-2"), Some(3600))));

    let app = h.app.clone();
    let refresh = tokio::spawn(async move { app.refresh_connection(id, false).await });
    gate.entered.notified().await;
    let app = h.app.clone();
    let delete = tokio::spawn(async move { app.delete_connection(&admin(), id).await });
    // The delete waits for the refresh in flight instead of revoking the old token now.
    assert!(eventually(|| h.store.calls("claim_refresh") >= 2).await);
    assert!(p.revoked_tokens.lock().unwrap().is_empty());
    gate.release.notify_one();

    assert_eq!(refresh.await.unwrap().unwrap(), RefreshOutcome::Refreshed);
    delete.await.unwrap().unwrap();
    assert_eq!(*p.revoked_tokens.lock().unwrap(), ["rt-2"]);
    assert!(
        latchkey_ports::ConnectionStore::get_connection(&*h.store, id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_finds_its_connection_deleted_revokes_what_it_obtained() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let gate = p.gate_refresh();
    p.push_refresh(Ok(tokens("at-2", Some("rt-2"), Some(3600))));

    let app = h.app.clone();
    let refresh = tokio::spawn(async move { app.refresh_connection(id, false).await });
    gate.entered.notified().await;
    // Deleted behind the lease's back (another process whose wait for the lease ran out).
    assert!(
        latchkey_ports::ConnectionStore::delete_connection(&*h.store, id)
            .await
            .unwrap()
    );
    gate.release.notify_one();
    assert_eq!(refresh.await.unwrap().unwrap(), RefreshOutcome::Superseded);
    assert_eq!(*p.revoked_tokens.lock().unwrap(), ["rt-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_runs_before_the_lease_is_claimed() {
    let (h, p) = harness();
    *p.discovery.lock().unwrap() = Some(DiscoveredMetadata {
        issuer: "https://idp.example".into(),
        authorization_endpoint: "https://idp.example/authorize".into(),
        token_endpoint: "https://idp.example/token".into(),
        ..Default::default()
    });
    let c = h
        .create(
            "discovered",
            "oauth2",
            json!({
                "scopes": ["read"],
                "oauth2_config": {
                    "client_id": "cid",
                    "client_secret": "secret",
                    "issuer": "https://idp.example",
                }
            }),
        )
        .await;
    let state = h.start(c.id).await;
    p.push_exchange(Ok(tokens("at-1", Some("rt-1"), Some(3600))));
    h.callback(&state).await.unwrap();
    // Past the discovery cache's hour: the refresh has to discover again.
    h.clock.advance(Duration::minutes(61));
    let gate = p.gate_discovery();
    let discoveries = p.discover_calls.load(Ordering::SeqCst);

    let app = h.app.clone();
    let refresh = tokio::spawn(async move { app.refresh_connection(c.id, false).await });
    gate.entered.notified().await;
    assert_eq!(p.discover_calls.load(Ordering::SeqCst), discoveries + 1);
    assert_eq!(
        h.store.connection(c.id).refresh.lease,
        None,
        "no lease is held while discovery runs"
    );
    gate.release.notify_one();
    assert_eq!(refresh.await.unwrap().unwrap(), RefreshOutcome::Refreshed);
    assert_eq!(h.store.connection(c.id).refresh.lease, None);
}

// ---------------------------------------------------------------------------------------
// 8. transient failures never cost a re-consent
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn failures_other_than_invalid_grant_never_expire_a_lapsed_grant() {
    let failures: [(&str, OAuthError); 4] = [
        (
            "transient",
            OAuthError::Transient {
                reason: "connection reset".into(),
                retry_after: None,
            },
        ),
        (
            "rate limited",
            OAuthError::Transient {
                reason: "429".into(),
                retry_after: Some(Duration::seconds(90)),
            },
        ),
        (
            "server error",
            OAuthError::Provider {
                error: "server_error".into(),
                description: None,
            },
        ),
        (
            "garbage",
            OAuthError::Protocol("HTML instead of JSON".into()),
        ),
    ];
    for (what, failure) in failures {
        let (h, p) = harness();
        let id = google(&h, &p, "a", Some("rt-1")).await;
        // Past the token's expiry; the provider keeps failing for hours.
        h.clock.advance(Duration::minutes(61));
        for _ in 0..6 {
            p.push_refresh(Err(failure.clone()));
            h.app.run_refresh_cycle().await.unwrap();
            assert_eq!(h.app.run_expiry_cycle().await.unwrap(), 0, "{what}");
            let err = fetch(&h.app, id).await.unwrap_err();
            let AppError::ProviderUnavailable {
                retry_after_secs, ..
            } = err
            else {
                panic!("{what}: {err:?}");
            };
            assert!(retry_after_secs >= 1, "{what}");
            let c = h.store.connection(id);
            assert_eq!(c.status(), Status::Active, "{what}");
            h.clock.set(c.refresh.due_at.unwrap());
        }
        // The provider recovers: so does the connection, by itself.
        p.push_refresh(Ok(tokens("at-2", None, Some(3600))));
        assert_eq!(
            h.app.run_refresh_cycle().await.unwrap().refreshed,
            1,
            "{what}"
        );
        assert_eq!(fetch(&h.app, id).await.unwrap(), "at-2", "{what}");
        assert_eq!(h.store.connection(id).last_error, None);
    }
}

#[tokio::test]
async fn the_retry_after_of_provider_unavailable_is_the_back_off() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(61));
    p.push_refresh(Err(OAuthError::Transient {
        reason: "429".into(),
        retry_after: Some(Duration::seconds(90)),
    }));
    // The on-demand refresh fails; the answer says when to come back.
    let err = fetch(&h.app, id).await.unwrap_err();
    assert!(
        matches!(
            err,
            AppError::ProviderUnavailable {
                retry_after_secs: 90,
                ..
            }
        ),
        "{err:?}"
    );
    // Within the back-off no provider call is made, and the answer counts down.
    h.clock.advance(Duration::seconds(30));
    let err = fetch(&h.app, id).await.unwrap_err();
    assert!(
        matches!(
            err,
            AppError::ProviderUnavailable {
                retry_after_secs: 60,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(p.refreshes(), 1);
}

#[tokio::test]
async fn only_a_confirmed_invalid_grant_expires_a_lapsed_grant() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(61));
    p.push_refresh(Err(OAuthError::InvalidGrant(Some("revoked".into()))));
    let report = h.app.run_refresh_cycle().await.unwrap();
    assert_eq!(report.expired, 1);
    let c = h.store.connection(id);
    assert_eq!(c.status(), Status::Expired);
    assert_eq!(c.refresh.lease, None);
    assert!(matches!(
        fetch(&h.app, id).await.unwrap_err(),
        AppError::State {
            code: latchkey_app::StateCode::ConnectionExpired,
            ..
        }
    ));
}

/// A cycle claims its due connections in one batch, and those behind a busy host wait
/// in the queue holding the batch's lease. A credentials call in the same process that
/// needs one of them refreshes it at once (it takes the claim over) instead of waiting
/// for a lease its own process holds; the queued task then finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_take_over_a_connection_queued_by_the_cycle() {
    let fake = Arc::new(FakeProvider::default());
    let h = harness_with_settings(
        Arc::new(Hanging {
            hangs: |r| r.refresh_token.expose_secret() == "rt-stuck",
            inner: fake.clone(),
            hanging: Default::default(),
        }),
        one_slot(),
    );
    let (stuck, queued) = first_and_second_due(&h, &fake, "stuck", "queued").await;
    fake.answer_refresh_of("rt-queued", Ok(tokens("at-queued-2", None, Some(3600))));

    let started = h.app.start_due_refreshes().await.unwrap();
    let ids: Vec<_> = started.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![stuck, queued], "both claimed by one batch");
    // The queued one holds the batch's lease while the stuck one holds the only slot.
    assert!(h.store.connection(queued).refresh.lease.is_some());

    let fetched = tokio::time::timeout(std::time::Duration::from_secs(5), fetch(&h.app, queued))
        .await
        .expect("the credentials call waited for its own process's queue");
    assert_eq!(fetched.unwrap(), "at-queued-2");
    assert_eq!(h.stored_tokens(queued).0, "at-queued-2");
    assert!(h.store.connection(queued).refresh.lease.is_none());
    for (id, handle) in started {
        if id == stuck {
            handle.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 9. a refresh, once started, is never cut off
// ---------------------------------------------------------------------------------------

/// A provider that rotates refresh tokens has already spent the old one when it answers:
/// a refresh dropped before the save (its caller's client hung up) would cost the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_mid_refresh_still_gets_the_rotated_grant_saved() {
    let (h, p) = harness();
    let id = google(&h, &p, "a", Some("rt-1")).await;
    h.clock.advance(Duration::minutes(DUE));
    let gate = p.gate_refresh();
    p.push_refresh(Ok(tokens("at-2", Some("rt-2"), Some(3600))));

    let app = h.app.clone();
    let caller = tokio::spawn(async move { fetch(&app, id).await });
    gate.entered.notified().await;
    // The client hangs up: its request, and so this future, is dropped.
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    gate.release.notify_one();
    // Waits for the refresh task, which the caller's going away did not stop.
    tokio::time::timeout(std::time::Duration::from_secs(5), h.app.stop_refreshes())
        .await
        .expect("the refresh task ended");

    assert_eq!(h.stored_tokens(id), ("at-2".into(), Some("rt-2".into())));
    assert_eq!(p.refresh_calls.load(Ordering::SeqCst), 1);
    let c = h.store.connection(id);
    assert_eq!((c.status(), c.refresh.lease), (Status::Active, None));
}

/// Shutdown: the refresh running finishes and saves; the one queued behind it gives its
/// claim back at once (no provider call, no lease left to lapse); no new cycle claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_waits_for_running_refreshes_and_gives_queued_claims_back() {
    let fake = Arc::new(FakeProvider::default());
    let h = harness_with_settings(fake.clone(), one_slot());
    let (running, queued) = first_and_second_due(&h, &fake, "running", "queued").await;
    let gate = fake.gate_refresh();
    fake.push_refresh(Ok(tokens("at-running-2", Some("rt-running-2"), Some(3600))));

    let started = h.app.start_due_refreshes().await.unwrap();
    assert_eq!(started.len(), 2);
    gate.entered.notified().await;
    assert_eq!(h.app.refreshes_in_flight(), 2);

    let app = h.app.clone();
    let stop = tokio::spawn(async move { app.stop_refreshes().await });
    assert!(
        eventually(|| h.store.connection(queued).refresh.lease.is_none()).await,
        "the queued claim was given back"
    );
    assert!(
        !stop.is_finished(),
        "the stop waits for the running refresh"
    );
    assert!(h.app.start_due_refreshes().await.unwrap().is_empty());
    assert!(h.store.connection(running).refresh.lease.is_some());

    gate.release.notify_one();
    tokio::time::timeout(std::time::Duration::from_secs(5), stop)
        .await
        .expect("the stop ended once the refresh saved")
        .unwrap();
    assert_eq!(h.app.refreshes_in_flight(), 0);
    assert_eq!(
        h.stored_tokens(running),
        ("at-running-2".into(), Some("rt-running-2".into()))
    );
    assert_eq!(h.store.connection(running).refresh.lease, None);
    assert_eq!(
        h.stored_tokens(queued),
        ("at-queued".into(), Some("rt-queued".into())),
        "the queued one was not refreshed"
    );
    assert_eq!(fake.refresh_calls.load(Ordering::SeqCst), 1);
    let mut outcomes = Vec::new();
    for (id, handle) in started {
        outcomes.push((id, handle.await.unwrap()));
    }
    assert_eq!(
        outcomes,
        [
            (running, RefreshOutcome::Refreshed),
            (queued, RefreshOutcome::NotDue)
        ]
    );
}
