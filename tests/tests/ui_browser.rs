//! The management page (issue 8) in a real browser: Debian's chromium driven through
//! chromedriver, against the real `latchkey` binary and the real OAuth server
//! (`oidc-provider`). The OAuth consent runs in the popup the page opens; the peer signs the
//! test account in and consents by itself, or declines when asked with `login_hint=deny`.
//!
//! After every save the page is searched for the secrets typed so far: the DOM (inputs'
//! values included), sessionStorage, localStorage and the console.
//!
//! Screenshots are written to `target/ui-screenshots/`; with
//! `LATCHKEY_UPDATE_SCREENSHOTS=1` also to `docs/screenshots/`, the ones README shows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use latchkey_tests::server::ADMIN_TOKEN;
use latchkey_tests::server::{admin_client, workspace_root, LatchkeyServer, ServerOptions};
use latchkey_tests::webdriver::Chromium;
use latchkey_tests::{OidcClient, OidcProvider, OidcProviderOptions, TokenAuthMethod};
use serde_json::{json, Value};

const PROJECT: &str = "proj-ui";
const CALLBACK_PATH: &str = "/v1/connections/oauth2/callback";
const CLIENT: &str = "ui-client";
const CLIENT_SECRET: &str = "ui-client-secret-7d1c0ffee";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Every secret typed into the page; none may ever show up in it again.
const API_KEY: &str = "sk_live_UIsecret_4f9a1b";
const API_KEY_2: &str = "sk_live_UIsecret_REPLACED_77e2";
const PASSWORD: &str = "hunter2-UIsecret-basic";
const CUSTOM_TOKEN: &str = "t0k3n-UIsecret-custom";
const GOOGLE_SECRET: &str = "gsecret-UIsecret-own-app";
const WRONG_SECRET: &str = "wrong-UIsecret-for-ui-client";
const SECRETS: [&str; 7] = [
    WRONG_SECRET,
    API_KEY,
    API_KEY_2,
    PASSWORD,
    CUSTOM_TOKEN,
    GOOGLE_SECRET,
    CLIENT_SECRET,
];

struct Env {
    _dir: tempfile::TempDir,
    server: LatchkeyServer,
    peer: OidcProvider,
    http: reqwest::Client,
}

