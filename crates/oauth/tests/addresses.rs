//! The outbound address policy in the adapter: address literals refused before anything
//! is resolved or sent, names resolved once with every answer checked, the connection
//! made to the checked address, and failures named by class only.
//!
//! Traffic goes only to loopback. Private and public addresses appear only as answers
//! that must be refused before any connection: the error class says where the refusal
//! happened, and a recording lookup shows what was resolved.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey_domain::oauth::ClientCredentials;
use latchkey_domain::provider::TokenAuthMethod;
use latchkey_oauth::{HostLookup, HttpProviderClient, LookupFuture, OutboundPolicy};
use latchkey_ports::{OAuthError, ProviderClient, RefreshExchange, Revocation};
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::*;

/// Answers from a table, one answer list per call in turn (the last one repeats), and
/// records every name it was asked for.
#[derive(Debug, Default)]
struct ScriptedLookup {
    answers: Mutex<HashMap<String, Vec<Vec<IpAddr>>>>,
    asked: Mutex<Vec<String>>,
}

impl ScriptedLookup {
    fn new(table: &[(&str, &[&[&str]])]) -> Arc<Self> {
        let answers = table
            .iter()
            .map(|(name, answers)| {
                let answers = answers
                    .iter()
                    .map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect())
                    .collect();
                ((*name).to_owned(), answers)
            })
            .collect();
        Arc::new(Self {
            answers: Mutex::new(answers),
            asked: Mutex::default(),
        })
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl HostLookup for ScriptedLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        self.asked.lock().unwrap().push(host.to_owned());
        let mut answers = self.answers.lock().unwrap();
        let result = match answers.get_mut(host) {
            Some(list) if list.len() > 1 => Ok(list.remove(0)),
            Some(list) => Ok(list[0].clone()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such test name",
            )),
        };
        Box::pin(async move { result })
    }
}

fn policy(allow_loopback: bool) -> OutboundPolicy {
    OutboundPolicy {
        allow_insecure_loopback: allow_loopback,
        timeout: Duration::from_secs(10),
        ..OutboundPolicy::default()
    }
}

fn client_on(lookup: Arc<ScriptedLookup>, allow_loopback: bool) -> HttpProviderClient {
    HttpProviderClient::with_lookup(policy(allow_loopback), lookup).unwrap()
}

fn creds() -> ClientCredentials {
    ClientCredentials {
        client_id: "cid".into(),
        client_secret: Some(SecretString::from("client-secret")),
        auth_method: TokenAuthMethod::ClientSecretPost,
    }
}

fn refresh_at(endpoint: &str) -> RefreshExchange {
    RefreshExchange {
        token_endpoint: endpoint.to_owned(),
        client: creds(),
        refresh_token: SecretString::from("rt"),
        scopes: None,
    }
}

/// Every kind of call the adapter makes, to `url`; each must fail.
async fn every_call_fails(c: &HttpProviderClient, url: &str) -> Vec<OAuthError> {
    vec![
        c.exchange_code(latchkey_ports::CodeExchange {
            token_endpoint: url.to_owned(),
            client: creds(),
            code: SecretString::from("code"),
            redirect_uri: REDIRECT_URI.into(),
            pkce_verifier: None,
        })
        .await
        .unwrap_err(),
        c.refresh(refresh_at(url)).await.unwrap_err(),
        c.revoke(Revocation {
            revocation_endpoint: url.to_owned(),
            client: creds(),
            token: SecretString::from("rt"),
            token_type_hint: "refresh_token",
        })
        .await
        .unwrap_err(),
        c.userinfo(url.to_owned(), SecretString::from("at"))
            .await
            .unwrap_err(),
        c.discover(url.trim_end_matches("/t").to_owned())
            .await
            .unwrap_err(),
    ]
}

fn assert_refused(e: &OAuthError, class: &str, context: &str) {
    let OAuthError::AddressNotAllowed(m) = e else {
        panic!("{context}: not refused by the address policy: {e:?}")
    };
    assert!(m.contains(class), "{context}: {m}");
    assert!(m.contains("only public addresses"), "{context}: {m}");
}

#[tokio::test]
async fn address_literals_are_refused_before_any_lookup_or_connection() {
    let lookup = ScriptedLookup::new(&[]);
    let strict = client_on(lookup.clone(), false);
    let loopback_ok = client_on(lookup.clone(), true);
    let table: &[(&str, &str, bool)] = &[
        // (url, class, refused also when loopback is allowed)
        ("https://127.0.0.1/t", "loopback", false),
        ("https://127.9.9.9:8443/t", "loopback", false),
        ("https://localhost/t", "loopback", false),
        ("https://api.localhost/t", "loopback", false),
        ("https://[::1]/t", "loopback", false),
        ("https://[::ffff:127.0.0.1]/t", "loopback", false),
        ("https://0x7f.0.0.1/t", "loopback", false),
        ("https://10.0.0.1/t", "private", true),
        ("https://172.16.0.1/t", "private", true),
        ("https://192.168.0.1/t", "private", true),
        ("https://[::ffff:192.168.0.1]/t", "private", true),
        ("https://169.254.169.254/t", "link-local", true),
        ("https://[fe80::1]/t", "link-local", true),
        ("https://[fc00::1]/t", "unique-local", true),
        ("https://100.64.0.1/t", "carrier-grade NAT", true),
        ("https://0.0.0.0/t", "unspecified", true),
        ("https://[::]/t", "unspecified", true),
        ("https://0.1.2.3/t", "this-network", true),
        ("https://224.0.0.1/t", "multicast", true),
        ("https://255.255.255.255/t", "broadcast", true),
    ];
    for (url, class, always) in table {
        for e in every_call_fails(&strict, url).await {
            assert_refused(&e, class, url);
        }
        if *always {
            for e in every_call_fails(&loopback_ok, url).await {
                assert_refused(&e, class, url);
            }
        }
    }
    assert_eq!(lookup.asked(), Vec::<String>::new(), "nothing is resolved");
}

