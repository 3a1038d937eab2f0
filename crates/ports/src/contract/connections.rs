//! The connection rows: listing and paging, uniqueness, compare-and-set, cascades, the cap.

use latchkey_domain::{
    ConnectionConfig, ConnectionType, OAuthSettings, RefreshSchedule, Sealed, Status,
};

use super::fixtures::*;
use super::ContractStore;
use crate::{ConnectionQuery, StoreError, UniqueKey};

pub async fn list_filters_and_paging<S: ContractStore + ?Sized>(store: &S) {
    let mut expired = oauth("p1", "expired", None, Some(10));
    expired = with_status(expired, Status::Expired);
    let rows = vec![
        api_key("p1", "k1"),
        api_key("p1", "k2"),
        oauth("p1", "o1", None, None),
        expired,
        api_key("p2", "k1"),
        oauth("p2", "o1", None, None),
        api_key("p3", "k"),
    ];
    for c in &rows {
        store.insert_connection(c, &created(c)).await.unwrap();
    }
    let ids = |q: ConnectionQuery| async move {
        store
            .list_connections(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    let want = |f: &dyn Fn(&latchkey_domain::Connection) -> bool| {
        let mut v: Vec<_> = rows.iter().filter(|c| f(c)).map(|c| c.id).collect();
        v.sort();
        v
    };

    assert_eq!(ids(ConnectionQuery::default()).await, want(&|_| true));
    let p1 = Some(project("p1"));
    assert_eq!(
        ids(ConnectionQuery {
            project_id: p1.clone(),
            ..Default::default()
        })
        .await,
        want(&|c| c.project_id.as_str() == "p1")
    );
    assert_eq!(
        ids(ConnectionQuery {
            project_id: p1.clone(),
            status: Some(Status::Active),
            ..Default::default()
        })
        .await,
        want(&|c| c.project_id.as_str() == "p1" && c.status() == Status::Active)
    );
    assert_eq!(
        ids(ConnectionQuery {
            status: Some(Status::Expired),
            ..Default::default()
        })
        .await,
        want(&|c| c.status() == Status::Expired)
    );
    assert_eq!(
        ids(ConnectionQuery {
            kind: Some(google()),
            ..Default::default()
        })
        .await,
        want(&|c| c.kind == google())
    );
    assert_eq!(
        ids(ConnectionQuery {
            project_id: Some(project("p2")),
            kind: Some(ConnectionType::ApiKey),
            ..Default::default()
        })
        .await,
        want(&|c| c.project_id.as_str() == "p2" && c.kind == ConnectionType::ApiKey)
    );
    assert!(ids(ConnectionQuery {
        project_id: Some(project("nobody")),
        ..Default::default()
    })
    .await
    .is_empty());

    // Name search: a substring, ASCII case folded, wildcards taken literally.
    let odd = [
        api_key("p1", "Sales 50% off"),
        api_key("p1", "Sales 50x off"),
        api_key("p1", "a_b"),
    ];
    for c in &odd {
        store.insert_connection(c, &created(c)).await.unwrap();
    }
    let named = |text: &str| ConnectionQuery {
        project_id: p1.clone(),
        name_contains: Some(text.to_owned()),
        ..Default::default()
    };
    let mut sales = vec![odd[0].id, odd[1].id];
    sales.sort();
    assert_eq!(ids(named("sALES 50")).await, sales);
    assert_eq!(ids(named("50%")).await, vec![odd[0].id]);
    assert_eq!(ids(named("a_b")).await, vec![odd[2].id]);
    assert!(ids(named("a%b")).await.is_empty());
    let mut ks = rows
        .iter()
        .filter(|c| {
            c.project_id.as_str() == "p1" && c.name.as_str().to_ascii_lowercase().contains('k')
        })
        .map(|c| c.id)
        .collect::<Vec<_>>();
    ks.sort();
    assert_eq!(ids(named("K")).await, ks);
    for c in &odd {
        store.delete_connection(c.id).await.unwrap();
    }

    // Paging by id cursor visits every row once, in id order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = ids(ConnectionQuery {
            after,
            limit: 2,
            ..Default::default()
        })
        .await;
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = page.last().copied();
        seen.extend(page);
    }
    assert_eq!(seen, want(&|_| true));

    // Paging combined with a filter.
    let first = ids(ConnectionQuery {
        project_id: p1.clone(),
        limit: 1,
        ..Default::default()
    })
    .await;
    let rest = ids(ConnectionQuery {
        project_id: p1,
        after: first.first().copied(),
        limit: 10,
        ..Default::default()
    })
    .await;
    let mut both = first;
    both.extend(rest);
    assert_eq!(both, want(&|c| c.project_id.as_str() == "p1"));
}

