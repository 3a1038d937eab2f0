//! Prometheus metrics: the recorder behind the `metrics` facade, the gauges read from
//! the database at scrape time, and the request counters. Labels never hold an id or a
//! secret: routes are templates (`/v1/connections/{id}`), the rest are bounded sets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use latchkey_cipher::KeyRing;
use latchkey_ports::Clock;
use latchkey_store::SeaStore;

use crate::adapters::SystemClock;

/// How long a count of sealed values per key is reused: it reads every sealed value's
/// header, too much for every scrape.
const SEALED_CACHE: Duration = Duration::from_secs(60);

const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const REFRESH_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The process-wide recorder. A process has one (the facade is global); a second
/// server built in the same process (tests) shares it.
fn handle() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("latchkey_http_request_duration_seconds".into()),
                    HTTP_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("latchkey_refresh_duration_seconds".into()),
                        REFRESH_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
            describe();
            // Shown from the first scrape, at 0, rather than only once it happens.
            metrics::counter!("latchkey_lease_takeovers_total").increment(0);
            Ok(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "latchkey_http_requests_total",
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        "latchkey_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration, by route template and method"
    );
    describe_counter!(
        "latchkey_refresh_total",
        "Refresh calls to providers, by connection type and outcome"
    );
    describe_histogram!(
        "latchkey_refresh_duration_seconds",
        Unit::Seconds,
        "Duration of refresh calls to providers, by connection type"
    );
    describe_gauge!(
        "latchkey_refresh_due",
        "Active connections whose refresh is due now (the backlog)"
    );
    describe_gauge!("latchkey_connections", "Connections, by status and type");
    describe_gauge!(
        "latchkey_sealed_values",
        "Sealed values in the database, by the id of the key that sealed them"
    );
    describe_counter!(
        "latchkey_lease_takeovers_total",
        "Refresh leases taken over after another worker's lease lapsed"
    );
    describe_gauge!(
        "latchkey_job_last_cycle_timestamp_seconds",
        "Unix time at which this process's background job last finished a cycle"
    );
}

/// Installs the recorder (once per process). Without it every metric call is a no-op.
pub fn install() -> anyhow::Result<()> {
    handle()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))
}

/// One answered request.
pub fn http_request(route: &str, method: &str, status: u16, took: Duration) {
    let route = route.to_owned();
    let method = method.to_owned();
    metrics::counter!(
        "latchkey_http_requests_total",
        "route" => route.clone(),
        "method" => method.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "latchkey_http_request_duration_seconds",
        "route" => route,
        "method" => method
    )
    .record(took.as_secs_f64());
}

/// The background job finished a cycle now.
pub fn job_cycle_finished() {
    let now = SystemClock.now();
    metrics::gauge!("latchkey_job_last_cycle_timestamp_seconds")
        .set(now.timestamp_millis() as f64 / 1000.0);
}

/// The scrape-time gauges, with what they were last set to (a label set that vanished
/// from the database is set to 0, not left at its last value).
#[derive(Debug, Default)]
pub struct Gauges {
    connections_seen: Mutex<BTreeSet<(String, String)>>,
    sealed: Mutex<Option<(Instant, BTreeMap<String, u64>)>>,
}

impl Gauges {
    /// Reads the gauges from the database and renders every metric.
    pub async fn render(&self, store: &SeaStore, ring: &KeyRing) -> anyhow::Result<String> {
        let handle = handle().map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;

        let counts = store.connection_counts().await?;
        let mut seen = BTreeSet::new();
        for (status, kind, n) in counts {
            metrics::gauge!("latchkey_connections", "status" => status.clone(), "type" => kind.clone())
                .set(n as f64);
            seen.insert((status, kind));
        }
        {
            let mut before = self
                .connections_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (status, kind) in before.difference(&seen) {
                metrics::gauge!("latchkey_connections", "status" => status.clone(), "type" => kind.clone())
                    .set(0.0);
            }
            before.extend(seen);
        }

        let backlog = store.refresh_backlog(SystemClock.now()).await?;
        metrics::gauge!("latchkey_refresh_due").set(backlog as f64);

        let cached = self
            .sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < SEALED_CACHE)
            .map(|(_, v)| v.clone());
        let sealed = match cached {
            Some(v) => v,
            None => {
                let census = latchkey_app::keys::key_census(store, ring).await?;
                let mut values = census.values.clone();
                for id in &census.ring {
                    values.entry(id.clone()).or_default();
                }
                let mut slot = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
                // Keys seen before and gone now drop to 0.
                if let Some((_, before)) = slot.as_ref() {
                    for id in before.keys() {
                        values.entry(id.clone()).or_default();
                    }
                }
                *slot = Some((Instant::now(), values.clone()));
                values
            }
        };
        for (id, n) in sealed {
            metrics::gauge!("latchkey_sealed_values", "key_id" => id).set(n as f64);
        }
        Ok(handle.render())
    }
}
