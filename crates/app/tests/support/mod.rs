//! Test doubles for the app's ports: an in-memory store faithful to the trait docs, a
//! cipher that really transforms bytes and checks its context, a settable clock, a
//! deterministic entropy source and a scriptable provider.
//!
//! Shared by every test binary; each uses a different subset.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde_json::{json, Value};

use latchkey_app::{
    CallbackParams, CreateConnection, DefaultClient, Latchkey, Principal, Services, Settings,
};
use latchkey_domain::oauth::{DiscoveredMetadata, TokenResponse};
use latchkey_domain::sealed::fields;
use latchkey_domain::{
    AccessKeyId, Connection, ConnectionId, ProjectId, Provider, Scope, SealContext, Sealed,
};
use latchkey_ports::{
    Cipher, CipherError, Clock, CodeExchange, Entropy, OAuthError, ProviderClient, RefreshExchange,
    Revocation,
};

// ---------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------

/// The in-memory store, shared with the contract suite that keeps it honest.
pub use latchkey_ports::fake::FakeStore;

// ---------------------------------------------------------------------------------------
// Cipher
// ---------------------------------------------------------------------------------------

const MAGIC: &[u8] = b"FAKE1";
const KEY: &[u8] = b"not-a-real-key-but-it-changes-every-byte";

/// XOR with a per-value nonce, plus a hash of the context appended as a tag: values
/// really change, are never equal twice (like a real AEAD), and fail to open elsewhere.
#[derive(Debug, Default)]
pub struct FakeCipher {
    nonce: AtomicU64,
    pub fail_seal: AtomicBool,
    pub fail_open: AtomicBool,
    pub seals: AtomicUsize,
    pub opens: AtomicUsize,
}

fn aad_tag(ctx: &SealContext) -> [u8; 8] {
    let mut h = DefaultHasher::new();
    ctx.to_aad().hash(&mut h);
    h.finish().to_be_bytes()
}

fn keystream(nonce: u64, i: usize) -> u8 {
    KEY[i % KEY.len()] ^ (nonce.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> ((i % 8) * 8)) as u8 ^ 0xA5
}

impl FakeCipher {
    /// Opens a stored value as a string (for assertions).
    pub fn peek(&self, sealed: &Sealed, ctx: &SealContext) -> String {
        let b = self.open(sealed, ctx).expect("opens in its context");
        String::from_utf8(b.expose_secret().to_vec()).unwrap()
    }
}

impl Cipher for FakeCipher {
    fn seal(&self, plaintext: &SecretBox<[u8]>, ctx: &SealContext) -> Result<Sealed, CipherError> {
        self.seals.fetch_add(1, Ordering::SeqCst);
        if self.fail_seal.load(Ordering::SeqCst) {
            return Err(CipherError::UnknownKey("k-missing".into()));
        }
        let nonce = self.nonce.fetch_add(1, Ordering::SeqCst) + 1;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&nonce.to_be_bytes());
        out.extend(
            plaintext
                .expose_secret()
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ keystream(nonce, i)),
        );
        out.extend_from_slice(&aad_tag(ctx));
        Ok(Sealed(out))
    }

    fn open(&self, sealed: &Sealed, ctx: &SealContext) -> Result<SecretBox<[u8]>, CipherError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        if self.fail_open.load(Ordering::SeqCst) {
            return Err(CipherError::Authentication);
        }
        let b = &sealed.0;
        if b.len() < MAGIC.len() + 16 || !b.starts_with(MAGIC) {
            return Err(CipherError::Malformed("not a fake-sealed value"));
        }
        let (head, tag) = b.split_at(b.len() - 8);
        if tag != aad_tag(ctx) {
            return Err(CipherError::Authentication);
        }
        let nonce = u64::from_be_bytes(head[MAGIC.len()..MAGIC.len() + 8].try_into().unwrap());
        let plain: Vec<u8> = head[MAGIC.len() + 8..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ keystream(nonce, i))
            .collect();
        Ok(SecretBox::from(plain.into_boxed_slice()))
    }

    fn sealed_key_id(&self, sealed: &Sealed) -> Result<String, CipherError> {
        if sealed.0.starts_with(MAGIC) {
            Ok("fake".into())
        } else {
            Err(CipherError::Malformed("not a fake-sealed value"))
        }
    }

    fn ring_key_ids(&self) -> Vec<String> {
        vec!["fake".into()]
    }
}

