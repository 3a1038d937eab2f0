//! Events and usages: order, paging, bounds and retention.

use latchkey_domain::{EventCursor, Status};

use super::fixtures::*;
use super::ContractStore;
use crate::{EventQuery, StoreError};

pub async fn events_keep_order<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "evented", None, None);
    let first = created(&c);
    store.insert_connection(&c, &first).await.unwrap();
    assert_eq!(all_events(store, c.id).await, vec![first.clone()]);
    let mut want = vec![first];
    for (version, batch) in (c.version..).zip(0..4) {
        // Several events in the same millisecond keep their insertion order.
        let evs: Vec<_> = (0..3)
            .map(|i| {
                event(
                    &c,
                    Some(Status::Active),
                    Status::Active,
                    &format!("e{batch}-{i}"),
                    t(10 + batch),
                )
            })
            .collect();
        let mut next = c.clone();
        next.version = version;
        store.update_connection(&next, &evs).await.unwrap();
        want.extend(evs);
    }
    assert_eq!(all_events(store, c.id).await, want);
    assert!(all_events(store, new_id()).await.is_empty());
}

pub async fn events_are_paged<S: ContractStore + ?Sized>(store: &S) {
    let c = oauth("p1", "paged", None, None);
    let first = created(&c);
    store.insert_connection(&c, &first).await.unwrap();
    let other = oauth("p1", "neighbour", None, None);
    store
        .insert_connection(&other, &created(&other))
        .await
        .unwrap();
    // 11 more events: several in one millisecond, and one written later but dated
    // earlier than its predecessors (clocks of two replicas).
    let mut want = vec![first];
    let times = [5, 5, 5, 6, 7, 7, 9, 9, 9, 10, 8];
    for (version, (i, at)) in (c.version..).zip(times.into_iter().enumerate()) {
        let ev = event(&c, None, Status::Active, &format!("e{i}"), t(at));
        let mut next = c.clone();
        next.version = version;
        store
            .update_connection(&next, std::slice::from_ref(&ev))
            .await
            .unwrap();
        want.push(ev);
    }
    want.sort_by_key(|e| e.at); // stable: same-time events keep insertion order
    for limit in [1, 3, 4, 12, 13] {
        let mut got = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = store
                .list_events(c.id, &EventQuery { after, limit })
                .await
                .unwrap();
            pages += 1;
            assert!(page.events.len() <= limit as usize);
            got.extend(page.events);
            match page.next_cursor {
                // A cursor survives its text form.
                Some(cur) => after = Some(cur.to_string().parse::<EventCursor>().unwrap()),
                None => break,
            }
            assert!(pages < 20, "paging does not end");
        }
        assert_eq!(got, want, "limit {limit}");
        assert_eq!(
            pages,
            want.len().div_ceil(limit as usize).max(1),
            "limit {limit}"
        );
    }
    // A cursor past the end gives an empty last page.
    let page = store
        .list_events(
            c.id,
            &EventQuery {
                after: Some(EventCursor {
                    at_ms: i64::MAX,
                    seq: 0,
                }),
                limit: 5,
            },
        )
        .await
        .unwrap();
    assert!(page.events.is_empty() && page.next_cursor.is_none());
}

pub async fn usages_are_bounded_and_counted<S: ContractStore + ?Sized>(store: &S) {
    let c = api_key("p1", "popular");
    store.insert_connection(&c, &created(&c)).await.unwrap();
    let quiet = api_key("p1", "quiet");
    store
        .insert_connection(&quiet, &created(&quiet))
        .await
        .unwrap();
    assert_eq!(store.count_usages(quiet.id).await.unwrap(), 0);
    for i in 0..30 {
        store
            .record_usage(c.id, Some(flow(&format!("f{i:02}"))), t(i))
            .await
            .unwrap();
    }
    // A second use of an old flow makes it the most recent.
    store
        .record_usage(c.id, Some(flow("f03")), t(100))
        .await
        .unwrap();
    assert_eq!(store.count_usages(c.id).await.unwrap(), 30);
    let top = store.list_usages(c.id, 5).await.unwrap();
    let names: Vec<_> = top.iter().map(|u| u.flow_id.as_str().to_owned()).collect();
    assert_eq!(names, ["f03", "f29", "f28", "f27", "f26"]);
    assert_eq!(top[0].count, 2);
    assert!(store.list_usages(c.id, 0).await.unwrap().is_empty());
    assert_eq!(store.list_usages(c.id, 1000).await.unwrap().len(), 30);
    assert!(store.list_usages(quiet.id, 5).await.unwrap().is_empty());
}

