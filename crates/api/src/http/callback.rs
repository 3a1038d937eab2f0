//! The page the provider's redirect lands on: says what happened, tells a popup
//! opener (only at the configured origin, never `*`), and closes itself.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use serde_json::json;

pub struct CallbackPage<'a> {
    pub status: StatusCode,
    pub ok: bool,
    pub title: &'a str,
    pub message: &'a str,
    pub connection_id: Option<String>,
    pub target_origin: &'a str,
    pub nonce: &'a str,
}

pub fn render(page: CallbackPage<'_>) -> HttpResponse {
    let payload = json!({
        "type": "latchkey:oauth2",
        "status": if page.ok { "success" } else { "error" },
        "connection_id": page.connection_id,
        "message": page.message,
    });
    let script = format!(
        "(function(){{var m={};try{{if(window.opener){{window.opener.postMessage(m,{});}}}}catch(e){{}}setTimeout(function(){{window.close();}},{});}})();",
        script_json(&payload),
        script_json(&json!(page.target_origin)),
        if page.ok { 1500 } else { 8000 },
    );
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
<style nonce=\"{nonce}\">body{{font:16px system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}h1{{font-size:1.3rem}}.ok{{color:#176f2c}}.err{{color:#a31515}}</style></head>\
<body><h1 class=\"{class}\">{title}</h1><p>{message}</p><p>You can close this window.</p><script nonce=\"{nonce}\">{script}</script></body></html>",
        title = html_escape(page.title),
        message = html_escape(page.message),
        class = if page.ok { "ok" } else { "err" },
        nonce = page.nonce,
        script = script,
    );
    HttpResponse::build(page.status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            format!("default-src 'none'; script-src 'nonce-{0}'; style-src 'nonce-{0}'; frame-ancestors 'none'; base-uri 'none'", page.nonce),
        ))
        .body(body)
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe to embed inside a `<script>` element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_posts_only_to_the_configured_origin() {
        let res = render(CallbackPage {
            status: StatusCode::OK,
            ok: false,
            title: "t",
            message: "<script>alert(1)</script>",
            connection_id: None,
            target_origin: "https://app.example",
            nonce: "n0nce",
        });
        assert_eq!(
            res.headers().get(header::REFERRER_POLICY).unwrap(),
            "no-referrer"
        );
        let body = actix_web::body::to_bytes(res.into_body());
        let body = futures_lite_block_on(body);
        assert!(!body.contains("<script>alert"));
        assert!(body.contains("\"https://app.example\""));
        assert!(!body.contains("'*'") && !body.contains("\"*\""));
    }

    fn futures_lite_block_on<
        F: std::future::Future<Output = Result<actix_web::web::Bytes, E>>,
        E: std::fmt::Debug,
    >(
        f: F,
    ) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        String::from_utf8(rt.block_on(f).unwrap().to_vec()).unwrap()
    }
}
