//! Master key rotation: which key seals how many values (`keys status`, the start-up
//! check, the `latchkey_sealed_values` gauge), and re-sealing everything under the
//! ring's sealing key while servers keep serving (`keys rewrap`).
//!
//! The rewrap reads each table in pages keyed by id (never OFFSET, so rows written
//! meanwhile neither shift nor repeat a page), re-seals every value not sealed by the
//! sealing key, and writes it back with a compare-and-set: a connection only at the
//! version it was read and with no live refresh lease, other rows only if their old
//! bytes are still there. A lost race is re-read and retried; a row still busy is
//! retried at the end of the run. Nothing is lost when it stops halfway: every row is
//! either old or new, both open, and a second run picks up what is left.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use latchkey_domain::sealed::fields;
use latchkey_domain::{SealContext, Sealed};
use latchkey_ports::{Cipher, Clock, SealedRecord, SealedTable, SealedValueStore};

use crate::AppError;

/// Rows read per page.
pub const DEFAULT_BATCH: u32 = 200;
/// Immediate retries of a row whose compare-and-set lost, before it is deferred.
const RETRIES: u32 = 3;

/// The `meta` key (and sealed field) of the start-up key check.
pub const KEY_CHECK: &str = "key_check";

/// The place a stored value is sealed to: the same context the use cases seal with.
/// `None` for a field no use case seals.
pub fn seal_context(record: &SealedRecord, field: &str) -> Option<SealContext> {
    let field: &'static str = [
        fields::SECRETS,
        fields::ACCESS_TOKEN,
        fields::REFRESH_TOKEN,
        fields::CLIENT_SECRET,
        fields::PKCE_VERIFIER,
        KEY_CHECK,
    ]
    .into_iter()
    .find(|f| *f == field)?;
    Some(match record.table {
        SealedTable::Meta => SealContext::new("*", "meta", field),
        _ => SealContext::new(
            record.project_id.clone().unwrap_or_else(|| "*".into()),
            record.id.as_str(),
            field,
        ),
    })
}

/// How many sealed values each key id seals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCensus {
    /// The ring's key ids, the sealing key first.
    pub ring: Vec<String>,
    /// Values per key id, including ids the ring lacks.
    pub values: BTreeMap<String, u64>,
    /// Values whose header names no key (corrupt).
    pub unreadable: u64,
}

impl KeyCensus {
    pub fn sealing_key(&self) -> Option<&str> {
        self.ring.first().map(String::as_str)
    }

    /// Key ids that seal data but are not in the ring, sorted.
    pub fn missing_from_ring(&self) -> Vec<String> {
        self.values
            .keys()
            .filter(|id| !self.ring.contains(id))
            .cloned()
            .collect()
    }

    /// Values a rewrap would re-seal.
    pub fn not_under_sealing_key(&self) -> u64 {
        self.values
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != self.sealing_key())
            .map(|(_, n)| n)
            .sum()
    }

    /// Every key of the ring and every key id found, with its count: ring order first.
    pub fn rows(&self) -> Vec<(String, u64, bool)> {
        let mut out: Vec<(String, u64, bool)> = self
            .ring
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    id.clone(),
                    self.values.get(id).copied().unwrap_or(0),
                    i == 0,
                )
            })
            .collect();
        for id in self.missing_from_ring() {
            let n = self.values.get(&id).copied().unwrap_or(0);
            out.push((id, n, false));
        }
        out
    }
}

/// Counts every sealed value per key id, from the values' headers (grouped by the store).
pub async fn key_census(
    store: &dyn SealedValueStore,
    cipher: &dyn Cipher,
) -> Result<KeyCensus, AppError> {
    let mut census = KeyCensus {
        ring: cipher.ring_key_ids(),
        ..KeyCensus::default()
    };
    for table in SealedTable::ALL {
        for (header, n) in store.sealed_header_counts(table).await? {
            match cipher.sealed_key_id(&header) {
                Ok(id) => *census.values.entry(id).or_default() += n,
                Err(_) => census.unreadable += n,
            }
        }
    }
    Ok(census)
}

/// How a rewrap runs.
#[derive(Debug, Clone)]
pub struct RewrapOptions {
    pub batch: u32,
    /// Count what would be re-sealed, write nothing.
    pub dry_run: bool,
    /// Stop after re-sealing this many values (a rotation in slices).
    pub limit: Option<u64>,
    /// How long rows kept busy (a refresh in flight, constant edits) are retried at
    /// the end of the run before they are left for a later run.
    pub busy_wait: Duration,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            dry_run: false,
            limit: None,
            busy_wait: Duration::from_secs(60),
        }
    }
}

/// Where a rewrap is, for a progress bar or log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapProgress {
    pub table: SealedTable,
    /// Values re-sealed so far (or found to re-seal, in a dry run).
    pub resealed: u64,
    /// Values that needed it when the run started.
    pub total: u64,
}

