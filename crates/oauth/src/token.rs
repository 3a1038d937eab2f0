//! The token endpoint's success answer (RFC 6749 §5.1), parsed leniently where real
//! providers differ: no `token_type`, `expires_in` as a string, GitHub's comma-separated
//! `scope`, extra fields (Notion's `owner`, Microsoft's `ext_expires_in`).

use latchkey_domain::oauth::TokenResponse;
use latchkey_ports::OAuthError;
use oauth2::{AccessToken, RefreshToken, Scope};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub(crate) struct WireTokenType(Option<String>);

impl oauth2::TokenType for WireTokenType {}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireToken {
    access_token: AccessToken,
    #[serde(default)]
    token_type: WireTokenType,
    #[serde(default, deserialize_with = "lenient_seconds")]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(default, rename = "scope", deserialize_with = "scope_list")]
    scopes: Option<Vec<Scope>>,
}

impl oauth2::TokenResponse for WireToken {
    type TokenType = WireTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &WireTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<std::time::Duration> {
        self.expires_in.map(std::time::Duration::from_secs)
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

impl WireToken {
    pub(crate) fn into_domain(self) -> Result<TokenResponse, OAuthError> {
        let access_token = self.access_token.into_secret();
        if access_token.is_empty() {
            return Err(OAuthError::Protocol(
                "the token response has an empty access_token".to_owned(),
            ));
        }
        let expires_in = match self.expires_in {
            None => None,
            Some(s) => Some(
                i64::try_from(s)
                    .ok()
                    .and_then(chrono::Duration::try_seconds)
                    .ok_or_else(|| {
                        OAuthError::Protocol(
                            "the token response has an out-of-range expires_in".to_owned(),
                        )
                    })?,
            ),
        };
        Ok(TokenResponse {
            access_token: SecretString::from(access_token),
            // An empty refresh token is no refresh token: saving it would lose the old one.
            refresh_token: self
                .refresh_token
                .map(RefreshToken::into_secret)
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
            token_type: self
                .token_type
                .0
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "Bearer".to_owned()),
            expires_in,
            scopes: self
                .scopes
                .map(|s| s.into_iter().map(|s| s.as_str().to_owned()).collect()),
        })
    }
}

/// `expires_in` as a number (integer or float) or a numeric string; `null` is absent.
fn lenient_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let v = Option::<Value>::deserialize(d)?;
    let bad = || D::Error::custom("expires_in is not a number of seconds");
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(u)),
            // Truncation is the conservative rounding for a lifetime.
            (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                Ok(Some(f as u64))
            }
            _ => Err(bad()),
        },
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// `scope` as a space-delimited string (RFC 6749), comma-delimited (GitHub), or a JSON
/// array of strings (seen in the wild).
fn scope_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    use serde::de::Error;
    let v = Option::<Value>::deserialize(d)?;
    let split = |s: &str| -> Vec<Scope> {
        s.split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(|s| Scope::new(s.to_owned()))
            .collect()
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(split(&s))),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(split))
            .collect::<Option<Vec<_>>>()
            .map(|v| Some(v.into_iter().flatten().collect()))
            .ok_or_else(|| D::Error::custom("scope is not a string")),
        Some(_) => Err(D::Error::custom("scope is not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn parse(json: &str) -> TokenResponse {
        serde_json::from_str::<WireToken>(json)
            .unwrap()
            .into_domain()
            .unwrap()
    }

    #[test]
    fn minimal_response_defaults_to_bearer_without_expiry() {
        let t = parse(r#"{"access_token":"a"}"#);
        assert_eq!(t.access_token.expose_secret(), "a");
        assert_eq!(t.token_type, "Bearer");
        assert!(t.expires_in.is_none() && t.refresh_token.is_none() && t.scopes.is_none());
    }

    #[test]
    fn lenient_fields() {
        let t = parse(
            r#"{"access_token":"a","token_type":"bearer","expires_in":"3600","scope":"repo,gist user","refresh_token":""}"#,
        );
        assert_eq!(t.token_type, "bearer");
        assert_eq!(t.expires_in, Some(chrono::Duration::seconds(3600)));
        assert_eq!(t.scopes.unwrap(), ["repo", "gist", "user"]);
        assert!(t.refresh_token.is_none());
        let t = parse(r#"{"access_token":"a","expires_in":59.9,"scope":["a","b c"]}"#);
        assert_eq!(t.expires_in, Some(chrono::Duration::seconds(59)));
        assert_eq!(t.scopes.unwrap(), ["a", "b", "c"]);
        let t = parse(r#"{"access_token":"a","expires_in":null,"token_type":null,"scope":""}"#);
        assert_eq!(t.scopes.unwrap(), Vec::<String>::new());
        assert_eq!(t.token_type, "Bearer");
    }

    #[test]
    fn nonsense_is_refused() {
        for body in [
            r#"{"access_token":"a","expires_in":-1}"#,
            r#"{"access_token":"a","expires_in":"soon"}"#,
            r#"{"access_token":"a","scope":5}"#,
            r#"{"access_token":5}"#,
        ] {
            assert!(serde_json::from_str::<WireToken>(body).is_err(), "{body}");
        }
        let e = serde_json::from_str::<WireToken>(r#"{"access_token":""}"#)
            .unwrap()
            .into_domain()
            .unwrap_err();
        assert!(matches!(e, OAuthError::Protocol(_)));
        let e = serde_json::from_str::<WireToken>(
            r#"{"access_token":"a","expires_in":18446744073709551615}"#,
        )
        .unwrap()
        .into_domain()
        .unwrap_err();
        assert!(matches!(e, OAuthError::Protocol(_)));
    }
}
