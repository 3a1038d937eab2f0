//! The in-process cache of connections and access keys (`CachedStore`): served from
//! memory once its change feed listens, dropped on every write made through it and on
//! every change the feed reports, bypassed while the feed is down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::{mpsc, Mutex};

use latchkey_app::{CachedStore, Credentials, Latchkey, UpdateConnection};
use latchkey_ports::{
    AccessKeyStore, Change, ChangeFeed, ConnectionStore, MockProviderClient, StoreError,
};

use support::*;

/// A change feed the test drives. It counts the calls: the follower enters call k+1
/// only after applying the change returned by call k.
struct ScriptedFeed {
    rx: Mutex<mpsc::UnboundedReceiver<Result<Change, StoreError>>>,
    entered: AtomicUsize,
}

#[async_trait::async_trait]
impl ChangeFeed for ScriptedFeed {
    async fn next_change(&self) -> Result<Change, StoreError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        match self.rx.lock().await.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }
}

struct Cached {
    h: Harness,
    cache: Arc<CachedStore>,
    feed: Arc<ScriptedFeed>,
    tx: mpsc::UnboundedSender<Result<Change, StoreError>>,
    sent: AtomicUsize,
}

impl Cached {
    /// Sends changes and waits until the follower applied them.
    async fn send(&self, changes: Vec<Result<Change, StoreError>>) {
        for c in changes {
            self.sent.fetch_add(1, Ordering::SeqCst);
            self.tx.send(c).unwrap();
        }
        let sent = self.sent.load(Ordering::SeqCst);
        while self.feed.entered.load(Ordering::SeqCst) <= sent {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

fn cached(capacity: usize) -> Cached {
    let p = parts(Arc::new(MockProviderClient::new()));
    let mut p = p;
    let cache = Arc::new(CachedStore::new(p.store.clone(), capacity));
    p.services.connections = cache.clone();
    p.services.activity = cache.clone();
    p.services.leases = cache.clone();
    p.services.keys = cache.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let feed = Arc::new(ScriptedFeed {
        rx: Mutex::new(rx),
        entered: AtomicUsize::new(0),
    });
    tokio::spawn(cache.clone().follow(feed.clone()));
    Cached {
        h: Harness::from_parts(p, settings()),
        cache,
        feed,
        tx,
        sent: AtomicUsize::new(0),
    }
}

async fn api_key_of(app: &Arc<Latchkey>, id: latchkey_domain::ConnectionId) -> String {
    match app.fetch_credentials(&admin(), id, None).await.unwrap() {
        Credentials::ApiKey { api_key } => api_key.expose_secret().to_owned(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reads_come_from_memory_only_once_the_feed_listens() {
    let c = cached(100);
    let conn = c.h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    let reads = || c.h.store.calls("get_connection");

    // Before the feed's first Resync, every read asks the store.
    let before = reads();
    api_key_of(&c.h.app, conn.id).await;
    api_key_of(&c.h.app, conn.id).await;
    assert_eq!(reads(), before + 2);
    assert!(c.cache.is_empty());

    c.send(vec![Ok(Change::Resync)]).await;
    assert!(c.cache.is_serving());
    let before = reads();
    for _ in 0..10 {
        assert_eq!(api_key_of(&c.h.app, conn.id).await, "sk-1");
    }
    assert_eq!(reads(), before + 1, "one read fills the cache");
    // Secrets stay sealed in memory: the cache holds what the store returned.
    assert_eq!(
        c.cache.get_connection(conn.id).await.unwrap().unwrap(),
        c.h.store.connection(conn.id)
    );
}

#[tokio::test]
async fn a_write_through_the_cache_is_served_at_once() {
    let c = cached(100);
    c.send(vec![Ok(Change::Resync)]).await;
    let conn = c.h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    assert_eq!(api_key_of(&c.h.app, conn.id).await, "sk-1");

    c.h.app
        .update_connection(
            &admin(),
            conn.id,
            UpdateConnection {
                name: Some("renamed".into()),
                config: Some(json!({"api_key": "sk-2"})),
                version: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(api_key_of(&c.h.app, conn.id).await, "sk-2");
    let d = c.h.app.get_connection(&admin(), conn.id).await.unwrap();
    assert_eq!(d.connection.name.as_str(), "renamed");

    c.h.app.delete_connection(&admin(), conn.id).await.unwrap();
    let err =
        c.h.app
            .fetch_credentials(&admin(), conn.id, None)
            .await
            .unwrap_err();
    assert!(
        matches!(err, latchkey_app::AppError::NotFound(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_change_made_elsewhere_is_served_once_the_feed_reports_it() {
    let c = cached(100);
    c.send(vec![Ok(Change::Resync)]).await;
    let conn = c.h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    api_key_of(&c.h.app, conn.id).await;

    // Another process renames it: this one still serves its copy...
    c.h.store.write_behind_our_back(conn.id, |x| {
        x.name = latchkey_domain::ConnectionName::parse("elsewhere").unwrap()
    });
    let name = |c: &Cached| {
        let app = c.h.app.clone();
        async move {
            app.get_connection(&admin(), conn.id)
                .await
                .unwrap()
                .connection
                .name
                .as_str()
                .to_owned()
        }
    };
    assert_eq!(name(&c).await, "k");
    // ...until the feed names the connection,
    c.send(vec![Ok(Change::Connection(conn.id))]).await;
    assert_eq!(name(&c).await, "elsewhere");

    // and a Resync drops everything.
    c.h.store.write_behind_our_back(conn.id, |x| {
        x.name = latchkey_domain::ConnectionName::parse("again").unwrap()
    });
    assert_eq!(name(&c).await, "elsewhere");
    c.send(vec![Ok(Change::Resync)]).await;
    assert_eq!(name(&c).await, "again");
}

#[tokio::test]
async fn while_the_feed_is_down_nothing_is_served_from_memory() {
    let c = cached(100);
    c.send(vec![Ok(Change::Resync)]).await;
    let conn = c.h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    api_key_of(&c.h.app, conn.id).await;
    assert_eq!(c.cache.len().0, 1);

    c.send(vec![Err(StoreError::Backend("listener lost".into()))])
        .await;
    assert!(!c.cache.is_serving());
    assert!(c.cache.is_empty());
    // A change the feed missed is still served fresh: reads go to the store.
    c.h.store.write_behind_our_back(conn.id, |x| {
        x.name = latchkey_domain::ConnectionName::parse("missed").unwrap()
    });
    let before = c.h.store.calls("get_connection");
    let d = c.h.app.get_connection(&admin(), conn.id).await.unwrap();
    assert_eq!(d.connection.name.as_str(), "missed");
    api_key_of(&c.h.app, conn.id).await;
    assert_eq!(c.h.store.calls("get_connection"), before + 2);
    assert!(c.cache.is_empty(), "nothing is kept while the feed is down");

    c.send(vec![Ok(Change::Resync)]).await;
    assert!(c.cache.is_serving());
    api_key_of(&c.h.app, conn.id).await;
    assert_eq!(c.cache.len().0, 1);
}

#[tokio::test]
async fn a_revoked_access_key_stops_working_at_once_and_unknown_keys_are_not_kept() {
    let c = cached(100);
    c.send(vec![Ok(Change::Resync)]).await;
    let issued =
        c.h.app
            .create_access_key(&admin(), PROJECT, "ci", &["credentials:read".to_owned()])
            .await
            .unwrap();
    let token = issued.token.expose_secret().to_owned();
    for _ in 0..5 {
        assert!(c.h.app.authenticate_key(&token).await.unwrap().is_some());
    }
    assert_eq!(c.h.store.calls("get_access_key"), 1);
    c.h.app
        .delete_access_key(&admin(), issued.key.id)
        .await
        .unwrap();
    assert_eq!(c.h.app.authenticate_key(&token).await.unwrap(), None);

    // A key revoked by another process: gone once the feed says so.
    let other =
        c.h.app
            .create_access_key(&admin(), PROJECT, "ci2", &["credentials:read".to_owned()])
            .await
            .unwrap();
    let token = other.token.expose_secret().to_owned();
    assert!(c.h.app.authenticate_key(&token).await.unwrap().is_some());
    AccessKeyStore::delete_access_key(&*c.h.store, other.key.id)
        .await
        .unwrap();
    c.send(vec![Ok(Change::AccessKey(other.key.id))]).await;
    assert_eq!(c.h.app.authenticate_key(&token).await.unwrap(), None);
    assert_eq!(c.cache.len().1, 0, "unknown keys are not cached");
}

#[tokio::test]
async fn the_cache_holds_at_most_its_capacity() {
    let c = cached(3);
    c.send(vec![Ok(Change::Resync)]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let conn =
            c.h.create(
                &format!("k{i}"),
                "api_key",
                json!({"api_key": format!("sk-{i}")}),
            )
            .await;
        ids.push(conn.id);
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(api_key_of(&c.h.app, *id).await, format!("sk-{i}"));
    }
    assert_eq!(c.cache.len().0, 3);
}

#[tokio::test]
async fn a_conflicting_write_drops_the_stale_copy() {
    let c = cached(100);
    c.send(vec![Ok(Change::Resync)]).await;
    let conn = c.h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    api_key_of(&c.h.app, conn.id).await;
    // Changed elsewhere, and the feed has not said so yet.
    c.h.store.write_behind_our_back(conn.id, |_| {});
    let stale = c.cache.get_connection(conn.id).await.unwrap().unwrap();
    let err = c.cache.update_connection(&stale, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    let fresh = c.cache.get_connection(conn.id).await.unwrap().unwrap();
    assert_eq!(fresh.version, stale.version + 1);
}
