//! The refresh queue and its leases: order, claims, saves, releases.

use latchkey_domain::{RefreshSchedule, Sealed, Status};

use super::fixtures::*;
use super::ContractStore;
use crate::StoreError;

pub async fn due_for_refresh_order_limit_and_leases<S: ContractStore + ?Sized>(store: &S) {
    let now = t(1000);
    let due_late = oauth("p1", "due-late", Some(900), Some(2000));
    let due_early = oauth("p1", "due-early", Some(100), Some(2000));
    let due_now = oauth("p2", "due-now", Some(1000), Some(2000));
    let not_yet = oauth("p1", "not-yet", Some(1001), Some(2000));
    let never = oauth("p1", "never", None, None);
    let mut expired = oauth("p1", "expired", Some(50), Some(60));
    expired = with_status(expired, Status::Expired);
    let mut leased = oauth("p1", "leased", Some(10), Some(2000));
    leased.refresh.lease = Some(lease("w", t(1001)));
    let mut lease_lapsed = oauth("p1", "lease-lapsed", Some(500), Some(2000));
    lease_lapsed.refresh.lease = Some(lease("w", t(999)));
    // A lease ending exactly now is still live ("deadline before now" frees it).
    let mut lease_at_now = oauth("p1", "lease-at-now", Some(20), Some(2000));
    lease_at_now.refresh.lease = Some(lease("w", now));
    for c in [
        &due_late,
        &due_early,
        &due_now,
        &not_yet,
        &never,
        &expired,
        &leased,
        &lease_lapsed,
        &lease_at_now,
    ] {
        store.insert_connection(c, &created(c)).await.unwrap();
    }
    let all = store.due_for_refresh(now, 100).await.unwrap();
    assert_eq!(
        all,
        vec![due_early.id, lease_lapsed.id, due_late.id, due_now.id]
    );
    assert_eq!(
        store.due_for_refresh(now, 2).await.unwrap(),
        vec![due_early.id, lease_lapsed.id]
    );
    assert!(store.due_for_refresh(now, 0).await.unwrap().is_empty());
    assert!(store.due_for_refresh(t(0), 100).await.unwrap().is_empty());
    // Once claimed, a connection is no longer offered.
    store
        .claim_refresh(due_early.id, &lease("me", t(1030)), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.due_for_refresh(now, 100).await.unwrap(),
        vec![lease_lapsed.id, due_late.id, due_now.id]
    );
}

/// A cycle's claim: the due connections in deadline order, up to the limit, leased at
/// once; live leases are left alone, lapsed ones are taken; nothing is claimed twice.
pub async fn claim_due_refreshes_takes_a_cycles_work<S: ContractStore + ?Sized>(store: &S) {
    let now = t(1000);
    let due_late = oauth("p1", "due-late", Some(900), Some(2000));
    let due_early = oauth("p1", "due-early", Some(100), Some(2000));
    let not_yet = oauth("p1", "not-yet", Some(1001), Some(2000));
    let mut leased = oauth("p1", "leased", Some(10), Some(2000));
    leased.refresh.lease = Some(lease("w", t(1001)));
    let mut lease_lapsed = oauth("p1", "lease-lapsed", Some(500), Some(2000));
    lease_lapsed.refresh.lease = Some(lease("w", t(999)));
    let expired = with_status(oauth("p1", "expired", Some(50), Some(60)), Status::Expired);
    for c in [
        &due_late,
        &due_early,
        &not_yet,
        &leased,
        &lease_lapsed,
        &expired,
    ] {
        store.insert_connection(c, &created(c)).await.unwrap();
    }
    let mine = lease("batch", t(1030));
    assert!(store
        .claim_due_refreshes(&mine, now, 0)
        .await
        .unwrap()
        .is_empty());
    let first = store.claim_due_refreshes(&mine, now, 2).await.unwrap();
    let ids: Vec<_> = first.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![due_early.id, lease_lapsed.id]);
    for c in &first {
        assert_eq!(c.refresh.lease.as_ref(), Some(&mine), "returned as claimed");
        let stored = store.get_connection(c.id).await.unwrap().unwrap();
        assert_eq!(
            stored.refresh.lease.as_ref(),
            Some(&mine),
            "stored as claimed"
        );
        assert_eq!(
            stored.version, c.version,
            "a claim does not bump the version"
        );
    }
    // The rest, once; then nothing is left to claim.
    let other = lease("other", t(1030));
    let rest = store.claim_due_refreshes(&other, now, 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![due_late.id]
    );
    assert!(store
        .claim_due_refreshes(&other, now, 10)
        .await
        .unwrap()
        .is_empty());
    let leased_now = store.get_connection(leased.id).await.unwrap().unwrap();
    assert_eq!(
        leased_now.refresh.lease, leased.refresh.lease,
        "a live lease is kept"
    );
    // A claimed connection can be saved under the batch's lease like a single claim.
    let c = &first[0];
    let g = c.grant().unwrap().clone();
    store
        .save_refreshed_grant(
            c.id,
            "batch",
            c.version,
            &g,
            &RefreshSchedule::default(),
            t(1001),
        )
        .await
        .unwrap();
}

