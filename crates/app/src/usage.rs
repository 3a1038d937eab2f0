//! Usage of credentials (`last_used_at`, the flows using a connection), gathered in
//! memory on the fetch path and written by [`Latchkey::flush_usage`] in one batch.
//!
//! The binary flushes every second and on graceful shutdown, so a crash loses at most
//! the last second of usage. Reads in this process see the pending usage at once (it is
//! merged into [`crate::ConnectionDetails`]); other processes see it after the flush.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use latchkey_domain::{Connection, ConnectionId, FlowId, Usage};

use crate::{AppError, Latchkey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowUse {
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    count: i64,
}

impl FlowUse {
    fn merge(&mut self, other: FlowUse) {
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
        self.count += other.count;
    }
}

#[derive(Debug, Clone, Default)]
struct Pending {
    last_used_at: Option<DateTime<Utc>>,
    flows: HashMap<FlowId, FlowUse>,
}

impl Pending {
    fn merge(&mut self, other: Pending) {
        self.last_used_at = self.last_used_at.max(other.last_used_at);
        for (flow, u) in other.flows {
            match self.flows.get_mut(&flow) {
                Some(mine) => mine.merge(u),
                None => {
                    self.flows.insert(flow, u);
                }
            }
        }
    }
}

type Batch = HashMap<ConnectionId, Pending>;

/// The usage not yet written: what is gathering, and what a flush is writing.
#[derive(Debug, Default)]
pub(crate) struct UsageBuffer {
    gathering: Mutex<Batch>,
    in_flight: Mutex<Batch>,
    /// One flush at a time, so `in_flight` belongs to it.
    flushing: tokio::sync::Mutex<()>,
}

fn lock(m: &Mutex<Batch>) -> std::sync::MutexGuard<'_, Batch> {
    // A panic while holding the lock leaves a plain map behind: still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UsageBuffer {
    pub(crate) fn record(&self, id: ConnectionId, flow: Option<FlowId>, at: DateTime<Utc>) {
        let mut g = lock(&self.gathering);
        let p = g.entry(id).or_default();
        p.last_used_at = p.last_used_at.max(Some(at));
        if let Some(flow) = flow {
            let one = FlowUse {
                first: at,
                last: at,
                count: 1,
            };
            match p.flows.get_mut(&flow) {
                Some(u) => u.merge(one),
                None => {
                    p.flows.insert(flow, one);
                }
            }
        }
    }

    /// Drops what is pending for a deleted connection.
    pub(crate) fn forget(&self, id: ConnectionId) {
        lock(&self.gathering).remove(&id);
        lock(&self.in_flight).remove(&id);
    }

    /// What is pending for `id`, gathering and in flight together.
    fn pending(&self, id: ConnectionId) -> Option<Pending> {
        let mut out: Option<Pending> = None;
        for m in [&self.in_flight, &self.gathering] {
            if let Some(p) = lock(m).get(&id) {
                match out.as_mut() {
                    Some(o) => o.merge(p.clone()),
                    None => out = Some(p.clone()),
                }
            }
        }
        out
    }

    /// Moves `last_used_at` of listed connections to their pending use, if later.
    pub(crate) fn overlay_last_used(&self, items: &mut [Connection]) {
        let gathering = lock(&self.gathering);
        let in_flight = lock(&self.in_flight);
        if gathering.is_empty() && in_flight.is_empty() {
            return;
        }
        for c in items {
            for m in [&*gathering, &*in_flight] {
                if let Some(p) = m.get(&c.id) {
                    c.last_used_at = c.last_used_at.max(p.last_used_at);
                }
            }
        }
    }

    /// Adds the pending usage of `c` to what the store returned: `last_used_at` and the
    /// flow rows (ordered like the store's: most recent first, then by flow id).
    /// Returns how many flows were not in `used_by`.
    pub(crate) fn overlay(&self, c: &mut Connection, used_by: &mut Vec<Usage>) -> usize {
        let Some(p) = self.pending(c.id) else {
            return 0;
        };
        c.last_used_at = c.last_used_at.max(p.last_used_at);
        if p.flows.is_empty() {
            return 0;
        }
        let mut added = 0;
        for (flow, u) in p.flows {
            match used_by.iter_mut().find(|s| s.flow_id == flow) {
                Some(s) => {
                    s.first_used_at = s.first_used_at.min(u.first);
                    s.last_used_at = s.last_used_at.max(u.last);
                    s.count += u.count;
                }
                None => {
                    added += 1;
                    used_by.push(Usage {
                        connection_id: c.id,
                        flow_id: flow,
                        first_used_at: u.first,
                        last_used_at: u.last,
                        count: u.count,
                    })
                }
            }
        }
        used_by.sort_by(|a, b| {
            b.last_used_at
                .cmp(&a.last_used_at)
                .then_with(|| a.flow_id.cmp(&b.flow_id))
        });
        added
    }
}

impl Latchkey {
    /// Writes the usage gathered since the last flush in one batch. On failure it stays
    /// pending for the next flush; if this future is dropped mid-write, the next flush
    /// writes it again. Returns how many connections it covered.
    pub async fn flush_usage(&self) -> Result<usize, AppError> {
        let buffer = &self.usage;
        let _one_at_a_time = buffer.flushing.lock().await;
        let (n, last_used, flows) = {
            // Moved under both locks, so a concurrent read sees it in one of the two.
            let mut gathering = lock(&buffer.gathering);
            let mut in_flight = lock(&buffer.in_flight);
            // Left over only when an earlier flush was dropped while writing (its task
            // aborted): merged, never overwritten. That write may or may not have
            // committed, so such usage is written at least once rather than lost.
            let mut batch = std::mem::take(&mut *in_flight);
            for (id, p) in std::mem::take(&mut *gathering) {
                batch.entry(id).or_default().merge(p);
            }
            *in_flight = batch;
            let mut last_used = Vec::with_capacity(in_flight.len());
            let mut flows = Vec::new();
            for (id, p) in in_flight.iter() {
                if let Some(at) = p.last_used_at {
                    last_used.push((*id, at));
                }
                flows.extend(p.flows.iter().map(|(flow, u)| Usage {
                    connection_id: *id,
                    flow_id: flow.clone(),
                    first_used_at: u.first,
                    last_used_at: u.last,
                    count: u.count,
                }));
            }
            (in_flight.len(), last_used, flows)
        };
        if n == 0 {
            return Ok(0);
        }
        let result = self.svc.activity.record_usages(&last_used, &flows).await;
        let written = std::mem::take(&mut *lock(&buffer.in_flight));
        match result {
            Ok(()) => Ok(n),
            Err(e) => {
                // Back into the batch being gathered, merged with what arrived meanwhile.
                let mut g = lock(&buffer.gathering);
                for (id, p) in written {
                    g.entry(id).or_default().merge(p);
                }
                Err(e.into())
            }
        }
    }
}
