//! Outbound HTTP: one place that sends a request and turns what comes back into either
//! a response worth parsing or an already classified [`OAuthError`].

use std::cell::RefCell;
use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::Duration;
use latchkey_domain::net::AddressRules;
use latchkey_ports::OAuthError;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use url::Url;

use crate::errors::oauth_error_in;
use crate::resolve::{check_literal, refused, AddressRefused};

/// Largest response body we read. Token, userinfo and discovery answers are a few KiB;
/// anything bigger is not OAuth and must not exhaust memory.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A response that was neither a redirect, a 5xx nor a 429, read in full.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Builds a reqwest client with the outbound policy baked in.
pub(crate) type BuildClient = dyn Fn() -> reqwest::Result<reqwest::Client> + Send + Sync;

/// The most clients one thread keeps (one per provider client it used).
const CLIENTS_PER_THREAD: usize = 16;

/// Told apart per thread: every [`PerThread`] gets its own number.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static CLIENTS: RefCell<Vec<(u64, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
}

/// One reqwest client, and so one connection pool, per thread. A pooled connection's
/// task runs on the runtime that opened it: with one shared pool, the connections a
/// consent callback opened on an HTTP worker were reused by the background refresh on
/// another thread, and every request then crossed threads twice (refresh bench: the
/// HTTP workers spent 7% of the CPU relaying token calls they did not make).
#[derive(Clone)]
pub(crate) struct PerThread {
    id: u64,
    build: Arc<BuildClient>,
    /// Built with the others; also what a request is built with.
    first: reqwest::Client,
}

impl std::fmt::Debug for PerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerThread")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PerThread {
    pub(crate) fn new(build: Arc<BuildClient>) -> reqwest::Result<Self> {
        Ok(Self {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            first: build()?,
            build,
        })
    }

    /// This thread's client.
    pub(crate) fn here(&self) -> reqwest::Client {
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            if let Some((_, c)) = clients.iter().find(|(id, _)| *id == self.id) {
                return c.clone();
            }
            // The same settings built `first` already, so this cannot fail in practice;
            // if it does, the shared client still works.
            let c = (self.build)().unwrap_or_else(|_| self.first.clone());
            if clients.len() >= CLIENTS_PER_THREAD {
                clients.remove(0);
            }
            clients.push((self.id, c.clone()));
            c
        })
    }

    /// A client to build requests with (not to send them).
    pub(crate) fn builder(&self) -> &reqwest::Client {
        &self.first
    }
}

/// The reqwest clients with the outbound policy baked in (no redirects, timeouts).
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    pub http: PerThread,
    /// Checked here for address literals, which reqwest connects to without resolving.
    pub rules: AddressRules,
}

impl Transport {
    /// Sends `request`. Network failures, timeouts, 5xx and 429 come back as
    /// `Transient`; redirects and oversized bodies as `Protocol`.
    pub(crate) async fn execute(&self, request: reqwest::Request) -> Result<Fetched, OAuthError> {
        let url = request.url().clone();
        check_literal(&self.rules, &url)?;
        let endpoint = display_url(&url);
        let method = request.method().clone();
        let mut response = self
            .http
            .here()
            .execute(request)
            .await
            .map_err(|e| network_error(&url, &e))?;
        let status = response.status();
        tracing::debug!(%method, %endpoint, %status, "provider answered");
        if status.is_redirection() {
            // Following would let a provider (or an attacker in its place) point our
            // credentials at another host.
            return Err(OAuthError::Protocol(format!(
                "{endpoint} answered HTTP {status}; redirects are not followed"
            )));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(OAuthError::Transient {
                reason: format!("{endpoint} answered HTTP {status}"),
                retry_after: retry_after(response.headers()),
            });
        }
        let too_big = || {
            OAuthError::Protocol(format!(
                "{endpoint} answered with a body larger than {MAX_BODY_BYTES} bytes"
            ))
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(too_big());
        }
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| network_error(&url, &e))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            status,
            headers,
            body,
        })
    }
}

/// Lets the `oauth2` crate send its token requests through [`Transport::execute`], so that
/// status codes and `Retry-After` survive into our classification.
impl<'c> oauth2::AsyncHttpClient<'c> for Transport {
    type Error = OAuthError;
    type Future =
        Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, OAuthError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(|_| {
                OAuthError::Protocol("could not build the token request".to_owned())
            })?;
            let endpoint = display_url(request.url());
            let fetched = self.execute(request).await?;
            // The oauth2 crate reads every non-200 body as an OAuth error response; one
            // that is not (an HTML 404, an empty 401) is a protocol failure, with its status.
            if fetched.status != StatusCode::OK && oauth_error_in(&fetched.body).is_none() {
                return Err(OAuthError::Protocol(format!(
                    "{endpoint} answered HTTP {} without an OAuth error response",
                    fetched.status
                )));
            }
            let mut response = oauth2::http::Response::new(fetched.body);
            *response.status_mut() = fetched.status;
            *response.headers_mut() = fetched.headers;
            Ok(response)
        })
    }
}

/// `Retry-After` in delta-seconds. The HTTP-date form is ignored: reading the clock here
/// is not ours to do, and providers use seconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u32 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::seconds(i64::from(secs)))
}

/// A URL for messages: origin and path only, so no userinfo or query string (which
/// could carry credentials) ends up in an error or a log.
pub(crate) fn display_url(u: &Url) -> String {
    format!("{}{}", u.origin().ascii_serialization(), u.path())
}

/// Names the class of a failure (refused address, timeout, TLS, unreachable) without
/// the underlying error's text: that would tell whoever chose the URL what answers at
/// an address (a port scanner's oracle).
fn network_error(url: &Url, e: &reqwest::Error) -> OAuthError {
    let endpoint = display_url(url);
    if let Some(r) = sources(e).find_map(|s| s.downcast_ref::<AddressRefused>()) {
        return refused(url, r);
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() && is_tls_failure(e) {
        "TLS handshake failed"
    } else if e.is_connect() {
        "unreachable"
    } else if e.is_body() || e.is_decode() {
        "the connection failed while reading the answer"
    } else {
        "the request failed"
    };
    OAuthError::Transient {
        reason: format!("{endpoint}: {what}"),
        retry_after: None,
    }
}

/// The causes of `e`, outermost first.
fn sources<'a>(
    e: &'a reqwest::Error,
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(e.source(), |s: &&(dyn std::error::Error + 'static)| {
        (*s).source()
    })
}

/// rustls reports handshake and certificate failures as `InvalidData` I/O errors, which
/// reqwest nests inside another I/O error (whose `source()` skips it, hence `get_ref`).
fn is_tls_failure(e: &reqwest::Error) -> bool {
    sources(e).any(|s| {
        let mut io = s.downcast_ref::<std::io::Error>();
        while let Some(err) = io {
            if err.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
            io = err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>());
        }
        let text = s.to_string().to_ascii_lowercase();
        text.contains("certificate") || text.contains("tls") || text.contains("handshake")
    })
}
