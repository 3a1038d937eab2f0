//! The fakes keep the port contracts the other tests rely on; if one drifted, those
//! tests would prove nothing.

mod support;

use chrono::Duration;
use secrecy::SecretBox;
use serde_json::json;

use latchkey_domain::sealed::fields;
use latchkey_domain::{AuthSession, Grant, Lease, RefreshSchedule, SealContext, Sealed, Status};
use latchkey_ports::{
    AuthSessionStore, Cipher, CipherError, ConnectionStore, MockProviderClient, RefreshLeaseStore,
    StoreError,
};

use support::*;

fn lease(owner: &str, until_min: i64) -> Lease {
    Lease {
        owner: owner.into(),
        until: t0() + Duration::minutes(until_min),
    }
}

fn grant(token: u8) -> Grant {
    Grant {
        access_token: Sealed(vec![token]),
        refresh_token: None,
        token_type: "Bearer".into(),
        scopes: vec![],
        obtained_at: t0(),
        expires_at: None,
    }
}

#[tokio::test]
async fn the_store_keeps_the_lease_and_version_contracts() {
    let h = harness_with(std::sync::Arc::new(MockProviderClient::new()));
    let c = h.create("g", "google", json!({})).await;
    let s = &h.store;
    // Only active connections are claimed.
    assert!(s
        .claim_refresh(c.id, &lease("w1", 1), t0())
        .await
        .unwrap()
        .is_none());
    s.write_behind_our_back(c.id, |c| *c = with_status(c.clone(), Status::Active));
    let claimed = s
        .claim_refresh(c.id, &lease("w1", 1), t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        claimed.version,
        s.connection(c.id).version,
        "a claim is not a write"
    );
    // A live lease blocks other claimers.
    assert!(s
        .claim_refresh(c.id, &lease("w2", 2), t0())
        .await
        .unwrap()
        .is_none());
    let later = t0() + Duration::minutes(2);

    // update_connection writes everything but the lease.
    let mut renamed = s.connection(c.id);
    let v = renamed.version;
    renamed.refresh.lease = None;
    assert_eq!(s.update_connection(&renamed, &[]).await.unwrap(), v + 1);
    assert_eq!(
        s.connection(c.id).version,
        v + 1,
        "the store bumps the version"
    );
    assert_eq!(s.connection(c.id).refresh.lease, Some(lease("w1", 1)));
    assert!(matches!(
        s.update_connection(&renamed, &[]).await,
        Err(StoreError::Conflict)
    ));

    // save_refreshed_grant needs both the version and the lease owner.
    let sched = RefreshSchedule::default();
    let v = v + 1;
    for (owner, version) in [("w2", v), ("w1", v - 1)] {
        assert!(matches!(
            s.save_refreshed_grant(c.id, owner, version, &grant(1), &sched, t0())
                .await,
            Err(StoreError::Conflict)
        ));
    }
    s.save_refreshed_grant(c.id, "w1", v, &grant(1), &sched, t0())
        .await
        .unwrap();
    let after = s.connection(c.id);
    assert_eq!((after.version, after.refresh.lease.clone()), (v + 1, None));
    assert_eq!(after.grant().cloned(), Some(grant(1)));

    // A lapsed lease can be taken over; release_refresh only works for the holder,
    // without a version bump.
    s.claim_refresh(c.id, &lease("w3", 3), later)
        .await
        .unwrap()
        .unwrap();
    let past_w3 = t0() + Duration::minutes(4);
    s.claim_refresh(c.id, &lease("w4", 5), past_w3)
        .await
        .unwrap()
        .unwrap();
    assert!(!s
        .release_refresh(c.id, "w3", v + 1, &sched, None)
        .await
        .unwrap());
    assert!(s
        .release_refresh(c.id, "w4", v + 1, &sched, Some("e".into()))
        .await
        .unwrap());
    let released = s.connection(c.id);
    assert_eq!(released.version, v + 1);
    assert_eq!(released.last_error.as_deref(), Some("e"));
    assert_eq!(released.refresh.lease, None);
}

#[tokio::test]
async fn sessions_are_single_use_and_purged_when_expired() {
    let s = FakeStore::default();
    // A session belongs to a connection, as the real store's foreign key requires.
    let c = latchkey_ports::contract::fixtures::api_key(PROJECT, "c");
    s.insert_connection(&c, &latchkey_ports::contract::fixtures::created(&c))
        .await
        .unwrap();
    let session = AuthSession {
        state_hash: "h".into(),
        connection_id: c.id,
        project_id: latchkey_domain::ProjectId::parse(PROJECT).unwrap(),
        pkce_verifier: None,
        token_endpoint: "https://t".into(),
        redirect_uri: "https://r".into(),
        issuer: None,
        require_iss: false,
        created_at: t0(),
        expires_at: t0() + Duration::minutes(10),
    };
    s.insert_auth_session(&session).await.unwrap();
    assert_eq!(
        s.take_auth_session("h").await.unwrap(),
        Some(session.clone())
    );
    assert_eq!(s.take_auth_session("h").await.unwrap(), None);
    s.insert_auth_session(&session).await.unwrap();
    assert_eq!(s.purge_auth_sessions(t0()).await.unwrap(), 0);
    assert_eq!(
        s.purge_auth_sessions(t0() + Duration::minutes(11))
            .await
            .unwrap(),
        1
    );
}

#[test]
fn the_cipher_transforms_and_binds_to_its_context() {
    let c = FakeCipher::default();
    let here = SealContext::new("p", "r", fields::ACCESS_TOKEN);
    let there = SealContext::new("p", "r", fields::REFRESH_TOKEN);
    let plain = || SecretBox::from(b"token-value".to_vec().into_boxed_slice());
    let a = c.seal(&plain(), &here).unwrap();
    let b = c.seal(&plain(), &here).unwrap();
    assert_ne!(a, b, "two seals of one value differ");
    assert!(!a.0.windows(11).any(|w| w == b"token-value"));
    assert_eq!(c.peek(&a, &here), "token-value");
    assert_eq!(c.open(&a, &there).err(), Some(CipherError::Authentication));
    let mut tampered = a.clone();
    tampered.0.truncate(4);
    assert!(c.open(&tampered, &here).is_err());
}

/// The fake store runs the same contract as the sea-orm store
/// (`crates/store/tests/store.rs`), one test per case.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod contract {
            $(
                #[tokio::test]
                async fn $case() {
                    latchkey_ports::contract::$case(&latchkey_ports::fake::FakeStore::default())
                        .await;
                }
            )*
        }

        #[test]
        fn every_contract_case_runs() {
            assert_eq!([$(stringify!($case)),*], latchkey_ports::contract::CASES);
        }
    };
}

contract!(
    usage_upsert,
    round_trip_every_field,
    list_filters_and_paging,
    duplicate_names,
    update_compare_and_set,
    delete_cascades,
    connection_cap_per_project,
    update_leaves_the_lease_alone,
    events_keep_order,
    events_are_paged,
    usages_are_bounded_and_counted,
    retention_purges_old_history_only,
    due_for_refresh_order_limit_and_leases,
    claim_due_refreshes_takes_a_cycles_work,
    past_expiry,
    expired_lease_can_be_reclaimed,
    save_refreshed_grant_rules,
    release_refresh_rules,
    due_for_refresh_puts_the_earliest_deadline_first,
    release_refresh_never_writes_over_a_newer_version,
    drop_lease_clears_only_its_own_lease,
    auth_session_take_is_single_use,
    purge_auth_sessions,
    oauth_clients,
    access_keys,
);