// ---------------------------------------------------------------------------------------
// Clock and entropy
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct FakeClock(pub Arc<Mutex<DateTime<Utc>>>);

impl FakeClock {
    pub fn at(t: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
    pub fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Counter-based bytes: every fill differs from every other, runs are reproducible.
#[derive(Debug, Default)]
pub struct CountingEntropy(AtomicU64);

impl Entropy for CountingEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let counter = n.to_be_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = match counter.get(i) {
                Some(c) => *c,
                None => (i as u8).wrapping_mul(37) ^ (n as u8),
            };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------

pub fn tokens(access: &str, refresh: Option<&str>, expires_in: Option<i64>) -> TokenResponse {
    TokenResponse {
        access_token: SecretString::from(access.to_owned()),
        refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
        token_type: "Bearer".into(),
        expires_in: expires_in.map(Duration::seconds),
        scopes: None,
    }
}

/// Lets a test hold a provider call in flight: the provider signals `entered`, then
/// waits for `release`.
#[derive(Debug, Default)]
pub struct Gate {
    pub entered: tokio::sync::Notify,
    pub release: tokio::sync::Notify,
}

type Hook = Arc<dyn Fn(&RefreshExchange) + Send + Sync>;

/// A provider scripted per call, with counters, an optional delay and hooks, for tests
/// with many or interleaved calls where mockall expectations get in the way.
#[derive(Default)]
pub struct FakeProvider {
    pub refresh_calls: AtomicUsize,
    pub exchange_calls: AtomicUsize,
    refresh_script: Mutex<VecDeque<Result<TokenResponse, OAuthError>>>,
    /// Answers by presented refresh token, before the ordered script: for concurrent calls.
    refresh_by_token: Mutex<HashMap<String, Result<TokenResponse, OAuthError>>>,
    exchange_script: Mutex<VecDeque<Result<TokenResponse, OAuthError>>>,
    /// The refresh tokens presented, in order.
    pub presented_refresh_tokens: Mutex<Vec<String>>,
    refresh_delay: Mutex<Option<std::time::Duration>>,
    refresh_gate: Mutex<Option<Arc<Gate>>>,
    refresh_hook: Mutex<Option<Hook>>,
    /// What userinfo answers; `None`: `{"email": "ada@example.com"}`.
    pub userinfo_answer: Mutex<Option<Value>>,
    /// The tokens revoked, in order.
    pub revoked_tokens: Mutex<Vec<String>>,
    /// What discovery answers (any issuer), and a gate to hold it in flight.
    pub discovery: Mutex<Option<DiscoveredMetadata>>,
    pub discover_calls: AtomicUsize,
    discover_gate: Mutex<Option<Arc<Gate>>>,
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeProvider")
    }
}

impl FakeProvider {
    pub fn push_refresh(&self, r: Result<TokenResponse, OAuthError>) {
        self.refresh_script.lock().unwrap().push_back(r);
    }
    pub fn answer_refresh_of(&self, refresh_token: &str, r: Result<TokenResponse, OAuthError>) {
        self.refresh_by_token
            .lock()
            .unwrap()
            .insert(refresh_token.to_owned(), r);
    }
    pub fn push_exchange(&self, r: Result<TokenResponse, OAuthError>) {
        self.exchange_script.lock().unwrap().push_back(r);
    }
    pub fn set_refresh_delay(&self, d: std::time::Duration) {
        *self.refresh_delay.lock().unwrap() = Some(d);
    }
    pub fn gate_refresh(&self) -> Arc<Gate> {
        let g = Arc::new(Gate::default());
        *self.refresh_gate.lock().unwrap() = Some(g.clone());
        g
    }
    /// Runs inside the refresh call, after the request arrived and before the answer.
    pub fn on_refresh(&self, hook: impl Fn(&RefreshExchange) + Send + Sync + 'static) {
        *self.refresh_hook.lock().unwrap() = Some(Arc::new(hook));
    }
    pub fn gate_discovery(&self) -> Arc<Gate> {
        let g = Arc::new(Gate::default());
        *self.discover_gate.lock().unwrap() = Some(g.clone());
        g
    }
    pub fn refreshes(&self) -> usize {
        self.refresh_calls.load(Ordering::SeqCst)
    }
    pub fn exchanges(&self) -> usize {
        self.exchange_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ProviderClient for FakeProvider {
    async fn exchange_code(&self, _request: CodeExchange) -> Result<TokenResponse, OAuthError> {
        let n = self.exchange_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let scripted = self.exchange_script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| {
            Ok(tokens(
                &format!("at-code-{n}"),
                Some(&format!("rt-code-{n}")),
                Some(3600),
            ))
        })
    }

    async fn refresh(&self, request: RefreshExchange) -> Result<TokenResponse, OAuthError> {
        let n = self.refresh_calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.presented_refresh_tokens
            .lock()
            .unwrap()
            .push(request.refresh_token.expose_secret().to_owned());
        let gate = self.refresh_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.entered.notify_one();
            g.release.notified().await;
        }
        let delay = *self.refresh_delay.lock().unwrap();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        // Called outside the lock: a hook may panic (and must not poison it).
        let hook = self.refresh_hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(&request);
        }
        let by_token = self
            .refresh_by_token
            .lock()
            .unwrap()
            .remove(request.refresh_token.expose_secret());
        let scripted = by_token.or_else(|| self.refresh_script.lock().unwrap().pop_front());
        scripted.unwrap_or_else(|| Ok(tokens(&format!("at-refreshed-{n}"), None, Some(3600))))
    }