#[tokio::test]
async fn names_that_resolve_to_non_public_addresses_are_refused_without_connecting() {
    let lookup = ScriptedLookup::new(&[
        ("internal.test", &[&["10.0.0.7"]]),
        ("metadata.test", &[&["169.254.169.254"]]),
        ("ula.test", &[&["fd00::7"]]),
        ("mapped.test", &[&["::ffff:192.168.1.1"]]),
        ("cgnat.test", &[&["100.64.3.4"]]),
        ("zero.test", &[&["0.0.0.0"]]),
        // One public-looking and one internal answer: the name is refused as a whole.
        ("mixed.test", &[&["127.0.0.1", "10.0.0.7"]]),
        ("loop.test", &[&["127.0.0.1"]]),
    ]);
    let c = client_on(lookup.clone(), true);
    let strict = client_on(lookup.clone(), false);
    for (name, class) in [
        ("internal.test", "private"),
        ("metadata.test", "link-local"),
        ("ula.test", "unique-local"),
        ("mapped.test", "private"),
        ("cgnat.test", "carrier-grade NAT"),
        ("zero.test", "unspecified"),
        ("mixed.test", "private"),
    ] {
        let url = format!("https://{name}/token");
        let e = c.refresh(refresh_at(&url)).await.unwrap_err();
        assert_refused(&e, class, name);
        let OAuthError::AddressNotAllowed(m) = &e else {
            unreachable!()
        };
        assert!(m.contains(name), "{m}");
        // The answer itself is not told: that would map the internal DNS for a caller.
        for ip in [
            "10.0.0.7", "169.254", "fd00", "192.168", "100.64", "0.0.0.0",
        ] {
            assert!(!m.contains(ip), "{m}");
        }
    }
    let e = strict
        .refresh(refresh_at("https://loop.test/token"))
        .await
        .unwrap_err();
    assert_refused(&e, "loopback", "loop.test when loopback is not allowed");
    // Each name was looked up exactly once per call.
    let asked = lookup.asked();
    assert_eq!(asked.len(), 8, "{asked:?}");
}

/// A loopback listener that counts connections and answers each with bytes that are not
/// TLS, so an https client fails its handshake there.
async fn not_tls_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 512];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn the_connection_goes_to_the_checked_answer_and_a_rebinding_answer_is_refused() {
    let (port, accepted) = not_tls_listener().await;
    // First answer loopback (allowed here), then a private address: a rebinding DNS.
    let lookup = ScriptedLookup::new(&[("idp.test", &[&["127.0.0.1"], &["10.0.0.7"]])]);
    let c = client_on(lookup.clone(), true);
    let url = format!("https://idp.test:{port}/token");

    // "idp.test" exists nowhere but in the lookup: reaching the listener proves the
    // connection went to the address that was checked. It is not TLS, which is named.
    let e = c.refresh(refresh_at(&url)).await.unwrap_err();
    let OAuthError::Transient { reason, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        reason,
        &format!("https://idp.test:{port}/token: TLS handshake failed")
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(lookup.asked(), ["idp.test"], "one lookup, no second one");

    // The next call resolves again, and the new answer is checked before connecting.
    let e = c.refresh(refresh_at(&url)).await.unwrap_err();
    assert_refused(&e, "private", "rebound answer");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no connection to it");
    assert_eq!(lookup.asked(), ["idp.test", "idp.test"]);
}

#[tokio::test]
async fn network_failures_name_their_class_not_what_answered() {
    // Unreachable: nothing listens on a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = client()
        .refresh(refresh_at(&format!("http://127.0.0.1:{port}/token")))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        OAuthError::Transient {
            reason: format!("http://127.0.0.1:{port}/token: unreachable"),
            retry_after: None,
        }
    );
    // An unknown name is unreachable too, without the resolver's words.
    let lookup = ScriptedLookup::new(&[]);
    let e = client_on(lookup, true)
        .refresh(refresh_at("https://nowhere.test/token"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "transient provider failure: https://nowhere.test/token: unreachable"
    );
    // An HTTP status is named by its number.
    let server = MockServer::start().await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(503).set_body_string("<h1>nginx internal banner</h1>"))
        .mount(&server)
        .await;
    let e = client()
        .refresh(refresh_at(&format!("{}/token", server.uri())))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("HTTP 503"), "{text}");
    assert!(!text.contains("banner"), "{text}");
}

#[tokio::test]
async fn discovered_endpoints_at_non_public_addresses_are_refused() {
    let server = MockServer::start().await;
    let issuer = server.uri();
    let lookup = ScriptedLookup::new(&[]);
    let c = client_on(lookup.clone(), true);
    for (field, url, class) in [
        ("token_endpoint", "https://10.0.0.1/token", "private"),
        (
            "authorization_endpoint",
            "https://192.168.1.1/auth",
            "private",
        ),
        (
            "userinfo_endpoint",
            "https://169.254.169.254/latest",
            "link-local",
        ),
        (
            "revocation_endpoint",
            "https://[fd00::1]/revoke",
            "unique-local",
        ),
        ("token_endpoint", "https://0.0.0.0/token", "unspecified"),
    ] {
        server.reset().await;
        let mut doc = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
        });
        doc[field] = json!(url);
        Mock::given(path("/.well-known/openid-configuration"))
            .respond_with(ResponseTemplate::new(200).set_body_json(doc))
            .mount(&server)
            .await;
        let e = c.discover(issuer.clone()).await.unwrap_err();
        assert_refused(&e, class, field);
    }
    assert!(lookup.asked().is_empty());
}
