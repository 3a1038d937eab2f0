//! The management page (issue 8): static files compiled into the binary with
//! `include_bytes!`, so the binary needs nothing at run time, served under a strict
//! Content-Security-Policy. The page talks to the public JSON API only.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::error::ApiError;

/// Scripts, styles, images and fetches from this origin only; no inline script or eval,
/// no framing, no `<base>`, forms post nowhere else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Where the page lives; `/` redirects here.
pub const UI_PATH: &str = "/ui/";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../ui/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("forms.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(to_ui))
        .route("/ui", web::get().to(to_ui))
        .route("/ui/", web::get().to(index))
        .route("/ui/{file}", web::get().to(file));
}

async fn to_ui() -> HttpResponse {
    with_headers(HttpResponse::Found().insert_header((header::LOCATION, UI_PATH))).finish()
}

async fn index() -> HttpResponse {
    serve("index.html").unwrap_or_else(|| HttpResponse::NotFound().finish())
}

async fn file(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&name).ok_or_else(|| ApiError::not_found("file"))
}

fn serve(name: &str) -> Option<HttpResponse> {
    let asset = ASSETS.iter().find(|a| a.name == name)?;
    Some(
        with_headers(&mut HttpResponse::Ok())
            .insert_header((header::CONTENT_TYPE, asset.content_type))
            // Revalidate on every load: a new binary must not run with an old script.
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(asset.body),
    )
}

fn with_headers(res: &mut actix_web::HttpResponseBuilder) -> &mut actix_web::HttpResponseBuilder {
    res.insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_referenced_asset_is_embedded_and_nothing_inline() {
        let index = std::str::from_utf8(ASSETS[0].body).unwrap();
        for a in ASSETS {
            let text = String::from_utf8_lossy(a.body);
            assert!(!text.is_empty(), "{} is empty", a.name);
            // Plain ES modules only: no remote code, no eval.
            assert!(
                !text.contains("http://") || a.name == "icon.svg",
                "{}",
                a.name
            );
            assert!(!text.contains("eval("), "{}", a.name);
            assert!(!text.contains("new Function"), "{}", a.name);
        }
        assert!(!index.contains("<script>"), "inline script in index.html");
        assert!(!index.contains("style="), "inline style in index.html");
        assert!(!index.contains("<style"), "inline style in index.html");
        for name in ["app.js", "style.css", "icon.svg"] {
            assert!(index.contains(name), "index.html does not load {name}");
        }
    }
}
