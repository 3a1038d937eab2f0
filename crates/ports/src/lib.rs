//! # latchkey-ports
//!
//! The traits the core (`latchkey-app`) needs from the outside world. Adapters
//! implement them; the `mocks` feature exports mockall mocks for the app's tests.
//! Traits only: no logic lives here.
//!
//! - [`store`]: one narrow trait per concern ([`ConnectionStore`], [`ActivityStore`],
//!   [`RefreshLeaseStore`], [`AuthSessionStore`], [`OAuthClientStore`],
//!   [`AccessKeyStore`], [`SealedValueStore`], [`ChangeFeed`]) and the umbrella
//!   [`Store`] for wiring.
//! - [`cipher`]: [`Cipher`]. [`provider`]: [`ProviderClient`]. [`system`]: [`Clock`],
//!   [`Entropy`].

pub mod cipher;
#[cfg(feature = "contract")]
pub mod contract;
#[cfg(feature = "fake")]
pub mod fake;
pub mod provider;
pub mod store;
pub mod system;

pub use cipher::*;
pub use provider::*;
pub use store::*;
pub use system::*;
