//! A real browser for the management page's tests: Debian's `chromium`, driven through
//! Debian's `chromedriver` over the W3C WebDriver protocol (plain JSON over HTTP on a
//! loopback port, spoken with reqwest). Both must be installed (`apt-get install chromium
//! chromium-driver`; `.ci/run` does it); without them the tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::server::free_port;

/// The W3C key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long `wait_*` helpers wait by default. Generous: two shared cores.
pub const WAIT: Duration = Duration::from_secs(20);

/// A headless Chromium session with a fresh profile. Chromium and chromedriver stop on drop.
#[derive(Debug)]
pub struct Chromium {
    driver: Option<Child>,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
    /// Console entries read so far (reading drains chromedriver's buffer).
    console: Vec<Value>,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn find_binary(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() {
            if p.exists() {
                return Some(p.to_path_buf());
            }
            continue;
        }
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let full = dir.join(c);
                if full.exists() {
                    return Some(full);
                }
            }
        }
    }
    None
}

impl Chromium {
    /// Starts chromedriver on a free loopback port and opens a headless session.
    pub async fn start() -> Result<Self> {
        let chromium = find_binary(
            "LATCHKEY_TEST_CHROMIUM",
            // The real binary first: /usr/bin/chromium is a launcher script adding flags.
            &["/usr/lib/chromium/chromium", "chromium", "chromium-browser"],
        )
        .ok_or_else(|| {
            anyhow!(
                "Chromium is not installed: the browser tests need Debian's `chromium` and \
                 `chromium-driver` packages (apt-get install -y chromium chromium-driver), or \
                 LATCHKEY_TEST_CHROMIUM / LATCHKEY_TEST_CHROMEDRIVER pointing at them"
            )
        })?;
        let chromedriver = find_binary("LATCHKEY_TEST_CHROMEDRIVER", &["chromedriver"])
            .ok_or_else(|| {
                anyhow!(
                    "chromedriver is not installed: the browser tests need Debian's \
                     `chromium-driver` package (apt-get install -y chromium chromium-driver)"
                )
            })?;
        let port = free_port()?;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .no_proxy()
            .build()?;
        let profile = tempfile::tempdir()?;
        let mut me = Self {
            driver: Some(driver),
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http,
            _profile: profile,
            console: Vec::new(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = me
                .http
                .get(format!("{}/status", me.base))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if let Some(status) = me.driver.as_mut().and_then(|d| d.try_wait().ok().flatten()) {
                bail!("chromedriver exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile_dir = me._profile.path().display().to_string();
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--no-default-browser-check",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--disable-extensions", "--disable-default-apps",
                        "--disable-domain-reliability", "--disable-client-side-phishing-detection",
                        "--metrics-recording-only", "--password-store=basic",
                        "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
                        "--window-size=1280,900",
                        format!("--user-data-dir={profile_dir}"),
                    ],
                },
                "goog:loggingPrefs": { "browser": "ALL" },
                "unhandledPromptBehavior": "ignore",
            }}
        });
        let v = me.raw("POST", "/session", Some(caps)).await?;
        me.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("new session answered without sessionId: {v}"))?
            .to_owned();
        Ok(me)
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "WebDriver {method} {path}: {status} {} {}",
                value["error"],
                value["message"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            );
        }
        Ok(value)
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.raw(method, &format!("/session/{}{}", self.session, path), body)
            .await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(|_| ())
    }

    pub async fn current_url(&self) -> Result<String> {
        Ok(self
            .cmd("GET", "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn refresh(&self) -> Result<()> {
        self.cmd("POST", "/refresh", None).await.map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits for the first element matching `css`.
    pub async fn wait(&self, css: &str) -> Result<Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() > deadline {
                let text = self.page_text().await.unwrap_or_default();
                bail!("no element {css:?} after {WAIT:?}; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's visible text contains `text`.
    pub async fn wait_text(&self, text: &str) -> Result<()> {
        self.wait_text_for(text, WAIT).await
    }

    pub async fn wait_text_for(&self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let page = self.page_text().await?;
            if page.contains(text) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the page never said {text:?} (waited {timeout:?}); it says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The visible text of the page.
    pub async fn page_text(&self) -> Result<String> {
        Ok(self
            .execute("return document.body.innerText;", vec![])
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The first element matching `css` whose text contains `text`, waiting for it.
    pub async fn wait_with_text(&self, css: &str, text: &str) -> Result<Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            for e in self.find_all(css).await? {
                if self.text(&e).await.unwrap_or_default().contains(text) {
                    return Ok(e);
                }
            }
            if Instant::now() > deadline {
                let page = self.page_text().await.unwrap_or_default();
                bail!("no {css:?} containing {text:?}; the page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        // Into the middle of the viewport first: chromedriver's own scrolling puts an
        // element at the very edge, where a click on a long page was seen to focus the
        // button without firing its click.
        self.execute(
            "arguments[0].scrollIntoView({ block: 'center', inline: 'nearest' });",
            vec![Self::arg(e)],
        )
        .await?;
        self.cmd("POST", &format!("/element/{}/click", e.0), None)
            .await
            .map(|_| ())
    }

    /// Clicks the first `css` element whose text contains `text`.
    pub async fn click_text(&self, css: &str, text: &str) -> Result<()> {
        let e = self.wait_with_text(css, text).await?;
        self.click(&e).await
    }

    /// Clears the element and types `keys` into it.
    pub async fn type_into(&self, e: &Element, keys: &str) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/clear", e.0), None)
            .await?;
        self.send_keys(e, keys).await
    }

    pub async fn send_keys(&self, e: &Element, keys: &str) -> Result<()> {
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": keys })),
        )
        .await
        .map(|_| ())
    }

    /// Fills the control labelled `label` (its `<label>` text, exactly, ignoring a trailing
    /// "(optional)"), the way a user finds a field.
    pub async fn fill(&self, label: &str, keys: &str) -> Result<()> {
        let e = self.by_label(label).await?;
        self.type_into(&e, keys).await
    }

    /// The control whose label reads `label`, waiting for it to be shown.
    pub async fn by_label(&self, label: &str) -> Result<Element> {
        self.by_label_nth(label, 0).await
    }

    /// The `n`th (from 0) visible control labelled `label`, waiting for it.
    pub async fn by_label_nth(&self, label: &str, n: usize) -> Result<Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self
                .execute(
                    r#"const want = arguments[0];
                    const out = [];
                    for (const l of document.querySelectorAll('label')) {
                      const t = l.textContent.replace(/\s*\(optional\)\s*$/, '').trim();
                      const c = l.control;
                      if (t === want && c && c.getClientRects().length > 0) out.push(c);
                    }
                    return out;"#,
                    vec![json!(label)],
                )
                .await?;
            let found: Vec<Element> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(e) = found.into_iter().nth(n) {
                return Ok(e);
            }
            if Instant::now() > deadline {
                let page = self.page_text().await.unwrap_or_default();
                bail!("no visible control #{n} labelled {label:?}; the page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Turns the checkbox labelled `label` (the `n`th) on or off.
    pub async fn set_checkbox(&self, label: &str, n: usize, on: bool) -> Result<()> {
        let e = self.by_label_nth(label, n).await?;
        if self.property(&e, "checked").await? != Value::Bool(on) {
            self.click(&e).await?;
        }
        Ok(())
    }

    /// An element as a script argument.
    pub fn arg(e: &Element) -> Value {
        json!({ ELEMENT_KEY: e.0 })
    }

    /// Chooses the option whose text is `option` in the select labelled `label`.
    pub async fn select(&self, label: &str, option: &str) -> Result<()> {
        let e = self.by_label(label).await?;
        let ok = self
            .execute(
                r#"const [s, want] = arguments;
                const o = [...s.options].find((o) => o.textContent.trim() === want);
                if (!o) return false;
                s.focus();
                s.value = o.value;
                s.dispatchEvent(new Event('input', { bubbles: true }));
                s.dispatchEvent(new Event('change', { bubbles: true }));
                return true;"#,
                vec![Self::arg(&e), json!(option)],
            )
            .await?;
        if ok != Value::Bool(true) {
            bail!("the select {label:?} has no option {option:?}");
        }
        Ok(())
    }

    pub async fn text(&self, e: &Element) -> Result<String> {
        Ok(self
            .cmd("GET", &format!("/element/{}/text", e.0), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn property(&self, e: &Element, name: &str) -> Result<Value> {
        self.cmd("GET", &format!("/element/{}/property/{name}", e.0), None)
            .await
    }

    pub async fn window_handles(&self) -> Result<Vec<String>> {
        let v = self.cmd("GET", "/window/handles", None).await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn window_handle(&self) -> Result<String> {
        Ok(self
            .cmd("GET", "/window", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn switch_to(&self, handle: &str) -> Result<()> {
        self.cmd("POST", "/window", Some(json!({ "handle": handle })))
            .await
            .map(|_| ())
    }

    /// Keys pressed on whatever has the focus (W3C actions), such as "\u{E004}" for Tab.
    pub async fn press(&self, keys: &str) -> Result<()> {
        let mut actions = Vec::new();
        for c in keys.chars() {
            actions.push(json!({ "type": "keyDown", "value": c.to_string() }));
            actions.push(json!({ "type": "keyUp", "value": c.to_string() }));
        }
        self.cmd(
            "POST",
            "/actions",
            Some(json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] })),
        )
        .await?;
        self.cmd("DELETE", "/actions", None).await.map(|_| ())
    }

    /// A Chrome DevTools Protocol command, through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Result<Value> {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
        .await
    }

    /// Emulates a viewport `width` CSS pixels wide (a phone below 500) and `height` high.
    pub async fn viewport(&self, width: u32, height: u32) -> Result<()> {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500 }),
        )
        .await
        .map(|_| ())
    }

    /// `prefers-color-scheme` as `light` or `dark`.
    pub async fn color_scheme(&self, scheme: &str) -> Result<()> {
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )
        .await
        .map(|_| ())
    }

    /// A PNG of the whole page at `width` CSS pixels, written to `path`. Returns whether the
    /// page is wider than the viewport (horizontal scrolling), which a layout must avoid.
    pub async fn screenshot(&self, width: u32, path: &Path) -> Result<bool> {
        self.viewport(width, 800).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dims = self
            .execute(
                "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];",
                vec![],
            )
            .await?;
        let scroll_width = dims[0].as_u64().unwrap_or(0);
        let height = dims[1].as_u64().unwrap_or(800).clamp(400, 4000) as u32;
        self.viewport(width, height).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": false }),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .context("decoding the screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        self.cdp("Emulation.clearDeviceMetricsOverride", json!({}))
            .await?;
        Ok(scroll_width > u64::from(width))
    }

    /// Every console entry of the page so far (levels and messages).
    pub async fn console(&mut self) -> Result<Vec<Value>> {
        let v = self
            .cmd("POST", "/se/log", Some(json!({ "type": "browser" })))
            .await?;
        if let Some(a) = v.as_array() {
            self.console.extend(a.iter().cloned());
        }
        Ok(self.console.clone())
    }

    /// Ends the session; chromium exits with it.
    pub async fn quit(mut self) -> Result<()> {
        let _ = self
            .raw("DELETE", &format!("/session/{}", self.session), None)
            .await;
        self.session.clear();
        if let Some(mut d) = self.driver.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        Ok(())
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ending the session makes chromedriver close its chromium; a blocking request,
            // since drop (after a failed assertion, say) cannot await.
            end_session_blocking(&self.base, &self.session);
        }
        if let Some(mut d) = self.driver.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn end_session_blocking(base: &str, session: &str) {
    use std::io::{Read, Write};
    let Some(addr) = base.strip_prefix("http://") else {
        return;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}
