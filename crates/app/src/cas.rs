//! The one read-modify-write of a connection: read, let the caller change it (the domain
//! decides how), write back compare-and-set on the version read, and start over when a
//! concurrent write won, within a named attempt budget.

use latchkey_domain::{Connection, ConnectionEvent, ConnectionId};
use latchkey_ports::StoreError;

use crate::Latchkey;

/// How many times a read-modify-write is tried when concurrent writes keep winning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempts(pub u32);

/// What the caller's change decided after looking at the connection as read.
pub(crate) enum Edit {
    /// Write the changed connection, with these history events.
    Write(Vec<ConnectionEvent>),
    /// Nothing to write (the connection is not in a state the change applies to).
    Skip,
}

/// How a read-modify-write ended, short of a store failure.
pub(crate) enum Cas<E> {
    /// Written: the connection as stored now (boxed: the other outcomes are small).
    Written(Box<Connection>),
    /// The change looked at the connection and wrote nothing.
    Skipped,
    /// The change refused the connection as read.
    Refused(E),
    /// The connection does not exist (any more).
    Gone,
    /// Every attempt lost to a concurrent write.
    Exhausted,
}

impl Latchkey {
    /// Reads connection `id`, applies `change` to it and writes it back compare-and-set on
    /// the version read (the store bumps it), retrying
    /// from a fresh read on a conflict, at most `attempts` times in all. Store failures
    /// other than a conflict or a missing row are returned as they are.
    pub(crate) async fn modify_connection<E>(
        &self,
        id: ConnectionId,
        attempts: Attempts,
        mut change: impl FnMut(&mut Connection) -> Result<Edit, E>,
    ) -> Result<Cas<E>, StoreError> {
        for _ in 0..attempts.0 {
            let Some(mut c) = self.svc.connections.get_connection(id).await? else {
                return Ok(Cas::Gone);
            };
            let events = match change(&mut c) {
                Ok(Edit::Write(events)) => events,
                Ok(Edit::Skip) => return Ok(Cas::Skipped),
                Err(e) => return Ok(Cas::Refused(e)),
            };
            match self.write_connection(&mut c, &events).await {
                Ok(()) => return Ok(Cas::Written(Box::new(c))),
                Err(StoreError::Conflict) => continue,
                Err(StoreError::NotFound) => return Ok(Cas::Gone),
                Err(e) => return Err(e),
            }
        }
        Ok(Cas::Exhausted)
    }

    /// Writes `c`, changed since it was read at `c.version`, compare-and-set on that
    /// version; on success `c` carries the version it was stored with.
    pub(crate) async fn write_connection(
        &self,
        c: &mut Connection,
        events: &[ConnectionEvent],
    ) -> Result<(), StoreError> {
        c.version = self.svc.connections.update_connection(c, events).await?;
        Ok(())
    }
}
