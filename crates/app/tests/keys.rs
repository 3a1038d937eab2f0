//! Key census and rewrap over an in-memory sealed-value store whose compare-and-set can
//! be made to lose, deterministically: a lost race is re-read and retried, a concurrent
//! writer's value is never overwritten, and a row that stays busy is reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use secrecy::{ExposeSecret, SecretBox};

use latchkey_app::keys::{key_census, rewrap, RewrapOptions};
use latchkey_domain::{SealContext, Sealed};
use latchkey_ports::{
    Cipher, CipherError, Clock, SealedRecord, SealedTable, SealedValueStore, StoreError,
};

/// `[key id byte][plaintext]`, bound to nothing: enough to tell keys apart.
struct TestRing(Vec<u8>);

impl Cipher for TestRing {
    fn seal(&self, plaintext: &SecretBox<[u8]>, _: &SealContext) -> Result<Sealed, CipherError> {
        let mut out = vec![self.0[0]];
        out.extend_from_slice(plaintext.expose_secret());
        Ok(Sealed(out))
    }
    fn open(&self, sealed: &Sealed, _: &SealContext) -> Result<SecretBox<[u8]>, CipherError> {
        let (&id, rest) = sealed
            .0
            .split_first()
            .ok_or(CipherError::Malformed("empty"))?;
        if !self.0.contains(&id) {
            return Err(CipherError::UnknownKey((id as char).to_string()));
        }
        Ok(SecretBox::from(rest.to_vec()))
    }
    fn sealed_key_id(&self, sealed: &Sealed) -> Result<String, CipherError> {
        sealed
            .0
            .first()
            .map(|b| (*b as char).to_string())
            .ok_or(CipherError::Malformed("empty"))
    }
    fn ring_key_ids(&self) -> Vec<String> {
        self.0.iter().map(|b| (*b as char).to_string()).collect()
    }
}

struct FixedClock;
impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }
}

/// Connections only: id -> (version, secrets).
#[derive(Default)]
struct Store {
    rows: Mutex<BTreeMap<String, (i64, Sealed)>>,
    /// Before the n-th replace (1-based), a "concurrent writer" stores this value
    /// (sealed with the new key), so that replace loses.
    writer_before: Mutex<BTreeMap<usize, (String, Sealed)>>,
    /// Rows whose every replace loses (kept busy).
    always_busy: Mutex<Vec<String>>,
    replaces: Mutex<usize>,
}

impl Store {
    fn record(id: &str, version: i64, value: &Sealed) -> SealedRecord {
        SealedRecord {
            table: SealedTable::Connections,
            id: id.into(),
            project_id: Some("p".into()),
            version: Some(version),
            values: vec![("secrets".into(), value.clone())],
        }
    }
    fn value(&self, id: &str) -> Vec<u8> {
        self.rows.lock().unwrap()[id].1 .0.clone()
    }
}

#[async_trait]
impl SealedValueStore for Store {
    async fn sealed_records(
        &self,
        table: SealedTable,
        after: Option<String>,
        limit: u32,
        _: bool,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        if table != SealedTable::Connections {
            return Ok(Vec::new());
        }
        let rows = self.rows.lock().unwrap();
        let page: Vec<_> = rows
            .iter()
            .filter(|(id, _)| after.as_ref().is_none_or(|a| *id > a))
            .take(limit as usize)
            .map(|(id, (v, s))| Store::record(id, *v, s))
            .collect();
        Ok(page)
    }

    async fn sealed_record(
        &self,
        table: SealedTable,
        id: &str,
    ) -> Result<Option<SealedRecord>, StoreError> {
        assert_eq!(table, SealedTable::Connections);
        Ok(self
            .rows
            .lock()
            .unwrap()
            .get(id)
            .map(|(v, s)| Store::record(id, *v, s)))
    }

    async fn replace_sealed(
        &self,
        record: &SealedRecord,
        values: &[(String, Sealed)],
        _: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = {
            let mut r = self.replaces.lock().unwrap();
            *r += 1;
            *r
        };
        let mut rows = self.rows.lock().unwrap();
        if let Some((id, value)) = self.writer_before.lock().unwrap().remove(&n) {
            let row = rows.get_mut(&id).unwrap();
            *row = (row.0 + 1, value);
        }
        if self.always_busy.lock().unwrap().contains(&record.id) {
            return Ok(false);
        }
        let row = rows.get_mut(&record.id).unwrap();
        if Some(row.0) != record.version {
            return Ok(false);
        }
        *row = (row.0 + 1, values[0].1.clone());
        Ok(true)
    }
}

