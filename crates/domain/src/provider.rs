//! The OAuth provider catalog: each provider's endpoints, default scopes and quirks,
//! as data. Adding a provider is adding a [`Provider`] variant and a [`ProviderSpec`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::DomainError;

/// An OAuth provider: one of the catalog, or any other (`Generic`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// Google.
    Google,
    /// Microsoft (Entra ID), per tenant.
    Microsoft,
    /// Dropbox.
    Dropbox,
    /// Box.
    Box,
    /// Notion.
    Notion,
    /// GitHub.
    GitHub,
    /// Any OAuth 2.0 provider, configured by `config.oauth2_config`.
    Generic,
}

impl Provider {
    /// The providers of the catalog, in the order they are listed.
    pub const CATALOG: [Provider; 6] = [
        Provider::Google,
        Provider::Microsoft,
        Provider::Dropbox,
        Provider::Box,
        Provider::Notion,
        Provider::GitHub,
    ];

    /// The provider's type name in the API (`google`, `oauth2`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::Microsoft => "microsoft",
            Provider::Dropbox => "dropbox",
            Provider::Box => "box",
            Provider::Notion => "notion",
            Provider::GitHub => "github",
            Provider::Generic => "oauth2",
        }
    }

    /// The provider's name for people (`GitHub`, `OAuth 2.0 (any provider)`).
    pub fn label(&self) -> &'static str {
        match self {
            Provider::Google => "Google",
            Provider::Microsoft => "Microsoft",
            Provider::Dropbox => "Dropbox",
            Provider::Box => "Box",
            Provider::Notion => "Notion",
            Provider::GitHub => "GitHub",
            Provider::Generic => "OAuth 2.0 (any provider)",
        }
    }

    /// The catalog entry; `None` for the generic provider, whose endpoints come from
    /// the connection's own configuration.
    pub fn spec(&self) -> Option<&'static ProviderSpec> {
        CATALOG.iter().find(|s| s.provider == *self)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Provider::Generic]
            .into_iter()
            .chain(Provider::CATALOG)
            .find(|p| p.as_str() == s)
            .ok_or_else(|| DomainError::field("type", format!("unknown OAuth provider {s:?}")))
    }
}

/// How the client authenticates at the token endpoint (RFC 7591 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenAuthMethod {
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A public client: `client_id` in the body, no secret.
    None,
}

impl TokenAuthMethod {
    /// The method's name (RFC 7591 §2).
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenAuthMethod::ClientSecretBasic => "client_secret_basic",
            TokenAuthMethod::ClientSecretPost => "client_secret_post",
            TokenAuthMethod::None => "none",
        }
    }
}

impl FromStr for TokenAuthMethod {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client_secret_basic" => Ok(Self::ClientSecretBasic),
            "client_secret_post" => Ok(Self::ClientSecretPost),
            "none" => Ok(Self::None),
            other => Err(DomainError::field(
                "oauth2_config.token_endpoint_auth_method",
                format!("unknown method {other:?}; accepted: client_secret_basic, client_secret_post, none"),
            )),
        }
    }
}

/// One catalog entry. Endpoints may contain `{tenant}`, filled from the connection's
/// `oauth2_config.tenant` (or [`ProviderSpec::default_tenant`]).
#[derive(Debug, PartialEq, Eq)]
pub struct ProviderSpec {
    /// The provider this entry describes.
    pub provider: Provider,
    /// Where the user consents (may hold a `{tenant}` placeholder).
    pub authorization_endpoint: &'static str,
    /// Where codes and refresh tokens are exchanged.
    pub token_endpoint: &'static str,
    /// An RFC 7009 revocation endpoint, if the provider has one.
    pub revocation_endpoint: Option<&'static str>,
    /// Where the user's profile is read.
    pub userinfo_endpoint: Option<&'static str>,
    /// The issuer identifier, checked against an `iss` callback parameter when present.
    pub issuer: Option<&'static str>,
    /// The tenant used when a connection names none.
    pub default_tenant: Option<&'static str>,
    /// Requested when the connection names no scopes of its own.
    pub default_scopes: &'static [&'static str],
    /// Always requested, whatever the connection names (for example to get a refresh token).
    pub required_scopes: &'static [&'static str],
    /// Added to the consent URL.
    pub extra_authorization_params: &'static [(&'static str, &'static str)],
    /// How a client authenticates at the token endpoint.
    pub token_auth: TokenAuthMethod,
    /// Whether PKCE is used.
    pub pkce: bool,
    /// Every refresh returns a new refresh token and invalidates the old one.
    pub rotates_refresh_token: bool,
    /// Whether access tokens carry an expiry at all.
    pub tokens_expire: bool,
}

