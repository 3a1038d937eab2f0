//! Helpers shared by the integration tests: a client for a wiremock server and exact
//! assertions on what it received.

#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use latchkey_oauth::{HttpProviderClient, OutboundPolicy};
use wiremock::{MockServer, Request};

pub const REDIRECT_URI: &str = "https://lk.example/v1/connections/oauth2/callback";

pub fn client() -> HttpProviderClient {
    client_with(true, Duration::from_secs(10))
}

pub fn client_with(allow_insecure_loopback: bool, timeout: Duration) -> HttpProviderClient {
    HttpProviderClient::new(OutboundPolicy {
        allow_insecure_loopback,
        timeout,
        ..OutboundPolicy::default()
    })
    .unwrap()
}

/// `url` with its scheme, host and port replaced by the mock server's; path and query kept.
pub fn rebase(url: &str, server: &MockServer) -> String {
    let u = url::Url::parse(url).unwrap();
    let mut out = format!("{}{}", server.uri(), u.path());
    if let Some(q) = u.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The one request the server received.
pub async fn only_request(server: &MockServer) -> Request {
    let mut all = server.received_requests().await.unwrap();
    assert_eq!(all.len(), 1, "expected exactly one request, got {all:#?}");
    all.remove(0)
}

pub async fn request_count(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

pub fn header(req: &Request, name: &str) -> Option<String> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next().map(|v| v.to_str().unwrap().to_owned());
    assert!(values.next().is_none(), "header {name} repeated");
    first
}

/// The form body as sorted key/value pairs (duplicates kept, so they show up as a diff).
pub fn form(req: &Request) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    pairs.sort();
    pairs
}

pub fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

/// Asserts an exact token-endpoint style request: POST to `path` with no query, form and
/// JSON headers, the given Authorization (or none), and exactly the given form fields.
pub fn assert_form_post(
    req: &Request,
    path: &str,
    authorization: Option<&str>,
    expected: &[(&str, &str)],
) {
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), path);
    assert_eq!(req.url.query(), None);
    assert_eq!(
        header(req, "content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(header(req, "accept").as_deref(), Some("application/json"));
    assert_eq!(header(req, "authorization").as_deref(), authorization);
    assert!(header(req, "cookie").is_none());
    assert_eq!(
        header(req, "user-agent").as_deref(),
        Some(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(form(req), pairs(expected));
}
