//! Refreshes run as tasks of their own that nothing cuts off once started, and the
//! graceful stop that waits for them.
//!
//! A provider may rotate the refresh token the moment it answers, so a refresh dropped
//! between the answer and the save loses the grant: the next refresh presents a dead
//! token and the connection expires. A request's future is dropped when its client goes
//! away, and a runtime drops its tasks when it shuts down. So every refresh (background
//! and on demand) runs as a task of the runtime the app was built on, tracked here; the
//! caller awaits it but cannot cancel it, and [`Latchkey::stop_refreshes`] waits for
//! those running while the ones still queued give their claims back.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{AppError, Latchkey, RefreshOutcome};

#[derive(Debug)]
pub(crate) struct RefreshTasks {
    tracker: TaskTracker,
    /// Cancelled by [`Latchkey::stop_refreshes`]: no new cycle, queued tasks give back.
    stop: CancellationToken,
    /// The runtime the app was built on (the server's main one), not the HTTP worker's
    /// runtime a request runs on, which stops before the drain. `None` outside a runtime:
    /// then the caller's.
    runtime: Option<Handle>,
}

impl RefreshTasks {
    pub(crate) fn new() -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            runtime: Handle::try_current().ok(),
        }
    }

    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(rt) => self.tracker.spawn_on(task, rt),
            None => self.tracker.spawn(task),
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the stop began.
    pub(crate) async fn stopped(&self) {
        self.stop.cancelled().await
    }
}

impl Latchkey {
    /// Graceful stop of the refreshes: no cycle claims anything any more, a background
    /// refresh still waiting for its slot gives its claim back (another worker, or this
    /// one after a restart, takes it), and this waits for every refresh already running,
    /// background and on demand, to save its result. Bound it with a timeout: a provider
    /// call lasts at most the HTTP timeout.
    pub async fn stop_refreshes(&self) {
        self.refresh_tasks.stop.cancel();
        self.refresh_tasks.tracker.close();
        self.refresh_tasks.tracker.wait().await;
    }

    /// Runs `refresh` as a refresh task and waits for it: dropping this future does not
    /// stop the refresh.
    pub(crate) async fn refresh_to_the_end<F>(&self, refresh: F) -> Result<RefreshOutcome, AppError>
    where
        F: Future<Output = Result<RefreshOutcome, AppError>> + Send + 'static,
    {
        self.refresh_tasks
            .spawn(refresh)
            .await
            .map_err(|e| AppError::Internal(format!("the refresh task ended abnormally: {e}")))?
    }

    /// How many refresh tasks are queued or running.
    pub fn refreshes_in_flight(&self) -> usize {
        self.refresh_tasks.tracker.len()
    }
}
