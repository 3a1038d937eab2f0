//! # latchkey-app
//!
//! The use cases of Latchkey over the ports: manage connections, run the OAuth consent
//! flow, hand out credentials, refresh and expire grants, manage OAuth clients and
//! access keys. No adapter is known here: everything comes in through [`Services`].

mod access;
mod cache;
mod cas;
mod clients;
mod connections;
mod credentials;
mod discovery;
mod error;
mod history;
pub mod keys;
mod oauth_flow;
mod refresh;
mod refresh_cycle;
mod refresh_on_demand;
mod refresh_save;
mod refresh_tasks;
mod seal;
mod telemetry;
mod tokens;
mod usage;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use secrecy::SecretString;

use latchkey_domain::{EventId, Provider, RefreshPolicy, UrlPolicy};
use latchkey_ports::{
    AccessKeyStore, ActivityStore, AuthSessionStore, Cipher, Clock, ConnectionStore, Entropy,
    OAuthClientStore, ProviderClient, RefreshLeaseStore,
};

pub use access::{constant_time_eq, IssuedKey, Principal};
pub use cache::{CachedStore, DEFAULT_CACHE_CAPACITY};
pub use clients::CreateOAuthClient;
pub use connections::{
    ConnectionDetails, CreateConnection, ListFilter, ListPage, UpdateConnection, USED_BY_LIMIT,
};
pub use credentials::Credentials;
pub use error::{AppError, CallbackError, StateCode, INTERNAL_ERROR_MESSAGE};
pub use oauth_flow::{CallbackOutcome, CallbackParams};
pub use refresh::RefreshOutcome;
pub use refresh_cycle::{CycleReport, RefreshTotals};

/// The ports, as wired by the binary. The store ports are separate so that a test mocks
/// only the concern it is about; one adapter usually backs them all.
#[derive(Clone)]
pub struct Services {
    pub connections: Arc<dyn ConnectionStore>,
    /// Events and usages.
    pub activity: Arc<dyn ActivityStore>,
    /// The refresh queue and its leases.
    pub leases: Arc<dyn RefreshLeaseStore>,
    pub sessions: Arc<dyn AuthSessionStore>,
    pub clients: Arc<dyn OAuthClientStore>,
    pub keys: Arc<dyn AccessKeyStore>,
    pub cipher: Arc<dyn Cipher>,
    pub provider: Arc<dyn ProviderClient>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Services { .. }")
    }
}

/// A deployment's own app registration for a catalog provider
/// (`LATCHKEY_OAUTH_<PROVIDER>_CLIENT_ID` / `_CLIENT_SECRET`).
#[derive(Debug, Clone)]
pub struct DefaultClient {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
}

/// Behaviour settings, from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our public callback URL (`<public url>/v1/connections/oauth2/callback`).
    pub callback_url: String,
    pub url_policy: UrlPolicy,
    pub refresh: RefreshPolicy,
    pub default_clients: HashMap<Provider, DefaultClient>,
    /// Names this process in refresh leases, for diagnostics.
    pub worker_id: String,
    /// How many background refreshes run at once, in total.
    pub refresh_concurrency: usize,
    /// How many background refreshes run at once against one provider host, so that a
    /// host that hangs cannot take every slot.
    pub refresh_concurrency_per_host: usize,
    /// How many due connections one cycle picks up.
    pub refresh_batch: u32,
    /// What must be left of a lease to call a provider under it: the HTTP timeout and a
    /// margin to save the result. A background refresh whose batch lease has less left
    /// (it waited for a slot) claims its connection afresh.
    pub provider_call_budget: chrono::Duration,
    /// The most connections one project may hold (`limit_reached` beyond).
    pub max_connections_per_project: u64,
    /// Events and flow usages older than this are purged by the retention cycle.
    pub event_retention: chrono::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            callback_url: "http://127.0.0.1:8080/v1/connections/oauth2/callback".into(),
            url_policy: UrlPolicy::default(),
            refresh: RefreshPolicy::default(),
            default_clients: HashMap::new(),
            worker_id: "latchkey".into(),
            refresh_concurrency: 16,
            refresh_concurrency_per_host: 4,
            refresh_batch: 500,
            provider_call_budget: chrono::Duration::seconds(17),
            max_connections_per_project: 10_000,
            event_retention: chrono::Duration::days(90),
        }
    }
}

/// The application: every use case is a method.
#[derive(Debug)]
pub struct Latchkey {
    svc: Services,
    settings: Settings,
    /// One in-process lock per connection being refreshed, so concurrent callers share
    /// one refresh. Across processes the store's lease does the same.
    refresh_locks: refresh::LockMap,
    discovery: discovery::DiscoveryCache,
    slots: refresh_cycle::RefreshSlots,
    /// Usage gathered on the credentials path, written by `flush_usage`.
    usage: usage::UsageBuffer,
    /// Every refresh runs as one of these tasks, which no caller can cut off.
    refresh_tasks: refresh_tasks::RefreshTasks,
}

impl Latchkey {
    pub fn new(svc: Services, settings: Settings) -> Self {
        let slots = refresh_cycle::RefreshSlots::new(
            settings.refresh_concurrency,
            settings.refresh_concurrency_per_host,
        );
        Self {
            svc,
            settings,
            slots,
            refresh_locks: Default::default(),
            discovery: Default::default(),
            usage: Default::default(),
            refresh_tasks: refresh_tasks::RefreshTasks::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current time at the store's precision (milliseconds), so that what a use
    /// case returns equals what a later read gives back.
    fn now(&self) -> DateTime<Utc> {
        self.svc.clock.now().trunc_subsecs(3)
    }

    fn random<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        self.svc.entropy.fill(&mut b);
        b
    }

    fn new_event_id(&self) -> EventId {
        EventId::from_random_bytes(self.random())
    }

    /// A number in `[0, 1)` for back-off jitter.
    fn jitter(&self) -> f64 {
        let b: [u8; 8] = self.random();
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    }
}