pub async fn duplicate_names<S: ContractStore + ?Sized>(store: &S) {
    let a = api_key("p1", "same");
    store.insert_connection(&a, &created(&a)).await.unwrap();
    let b = api_key("p1", "same");
    let err = store.insert_connection(&b, &created(&b)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(UniqueKey::Name)),
        "{err:?}"
    );
    // Nothing of the refused insert remains, not even its event.
    assert!(store.get_connection(b.id).await.unwrap().is_none());
    assert!(all_events(store, b.id).await.is_empty());

    // A reused id is told apart from a name clash (by the constraint broken).
    let mut again = a.clone();
    again.name = name("another");
    let err = store
        .insert_connection(&again, &created(&again))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(UniqueKey::Id)),
        "{err:?}"
    );

    // Same name in another project is fine.
    let c = api_key("p2", "same");
    store.insert_connection(&c, &created(&c)).await.unwrap();

    // Renaming onto a taken name is refused too.
    let d = api_key("p1", "other");
    store.insert_connection(&d, &created(&d)).await.unwrap();
    let mut renamed = d.clone();
    renamed.name = name("same");
    let err = store.update_connection(&renamed, &[]).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(UniqueKey::Name)),
        "{err:?}"
    );
    assert_eq!(store.get_connection(d.id).await.unwrap().unwrap(), d);
}

pub async fn update_compare_and_set<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "conn", Some(100), Some(200));
    store.insert_connection(&c, &created(&c)).await.unwrap();

    let mut next = c.clone();
    next = with_status(next, Status::Expired);
    next.name = name("renamed");
    next = with_grant(next, None);
    next.refresh = RefreshSchedule::default();
    next.last_error = Some("invalid_grant".into());
    next.config = ConnectionConfig::OAuth(OAuthSettings {
        client_id: Some("changed".into()),
        ..OAuthSettings::default()
    });
    next.secrets = Some(Sealed(vec![42]));
    next.updated_at = t(50);
    let ev = event(
        &c,
        Some(Status::Active),
        Status::Expired,
        "refresh_rejected",
        t(50),
    );
    let written = store
        .update_connection(&next, std::slice::from_ref(&ev))
        .await
        .unwrap();
    assert_eq!(written, 2, "the store bumps the version");
    next.version = written;
    assert_eq!(store.get_connection(c.id).await.unwrap().unwrap(), next);
    assert_eq!(all_events(store, c.id).await.len(), 2);

    // Stale version: Conflict, and neither the row nor the events change.
    let mut stale = c.clone();
    stale.name = name("lost update");
    let ev2 = event(&c, None, Status::Active, "should_not_exist", t(60));
    let err = store
        .update_connection(&stale, std::slice::from_ref(&ev2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    assert_eq!(store.get_connection(c.id).await.unwrap().unwrap(), next);
    assert_eq!(all_events(store, c.id).await.len(), 2);

    // Missing id: NotFound.
    let ghost = api_key("p1", "ghost");
    let err = store.update_connection(&ghost, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    // Several events in one update, and a second update on the new version.
    let mut third = next.clone();
    third = with_status(third, Status::Active);
    let evs = [
        event(
            &c,
            Some(Status::Expired),
            Status::Active,
            "authorized",
            t(70),
        ),
        event(&c, Some(Status::Active), Status::Active, "note", t(70)),
    ];
    assert_eq!(store.update_connection(&third, &evs).await.unwrap(), 3);
    let events = all_events(store, c.id).await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[2..], evs[..]);
}

pub async fn delete_cascades<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "doomed", Some(10), Some(20));
    let keep = oauth("p1", "kept", Some(10), Some(20));
    for x in [&c, &keep] {
        store.insert_connection(x, &created(x)).await.unwrap();
        store
            .record_usage(x.id, Some(flow("f1")), t(5))
            .await
            .unwrap();
    }
    store
        .insert_auth_session(&session(&c, "hash-doomed", t(1000)))
        .await
        .unwrap();
    store
        .insert_auth_session(&session(&keep, "hash-kept", t(1000)))
        .await
        .unwrap();

    assert!(store.delete_connection(c.id).await.unwrap());
    assert!(store.get_connection(c.id).await.unwrap().is_none());
    assert!(all_events(store, c.id).await.is_empty());
    assert!(store.list_usages(c.id, 1000).await.unwrap().is_empty());
    assert!(store
        .take_auth_session("hash-doomed")
        .await
        .unwrap()
        .is_none());
    assert!(!store.delete_connection(c.id).await.unwrap());

    // The neighbour is untouched.
    assert!(store.get_connection(keep.id).await.unwrap().is_some());
    assert_eq!(all_events(store, keep.id).await.len(), 1);
    assert_eq!(store.list_usages(keep.id, 1000).await.unwrap().len(), 1);
    assert!(store
        .take_auth_session("hash-kept")
        .await
        .unwrap()
        .is_some());

    // The name is free again.
    let again = oauth("p1", "doomed", None, None);
    store
        .insert_connection(&again, &created(&again))
        .await
        .unwrap();
}