    async fn revoke(&self, request: Revocation) -> Result<(), OAuthError> {
        self.revoked_tokens
            .lock()
            .unwrap()
            .push(request.token.expose_secret().to_owned());
        Ok(())
    }

    async fn userinfo(
        &self,
        _endpoint: String,
        _access_token: SecretString,
    ) -> Result<Value, OAuthError> {
        Ok(self
            .userinfo_answer
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| json!({"email": "ada@example.com"})))
    }

    async fn discover(&self, issuer: String) -> Result<DiscoveredMetadata, OAuthError> {
        self.discover_calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.discover_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.entered.notify_one();
            g.release.notified().await;
        }
        let meta = self.discovery.lock().unwrap().clone();
        meta.ok_or_else(|| OAuthError::Protocol(format!("no discovery for {issuer}")))
    }
}

// ---------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------

/// `c` as a store would hold it in `status`: a shortcut past the lifecycle, for setting
/// up a state (or playing another writer) in a test.
pub fn with_status(c: Connection, status: latchkey_domain::Status) -> Connection {
    Connection::restore(latchkey_domain::ConnectionParts {
        status,
        ..c.into_parts()
    })
}

/// `c` holding `grant`, as a store would rebuild it.
pub fn with_grant(c: Connection, grant: Option<latchkey_domain::Grant>) -> Connection {
    Connection::restore(latchkey_domain::ConnectionParts {
        grant,
        ..c.into_parts()
    })
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

pub const PROJECT: &str = "proj-a";
pub const OTHER_PROJECT: &str = "proj-b";

pub fn settings() -> Settings {
    let mut default_clients = HashMap::new();
    for p in [Provider::Google, Provider::Notion, Provider::Box] {
        default_clients.insert(
            p,
            DefaultClient {
                client_id: format!("{p}-client"),
                client_secret: Some(SecretString::from(format!("{p}-secret"))),
            },
        );
    }
    Settings {
        callback_url: "https://latchkey.example/v1/connections/oauth2/callback".into(),
        default_clients,
        worker_id: "test-worker".into(),
        ..Settings::default()
    }
}

/// The fakes behind a [`Latchkey`], kept for assertions and knobs.
pub struct Harness {
    pub app: Arc<Latchkey>,
    pub store: Arc<FakeStore>,
    pub cipher: Arc<FakeCipher>,
    pub clock: FakeClock,
    pub entropy: Arc<CountingEntropy>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Harness")
    }
}

/// Fakes for everything; `provider` for the provider port.
pub struct Parts {
    pub store: Arc<FakeStore>,
    pub cipher: Arc<FakeCipher>,
    pub clock: FakeClock,
    pub entropy: Arc<CountingEntropy>,
    pub services: Services,
}

