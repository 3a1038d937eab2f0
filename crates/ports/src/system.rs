//! Time and randomness: the only ways the core learns either.

use chrono::{DateTime, Utc};

#[cfg(feature = "mocks")]
use mockall::automock;

/// The current time. The only way the core learns it.
#[cfg_attr(feature = "mocks", automock)]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// Random bytes for ids, states, verifiers and jitter.
#[cfg_attr(feature = "mocks", automock)]
pub trait Entropy: Send + Sync {
    fn fill(&self, buf: &mut [u8]);
}
