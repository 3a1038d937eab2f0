//! The rules for URLs in configuration: https, or http to loopback when the deployment
//! allows it, and no non-public address literal where Latchkey connects.

use std::net::{IpAddr, Ipv4Addr};

use crate::net::{is_localhost_name, AddressClass, AddressRules, IpNet};
use crate::DomainError;

/// Rules for URLs in configuration, and for the addresses behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Permit loopback addresses, and `http://` to them (tests, local development).
    pub allow_insecure_loopback: bool,
    /// Non-public ranges opened by the operator.
    pub private_networks: Vec<IpNet>,
}

impl UrlPolicy {
    /// The address rules every connection to a provider is held to.
    pub fn address_rules(&self) -> AddressRules {
        AddressRules {
            allow_loopback: self.allow_insecure_loopback,
            allowed_networks: self.private_networks.clone(),
        }
    }

    /// A URL Latchkey will connect to: https (http only to loopback when allowed), and a
    /// host that is not a non-public address literal. Names are checked after resolution,
    /// at connection time, by the adapter.
    pub fn check(&self, field: &str, raw: &str) -> Result<url::Url, DomainError> {
        let u = self.check_scheme(field, raw)?;
        self.check_host(field, &u)?;
        Ok(u)
    }

    /// A URL Latchkey only hands out (a redirect URI): the scheme rule alone, since no
    /// connection is made to it.
    pub fn check_scheme(&self, field: &str, raw: &str) -> Result<url::Url, DomainError> {
        let u = url::Url::parse(raw)
            .map_err(|e| DomainError::field(field, format!("not a valid URL: {e}")))?;
        if scheme_allowed(&u, self.allow_insecure_loopback) {
            return Ok(u);
        }
        match u.scheme() {
            "http" => Err(DomainError::InsecureUrl {
                field: field.to_owned(),
            }),
            other => Err(DomainError::field(
                field,
                format!("unsupported URL scheme {other:?}"),
            )),
        }
    }

    fn check_host(&self, field: &str, u: &url::Url) -> Result<(), DomainError> {
        let rules = self.address_rules();
        let refused = |host: &str, class: AddressClass| DomainError::AddressNotAllowed {
            field: field.to_owned(),
            reason: format!(
                "{host} is {}; Latchkey connects only to public addresses",
                class.an_address()
            ),
        };
        match u.host() {
            Some(url::Host::Ipv4(ip)) => rules
                .check(IpAddr::V4(ip))
                .map_err(|class| refused(&ip.to_string(), class)),
            Some(url::Host::Ipv6(ip)) => rules
                .check(IpAddr::V6(ip))
                .map_err(|class| refused(&format!("[{ip}]"), class)),
            Some(url::Host::Domain(name)) if is_localhost_name(name) => {
                // RFC 6761: these names are loopback whatever a resolver says.
                rules
                    .check(IpAddr::V4(Ipv4Addr::LOCALHOST))
                    .map_err(|class| refused(name, class))
            }
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(DomainError::field(field, "has no host")),
        }
    }
}

/// The one scheme rule, for configuration and for every outbound request: https, or
/// http to this machine when `allow_insecure_loopback` is set.
pub fn scheme_allowed(u: &url::Url, allow_insecure_loopback: bool) -> bool {
    match u.scheme() {
        "https" => true,
        "http" => allow_insecure_loopback && is_loopback(u),
        _ => false,
    }
}

/// Whether a URL points at this machine.
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_http_only_when_allowed() {
        let allow = UrlPolicy {
            allow_insecure_loopback: true,
            ..UrlPolicy::default()
        };
        assert!(allow.check("u", "http://127.0.0.1:9/x").is_ok());
        assert!(allow.check("u", "http://localhost/x").is_ok());
        assert!(allow.check("u", "http://[::1]/x").is_ok());
        assert!(allow.check("u", "http://10.0.0.1/x").is_err());
        assert!(UrlPolicy::default()
            .check("u", "http://127.0.0.1/x")
            .is_err());
        assert!(allow.check("u", "ftp://127.0.0.1/x").is_err());
        assert!(allow.check("u", "not a url").is_err());
    }

    #[test]
    fn refusals_name_no_deployment_setting() {
        let err = UrlPolicy::default()
            .check("u", "http://idp.example/x")
            .unwrap_err();
        assert_eq!(
            err,
            DomainError::InsecureUrl {
                field: "u".to_owned()
            }
        );
        let err2 = UrlPolicy::default()
            .check("u", "https://10.0.0.1/x")
            .unwrap_err();
        assert!(matches!(err2, DomainError::AddressNotAllowed { .. }));
        for e in [err, err2] {
            assert!(!e.to_string().contains("LATCHKEY_"), "{e}");
        }
    }
}