pub async fn past_expiry<S: ContractStore + ?Sized>(store: &S) {
    let now = t(1000);
    let a = oauth("p1", "a", Some(1), Some(999));
    let b = oauth("p1", "b", Some(1), Some(1000));
    let c = oauth("p1", "c", Some(1), Some(500));
    let future = oauth("p1", "future", Some(1), Some(1001));
    let no_expiry = oauth("p1", "no-expiry", None, None);
    let mut expired = oauth("p1", "expired", Some(1), Some(10));
    expired = with_status(expired, Status::Expired);
    let no_grant = api_key("p1", "key");
    for x in [&a, &b, &c, &future, &no_expiry, &expired, &no_grant] {
        store.insert_connection(x, &created(x)).await.unwrap();
    }
    assert_eq!(
        store.past_expiry(now, 10).await.unwrap(),
        vec![c.id, a.id, b.id]
    );
    assert_eq!(store.past_expiry(now, 1).await.unwrap(), vec![c.id]);
    assert!(store.past_expiry(t(0), 10).await.unwrap().is_empty());
}

pub async fn expired_lease_can_be_reclaimed<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "crashy", Some(10), Some(20));
    store.insert_connection(&c, &created(&c)).await.unwrap();
    let first = store
        .claim_refresh(c.id, &lease("crashed", t(130)), t(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.refresh.lease, Some(lease("crashed", t(130))));
    // At the deadline it is still held...
    assert!(store
        .claim_refresh(c.id, &lease("next", t(160)), t(130))
        .await
        .unwrap()
        .is_none());
    // ...a millisecond later it lapsed.
    let second = store
        .claim_refresh(c.id, &lease("next", t(160)), t_ms(130_001))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.refresh.lease, Some(lease("next", t(160))));
    // The crashed worker can no longer save.
    let err = store
        .save_refreshed_grant(
            c.id,
            "crashed",
            c.version,
            &grant(t(131), Some(t(4000))),
            &RefreshSchedule::default(),
            t(131),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
}

