//! The SSRF guard: which destination addresses deliveries may reach, and a resolver that
//! hands the connector only addresses that passed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// The variable that lets deliveries reach the addresses the guard refuses.
pub const ALLOW_VARIABLE: &str = "MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS";

/// The error a refused destination produces, recognised wherever it surfaces; its text is
/// what the delivery log shows, so it names the address, why it is refused and how to allow it.
#[derive(Debug, thiserror::Error)]
#[error("destination refused: {subject} {class}; set {ALLOW_VARIABLE}=true to allow it")]
pub struct Refused {
    /// The address, or the name and what it resolved to.
    subject: String,
    /// The kind of address, with its article ("is a loopback address").
    class: String,
}

impl Refused {
    /// The refusal of a literal address.
    pub fn address(ip: IpAddr, class: &'static str) -> Self {
        Refused {
            subject: ip.to_string(),
            class: format!("is {class}"),
        }
    }

    /// The refusal of a name whose every address is refused; the first one is named.
    pub fn name(name: &str, ip: IpAddr, class: &'static str) -> Self {
        Refused {
            subject: name.to_owned(),
            class: format!("resolves to {ip}, {class}"),
        }
    }
}

/// Whether deliveries must not reach this address: loopback, private, link-local,
/// unique-local, CGNAT, unspecified, multicast and broadcast addresses, also when written as
/// IPv4-mapped IPv6.
pub fn is_refused(ip: IpAddr) -> bool {
    refused_class(ip).is_some()
}

/// The kind of a refused address ("a loopback address"), or none when deliveries may reach it.
pub fn refused_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_class_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_class_v4(v4),
            None => refused_class_v6(v6),
        },
    }
}

fn refused_class_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if ip.is_unspecified() || a == 0 {
        "an unspecified address"
    } else if ip.is_broadcast() {
        "a broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (CGNAT) address"
    } else {
        return None;
    })
}

fn refused_class_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if (first & 0xfe00) == 0xfc00 {
        "a unique-local address"
    } else if (first & 0xffc0) == 0xfe80 {
        "a link-local address"
    } else if let Some(v4) = ip.to_ipv4().filter(|_| ip.segments()[..6] == [0; 6]) {
        // IPv4-compatible: the embedded address decides.
        return refused_class_v4(v4);
    } else {
        return None;
    })
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
            let first = resolved[0].ip();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| allow_private || !is_refused(addr.ip()))
                .collect();
            if allowed.is_empty() {
                let class = refused_class(first).unwrap_or("a refused address");
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    Refused::name(name.as_str(), first, class),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// The guard's refusal, if it is anywhere in an error's chain.
pub fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        if let Some(refused) = error
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Refused>())
        {
            return Some(refused);
        }
        current = error.source();
    }
    None
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
    fn a_refused_address_is_named_with_its_class() {
        let reason = |text: &str| {
            let ip: IpAddr = text.parse().unwrap();
            Refused::address(ip, refused_class(ip).unwrap()).to_string()
        };
        assert_eq!(
            reason("127.0.0.1"),
            "destination refused: 127.0.0.1 is a loopback address; set MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS=true to allow it"
        );
        assert!(reason("10.1.2.3").contains("10.1.2.3 is a private address"));
        assert!(reason("169.254.169.254").contains("is a link-local address"));
        assert!(reason("100.64.0.1").contains("is a shared (CGNAT) address"));
        assert!(reason("::ffff:192.168.0.1").contains("::ffff:192.168.0.1 is a private address"));
        assert!(reason("fd12:3456::1").contains("is a unique-local address"));
        assert!(reason("0.0.0.0").contains("is an unspecified address"));
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
        let refused = refusal(&error).expect("the guard's refusal");
        assert!(
            refused
                .to_string()
                .starts_with("destination refused: localhost resolves to "),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .ends_with("; set MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS=true to allow it"),
            "{refused}"
        );
        let mut open = GuardedResolver { allow_private: true };
        assert!(open.call(name).await.unwrap().any(|addr| addr.ip().is_loopback()));
    }
}