pub async fn retention_purges_old_history_only<S: ContractStore + ?Sized>(store: &S) {
    let a = oauth("p1", "a", None, None);
    let b = api_key("p2", "b");
    let mut want_events = Vec::new();
    for c in [&a, &b] {
        // Created at t(0); then events at t(10) .. t(14) and usages at the same times.
        store.insert_connection(c, &created(c)).await.unwrap();
        for (version, i) in (c.version..).zip(0..5) {
            let ev = event(c, None, c.status(), &format!("k{i}"), t(10 + i));
            let mut next = (*c).clone();
            next.version = version;
            store
                .update_connection(&next, std::slice::from_ref(&ev))
                .await
                .unwrap();
            if 10 + i >= 13 {
                want_events.push(ev);
            }
            store
                .record_usage(c.id, Some(flow(&format!("u{i}"))), t(10 + i))
                .await
                .unwrap();
        }
    }
    // Purge what happened before t(13), in batches of 3.
    let mut events_gone = 0;
    let mut rounds = 0;
    loop {
        let n = store.purge_events(t(13), 3).await.unwrap();
        assert!(n <= 3);
        events_gone += n;
        rounds += 1;
        if n < 3 {
            break;
        }
    }
    // Per connection: created + k0..k2.
    assert_eq!(events_gone, 8);
    assert_eq!(rounds, 3);
    let mut usages_gone = 0;
    loop {
        let n = store.purge_usages(t(13), 3).await.unwrap();
        assert!(n <= 3);
        usages_gone += n;
        if n < 3 {
            break;
        }
    }
    assert_eq!(usages_gone, 6);
    let mut left = all_events(store, a.id).await;
    left.extend(all_events(store, b.id).await);
    assert_eq!(left, want_events);
    for c in [&a, &b] {
        let flows: Vec<_> = store
            .list_usages(c.id, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.flow_id.as_str().to_owned())
            .collect();
        assert_eq!(flows, ["u4", "u3"]);
        assert_eq!(store.count_usages(c.id).await.unwrap(), 2);
        // The connections themselves stay.
        assert!(store.get_connection(c.id).await.unwrap().is_some());
    }
    // Nothing older is left: a second purge deletes nothing.
    assert_eq!(store.purge_events(t(13), 100).await.unwrap(), 0);
    assert_eq!(store.purge_usages(t(13), 100).await.unwrap(), 0);
    assert_eq!(store.purge_events(t(13), 0).await.unwrap(), 0);
}

pub async fn usage_upsert<S: ContractStore + ?Sized>(store: &S) {
    let c = api_key("p1", "used");
    store.insert_connection(&c, &created(&c)).await.unwrap();

    store
        .record_usage(c.id, Some(flow("a")), t(10))
        .await
        .unwrap();
    store
        .record_usage(c.id, Some(flow("a")), t(30))
        .await
        .unwrap();
    // Out of order: an older use does not move last_used_at back.
    store
        .record_usage(c.id, Some(flow("a")), t(20))
        .await
        .unwrap();
    store
        .record_usage(c.id, Some(flow("b")), t(25))
        .await
        .unwrap();
    store.record_usage(c.id, None, t(40)).await.unwrap();

    let got = store.get_connection(c.id).await.unwrap().unwrap();
    assert_eq!(got.last_used_at, Some(t(40)));
    assert_eq!(got.version, c.version, "usage must not bump the version");
    store.record_usage(c.id, None, t(35)).await.unwrap();
    assert_eq!(
        store
            .get_connection(c.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(t(40))
    );

    let usages = store.list_usages(c.id, 1000).await.unwrap();
    assert_eq!(usages.len(), 2);
    // Most recent first.
    assert_eq!(usages[0].flow_id, flow("a"));
    assert_eq!(usages[0].count, 3);
    assert_eq!(usages[0].first_used_at, t(10));
    assert_eq!(usages[0].last_used_at, t(30));
    assert_eq!(usages[0].connection_id, c.id);
    assert_eq!(usages[1].flow_id, flow("b"));
    assert_eq!(usages[1].count, 1);
    assert_eq!(usages[1].first_used_at, t(25));
    assert_eq!(usages[1].last_used_at, t(25));

    // An earlier first use moves first_used_at back.
    store
        .record_usage(c.id, Some(flow("b")), t(1))
        .await
        .unwrap();
    let b = store.list_usages(c.id, 1000).await.unwrap().pop().unwrap();
    assert_eq!((b.first_used_at, b.last_used_at, b.count), (t(1), t(25), 2));

    // A version-guarded update still succeeds after usages.
    let mut next = c.clone();
    next.last_used_at = Some(t(40));
    store.update_connection(&next, &[]).await.unwrap();

    let err = store
        .record_usage(new_id(), Some(flow("a")), t(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}
