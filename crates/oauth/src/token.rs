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
    expires_in: Option<f64>,
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
        self.expires_in
            .and_then(latchkey_domain::oauth::token_lifetime)
            .and_then(|d| d.to_std().ok())
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
        // Clamped to the domain's documented range: huge, zero, negative and fractional
        // lifetimes all have a defined meaning there.
        let expires_in = self
            .expires_in
            .and_then(latchkey_domain::oauth::token_lifetime);
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

/// `expires_in` as a number (integer or float, any sign or size) or a numeric string;
/// `null` is absent. What the number means (clamping, rounding, zero and negatives) is
/// the domain's `token_lifetime`. Anything else (`"soon"`, `true`, an object) is refused.
fn lenient_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    use serde::de::Error;
    let v = Option::<Value>::deserialize(d)?;
    let bad = || D::Error::custom("expires_in is not a number of seconds");
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) => {
            let s = s.trim();
            // Decimal digits only: Rust would also read "inf" and "NaN".
            let numeric = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'));
            if !numeric {
                return Err(bad());
            }
            s.parse().map(Some).map_err(|_| bad())
        }
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
    fn provider_lifetimes_are_clamped_not_refused() {
        let ten_years = Some(latchkey_domain::oauth::MAX_TOKEN_LIFETIME);
        let table = [
            (r#"10000000000000"#, ten_years),
            (r#"18446744073709551615"#, ten_years),
            (r#"1e400"#, None),
            (r#""10000000000000""#, ten_years),
            (r#"0"#, None),
            (r#""0""#, None),
            (r#"-1"#, None),
            (r#""-30""#, None),
            (r#"59.9"#, Some(chrono::Duration::seconds(59))),
            (r#"" 3600 ""#, Some(chrono::Duration::seconds(3600))),
            (r#""1.5e3""#, Some(chrono::Duration::seconds(1500))),
        ];
        for (raw, want) in table {
            let body = format!(r#"{{"access_token":"a","expires_in":{raw}}}"#);
            match serde_json::from_str::<WireToken>(&body) {
                Ok(w) => assert_eq!(w.into_domain().unwrap().expires_in, want, "{raw}"),
                // serde_json refuses a number literal out of f64 range itself.
                Err(e) => assert_eq!(raw, "1e400", "{raw}: {e}"),
            }
        }
    }

    #[test]
    fn nonsense_is_refused() {
        for body in [
            r#"{"access_token":"a","expires_in":"soon"}"#,
            r#"{"access_token":"a","expires_in":"inf"}"#,
            r#"{"access_token":"a","expires_in":"NaN"}"#,
            r#"{"access_token":"a","expires_in":true}"#,
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
    }
}