pub fn parts(provider: Arc<dyn ProviderClient>) -> Parts {
    let store = Arc::new(FakeStore::default());
    let cipher = Arc::new(FakeCipher::default());
    let clock = FakeClock::at(t0());
    let entropy = Arc::new(CountingEntropy::default());
    let services = Services {
        connections: store.clone(),
        activity: store.clone(),
        leases: store.clone(),
        sessions: store.clone(),
        clients: store.clone(),
        keys: store.clone(),
        cipher: cipher.clone(),
        provider,
        clock: Arc::new(clock.clone()),
        entropy: entropy.clone(),
    };
    Parts {
        store,
        cipher,
        clock,
        entropy,
        services,
    }
}

impl Harness {
    /// The app over `p`'s fakes (some of which a test may have replaced), with `settings`.
    pub fn from_parts(p: Parts, settings: Settings) -> Self {
        Harness {
            app: Arc::new(Latchkey::new(p.services, settings)),
            store: p.store,
            cipher: p.cipher,
            clock: p.clock,
            entropy: p.entropy,
        }
    }
}

pub fn harness_with(provider: Arc<dyn ProviderClient>) -> Harness {
    Harness::from_parts(parts(provider), settings())
}

/// A harness over a [`FakeProvider`].
pub fn harness() -> (Harness, Arc<FakeProvider>) {
    let provider = Arc::new(FakeProvider::default());
    (harness_with(provider.clone()), provider)
}

pub fn admin() -> Principal {
    Principal::Admin
}

/// A key of `project` with the given scopes.
pub fn key(project: &str, scopes: &[Scope]) -> Principal {
    Principal::Key {
        id: AccessKeyId::from_random_bytes([9; 16]),
        project: ProjectId::parse(project).unwrap(),
        scopes: scopes.to_vec(),
    }
}

pub fn full_key(project: &str) -> Principal {
    key(project, &Scope::ALL)
}

pub fn create_input(name: &str, kind: &str, config: Value) -> CreateConnection {
    CreateConnection {
        project_id: PROJECT.into(),
        name: name.into(),
        kind: kind.into(),
        config,
        oauth2_client_id: None,
    }
}

pub fn ctx(c: &Connection, field: &'static str) -> SealContext {
    SealContext::new(c.project_id.as_str(), c.id, field)
}

impl Harness {
    pub async fn create(&self, name: &str, kind: &str, config: Value) -> Connection {
        self.app
            .create_connection(&admin(), create_input(name, kind, config))
            .await
            .unwrap()
    }

    /// Starts a consent flow and returns the `state` of the consent URL.
    pub async fn start(&self, id: ConnectionId) -> String {
        let url = self.app.start_authorization(&admin(), id).await.unwrap();
        query(&url, "state").expect("the consent URL has a state")
    }

    pub async fn callback(
        &self,
        state: &str,
    ) -> Result<latchkey_app::CallbackOutcome, latchkey_app::CallbackError> {
        self.app
            .complete_authorization(CallbackParams {
                state: Some(state.into()),
                code: Some(SecretString::from("the-code")),
                ..Default::default()
            })
            .await
    }

    /// The stored access and refresh tokens, opened.
    pub fn stored_tokens(&self, id: ConnectionId) -> (String, Option<String>) {
        let c = self.store.connection(id);
        let g = c.grant().expect("a grant");
        (
            self.cipher
                .peek(&g.access_token, &ctx(&c, fields::ACCESS_TOKEN)),
            g.refresh_token
                .as_ref()
                .map(|r| self.cipher.peek(r, &ctx(&c, fields::REFRESH_TOKEN))),
        )
    }
}

/// Creates a connection of `kind` and authorizes it through the real consent flow, the
/// fake provider answering the code exchange with `answer`.
pub async fn connected(
    h: &Harness,
    provider: &FakeProvider,
    name: &str,
    kind: &str,
    answer: TokenResponse,
) -> ConnectionId {
    let c = h.create(name, kind, json!({})).await;
    let state = h.start(c.id).await;
    provider.push_exchange(Ok(answer));
    h.callback(&state).await.expect("authorized");
    c.id
}

pub fn query(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The access token of a credentials answer.
pub fn access_token(c: &latchkey_app::Credentials) -> String {
    match c {
        latchkey_app::Credentials::OAuth { access_token, .. } => {
            access_token.expose_secret().to_owned()
        }
        other => panic!("not OAuth credentials: {other:?}"),
    }
}
