//! Background jobs: every interval, start the due refreshes (each in its own task, limited
//! per provider host and in total, not waited for), expire lapsed grants, purge consent
//! sessions. The loop is supervised: if it ever ends (a panic included) it is restarted,
//! and `/healthz` reports it stalled when no cycle finished for a while.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use latchkey_app::{Latchkey, RefreshTotals};

/// The pulse of the job loop, read by `/healthz`.
#[derive(Debug)]
pub struct JobHealth {
    started: tokio::time::Instant,
    /// Milliseconds after `started` at which the last cycle finished (0: none yet, so a
    /// fresh process counts from its start).
    last_cycle_ms: AtomicU64,
    restarts: AtomicU64,
    /// No finished cycle for this long means stalled.
    stall_after: Duration,
}

impl JobHealth {
    /// Stalled after three intervals plus a lease without a finished cycle: one slow
    /// cycle (a provider call that runs to its timeout) is not yet a stall.
    pub fn new(interval: Duration, lease: Duration) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            last_cycle_ms: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            stall_after: interval.saturating_mul(3).saturating_add(lease),
        }
    }

    fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_cycle_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last finished cycle, when that is longer than allowed.
    pub fn stalled_for(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.last_cycle_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        (since > self.stall_after).then_some(since)
    }

    /// How often the job loop was restarted after it ended.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

pub fn spawn(
    app: Arc<Latchkey>,
    interval: Duration,
    health: Arc<JobHealth>,
) -> tokio::task::JoinHandle<()> {
    let h = health.clone();
    tokio::spawn(supervise(health, move || {
        run_cycles(app.clone(), interval, h.clone())
    }))
}

/// Runs the job from `start` in its own task and starts it again whenever it ends or
/// panics, after a short pause (growing up to 30 s while it keeps failing).
async fn supervise<F, Fut>(health: Arc<JobHealth>, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// Stops the job when the supervisor is stopped (aborted at shutdown).
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut pause = Duration::from_secs(1);
    loop {
        let job = tokio::spawn(start());
        let _stop_with_us = AbortOnDrop(job.abort_handle());
        let ended = job.await;
        health.restarts.fetch_add(1, Ordering::Relaxed);
        match ended {
            Err(e) if e.is_panic() => {
                tracing::error!(error = %e, "the background job panicked; restarting it")
            }
            Err(e) => {
                tracing::error!(error = %e, "the background job was cancelled; restarting it")
            }
            Ok(()) => tracing::error!("the background job ended; restarting it"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

async fn run_cycles(app: Arc<Latchkey>, interval: Duration, health: Arc<JobHealth>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = RefreshTotals::default();
    loop {
        tick.tick().await;
        match app.start_due_refreshes().await {
            // The tasks run on by themselves; the next cycle does not wait for them.
            Ok(started) if !started.is_empty() => {
                tracing::debug!(started = started.len(), "refreshes started")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "starting the due refreshes failed"),
        }
        match app.run_expiry_cycle().await {
            Ok(n) if n > 0 => {
                tracing::warn!(expired = n, "expiry cycle marked connections expired")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "expiry cycle failed"),
        }
        match app.run_retention_cycle().await {
            Ok(n) if n > 0 => {
                tracing::info!(purged = n, "retention purged old events and usages")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention cycle failed"),
        }
        app.purge_auth_sessions().await;
        let totals = app.refresh_totals();
        if totals != reported {
            tracing::info!(
                refreshed = totals.refreshed,
                failed = totals.failed,
                expired = totals.expired,
                panicked = totals.panicked,
                "background refresh totals"
            );
            reported = totals;
        }
        crate::telemetry::job_cycle_finished();
        health.beat();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn a_job_that_panics_or_ends_is_restarted() {
        let health = Arc::new(JobHealth::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
        ));
        let starts = Arc::new(AtomicUsize::new(0));
        let (s, h) = (starts.clone(), health.clone());
        let supervisor = tokio::spawn(supervise(health.clone(), move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            let h = h.clone();
            async move {
                match n {
                    0 => panic!("a refresh cycle blew up"),
                    1 => {} // ends without a panic
                    _ => loop {
                        h.beat();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    },
                }
            }
        }));
        while starts.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(health.restarts(), 2);
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(health.stalled_for(), None, "the restarted job beats again");
        supervisor.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_without_a_finished_cycle_for_three_intervals_and_a_lease_is_stalled() {
        let health = JobHealth::new(Duration::from_secs(10), Duration::from_secs(20));
        assert_eq!(health.stalled_for(), None, "a fresh process is not stalled");
        tokio::time::advance(Duration::from_secs(49)).await;
        assert_eq!(health.stalled_for(), None);
        health.beat();
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(
            health.stalled_for(),
            None,
            "exactly the limit is not yet a stall"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(health.stalled_for(), Some(Duration::from_secs(51)));
        health.beat();
        assert_eq!(health.stalled_for(), None);
    }
}
