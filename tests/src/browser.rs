//! A minimal user agent for consent flows: a cookie jar, and redirects followed by hand so a
//! test can stop right before the client's redirect URI and decide what to do with it.

use anyhow::{bail, Context, Result};
use reqwest::{redirect, StatusCode};
use url::Url;

/// Redirect chains longer than this are a loop, not a consent flow.
const MAX_HOPS: usize = 20;

/// A browser with a cookie jar that never follows redirects on its own.
#[derive(Debug, Clone)]
pub struct Browser {
    client: reqwest::Client,
}

impl Browser {
    pub fn new() -> Result<Self> {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(redirect::Policy::none())
            .build()
            .context("building the browser's HTTP client")?;
        Ok(Self { client })
    }

    /// The underlying client (cookie jar included, redirects disabled).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Follows redirects from `start` and returns the first URL that starts with
    /// `stop_prefix`, without requesting it. Fails on any non-redirect response before that,
    /// with its status and body, so provider error pages show up in test failures.
    pub async fn follow_until(&self, start: impl AsRef<str>, stop_prefix: &str) -> Result<Url> {
        let mut url = Url::parse(start.as_ref()).context("parsing the start URL")?;
        for _ in 0..=MAX_HOPS {
            if url.as_str().starts_with(stop_prefix) {
                return Ok(url);
            }
            let resp = self
                .client
                .get(url.clone())
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = resp.status();
            if !is_redirect(status) {
                let body = resp.text().await.unwrap_or_default();
                bail!(
                    "GET {url} answered {status} before reaching {stop_prefix}: {}",
                    truncate(&body, 2000)
                );
            }
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .with_context(|| format!("{status} from {url} without Location"))?
                .to_str()
                .context("non-ASCII Location header")?;
            // Locations may be relative (oidc-provider's interaction URLs are).
            url = url
                .join(location)
                .with_context(|| format!("bad Location {location:?} from {url}"))?;
        }
        bail!("more than {MAX_HOPS} redirects without reaching {stop_prefix}")
    }

    /// Fetches `url` once (GET, no redirect following), with the browser's cookies.
    pub async fn open(&self, url: impl AsRef<str>) -> Result<reqwest::Response> {
        let url = url.as_ref();
        self.client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