/// What a rewrap did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapReport {
    pub sealing_key: String,
    /// Values re-sealed (dry run: that would be).
    pub resealed: u64,
    /// Values already under the sealing key.
    pub current: u64,
    /// Compare-and-set races lost (each was re-read and retried).
    pub conflicts: u64,
    /// Rows still busy at the end, left for another run.
    pub busy: u64,
    /// Whether `limit` stopped the run early.
    pub stopped_at_limit: bool,
}

/// Re-seals every value not sealed by the ring's sealing key.
pub async fn rewrap(
    store: &dyn SealedValueStore,
    cipher: &dyn Cipher,
    clock: &dyn Clock,
    options: &RewrapOptions,
    progress: &mut (dyn FnMut(RewrapProgress) + Send),
) -> Result<RewrapReport, AppError> {
    let census = key_census(store, cipher).await?;
    let missing = census.missing_from_ring();
    if !missing.is_empty() {
        return Err(AppError::Internal(format!(
            "values are sealed with key id(s) {} that the ring lacks; add them to LATCHKEY_MASTER_KEYS to rewrap",
            missing.join(", ")
        )));
    }
    let sealing = census.sealing_key().unwrap_or_default().to_owned();
    let total = census.not_under_sealing_key();
    let batch = options.batch.max(1);
    let mut report = RewrapReport {
        sealing_key: sealing.clone(),
        ..RewrapReport::default()
    };
    let mut deferred: Vec<(SealedTable, String)> = Vec::new();
    'tables: for table in SealedTable::ALL {
        let mut after = None;
        loop {
            let page = store
                .sealed_records(table, after.clone(), batch, false)
                .await?;
            for record in &page {
                if options.limit.is_some_and(|l| report.resealed >= l) {
                    report.stopped_at_limit = true;
                    break 'tables;
                }
                match reseal_row(
                    store,
                    cipher,
                    clock,
                    record,
                    &sealing,
                    options.dry_run,
                    &mut report,
                )
                .await?
                {
                    Done::Yes => {}
                    Done::Busy => deferred.push((table, record.id.clone())),
                }
                progress(RewrapProgress {
                    table,
                    resealed: report.resealed,
                    total,
                });
            }
            match page.last() {
                Some(last) if page.len() as u32 == batch => after = Some(last.id.clone()),
                _ => break,
            }
        }
    }
    // Rows that stayed busy: a refresh holding its lease ends within the lease, edits
    // come and go; retry them until `busy_wait` runs out.
    let deadline = tokio::time::Instant::now() + options.busy_wait;
    while !deferred.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut still = Vec::new();
        for (table, id) in deferred {
            let Some(record) = store.sealed_record(table, &id).await? else {
                continue;
            };
            if let Done::Busy =
                reseal_row(store, cipher, clock, &record, &sealing, false, &mut report).await?
            {
                still.push((table, id));
            }
            progress(RewrapProgress {
                table,
                resealed: report.resealed,
                total,
            });
        }
        deferred = still;
    }
    report.busy = deferred.len() as u64;
    Ok(report)
}

enum Done {
    Yes,
    Busy,
}

/// Re-seals one row's stale values, re-reading and retrying a lost compare-and-set.
async fn reseal_row(
    store: &dyn SealedValueStore,
    cipher: &dyn Cipher,
    clock: &dyn Clock,
    first: &SealedRecord,
    sealing: &str,
    dry_run: bool,
    report: &mut RewrapReport,
) -> Result<Done, AppError> {
    let mut record = first.clone();
    for attempt in 0..=RETRIES {
        let mut new_values: Vec<(String, Sealed)> = Vec::new();
        let mut current = 0;
        for (field, value) in &record.values {
            if cipher.sealed_key_id(value).ok().as_deref() == Some(sealing) {
                current += 1;
                continue;
            }
            let ctx = seal_context(&record, field)
                .ok_or_else(|| AppError::Internal(format!("unknown sealed field {field:?}")))?;
            let plain = cipher.open(value, &ctx).map_err(|e| {
                AppError::Internal(format!(
                    "cannot open the {field} of {} {}: {e}",
                    record.table.as_str(),
                    record.id
                ))
            })?;
            new_values.push((field.clone(), cipher.seal(&plain, &ctx)?));
        }
        if new_values.is_empty() {
            report.current += current;
            return Ok(Done::Yes);
        }
        if dry_run {
            report.current += current;
            report.resealed += new_values.len() as u64;
            return Ok(Done::Yes);
        }
        let now: DateTime<Utc> = clock.now();
        if store.replace_sealed(&record, &new_values, now).await? {
            report.current += current;
            report.resealed += new_values.len() as u64;
            return Ok(Done::Yes);
        }
        report.conflicts += 1;
        tracing::debug!(
            table = record.table.as_str(),
            attempt,
            "rewrap lost a race; re-reading the row"
        );
        match store.sealed_record(record.table, &record.id).await? {
            // Deleted meanwhile: nothing left to re-seal.
            None => return Ok(Done::Yes),
            Some(fresh) => record = fresh,
        }
    }
    Ok(Done::Busy)
}