fn seeded(n: usize) -> Store {
    let store = Store::default();
    for i in 0..n {
        store.rows.lock().unwrap().insert(
            format!("c{i:02}"),
            (1, Sealed(format!("ov{i}").into_bytes())),
        );
    }
    store
}

fn options(batch: u32) -> RewrapOptions {
    RewrapOptions {
        batch,
        busy_wait: std::time::Duration::from_millis(600),
        ..RewrapOptions::default()
    }
}

#[tokio::test]
async fn a_lost_race_is_reread_and_the_writers_value_kept() {
    let store = seeded(6);
    // Before the 2nd write (for c01), a writer replaces c01's secret under the new key.
    store
        .writer_before
        .lock()
        .unwrap()
        .insert(2, ("c01".into(), Sealed(b"nwriter".to_vec())));
    let ring = TestRing(b"no".to_vec());
    let before = key_census(&store, &ring).await.unwrap();
    assert_eq!(before.values.get("o"), Some(&6));
    assert_eq!(before.not_under_sealing_key(), 6);

    let mut seen = Vec::new();
    let report = rewrap(&store, &ring, &FixedClock, &options(4), &mut |p| {
        seen.push(p)
    })
    .await
    .unwrap();
    assert_eq!(report.conflicts, 1, "{report:?}");
    // c01 was re-read: it already held the writer's new-key value, left as it was.
    assert_eq!(store.value("c01"), b"nwriter");
    assert_eq!(report.resealed, 5);
    assert_eq!(report.current, 1);
    assert_eq!(report.busy, 0);
    for i in [0, 2, 3, 4, 5] {
        assert_eq!(
            store.value(&format!("c{i:02}")),
            format!("nv{i}").into_bytes()
        );
    }
    let after = key_census(&store, &ring).await.unwrap();
    assert_eq!(after.values.get("o"), None);
    assert_eq!(after.missing_from_ring(), Vec::<String>::new());
    assert_eq!(seen.last().unwrap().resealed, 5);
    assert_eq!(seen.last().unwrap().total, 6);
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_a_limit_stops_early() {
    let store = seeded(5);
    let ring = TestRing(b"no".to_vec());
    let dry = rewrap(
        &store,
        &ring,
        &FixedClock,
        &RewrapOptions {
            dry_run: true,
            ..options(2)
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(dry.resealed, 5);
    assert_eq!(*store.replaces.lock().unwrap(), 0);
    assert_eq!(store.value("c00"), b"ov0");

    let partial = rewrap(
        &store,
        &ring,
        &FixedClock,
        &RewrapOptions {
            limit: Some(2),
            ..options(2)
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    assert!(partial.stopped_at_limit);
    assert_eq!(partial.resealed, 2);
    assert_eq!(
        key_census(&store, &ring).await.unwrap().values.get("o"),
        Some(&3)
    );
    // A second run picks up the rest.
    let rest = rewrap(&store, &ring, &FixedClock, &options(2), &mut |_| {})
        .await
        .unwrap();
    assert_eq!((rest.resealed, rest.current), (3, 2));
    assert_eq!(
        key_census(&store, &ring).await.unwrap().values.get("o"),
        None
    );
}

#[tokio::test]
async fn a_row_kept_busy_is_reported_not_overwritten() {
    let store = seeded(3);
    store.always_busy.lock().unwrap().push("c01".into());
    let ring = TestRing(b"no".to_vec());
    let report = rewrap(&store, &ring, &FixedClock, &options(10), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.busy, 1);
    assert_eq!(report.resealed, 2);
    assert_eq!(store.value("c01"), b"ov1");
}

#[tokio::test]
async fn a_key_missing_from_the_ring_stops_the_rewrap_before_any_write() {
    let store = seeded(2);
    store
        .rows
        .lock()
        .unwrap()
        .insert("c09".into(), (1, Sealed(b"xlost".to_vec())));
    let ring = TestRing(b"no".to_vec());
    let census = key_census(&store, &ring).await.unwrap();
    assert_eq!(census.missing_from_ring(), vec!["x".to_owned()]);
    let err = rewrap(&store, &ring, &FixedClock, &options(10), &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains('x'), "{err}");
    assert_eq!(*store.replaces.lock().unwrap(), 0);
}
