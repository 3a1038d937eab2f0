//! The background side of the credentials path: the change feed that keeps the
//! in-process cache true, and the once-a-second flush of usage gathered in memory.

use std::sync::Arc;
use std::time::Duration;

use latchkey_app::{CachedStore, Latchkey};
use latchkey_ports::ChangeFeed;

/// How often usage gathered in memory is written: at most this much is lost in a crash.
pub const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The running tasks; [`HotPath::shutdown`] writes what is still pending.
#[derive(Debug)]
pub struct HotPath {
    app: Arc<Latchkey>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HotPath {
    pub fn start(app: Arc<Latchkey>, cache: Arc<CachedStore>, feed: Arc<dyn ChangeFeed>) -> Self {
        let follow = tokio::spawn(cache.follow(feed));
        let flusher = {
            let app = app.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = app.flush_usage().await {
                        tracing::warn!(error = %e, "writing usage failed; kept for the next flush");
                    }
                }
            })
        };
        Self {
            app,
            tasks: vec![follow, flusher],
        }
    }

    /// Stops the tasks and writes the usage still in memory (graceful shutdown).
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        match self.app.flush_usage().await {
            Ok(n) if n > 0 => tracing::info!(connections = n, "usage written at shutdown"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "writing usage at shutdown failed; it is lost"),
        }
    }
}
