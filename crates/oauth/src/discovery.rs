//! OpenID Connect Discovery 1.0 / RFC 8414 authorization server metadata.

use latchkey_domain::oauth::DiscoveredMetadata;
use latchkey_ports::OAuthError;
use serde::Deserialize;
use url::Url;

/// Where to look for the metadata of `issuer`, in order: OpenID Connect Discovery §4
/// (path appended), then RFC 8414 §3 (well-known segment inserted before the path).
pub(crate) fn metadata_urls(issuer: &Url) -> Result<[Url; 2], OAuthError> {
    if issuer.query().is_some() || issuer.fragment().is_some() {
        return Err(OAuthError::Protocol(
            "an issuer identifier has no query or fragment (RFC 8414 §2)".to_owned(),
        ));
    }
    // Both specifications drop a terminating "/" from the issuer's path.
    let path = issuer.path().trim_end_matches('/');
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    Ok([oidc, rfc8414])
}

#[derive(Debug, Deserialize)]
struct Document {
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: Option<bool>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Parses a discovery document and checks that it speaks for `issuer`. Endpoints are
/// checked against the outbound policy by `check_url`.
pub(crate) fn parse_document(
    body: &[u8],
    issuer: &str,
    check_url: impl Fn(&str) -> Result<Url, OAuthError>,
) -> Result<DiscoveredMetadata, OAuthError> {
    // serde's message quotes the document; where the error is is enough, and says
    // nothing about what answered there.
    let doc: Document = serde_json::from_slice(body).map_err(|e| {
        OAuthError::Protocol(format!(
            "the discovery document is not valid metadata JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let doc_issuer = doc.issuer.unwrap_or_default();
    // Exact comparison (RFC 8414 §3.3): a document naming another issuer may be an
    // attacker's, and trusting it would open the mix-up attack.
    if doc_issuer != issuer {
        return Err(OAuthError::Protocol(format!(
            "the discovery document names another issuer ({:?}), not {issuer:?}",
            excerpt(&doc_issuer)
        )));
    }
    let required = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| OAuthError::Protocol(format!("the discovery document has no {name}")))
    };
    let authorization_endpoint = required(doc.authorization_endpoint, "authorization_endpoint")?;
    let token_endpoint = required(doc.token_endpoint, "token_endpoint")?;
    for endpoint in [
        Some(&authorization_endpoint),
        Some(&token_endpoint),
        doc.userinfo_endpoint.as_ref(),
        doc.revocation_endpoint.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        check_url(endpoint)?;
    }
    Ok(DiscoveredMetadata {
        issuer: doc_issuer,
        authorization_endpoint,
        token_endpoint,
        userinfo_endpoint: doc.userinfo_endpoint,
        revocation_endpoint: doc.revocation_endpoint,
        authorization_response_iss_parameter_supported: doc
            .authorization_response_iss_parameter_supported
            .unwrap_or(false),
        // RFC 8414 §2: when omitted, the default is client_secret_basic.
        token_endpoint_auth_methods_supported: doc
            .token_endpoint_auth_methods_supported
            .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]),
    })
}

/// At most 100 characters of remote text, without control characters.
fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(100).collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(issuer: &str) -> [String; 2] {
        metadata_urls(&Url::parse(issuer).unwrap())
            .unwrap()
            .map(|u| u.to_string())
    }

    #[test]
    fn well_known_locations() {
        assert_eq!(
            urls("https://idp.example"),
            [
                "https://idp.example/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server"
            ]
        );
        assert_eq!(
            urls("https://idp.example/tenant/v2/"),
            [
                "https://idp.example/tenant/v2/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server/tenant/v2"
            ]
        );
        assert!(metadata_urls(&Url::parse("https://i/?a=b").unwrap()).is_err());
    }

    #[test]
    fn remote_text_is_not_echoed_beyond_a_short_clean_excerpt() {
        let ok = |u: &str| Url::parse(u).map_err(|_| OAuthError::Protocol("bad".into()));
        let e = parse_document(
            b"{\"issuer\": 5, \"secret-looking\": \"banner\"}",
            "https://i",
            ok,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("banner") && !e.contains("integer"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let long = format!("https://evil\n{}", "x".repeat(5000));
        let body = serde_json::to_vec(&serde_json::json!({"issuer": long})).unwrap();
        let e = parse_document(&body, "https://i", ok)
            .unwrap_err()
            .to_string();
        assert!(e.len() < 300, "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