pub async fn save_refreshed_grant_rules<S: ContractStore + ?Sized>(store: &S) {
    let mut c = oauth("p1", "refreshable", Some(10), Some(20));
    c.last_error = Some("previous transient failure".into());
    c.refresh.failures = 2;
    c.last_used_at = Some(t(9));
    store.insert_connection(&c, &created(&c)).await.unwrap();
    store
        .claim_refresh(c.id, &lease("owner", t(130)), t(100))
        .await
        .unwrap()
        .unwrap();

    let new_grant = latchkey_domain::Grant {
        access_token: Sealed(vec![0xAA; 33]),
        refresh_token: Some(Sealed(vec![0xBB; 40])),
        token_type: "bearer".into(),
        scopes: vec!["openid".into()],
        obtained_at: t_ms(100_250),
        expires_at: Some(t(3700)),
    };
    let schedule = RefreshSchedule {
        due_at: Some(t(3400)),
        failures: 0,
        // Ignored: saving always clears the lease.
        lease: Some(lease("owner", t(130))),
    };

    // Wrong owner or stale version: Conflict, nothing written.
    for (owner, version) in [("intruder", c.version), ("owner", c.version - 1)] {
        let err = store
            .save_refreshed_grant(c.id, owner, version, &new_grant, &schedule, t(101))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict),
            "{owner} {version}: {err:?}"
        );
    }
    let err = store
        .save_refreshed_grant(new_id(), "owner", 1, &new_grant, &schedule, t(101))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");

    // A concurrent user edit (rename, other config) is not overwritten: it bumps the
    // version, so the save must fail; here we rename through the store under the
    // lease and then save with the new version.
    let mut renamed = store.get_connection(c.id).await.unwrap().unwrap();
    renamed.name = name("renamed by user");
    renamed.config = user_edit();
    renamed.version = c.version;
    renamed.version = store.update_connection(&renamed, &[]).await.unwrap();
    let err = store
        .save_refreshed_grant(c.id, "owner", c.version, &new_grant, &schedule, t(101))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");

    store
        .save_refreshed_grant(
            c.id,
            "owner",
            renamed.version,
            &new_grant,
            &schedule,
            t(102),
        )
        .await
        .unwrap();
    let got = store.get_connection(c.id).await.unwrap().unwrap();
    let mut want = renamed.clone();
    want = with_grant(want, Some(new_grant.clone()));
    want.refresh = RefreshSchedule {
        due_at: Some(t(3400)),
        failures: 0,
        lease: None,
    };
    want.last_error = None;
    want.updated_at = t(102);
    want.version = renamed.version + 1;
    assert_eq!(got, want);
    // Name, config, status, secrets and usage untouched.
    assert_eq!(got.name, name("renamed by user"));
    assert_eq!(got.config, user_edit());
    assert_eq!(got.status(), Status::Active);
    assert_eq!(got.last_used_at, Some(t(9)));

    // The lease is gone: saving again, even with the right version, fails.
    let err = store
        .save_refreshed_grant(c.id, "owner", want.version, &new_grant, &schedule, t(103))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
}

pub async fn release_refresh_rules<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "flaky", Some(10), Some(2000));
    store.insert_connection(&c, &created(&c)).await.unwrap();
    let schedule = RefreshSchedule {
        due_at: Some(t(160)),
        failures: 4,
        lease: None,
    };
    // Nobody holds it: nothing to release.
    assert!(!store
        .release_refresh(c.id, "w1", c.version, &schedule, Some("x".into()))
        .await
        .unwrap());
    store
        .claim_refresh(c.id, &lease("w1", t(130)), t(100))
        .await
        .unwrap()
        .unwrap();
    assert!(!store
        .release_refresh(c.id, "w2", c.version, &schedule, Some("x".into()))
        .await
        .unwrap());
    assert!(store
        .release_refresh(
            c.id,
            "w1",
            c.version,
            &schedule,
            Some("timeout talking to provider".into())
        )
        .await
        .unwrap());
    let got = store.get_connection(c.id).await.unwrap().unwrap();
    let mut want = c.clone();
    want.refresh = schedule.clone();
    want.last_error = Some("timeout talking to provider".into());
    assert_eq!(got, want, "version, grant and the rest unchanged");
    // Released: claimable again right away, and due only at the new time.
    assert!(store.due_for_refresh(t(159), 10).await.unwrap().is_empty());
    assert_eq!(store.due_for_refresh(t(160), 10).await.unwrap(), vec![c.id]);
    assert!(store
        .claim_refresh(c.id, &lease("w2", t(200)), t(101))
        .await
        .unwrap()
        .is_some());
    // Releasing with no error clears last_error.
    assert!(store
        .release_refresh(c.id, "w2", c.version, &RefreshSchedule::default(), None)
        .await
        .unwrap());
    let got = store.get_connection(c.id).await.unwrap().unwrap();
    assert_eq!(got.last_error, None);
    assert_eq!(got.refresh, RefreshSchedule::default());
    assert!(!store
        .release_refresh(new_id(), "w2", 1, &schedule, None)
        .await
        .unwrap());
}