impl Env {
    /// A server that refreshes often (so a revoked grant is found out within seconds) and a
    /// provider with short-lived access tokens.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = LatchkeyServer::start(
            ServerOptions::new(dir.path())
                .env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
                .env("LATCHKEY_REFRESH_INTERVAL", "1s")
                .env("LATCHKEY_REFRESH_MARGIN", "3s"),
        )
        .await
        .unwrap();
        let peer = OidcProvider::start(
            OidcProviderOptions::default()
                .client(OidcClient::confidential(
                    CLIENT,
                    CLIENT_SECRET,
                    TokenAuthMethod::ClientSecretBasic,
                    [server.url(CALLBACK_PATH)],
                ))
                .access_token_ttl(Duration::from_secs(8)),
        )
        .await
        .unwrap();
        Self {
            _dir: dir,
            server,
            peer,
            http: admin_client(),
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The id of the connection named `name` in `project`, through the API.
    async fn id_of(&self, project: &str, name: &str) -> String {
        let (_, list) = self
            .get(&format!("/v1/connections?project_id={project}&limit=200"))
            .await;
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no connection {name:?} in {list}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn screenshot_dirs() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut dirs = vec![root.join("target").join("ui-screenshots")];
    if std::env::var("LATCHKEY_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        dirs.push(root.join("docs").join("screenshots"));
    }
    dirs
}

/// Desktop and phone screenshots of the current page, checked for horizontal scrolling.
async fn screenshots(b: &Chromium, name: &str) {
    for (width, suffix) in [(1280, "desktop"), (375, "phone")] {
        for dir in screenshot_dirs() {
            let overflow = b
                .screenshot(width, &dir.join(format!("{name}-{suffix}.png")))
                .await
                .unwrap();
            assert!(
                !overflow,
                "{name} scrolls sideways at {width} px wide: it must fit"
            );
        }
    }
}

/// No secret in the DOM (with the values of inputs), the page's storage or its console.
async fn assert_no_secrets(b: &mut Chromium, when: &str) {
    assert_no_secrets_but_typed(b, when, false).await
}

/// Same, except that a refused save keeps what the user typed in the form's inputs (so it
/// can be corrected): only the live values of inputs are exempt, never attributes, text,
/// storage or console.
async fn assert_no_secrets_but_typed(b: &mut Chromium, when: &str, typed_allowed: bool) {
    let page = b
        .execute(
            r#"const parts = [document.documentElement.outerHTML];
            if (!arguments[0]) for (const el of document.querySelectorAll('input, textarea, select')) parts.push(el.value);
            for (const s of [sessionStorage, localStorage]) {
              for (let i = 0; i < s.length; i += 1) { const k = s.key(i); parts.push(k, s.getItem(k)); }
            }
            parts.push('localStorage keys: ' + localStorage.length);
            return parts.join('\n');"#,
            vec![json!(typed_allowed)],
        )
        .await
        .unwrap();
    let page = page.as_str().unwrap();
    assert!(
        page.contains("localStorage keys: 0"),
        "{when}: the page wrote to localStorage"
    );
    let console = b.console().await.unwrap();
    for secret in SECRETS {
        assert!(
            !page.contains(secret),
            "{when}: a secret is in the page or its storage"
        );
        for entry in &console {
            assert!(
                !entry.to_string().contains(secret),
                "{when}: a secret is in the console: {entry}"
            );
        }
    }
    for entry in &console {
        let m = entry["message"].as_str().unwrap_or_default();
        assert!(
            !m.contains("Content Security Policy") && !m.contains("Uncaught"),
            "{when}: the console reports a script error or a CSP violation: {m}"
        );
    }
}

/// Every control on the page has an accessible name, and the focused one shows its focus.
async fn assert_accessible(b: &Chromium, when: &str) {
    let unnamed = b
        .execute(
            r#"const bad = [];
            for (const el of document.querySelectorAll('input, select, textarea, button, a[href]')) {
              if (el.getClientRects().length === 0) continue;
              const named = (el.labels && el.labels.length > 0)
                || (el.getAttribute('aria-label') || '').trim()
                || (el.getAttribute('aria-labelledby') || '').trim()
                || (el.textContent || '').trim()
                || (el.querySelector && el.querySelector('img[alt]:not([alt=""])'));
              if (!named) bad.push(el.outerHTML.slice(0, 120));
            }
            return bad;"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unnamed, json!([]), "{when}: controls without a name");
}

async fn sign_in(b: &Chromium, env: &Env, key: &str) {
    b.goto(&env.url("/")).await.unwrap();
    b.fill("Admin token or access key", key).await.unwrap();
    b.click_text("button", "Sign in").await.unwrap();
}

async fn new_connection(b: &Chromium, type_label: &str) {
    b.click_text("a", "New connection").await.unwrap();
    b.click_text("a.type-card", type_label).await.unwrap();
    b.wait_with_text("h1", &format!("New {type_label} connection"))
        .await
        .unwrap();
}

/// The status word of the list row named `name`.
async fn row_status(b: &Chromium, name: &str) -> Option<String> {
    let v = b
        .execute(
            r#"for (const tr of document.querySelectorAll('table.connections tbody tr')) {
              if (tr.querySelector('th').textContent.trim() === arguments[0])
                return tr.querySelector('.status-label').textContent;
            }
            return null;"#,
            vec![json!(name)],
        )
        .await
        .unwrap();
    v.as_str().map(str::to_owned)
}

async fn row_names(b: &Chromium) -> Vec<String> {
    let v = b
        .execute(
            "return [...document.querySelectorAll('table.connections tbody th')].map((t) => t.textContent.trim());",
            vec![],
        )
        .await
        .unwrap();
    let mut names: Vec<String> = serde_json::from_value(v).unwrap();
    names.sort();
    names
}

/// Waits until the list shows exactly `want` (sorted).
async fn wait_rows(b: &Chromium, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let busy = b
            .execute(
                "return !!document.querySelector('.results[aria-busy]');",
                vec![],
            )
            .await
            .unwrap();
        let names = row_names(b).await;
        if busy == json!(false) && names == want {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "the list shows {names:?}, not {want:?}:\n{}",
                b.page_text().await.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// How many events the details page's history shows.
async fn timeline_len(b: &Chromium) -> u64 {
    b.execute(
        "return document.querySelectorAll('.timeline li').length;",
        vec![],
    )
    .await
    .unwrap()
    .as_u64()
    .unwrap()
}

/// Waits until the list shows `n` rows and returns their names (sorted).
async fn wait_row_count(b: &Chromium, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let names = row_names(b).await;
        if names.len() == n {
            return names;
        }
        assert!(
            Instant::now() < deadline,
            "the list shows {} rows, not {n}",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Presses the connect button and waits for the popup's outcome on the page.
async fn connect_in_popup(b: &Chromium, button: &str, outcome: &str) {
    let before = b.window_handles().await.unwrap().len();
    b.click_text("button", button).await.unwrap();
    // The popup is a real window of its own (a fresh one each time). Generous, because on a
    // loaded 2-core CI machine the round trip took over 10 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_popup = false;
    while Instant::now() < deadline {
        if b.window_handles().await.unwrap().len() > before {
            saw_popup = true;
            break;
        }
        if b.page_text().await.unwrap().contains(outcome) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_popup || b.page_text().await.unwrap().contains(outcome),
        "neither a popup nor the outcome {outcome:?} appeared within 30 s"
    );
    b.wait_text_for(outcome, Duration::from_secs(40))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_connections_screen_manages_every_kind_of_connection() {
    // The browser first: without chromium the test fails at once, saying what to install.
    let mut b = Chromium::start().await.unwrap();
    let env = Env::start().await;

    // `/` leads to the page; an admin signs in and types a project (none has connections).
    sign_in(&b, &env, ADMIN_TOKEN).await;
    assert!(b.current_url().await.unwrap().contains("/ui/"));
    b.wait_with_text("h1", "Choose a project").await.unwrap();
    b.wait_text("No project has connections yet").await.unwrap();
    b.fill("Project ID", PROJECT).await.unwrap();
    b.click_text("button", "Open project").await.unwrap();
    b.wait_text("No connections yet").await.unwrap();
    assert_accessible(&b, "empty list").await;

    // API key, with a validation error shown next to the field the API names.
    new_connection(&b, "API key").await;
    assert_accessible(&b, "API key form").await;
    b.fill("API key", API_KEY).await.unwrap();
    b.click_text("button", "Create connection").await.unwrap();
    let name_error = b.wait(".field-error:not([hidden])").await.unwrap();
    assert_eq!(b.text(&name_error).await.unwrap(), "Must not be empty.");
    let invalid = b
        .execute(
            "const i = document.querySelector('[aria-invalid=true]'); return i && i.labels[0].textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(invalid, json!("Name"), "the error sits at the Name field");
    assert_no_secrets_but_typed(&mut b, "api_key form after a refused save", true).await;
    b.fill("Name", "Stripe prod").await.unwrap();
    b.fill("API key", API_KEY).await.unwrap();
    b.click_text("button", "Create connection").await.unwrap();
    b.wait_text("“Stripe prod” was created and is active.")
        .await
        .unwrap();
    assert_no_secrets(&mut b, "api_key created").await;

    // Basic.
    b.click_text("a", "All connections").await.unwrap();
    new_connection(&b, "Basic auth").await;
    b.fill("Name", "Legacy API").await.unwrap();
    b.fill("Username", "bot").await.unwrap();
    b.fill("Password", PASSWORD).await.unwrap();
    b.click_text("button", "Create connection").await.unwrap();
    b.wait_text("“Legacy API” was created and is active.")
        .await
        .unwrap();
    b.wait_text("bot").await.unwrap();
    assert_no_secrets(&mut b, "basic created").await;

    // Custom fields: one plain, one secret; a bad field name is flagged at that field.
    b.click_text("a", "All connections").await.unwrap();
    new_connection(&b, "Custom fields").await;
    b.fill("Name", "Warehouse").await.unwrap();
    b.fill("Field name", "host name").await.unwrap();
    b.set_checkbox("Secret", 0, false).await.unwrap();
    b.fill("Value", "db.internal").await.unwrap();
    b.click_text("button", "Add a field").await.unwrap();
    let second_name = b.by_label_nth("Field name", 1).await.unwrap();
    b.type_into(&second_name, "token").await.unwrap();
    let second_value = b.by_label_nth("Value", 1).await.unwrap();
    assert_eq!(
        b.property(&second_value, "type").await.unwrap(),
        json!("password"),
        "a new field is secret, so its value is a password input"
    );
    b.type_into(&second_value, CUSTOM_TOKEN).await.unwrap();
    screenshots(&b, "create-form").await;
    b.click_text("button", "Create connection").await.unwrap();
    let err = b.wait(".field-error:not([hidden])").await.unwrap();
    assert!(b
        .text(&err)
        .await
        .unwrap()
        .contains("Field names are 1 to 64"));
    let flagged = b
        .execute(
            "return document.querySelector('[aria-invalid=true]').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(flagged, json!("host name"));
    assert_no_secrets_but_typed(&mut b, "custom form after a refused save", true).await;
    b.fill("Field name", "host").await.unwrap();
    // The secret value is still typed (a refused save keeps the form), so save again.
    b.click_text("button", "Create connection").await.unwrap();
    b.wait_text("“Warehouse” was created and is active.")
        .await
        .unwrap();
    b.wait_text("db.internal").await.unwrap();
    b.wait_text("Stored sealed; never shown").await.unwrap();
    assert_no_secrets(&mut b, "custom created").await;

    // A catalog provider: default scopes shown; this deployment has no Google app, so the
    // connection brings its own.
    b.click_text("a", "All connections").await.unwrap();
    new_connection(&b, "Google").await;
    let scopes = b.by_label("Scopes").await.unwrap();
    let scopes = b.property(&scopes, "value").await.unwrap();
    assert!(
        scopes.as_str().unwrap().contains("drive.readonly"),
        "{scopes}"
    );
    b.wait_text("no Google app configured").await.unwrap();
    b.fill("Name", "Team drive").await.unwrap();
    b.fill("Client ID", "google-client-id.apps").await.unwrap();
    b.fill("Client secret", GOOGLE_SECRET).await.unwrap();
    b.click_text("button", "Create, then connect")
        .await
        .unwrap();
    b.wait_text("Connect the account to make it active.")
        .await
        .unwrap();
    b.wait_text("google-client-id.apps").await.unwrap();
    assert_no_secrets(&mut b, "google created").await;

    // Generic OAuth 2.0 with its endpoints, connected through the popup.
    b.click_text("a", "All connections").await.unwrap();
    new_connection(&b, "OAuth 2.0 (any provider)").await;
    assert_accessible(&b, "generic OAuth form").await;
    b.fill("Name", "Test provider").await.unwrap();
    b.fill("Scopes", "openid\nemail\nread").await.unwrap();
    b.click_text("label", "My own app").await.unwrap();
    b.fill("Authorization endpoint", env.peer.authorization_endpoint())
        .await
        .unwrap();
    b.fill("Token endpoint", env.peer.token_endpoint())
        .await
        .unwrap();
    b.fill("User info endpoint", env.peer.userinfo_endpoint())
        .await
        .unwrap();
    b.fill("Revocation endpoint", env.peer.revocation_endpoint())
        .await
        .unwrap();
    b.fill("Client ID", CLIENT).await.unwrap();
    b.fill("Client secret", CLIENT_SECRET).await.unwrap();
    b.click_text("button", "Create, then connect")
        .await
        .unwrap();
    b.wait_text("Connect the account to make it active.")
        .await
        .unwrap();
    assert_no_secrets(&mut b, "generic oauth2 created").await;
    connect_in_popup(&b, "Connect account", "The account is connected").await;
    b.wait_text("user-1@example.test").await.unwrap();
    assert_no_secrets(&mut b, "oauth connected").await;
    b.click_text("a", "All connections").await.unwrap();
    wait_rows(
        &b,
        &[
            "Stripe prod",
            "Legacy API",
            "Warehouse",
            "Team drive",
            "Test provider",
        ],
    )
    .await;
    assert_eq!(
        row_status(&b, "Test provider").await.as_deref(),
        Some("Active")
    );

    // Declining consent (discovery from the issuer this time) leaves it incomplete and says so.
    new_connection(&b, "OAuth 2.0 (any provider)").await;
    b.fill("Name", "Declined").await.unwrap();
    b.fill("Scopes", "openid").await.unwrap();
    b.click_text("label", "Discover them from the issuer")
        .await
        .unwrap();
    b.fill("Issuer", env.peer.issuer()).await.unwrap();
    b.fill("Client ID", CLIENT).await.unwrap();
    b.fill("Client secret", CLIENT_SECRET).await.unwrap();
    b.fill("Extra authorization parameters", "login_hint=deny")
        .await
        .unwrap();
    b.click_text("button", "Create, then connect")
        .await
        .unwrap();
    b.wait_text("Connect the account to make it active.")
        .await
        .unwrap();
    connect_in_popup(&b, "Connect account", "Access was declined").await;
    let c = env
        .get(&format!(
            "/v1/connections/{}",
            env.id_of(PROJECT, "Declined").await
        ))
        .await
        .1;
    assert_eq!(c["data"]["status"], "incomplete");
    assert_no_secrets(&mut b, "consent declined").await;

    // A wrong client secret: the provider refuses the app, and the page says what to check.
    b.click_text("a", "All connections").await.unwrap();
    new_connection(&b, "OAuth 2.0 (any provider)").await;
    b.fill("Name", "Wrong secret").await.unwrap();
    b.fill("Scopes", "openid").await.unwrap();
    b.click_text("label", "Discover them from the issuer")
        .await
        .unwrap();
    b.fill("Issuer", env.peer.issuer()).await.unwrap();
    b.fill("Client ID", CLIENT).await.unwrap();
    b.fill("Client secret", WRONG_SECRET).await.unwrap();
    b.click_text("button", "Create, then connect")
        .await
        .unwrap();
    b.wait_text("Connect the account to make it active.")
        .await
        .unwrap();
    connect_in_popup(&b, "Connect account", "rejected the app’s credentials").await;
    b.wait_text("Check the client secret").await.unwrap();
    assert_no_secrets(&mut b, "client refused").await;
    b.click_text("button", "Delete connection").await.unwrap();
    b.wait("dialog[open]").await.unwrap();
    b.click_text("dialog button", "Delete").await.unwrap();
    b.wait_with_text("h1", "Connections").await.unwrap();

    // Filters: status, type, name search, and the empty result (the delete above ended on
    // the list).
    wait_rows(
        &b,
        &[
            "Stripe prod",
            "Legacy API",
            "Warehouse",
            "Team drive",
            "Test provider",
            "Declined",
        ],
    )
    .await;
    assert_accessible(&b, "list").await;
    b.select("Status", "Active").await.unwrap();
    wait_rows(
        &b,
        &["Stripe prod", "Legacy API", "Warehouse", "Test provider"],
    )
    .await;
    b.select("Status", "Incomplete").await.unwrap();
    wait_rows(&b, &["Team drive", "Declined"]).await;
    b.select("Status", "Inactive (expired)").await.unwrap();
    b.wait_text("No connection matches these filters.")
        .await
        .unwrap();
    b.select("Status", "All statuses").await.unwrap();
    b.select("Type", "Basic auth").await.unwrap();
    wait_rows(&b, &["Legacy API"]).await;
    b.select("Type", "All types").await.unwrap();
    b.fill("Search by name", "WARE").await.unwrap();
    wait_rows(&b, &["Warehouse"]).await;
    b.fill("Search by name", "zzz").await.unwrap();
    b.wait_text("No connection matches these filters.")
        .await
        .unwrap();
    b.click_text("button", "Clear the filters").await.unwrap();
    wait_rows(
        &b,
        &[
            "Stripe prod",
            "Legacy API",
            "Warehouse",
            "Team drive",
            "Test provider",
            "Declined",
        ],
    )
    .await;

    // Rename in place.
    b.click_text("a", "Stripe prod").await.unwrap();
    b.click_text("button", "Rename").await.unwrap();
    b.fill("New name", "Stripe (prod)").await.unwrap();
    b.click_text("button", "Save name").await.unwrap();
    b.wait_with_text("h1", "Stripe (prod)").await.unwrap();
    b.refresh().await.unwrap();
    b.wait_with_text("h1", "Stripe (prod)").await.unwrap();

    // Replace the secret: the API now hands out the new one.
    b.fill("New API key", API_KEY_2).await.unwrap();
    b.click_text("button", "Save the new secret").await.unwrap();
    b.wait_text("The new secret is saved.").await.unwrap();
    b.wait_text("Secret replaced").await.unwrap();
    assert_no_secrets(&mut b, "secret replaced").await;
    let stripe = env.id_of(PROJECT, "Stripe (prod)").await;
    let (_, creds) = env
        .get(&format!("/v1/connections/{stripe}/credentials"))
        .await;
    assert_eq!(creds["data"]["api_key"], API_KEY_2);

    // A grant revoked at the provider turns Expired in the list; reconnecting recovers it.
    let provider_id = env.id_of(PROJECT, "Test provider").await;
    let (status, creds) = env
        .get(&format!("/v1/connections/{provider_id}/credentials"))
        .await;
    assert_eq!(status, 200, "{creds}");
    env.peer
        .revoke_grant(creds["data"]["access_token"].as_str().unwrap())
        .await
        .unwrap();
    b.click_text("a", "All connections").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        wait_rows(
            &b,
            &[
                "Stripe (prod)",
                "Legacy API",
                "Warehouse",
                "Team drive",
                "Test provider",
                "Declined",
            ],
        )
        .await;
        if row_status(&b, "Test provider").await.as_deref() == Some("Expired") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked connection never showed Expired"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.refresh().await.unwrap();
    }
    b.click_text("a", "Test provider").await.unwrap();
    b.wait_text("This connection has expired.").await.unwrap();
    b.wait_text("no longer accepts this connection’s authorization")
        .await
        .unwrap();
    b.wait_text("Reconnect to sign in to the account again.")
        .await
        .unwrap();
    connect_in_popup(&b, "Reconnect", "The account is connected").await;
    b.wait_text("Connected to the account (Expired → Active)")
        .await
        .unwrap();
    assert_no_secrets(&mut b, "reconnected").await;
    assert_accessible(&b, "details").await;
    screenshots(&b, "details").await;

    // Delete, after a flow used it: the confirmation names the flow.
    let legacy = env.id_of(PROJECT, "Legacy API").await;
    let (status, _) = env
        .get(&format!(
            "/v1/connections/{legacy}/credentials?flow_id=invoice-sync"
        ))
        .await;
    assert_eq!(status, 200);
    b.click_text("a", "All connections").await.unwrap();
    b.click_text("a", "Legacy API").await.unwrap();
    b.wait_text("Used by flows (1)").await.unwrap();
    b.click_text("button", "Delete connection").await.unwrap();
    let dialog = b.wait("dialog[open]").await.unwrap();
    let text = b.text(&dialog).await.unwrap();
    assert!(
        text.contains("invoice-sync") && text.contains("1 flow uses it"),
        "{text}"
    );
    b.click_text("dialog button", "Delete").await.unwrap();
    wait_rows(
        &b,
        &[
            "Stripe (prod)",
            "Warehouse",
            "Team drive",
            "Test provider",
            "Declined",
        ],
    )
    .await;
    assert_eq!(env.get(&format!("/v1/connections/{legacy}")).await.0, 404);

    // The list, light and dark, after flow counts have loaded.
    b.wait_with_text("table.connections td.flows", "0")
        .await
        .unwrap();
    screenshots(&b, "list").await;
    b.color_scheme("dark").await.unwrap();
    for dir in screenshot_dirs() {
        b.screenshot(1280, &dir.join("list-dark-desktop.png"))
            .await
            .unwrap();
    }
    b.color_scheme("light").await.unwrap();
    assert_no_secrets(&mut b, "the end").await;
    b.quit().await.unwrap();
}

#[tokio::test]
async fn an_access_key_sees_its_project_works_by_keyboard_and_a_401_returns_to_sign_in() {
    let mut b = Chromium::start().await.unwrap();
    let env = Env::start().await;
    let (status, key) = env
        .post(
            "/v1/access-keys",
            json!({ "project_id": "proj-key", "name": "ui", "scopes": ["connections:read", "connections:write"] }),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let token = key["data"]["key"].as_str().unwrap().to_owned();
    let key_id = key["data"]["id"].as_str().unwrap().to_owned();
    // Another project's connection, which the key must not see.
    let (status, _) = env
        .post(
            "/v1/connections",
            json!({ "name": "Elsewhere", "project_id": "other", "type": "api_key", "config": { "api_key": API_KEY } }),
        )
        .await;
    assert_eq!(status, 201);

    // A wrong key is refused on the sign-in form.
    sign_in(&b, &env, "lk_not_a_real_key").await;
    b.wait_text("That key was not accepted").await.unwrap();
    let stored = b
        .execute("return sessionStorage.length;", vec![])
        .await
        .unwrap();
    assert_eq!(stored, json!(0), "a refused key is not kept");

    // By keyboard only: the sign-in field, Enter; then New connection, API key, the form.
    b.goto(&env.url("/ui/")).await.unwrap();
    b.wait_with_text("h1", "Sign in").await.unwrap();
    b.press("\u{E004}").await.unwrap(); // Tab from the heading to the field
    let focused = b
        .execute(
            "const a = document.activeElement; return [a.type, a.labels[0].textContent, getComputedStyle(a).outlineStyle];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(focused[0], "password");
    assert_eq!(focused[1], "Admin token or access key");
    assert_ne!(focused[2], "none", "the focused field shows its focus");
    b.press(&format!("{token}\u{E007}")).await.unwrap(); // Enter submits
                                                         // A key sees its own project: no project choice.
    b.wait_text("No connections yet").await.unwrap();
    b.wait_text("Project proj-key").await.unwrap();
    assert!(!b.page_text().await.unwrap().contains("Change project"));
    assert!(!b.page_text().await.unwrap().contains("Elsewhere"));
    b.wait_text("Access key · proj-key").await.unwrap();
    b.press("\u{E004}").await.unwrap(); // to "New connection"
    let focused = b
        .execute(
            "const a = document.activeElement; return [a.textContent, getComputedStyle(a).outlineStyle];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(focused[0], "New connection");
    assert_ne!(focused[1], "none", "the focused link shows its focus");
    b.press("\u{E007}").await.unwrap();
    b.wait_with_text("h1", "New connection").await.unwrap();
    b.press("\u{E004}\u{E007}").await.unwrap(); // the first type: API key
    b.wait_with_text("h1", "New API key connection")
        .await
        .unwrap();
    // The form focuses its first field.
    b.press(&format!("Keyboard key\u{E004}{API_KEY}\u{E007}"))
        .await
        .unwrap();
    b.wait_text("“Keyboard key” was created and is active.")
        .await
        .unwrap();
    assert_no_secrets(&mut b, "created by keyboard").await;

    // The key is revoked while the page is open: the next request lands on sign-in.
    let r = env
        .http
        .delete(env.url(&format!("/v1/access-keys/{key_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    b.click_text("a", "All connections").await.unwrap();
    b.wait_text("You were signed out: Unknown or revoked access key.")
        .await
        .unwrap();
    b.wait_with_text("h1", "Sign in").await.unwrap();
    let stored = b
        .execute("return sessionStorage.length;", vec![])
        .await
        .unwrap();
    assert_eq!(stored, json!(0), "the dead key is gone from the tab");

    // The admin picks a project from those that have connections, and pages through it.
    for i in 0..27 {
        let (status, body) = env
            .post(
                "/v1/connections",
                json!({ "name": format!("Key {i:02}"), "project_id": "proj-many", "type": "api_key", "config": { "api_key": "k" } }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    sign_in(&b, &env, ADMIN_TOKEN).await;
    b.wait_with_text("h1", "Choose a project").await.unwrap();
    b.wait_with_text("button", "proj-key").await.unwrap();
    b.wait_with_text("button", "other").await.unwrap();
    b.click_text("button", "proj-many").await.unwrap();
    b.wait_text("Page 1").await.unwrap();
    let first = wait_row_count(&b, 25).await;
    b.click_text("button", "Next page").await.unwrap();
    b.wait_text("Page 2").await.unwrap();
    let second = wait_row_count(&b, 2).await;
    let mut all: Vec<String> = first.iter().chain(second.iter()).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 27, "the two pages show every connection once");
    assert!(!b.page_text().await.unwrap().contains("Next page"));
    b.click_text("button", "Previous page").await.unwrap();
    b.wait_text("Page 1").await.unwrap();
    assert_eq!(wait_row_count(&b, 25).await, first);

    // The history pages: 1 creation + 21 replacements = 22 events, 20 to a page.
    let key00 = env.id_of("proj-many", "Key 00").await;
    for i in 0..21 {
        let r = env
            .http
            .patch(env.url(&format!("/v1/connections/{key00}")))
            .json(&json!({ "config": { "api_key": format!("k{i}") } }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    // The list is not ordered by name, so Key 00 may be on either page: find it by name.
    b.fill("Search by name", "Key 00").await.unwrap();
    wait_rows(&b, &["Key 00"]).await;
    b.click_text("a", "Key 00").await.unwrap();
    b.wait_with_text("h1", "Key 00").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while timeline_len(&b).await != 20 {
        assert!(
            Instant::now() < deadline,
            "the first history page never showed 20 events"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    b.click_text("button", "Show older events").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while timeline_len(&b).await != 22 {
        assert!(
            Instant::now() < deadline,
            "the second history page never arrived"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let more = b.find_all("button").await.unwrap();
    for e in more {
        assert_ne!(
            b.text(&e).await.unwrap(),
            "Show older events",
            "no third page"
        );
    }

    // Sign out clears the admin token too.
    b.click_text("button", "Sign out").await.unwrap();
    b.wait_text("You are signed out.").await.unwrap();
    let stored = b
        .execute(
            "return sessionStorage.length + localStorage.length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!(0));
    // Signing out from a details page once threw (a function named `history` shadowed
    // window.history): the console must hold no script error.
    assert_no_secrets(&mut b, "signed out").await;
    b.quit().await.unwrap();
}

/// What the page's safety rests on, at the HTTP level: the CSP and headers, the embedded
/// files, and the callback page posting to this server's own origin by default.
#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_the_callback_posts_to_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = raw.get(server.url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);
    assert_eq!(r.headers()["location"], "/ui/");
    for (path, content_type) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/api.js", "text/javascript; charset=utf-8"),
        ("/ui/dom.js", "text/javascript; charset=utf-8"),
        ("/ui/forms.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let r = raw.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
    }
    let r = raw.get(server.url("/ui/secrets.txt")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    // The callback page tells its opener at this server's origin (the public URL's), never `*`.
    let r = raw
        .get(server.url(&format!("{CALLBACK_PATH}?state=nope&code=x")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let page = r.text().await.unwrap();
    assert!(
        page.contains(&format!("postMessage(m,\"{}\")", server.base_url)),
        "{page}"
    );
    assert!(!page.contains("\"*\""));
}

/// The API additions the page relies on: who the bearer is, the connection types with
/// their default scopes, a name search, and errors that name their field.
#[tokio::test]
async fn the_api_says_who_calls_lists_types_searches_names_and_names_bad_fields() {
    let env = Env::start().await;
    let (status, me) = env.get("/v1/me").await;
    assert_eq!(status, 200);
    assert_eq!(
        me["data"],
        json!({ "kind": "admin", "project_id": null, "scopes": ["connections:read", "connections:write", "credentials:read", "metrics:read"] })
    );
    let (_, key) = env
        .post(
            "/v1/access-keys",
            json!({ "project_id": "p-me", "scopes": ["connections:read"] }),
        )
        .await;
    let r = reqwest::Client::new()
        .get(env.url("/v1/me"))
        .bearer_auth(key["data"]["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["data"]["kind"], "access_key");
    assert_eq!(me["data"]["project_id"], "p-me");
    assert_eq!(me["data"]["id"], key["data"]["id"]);
    assert_eq!(me["data"]["scopes"], json!(["connections:read"]));
    let r = reqwest::Client::new()
        .get(env.url("/v1/me"))
        .bearer_auth("lk_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let (status, types) = env.get("/v1/connection-types").await;
    assert_eq!(status, 200);
    let types = types["data"].as_array().unwrap();
    assert_eq!(types.len(), 10);
    let google = types.iter().find(|t| t["type"] == "google").unwrap();
    assert_eq!(google["label"], "Google");
    assert_eq!(google["oauth"], true);
    assert_eq!(google["has_default_app"], false);
    assert!(google["default_scopes"]
        .as_array()
        .unwrap()
        .contains(&json!("https://www.googleapis.com/auth/drive.readonly")));
    let api_key = types.iter().find(|t| t["type"] == "api_key").unwrap();
    assert_eq!(api_key["oauth"], false);
    assert!(api_key.get("default_scopes").is_none());

    for name in ["Sales EU", "sales us", "Billing", "50% off", "50x off"] {
        let (status, body) = env
            .post(
                "/v1/connections",
                json!({ "name": name, "project_id": "p-q", "type": "api_key", "config": { "api_key": "k" } }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let names = |body: Value| {
        let mut v: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let (_, body) = env.get("/v1/connections?project_id=p-q&q=SALES").await;
    assert_eq!(names(body), ["Sales EU", "sales us"]);
    let (_, body) = env.get("/v1/connections?project_id=p-q&q=50%25").await;
    assert_eq!(names(body), ["50% off"]);
    let (_, body) = env.get("/v1/connections?project_id=p-q&q=s&limit=1").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let cursor = body["page"]["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = env
        .get(&format!(
            "/v1/connections?project_id=p-q&q=s&after={cursor}"
        ))
        .await;
    let mut all = names(body);
    all.extend(names(rest));
    all.sort();
    assert_eq!(all, ["Sales EU", "sales us"], "paging keeps the search");
    let (status, body) = env
        .get(&format!(
            "/v1/connections?project_id=p-q&q={}",
            "x".repeat(201)
        ))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "q");

    let (status, body) = env
        .post(
            "/v1/connections",
            json!({ "name": "x", "project_id": "p-q", "type": "custom", "config": { "fields": { "bad name": { "value": "v" } } } }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_field");
    assert_eq!(body["error"]["field"], "config.fields.bad name");
    let (status, body) = env
        .post(
            "/v1/connections",
            json!({ "project_id": "p-q", "type": "api_key", "config": { "api_key": "k" } }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "missing_field");
    assert_eq!(body["error"]["field"], "name");
    let (status, body) = env
        .post(
            "/v1/connections",
            json!({ "name": "Billing", "project_id": "p-q", "type": "api_key", "config": { "api_key": "k" } }),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["field"], "name");
}