/// The catalog: every provider but the generic one.
pub static CATALOG: [ProviderSpec; 6] = [
    ProviderSpec {
        provider: Provider::Google,
        authorization_endpoint: "https://accounts.google.com/o/oauth2/v2/auth",
        token_endpoint: "https://oauth2.googleapis.com/token",
        revocation_endpoint: Some("https://oauth2.googleapis.com/revoke"),
        userinfo_endpoint: Some("https://openidconnect.googleapis.com/v1/userinfo"),
        issuer: Some("https://accounts.google.com"),
        default_tenant: None,
        default_scopes: &[
            "https://www.googleapis.com/auth/userinfo.email",
            "https://www.googleapis.com/auth/userinfo.profile",
            "https://www.googleapis.com/auth/drive.readonly",
        ],
        required_scopes: &[],
        // Without both, Google issues a refresh token only on the very first consent.
        extra_authorization_params: &[("access_type", "offline"), ("prompt", "consent")],
        token_auth: TokenAuthMethod::ClientSecretPost,
        pkce: true,
        rotates_refresh_token: false,
        tokens_expire: true,
    },
    ProviderSpec {
        provider: Provider::Microsoft,
        authorization_endpoint: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        token_endpoint: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        revocation_endpoint: None,
        userinfo_endpoint: Some("https://graph.microsoft.com/oidc/userinfo"),
        issuer: None,
        default_tenant: Some("common"),
        default_scopes: &["User.Read", "Files.Read.All", "Sites.Read.All"],
        // Microsoft issues a refresh token only when offline_access is requested.
        required_scopes: &["offline_access"],
        extra_authorization_params: &[],
        token_auth: TokenAuthMethod::ClientSecretPost,
        pkce: true,
        rotates_refresh_token: true,
        tokens_expire: true,
    },
    ProviderSpec {
        provider: Provider::Dropbox,
        authorization_endpoint: "https://www.dropbox.com/oauth2/authorize",
        token_endpoint: "https://api.dropboxapi.com/oauth2/token",
        revocation_endpoint: None,
        userinfo_endpoint: None,
        issuer: None,
        default_tenant: None,
        default_scopes: &[
            "account_info.read",
            "files.metadata.read",
            "files.content.read",
        ],
        required_scopes: &[],
        // Dropbox issues short-lived tokens and a refresh token only when asked for offline access.
        extra_authorization_params: &[("token_access_type", "offline")],
        token_auth: TokenAuthMethod::ClientSecretBasic,
        pkce: true,
        rotates_refresh_token: false,
        tokens_expire: true,
    },
    ProviderSpec {
        provider: Provider::Box,
        authorization_endpoint: "https://account.box.com/api/oauth2/authorize",
        token_endpoint: "https://api.box.com/oauth2/token",
        revocation_endpoint: Some("https://api.box.com/oauth2/revoke"),
        userinfo_endpoint: None,
        issuer: None,
        default_tenant: None,
        default_scopes: &["root_readwrite"],
        required_scopes: &[],
        extra_authorization_params: &[],
        token_auth: TokenAuthMethod::ClientSecretPost,
        pkce: false,
        // Box invalidates a refresh token on use: the new one must be saved or the grant dies.
        rotates_refresh_token: true,
        tokens_expire: true,
    },
    ProviderSpec {
        provider: Provider::Notion,
        authorization_endpoint: "https://api.notion.com/v1/oauth/authorize",
        token_endpoint: "https://api.notion.com/v1/oauth/token",
        revocation_endpoint: None,
        userinfo_endpoint: None,
        issuer: None,
        default_tenant: None,
        default_scopes: &[],
        required_scopes: &[],
        extra_authorization_params: &[("owner", "user")],
        // Notion only accepts HTTP Basic client authentication.
        token_auth: TokenAuthMethod::ClientSecretBasic,
        pkce: false,
        rotates_refresh_token: false,
        tokens_expire: false,
    },
    ProviderSpec {
        provider: Provider::GitHub,
        authorization_endpoint: "https://github.com/login/oauth/authorize",
        token_endpoint: "https://github.com/login/oauth/access_token",
        revocation_endpoint: None,
        userinfo_endpoint: Some("https://api.github.com/user"),
        issuer: None,
        default_tenant: None,
        default_scopes: &[],
        required_scopes: &[],
        extra_authorization_params: &[],
        token_auth: TokenAuthMethod::ClientSecretPost,
        pkce: true,
        rotates_refresh_token: false,
        // OAuth app tokens do not expire unless the app opts in to expiring tokens.
        tokens_expire: false,
    },
];

impl ProviderSpec {
    /// Fills `{tenant}` in an endpoint template.
    pub fn endpoint(template: &str, tenant: Option<&str>) -> String {
        match tenant {
            Some(t) => template.replace("{tenant}", t),
            None => template.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_provider_has_a_spec_and_generic_has_none() {
        for p in Provider::CATALOG {
            let spec = p.spec().unwrap();
            assert_eq!(spec.provider, p);
            assert!(spec.authorization_endpoint.starts_with("https://"));
            assert!(spec.token_endpoint.starts_with("https://"));
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), p);
        }
        assert!(Provider::Generic.spec().is_none());
    }

    #[test]
    fn quirks_are_data() {
        let g = Provider::Google.spec().unwrap();
        assert!(g
            .extra_authorization_params
            .contains(&("access_type", "offline")));
        assert!(g
            .extra_authorization_params
            .contains(&("prompt", "consent")));
        assert_eq!(
            Provider::Microsoft.spec().unwrap().required_scopes,
            &["offline_access"]
        );
        assert!(Provider::Dropbox
            .spec()
            .unwrap()
            .extra_authorization_params
            .contains(&("token_access_type", "offline")));
        assert!(Provider::Box.spec().unwrap().rotates_refresh_token);
        let n = Provider::Notion.spec().unwrap();
        assert_eq!(n.token_auth, TokenAuthMethod::ClientSecretBasic);
        assert!(!n.tokens_expire);
        assert!(!Provider::GitHub.spec().unwrap().tokens_expire);
    }

    #[test]
    fn tenant_is_filled() {
        let ms = Provider::Microsoft.spec().unwrap();
        assert_eq!(
            ProviderSpec::endpoint(ms.token_endpoint, Some("contoso.onmicrosoft.com")),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }
}