pub async fn due_for_refresh_puts_the_earliest_deadline_first<S: ContractStore + ?Sized>(
    store: &S,
) {
    let now = t(1000);
    // Due long ago but its token lives on: after the one that lapses soonest.
    let long_lived = oauth("p1", "long-lived", Some(10), Some(5000));
    let lapses_first = oauth("p2", "lapses-first", Some(990), Some(1004));
    let lapses_next = oauth("p1", "lapses-next", Some(500), Some(1010));
    // Same deadline: the earlier due time first.
    let tie_late = oauth("p1", "tie-late", Some(800), Some(1010));
    for c in [&long_lived, &lapses_first, &lapses_next, &tie_late] {
        store.insert_connection(c, &created(c)).await.unwrap();
    }
    assert_eq!(
        store.due_for_refresh(now, 100).await.unwrap(),
        vec![lapses_first.id, lapses_next.id, tie_late.id, long_lived.id]
    );
    assert_eq!(
        store.due_for_refresh(now, 1).await.unwrap(),
        vec![lapses_first.id]
    );
}

pub async fn release_refresh_never_writes_over_a_newer_version<S: ContractStore + ?Sized>(
    store: &S,
) {
    let c = oauth("p1", "reconnected", Some(10), Some(2000));
    store.insert_connection(&c, &created(&c)).await.unwrap();
    store
        .claim_refresh(c.id, &lease("w1", t(130)), t(100))
        .await
        .unwrap()
        .unwrap();
    // A reconnect writes a new grant meanwhile (the lease columns are left alone).
    let mut newer = c.clone();
    newer = with_grant(newer, Some(grant(t(110), Some(t(3700)))));
    newer.refresh = RefreshSchedule {
        due_at: Some(t(3400)),
        failures: 0,
        lease: None,
    };
    newer.last_error = None;
    newer.version = c.version;
    newer.version = store.update_connection(&newer, &[]).await.unwrap();
    let failed = RefreshSchedule {
        due_at: Some(t(160)),
        failures: 5,
        lease: None,
    };
    assert!(!store
        .release_refresh(c.id, "w1", c.version, &failed, Some("timeout".into()))
        .await
        .unwrap());
    let got = store.get_connection(c.id).await.unwrap().unwrap();
    assert_eq!(got.refresh.due_at, Some(t(3400)));
    assert_eq!(got.refresh.failures, 0);
    assert_eq!(got.last_error, None);
    assert_eq!(got.refresh.lease, Some(lease("w1", t(130))), "still held");
    // At the current version the same release applies.
    assert!(store
        .release_refresh(c.id, "w1", newer.version, &failed, Some("timeout".into()))
        .await
        .unwrap());
    let got = store.get_connection(c.id).await.unwrap().unwrap();
    assert_eq!((got.refresh.failures, got.refresh.lease), (5, None));
}

pub async fn drop_lease_clears_only_its_own_lease<S: ContractStore + ?Sized>(store: &S) {
    let mut c = oauth("p1", "held", Some(10), Some(2000));
    c.refresh.failures = 2;
    c.last_error = Some("earlier".into());
    store.insert_connection(&c, &created(&c)).await.unwrap();
    assert!(!store.drop_lease(c.id, "w1").await.unwrap());
    store
        .claim_refresh(c.id, &lease("w1", t(130)), t(100))
        .await
        .unwrap()
        .unwrap();
    assert!(!store.drop_lease(c.id, "w2").await.unwrap());
    assert_eq!(
        store
            .get_connection(c.id)
            .await
            .unwrap()
            .unwrap()
            .refresh
            .lease,
        Some(lease("w1", t(130)))
    );
    assert!(store.drop_lease(c.id, "w1").await.unwrap());
    assert_eq!(store.get_connection(c.id).await.unwrap().unwrap(), c);
    assert!(!store.drop_lease(new_id(), "w1").await.unwrap());
}
