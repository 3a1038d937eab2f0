//! Peers for Latchkey's black-box tests.
//!
//! - [`OidcProvider`]: a real OAuth 2.0 / OpenID Connect authorization server (npm
//!   `oidc-provider`, configured by `tests/oidc-provider/server.mjs`) run as a child process.
//! - [`Browser`]: the user agent that walks the consent flow through it.
//! - [`webdriver::Chromium`]: Debian's chromium through chromedriver, for the management page.
//! - [`server::LatchkeyServer`]: the real `latchkey` binary, started on a free port with
//!   its own data directory (and its own PostgreSQL database with [`server::PgDatabase`]).

pub mod browser;
pub mod oidc_provider;
pub mod server;
pub mod webdriver;

pub use browser::Browser;
pub use oidc_provider::{
    OidcClient, OidcProvider, OidcProviderOptions, ParkedRefresh, PeerStats, ReleasedRefreshes,
    TokenAuthMethod, DENY_LOGIN_HINT, TEST_ACCOUNT_EMAIL, TEST_ACCOUNT_ID,
};
