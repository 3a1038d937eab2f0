//! Classification of provider failures into [`OAuthError`], the refresh engine's input.

use std::fmt;

use latchkey_ports::OAuthError;
use oauth2::RequestTokenError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest provider-supplied text we keep in an error.
const MAX_TEXT_CHARS: usize = 300;

/// An RFC 6749 §5.2 error body. `error` is a plain string so that unregistered codes
/// (GitHub's `bad_verification_code`, …) are kept as given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_uri: Option<String>,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl oauth2::ErrorResponse for WireError {}

/// The `error` and `error_description` of a body, if it is a JSON object with a
/// non-empty string `error`.
pub(crate) fn oauth_error_in(body: &[u8]) -> Option<(String, Option<String>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    oauth_error_in_value(&v)
}

fn oauth_error_in_value(v: &Value) -> Option<(String, Option<String>)> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|e| !e.is_empty());
    if let Some(error) = text("error") {
        return Some((
            error.to_owned(),
            text("error_description").map(str::to_owned),
        ));
    }
    // Notion answers in its API error shape: {"object":"error","code":…,"message":…}.
    if text("object") == Some("error") {
        if let Some(code) = text("code") {
            return Some((code.to_owned(), text("message").map(str::to_owned)));
        }
    }
    None
}

/// The secrets of one request, removed from any provider text we keep: some servers echo
/// the code or refresh token they reject in `error_description`.
#[derive(Default)]
pub(crate) struct Redactor<'a>(Vec<&'a str>);

impl<'a> Redactor<'a> {
    pub(crate) fn new(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        Self(secrets.into_iter().filter(|s| !s.is_empty()).collect())
    }

    /// `text` without the secrets, without control characters, and bounded in length.
    pub(crate) fn clean(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            out = out.replace(s, "[redacted]");
        }
        let mut cleaned: String = out
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_TEXT_CHARS)
            .collect();
        if out.chars().count() > MAX_TEXT_CHARS {
            cleaned.push('…');
        }
        cleaned
    }
}

/// Maps an OAuth error code to its class.
pub(crate) fn classify(error: &str, description: Option<String>, r: &Redactor<'_>) -> OAuthError {
    let description = description.map(|d| r.clean(&d));
    let code = r.clean(error);
    match error {
        // GitHub's names for a dead code or refresh token.
        "invalid_grant" | "bad_verification_code" | "bad_refresh_token" => {
            OAuthError::InvalidGrant(description)
        }
        "invalid_client" | "unauthorized_client" | "incorrect_client_credentials" => {
            OAuthError::InvalidClient {
                error: code,
                description,
            }
        }
        // RFC 6749 §4.1.2.1 codes that some token endpoints also use: the server says
        // it cannot answer now, which is worth a retry, not a broken grant.
        "temporarily_unavailable" | "server_error" => OAuthError::Transient {
            reason: match description {
                Some(d) => format!("the provider answered {code}: {d}"),
                None => format!("the provider answered {code}"),
            },
            retry_after: None,
        },
        _ => OAuthError::Provider {
            error: code,
            description,
        },
    }
}

/// Maps a failure of an `oauth2`-crate token request.
pub(crate) fn token_error(
    e: RequestTokenError<OAuthError, WireError>,
    r: &Redactor<'_>,
) -> OAuthError {
    match e {
        RequestTokenError::Request(e) => e,
        RequestTokenError::ServerResponse(w) => classify(&w.error, w.error_description, r),
        RequestTokenError::Parse(err, body) => {
            diagnose_token_body(&body, &err.path().to_string(), r)
        }
        RequestTokenError::Other(msg) => {
            OAuthError::Protocol(format!("the token endpoint: {}", r.clean(&msg)))
        }
    }
}

