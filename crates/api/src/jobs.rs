//! Background jobs: refresh due grants, then expire lapsed ones, every interval.

use std::sync::Arc;
use std::time::Duration;

use latchkey_app::Latchkey;

pub fn spawn(app: Arc<Latchkey>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match app.run_refresh_cycle().await {
                Ok(r) if r.picked > 0 => tracing::info!(
                    picked = r.picked,
                    refreshed = r.refreshed,
                    failed = r.failed,
                    expired = r.expired,
                    "refresh cycle"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "refresh cycle failed"),
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
            crate::telemetry::job_cycle_finished();
        }
    })
}
