//! Name resolution under the outbound address policy. reqwest asks [`PolicyResolver`] for
//! the addresses of a host; it resolves once, checks every address with the domain's
//! [`AddressRules`], and hands back exactly the checked addresses, which the connection is
//! then made to. There is no second lookup a rebinding DNS server could answer
//! differently. Address literals never reach a resolver: [`check_literal`] covers them.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use latchkey_domain::net::{is_localhost_name, AddressClass, AddressRules};
use latchkey_ports::OAuthError;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::transport::display_url;

/// What a [`HostLookup`] returns.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Turns a host name into addresses. [`SystemLookup`] in production; tests give their own
/// to show which names were looked up and what was done with the answer.
pub trait HostLookup: Send + Sync + fmt::Debug {
    fn lookup(&self, host: &str) -> LookupFuture;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLookup;

impl HostLookup for SystemLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A resolution refused by the policy. Travels through reqwest as the cause of its
/// connect error, where the classification finds it again.
#[derive(Debug)]
pub(crate) struct AddressRefused {
    pub host: String,
    pub class: AddressClass,
}

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resolves to {}", self.host, self.class.an_address())
    }
}

impl std::error::Error for AddressRefused {}

/// The resolver reqwest uses for every provider call.
#[derive(Debug)]
pub(crate) struct PolicyResolver {
    pub lookup: Arc<dyn HostLookup>,
    pub rules: AddressRules,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = self.lookup.clone();
        let rules = self.rules.clone();
        Box::pin(async move {
            let ips = if is_localhost_name(&host) {
                // RFC 6761: loopback whatever a resolver might say.
                vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ]
            } else {
                lookup.lookup(&host).await?
            };
            if ips.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no address").into());
            }
            // One refused address refuses the name: an answer that mixes public and
            // internal addresses is how rebinding attacks look.
            for ip in &ips {
                if let Err(class) = rules.check(*ip) {
                    return Err(Box::new(AddressRefused {
                        host: host.clone(),
                        class,
                    }) as _);
                }
            }
            // Port 0: reqwest puts the URL's port in.
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The refusal of `url`, for messages: names the class, never a resolved address.
pub(crate) fn refused(url: &Url, what: impl fmt::Display) -> OAuthError {
    OAuthError::AddressNotAllowed(format!(
        "{}: {what}; only public addresses are allowed",
        display_url(url)
    ))
}

/// Checks a URL whose host is an address literal, or a name that is loopback by
/// definition. Other names are checked by [`PolicyResolver`] when connecting.
pub(crate) fn check_literal(rules: &AddressRules, url: &Url) -> Result<(), OAuthError> {
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(Host::Domain(d)) if is_localhost_name(d) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => return Ok(()),
    };
    rules
        .check(ip)
        .map_err(|class| refused(url, class.an_address()))
}