/// Why a token endpoint's 200 answer did not parse. The serde message is not used: it
/// may quote the offending value, which may be a token.
fn diagnose_token_body(body: &[u8], path: &str, r: &Redactor<'_>) -> OAuthError {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let html = body
            .iter()
            .take(512)
            .map(u8::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .windows(5)
            .any(|w| w == b"<html" || w == b"<!doc");
        return OAuthError::Protocol(if html {
            "the token endpoint answered with an HTML page, not JSON".to_owned()
        } else {
            "the token endpoint answered with a body that is not JSON".to_owned()
        });
    };
    if !v.is_object() {
        return OAuthError::Protocol("the token response is not a JSON object".to_owned());
    }
    // GitHub reports token errors with HTTP 200 and an `error` field.
    if let Some((error, description)) = oauth_error_in_value(&v) {
        return classify(&error, description, r);
    }
    match v.get("access_token") {
        Some(Value::String(s)) if !s.is_empty() => OAuthError::Protocol(format!(
            "the token response has an invalid value at `{}`",
            r.clean(path)
        )),
        _ => OAuthError::Protocol("the token response has no access_token".to_owned()),
    }
}

/// Reads `name="value"` (or `name=value`) from a `WWW-Authenticate` challenge (RFC 6750 §3).
pub(crate) fn auth_param(challenge: &str, name: &str) -> Option<String> {
    let mut rest = challenge;
    while let Some(i) = rest.find(name) {
        let before = rest[..i].chars().next_back();
        let after = &rest[i + name.len()..];
        if before.is_none_or(|c| c == ' ' || c == ',') {
            if let Some(value) = after.trim_start().strip_prefix('=') {
                let value = value.trim_start();
                return Some(match value.strip_prefix('"') {
                    Some(q) => q.split('"').next().unwrap_or_default().to_owned(),
                    None => value
                        .split([',', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_lose_echoed_secrets_and_control_characters() {
        let r = Redactor::new(["rt-123", ""]);
        let e = classify(
            "invalid_grant",
            Some("Invalid refresh token: rt-123\n".into()),
            &r,
        );
        assert_eq!(
            e,
            OAuthError::InvalidGrant(Some("Invalid refresh token: [redacted]".into()))
        );
    }

    #[test]
    fn long_descriptions_are_cut() {
        let e = classify("x", Some("a".repeat(1000)), &Redactor::default());
        let OAuthError::Provider { description, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(description.unwrap().chars().count(), MAX_TEXT_CHARS + 1);
    }

    #[test]
    fn github_codes_and_transient_codes() {
        let r = Redactor::default();
        assert_eq!(
            classify("bad_verification_code", None, &r),
            OAuthError::InvalidGrant(None)
        );
        assert!(matches!(
            classify("temporarily_unavailable", None, &r),
            OAuthError::Transient { .. }
        ));
        assert!(matches!(
            classify("incorrect_client_credentials", None, &r),
            OAuthError::InvalidClient { .. }
        ));
    }

    #[test]
    fn notion_error_shape() {
        let body =
            br#"{"object":"error","status":400,"code":"invalid_grant","message":"Invalid code."}"#;
        assert_eq!(
            oauth_error_in(body),
            Some(("invalid_grant".into(), Some("Invalid code.".into())))
        );
        assert_eq!(oauth_error_in(br#"{"code":"x"}"#), None);
        assert_eq!(oauth_error_in(br#"{"error":""}"#), None);
    }

    #[test]
    fn www_authenticate_params() {
        let h = r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#;
        assert_eq!(auth_param(h, "error").as_deref(), Some("invalid_token"));
        assert_eq!(
            auth_param(h, "error_description").as_deref(),
            Some("The access token expired")
        );
        assert_eq!(
            auth_param("Bearer error=insufficient_scope", "error").as_deref(),
            Some("insufficient_scope")
        );
        assert_eq!(auth_param("Bearer realm=\"x\"", "error"), None);
    }

    #[test]
    fn garbage_bodies_are_named() {
        let r = Redactor::default();
        let e = diagnose_token_body(b"<!DOCTYPE html><html>", ".", &r);
        assert!(e.to_string().contains("HTML"), "{e}");
        let e = diagnose_token_body(b"[1]", ".", &r);
        assert!(e.to_string().contains("not a JSON object"), "{e}");
        let e = diagnose_token_body(br#"{"token_type":"bearer"}"#, ".", &r);
        assert!(e.to_string().contains("no access_token"), "{e}");
    }
}