pub async fn connection_cap_per_project<S: ContractStore + ?Sized>(store: &S) {
    for i in 0..3 {
        let c = api_key("capped", &format!("c{i}"));
        store
            .insert_connection_capped(&c, &created(&c), 3)
            .await
            .unwrap();
    }
    let over = api_key("capped", "c3");
    let err = store
        .insert_connection_capped(&over, &created(&over), 3)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LimitReached { limit: 3 }),
        "{err:?}"
    );
    // Nothing of the refused connection was written, its event included.
    assert!(store.get_connection(over.id).await.unwrap().is_none());
    assert!(all_events(store, over.id).await.is_empty());
    // Another project is not affected; a name clash is still a clash.
    let elsewhere = api_key("other", "c0");
    store
        .insert_connection_capped(&elsewhere, &created(&elsewhere), 3)
        .await
        .unwrap();
    let clash = api_key("other", "c0");
    let err = store
        .insert_connection_capped(&clash, &created(&clash), 3)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(UniqueKey::Name)),
        "{err:?}"
    );
    // A delete makes room.
    let first = store
        .list_connections(&ConnectionQuery {
            project_id: Some(project("capped")),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    assert!(store.delete_connection(first.id).await.unwrap());
    store
        .insert_connection_capped(&over, &created(&over), 3)
        .await
        .unwrap();
}

/// A rename written from a read taken before a claim must not wipe the lease: the
/// refresher would lose its save and a second worker could reuse the refresh token.
pub async fn update_leaves_the_lease_alone<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "renamed-mid-refresh", Some(10), Some(2000));
    store.insert_connection(&c, &created(&c)).await.unwrap();
    let stale_read = store.get_connection(c.id).await.unwrap().unwrap();
    store
        .claim_refresh(c.id, &lease("w1", t(130)), t(100))
        .await
        .unwrap()
        .unwrap();
    let mut renamed = stale_read.clone();
    renamed.name = latchkey_domain::ConnectionName::parse("new name").unwrap();
    store.update_connection(&renamed, &[]).await.unwrap();
    let got = store.get_connection(c.id).await.unwrap().unwrap();
    assert_eq!(got.name.as_str(), "new name");
    assert_eq!(
        got.refresh.lease.as_ref().map(|l| l.owner.as_str()),
        Some("w1")
    );
    // Another worker still cannot claim it while the lease lives.
    assert!(store
        .claim_refresh(c.id, &lease("w2", t(130)), t(101))
        .await
        .unwrap()
        .is_none());
}

pub async fn round_trip_every_field<S: ContractStore + ?Sized>(store: &S) {
    let client = oauth_client(Some("p1"), "shared app");
    store.insert_oauth_client(&client).await.unwrap();

    let mut full = oauth("p1", "Gmail - Support ü", Some(100), Some(3600));
    full.oauth2_client_id = Some(client.id);
    full.secrets = Some(Sealed((0..=255).collect()));
    full.refresh.failures = 3;
    full.refresh.lease = Some(lease("worker-1", t_ms(5_123)));
    full.last_error = Some("provider said: slow down".into());
    full.created_at = t_ms(-1_001);
    full.updated_at = t_ms(7_777);
    full.last_used_at = Some(t_ms(8_888));
    full.version = 7;
    full.config = ConnectionConfig::OAuth(OAuthSettings {
        scopes: Some(vec!["openid".into(), "ü".into()]),
        client_id: Some("client ✓".into()),
        issuer: Some("https://idp.example".into()),
        token_endpoint_auth_method: Some(latchkey_domain::TokenAuthMethod::ClientSecretPost),
        extra_authorization_params: [("prompt".to_owned(), "consent".to_owned())].into(),
        pkce: Some(false),
        tenant: Some("contoso.example".into()),
        ..OAuthSettings::default()
    });
    store
        .insert_connection(&full, &created(&full))
        .await
        .unwrap();
    assert_eq!(store.get_connection(full.id).await.unwrap().unwrap(), full);

    // A grant without refresh token nor expiry, and no optional fields at all.
    let mut bare = oauth("p1", "bare", None, None);
    bare = with_grant(
        bare,
        Some(latchkey_domain::Grant {
            refresh_token: None,
            scopes: vec![],
            ..grant(t(5), None)
        }),
    );
    bare.authorized_user = None;
    store
        .insert_connection(&bare, &created(&bare))
        .await
        .unwrap();
    assert_eq!(store.get_connection(bare.id).await.unwrap().unwrap(), bare);

    let mut incomplete = api_key("p1", "incomplete");
    incomplete.kind = ConnectionType::OAuth(latchkey_domain::Provider::Generic);
    incomplete.config = ConnectionConfig::OAuth(OAuthSettings::default());
    incomplete = with_status(incomplete, Status::Incomplete);
    incomplete.secrets = None;
    store
        .insert_connection(&incomplete, &created(&incomplete))
        .await
        .unwrap();
    assert_eq!(
        store.get_connection(incomplete.id).await.unwrap().unwrap(),
        incomplete
    );

    assert!(store.get_connection(new_id()).await.unwrap().is_none());
    let mut all = store
        .list_connections(&ConnectionQuery::default())
        .await
        .unwrap();
    let mut want = vec![full, bare, incomplete];
    all.sort_by_key(|c| c.id);
    want.sort_by_key(|c| c.id);
    assert_eq!(all, want);
}
