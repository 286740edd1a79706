//! The SSRF guard: which destination addresses deliveries may reach, and a resolver that
//! hands the connector only addresses that passed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// The error a refused destination produces, recognised wherever it surfaces.
#[derive(Debug, thiserror::Error)]
#[error("destination refused")]
pub struct Refused;

/// Whether deliveries must not reach this address: loopback, private, link-local,
/// unique-local, CGNAT, unspecified, multicast and broadcast addresses, also when written as
/// IPv4-mapped IPv6.
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_refused_v4(v4),
            None => is_refused_v6(v6),
        },
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link local fe80::/10
        || ip.to_ipv4().is_some_and(|v4| ip.segments()[..6] == [0; 6] && is_refused_v4(v4)) // IPv4-compatible
}

/// A DNS resolver that resolves once per connection and drops refused addresses, so the
/// address connected to is always one that was checked.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    /// Let every address through.
    pub allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if resolved.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name} has no address"),
                ));
            }
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| allow_private || !is_refused(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, Refused));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Whether an error, anywhere in its chain, is the guard's refusal.
pub fn is_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<Refused>() {
            return true;
        }
        if let Some(io) = error.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<Refused>())
        {
            return true;
        }
        current = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        is_refused(text.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "ff02::1",
        ] {
            assert!(refused(ip), "{ip} allowed");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(ip), "{ip} refused");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        use tower_service::Service;
        let mut guarded = GuardedResolver { allow_private: false };
        let name: Name = "localhost".parse().unwrap();
        let error = guarded.call(name.clone()).await.unwrap_err();
        assert!(is_refusal(&error));
        let mut open = GuardedResolver { allow_private: true };
        assert!(open.call(name).await.unwrap().any(|addr| addr.ip().is_loopback()));
    }
}
