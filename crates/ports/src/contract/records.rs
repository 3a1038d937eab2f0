//! Pending authorizations and OAuth client registrations.

use std::collections::HashSet;

use latchkey_domain::OAuthClientId;

use super::fixtures::*;
use super::ContractStore;
use crate::{StoreError, UniqueKey};

pub async fn auth_session_take_is_single_use<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "authorizing", None, None);
    store.insert_connection(&c, &created(&c)).await.unwrap();
    let s = session(&c, "3f1a-hash", t(600));
    store.insert_auth_session(&s).await.unwrap();
    let mut plain = session(&c, "no-pkce", t(600));
    plain.pkce_verifier = None;
    plain.issuer = None;
    plain.require_iss = false;
    store.insert_auth_session(&plain).await.unwrap();

    let err = store.insert_auth_session(&s).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
    let mut orphan = session(&c, "orphan", t(600));
    orphan.connection_id = new_id();
    let err = store.insert_auth_session(&orphan).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    assert_eq!(store.take_auth_session("3f1a-hash").await.unwrap(), Some(s));
    assert_eq!(store.take_auth_session("3f1a-hash").await.unwrap(), None);
    assert_eq!(
        store.take_auth_session("no-pkce").await.unwrap(),
        Some(plain)
    );
    assert_eq!(store.take_auth_session("unknown").await.unwrap(), None);
}

pub async fn purge_auth_sessions<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "purging", None, None);
    store.insert_connection(&c, &created(&c)).await.unwrap();
    for (hash, exp) in [("old1", 10), ("old2", 99), ("edge", 100), ("new", 500)] {
        store
            .insert_auth_session(&session(&c, hash, t(exp)))
            .await
            .unwrap();
    }
    assert_eq!(store.purge_auth_sessions(t(100)).await.unwrap(), 2);
    assert_eq!(store.purge_auth_sessions(t(100)).await.unwrap(), 0);
    assert!(store.take_auth_session("old1").await.unwrap().is_none());
    assert!(store.take_auth_session("edge").await.unwrap().is_some());
    assert_eq!(store.purge_auth_sessions(t(1000)).await.unwrap(), 1);
}

pub async fn oauth_clients<S: ContractStore + ?Sized>(store: &S) {
    let global = oauth_client(None, "Acme");
    let mut global_plain = oauth_client(None, "Beta");
    global_plain.client_secret = None;
    let p1 = oauth_client(Some("p1"), "Acme");
    let p2 = oauth_client(Some("p2"), "Zeta");
    for c in [&global, &global_plain, &p1, &p2] {
        store.insert_oauth_client(c).await.unwrap();
    }
    for dup in [oauth_client(None, "Acme"), oauth_client(Some("p1"), "Acme")] {
        let err = store.insert_oauth_client(&dup).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Duplicate(UniqueKey::Name)),
            "{err:?}"
        );
    }
    store
        .insert_oauth_client(&oauth_client(Some("p2"), "Acme"))
        .await
        .unwrap();

    assert_eq!(
        store.get_oauth_client(global.id).await.unwrap(),
        Some(global.clone())
    );
    assert_eq!(
        store.get_oauth_client(global_plain.id).await.unwrap(),
        Some(global_plain.clone())
    );
    assert_eq!(
        store
            .get_oauth_client(OAuthClientId::from_random_bytes([3; 16]))
            .await
            .unwrap(),
        None
    );

    let ids =
        |v: Vec<latchkey_domain::OAuthClient>| v.into_iter().map(|c| c.id).collect::<HashSet<_>>();
    let for_p1 = store.list_oauth_clients(Some(project("p1"))).await.unwrap();
    assert_eq!(
        ids(for_p1),
        HashSet::from([global.id, global_plain.id, p1.id])
    );
    let for_other = store
        .list_oauth_clients(Some(project("other")))
        .await
        .unwrap();
    assert_eq!(ids(for_other), HashSet::from([global.id, global_plain.id]));
    assert_eq!(store.list_oauth_clients(None).await.unwrap().len(), 5);

    // In use: refused while a connection refers to it.
    let mut conn = oauth("p1", "via client", None, None);
    conn.oauth2_client_id = Some(p1.id);
    store
        .insert_connection(&conn, &created(&conn))
        .await
        .unwrap();
    let err = store.delete_oauth_client(p1.id).await.unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(store.get_oauth_client(p1.id).await.unwrap().is_some());

    // Moving the connection off the client frees it.
    let mut moved = conn.clone();
    moved.oauth2_client_id = Some(global.id);
    store.update_connection(&moved, &[]).await.unwrap();
    assert!(store.delete_oauth_client(p1.id).await.unwrap());
    assert!(!store.delete_oauth_client(p1.id).await.unwrap());
    let err = store.delete_oauth_client(global.id).await.unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(store.delete_connection(conn.id).await.unwrap());
    assert!(store.delete_oauth_client(global.id).await.unwrap());

    // A connection cannot point at a client that does not exist.
    let mut dangling = oauth("p1", "dangling", None, None);
    dangling.oauth2_client_id = Some(p1.id);
    let err = store
        .insert_connection(&dangling, &created(&dangling))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

pub async fn access_keys<S: ContractStore + ?Sized>(store: &S) {
    let a = access_key("p1", "ci", t(1));
    let mut b = access_key("p1", "deploy", t(2));
    b.scopes = vec![];
    let c = access_key("p2", "ci", t(0));
    for k in [&a, &b, &c] {
        store.insert_access_key(k).await.unwrap();
    }
    let err = store.insert_access_key(&a).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
    assert_eq!(store.get_access_key(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_access_key(b.id).await.unwrap(), Some(b.clone()));
    assert_eq!(
        store
            .get_access_key(latchkey_domain::AccessKeyId::from_random_bytes([1; 16]))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.list_access_keys(Some(project("p1"))).await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        store.list_access_keys(None).await.unwrap(),
        vec![c.clone(), a.clone(), b.clone()]
    );
    assert!(store.delete_access_key(a.id).await.unwrap());
    assert!(!store.delete_access_key(a.id).await.unwrap());
    assert_eq!(
        store.list_access_keys(Some(project("p1"))).await.unwrap(),
        vec![b]
    );
}
