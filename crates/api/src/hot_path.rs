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
    follow: tokio::task::JoinHandle<()>,
    flusher: tokio::task::JoinHandle<()>,
    stop_flusher: tokio::sync::oneshot::Sender<()>,
}

impl HotPath {
    pub fn start(app: Arc<Latchkey>, cache: Arc<CachedStore>, feed: Arc<dyn ChangeFeed>) -> Self {
        let follow = tokio::spawn(cache.follow(feed));
        let (stop_flusher, mut stop) = tokio::sync::oneshot::channel();
        let flusher = {
            let app = app.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    // The stop is heard only between flushes: a flush is never cut off
                    // halfway through its write.
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = &mut stop => return,
                    }
                    if let Err(e) = app.flush_usage().await {
                        tracing::warn!(error = %e, "writing usage failed; kept for the next flush");
                    }
                }
            })
        };
        Self {
            app,
            follow,
            flusher,
            stop_flusher,
        }
    }

    /// Stops the tasks and writes the usage still in memory (graceful shutdown). The
    /// flusher finishes the flush it is in before it stops.
    pub async fn shutdown(self) {
        self.follow.abort();
        let _ = self.stop_flusher.send(());
        let _ = self.flusher.await;
        let _ = self.follow.await;
        match self.app.flush_usage().await {
            Ok(n) if n > 0 => tracing::info!(connections = n, "usage written at shutdown"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "writing usage at shutdown failed; it is lost"),
        }
    }
}
