//! Which network addresses a server may fetch media from.
//!
//! A server that fetches URLs on a client's behalf can be pointed at its own network (SSRF):
//! the cloud metadata service, admin ports on loopback, the office LAN. Unless the operator
//! allows private URLs, every address a host name resolves to is checked here, and the
//! download connects only to checked addresses (see `source::download`), so a DNS answer that
//! changes between check and connect (rebinding) cannot slip through.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// Why an address is refused, or `None` when it is a public unicast address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Some("the cloud metadata address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_unspecified() || o[0] == 0 {
        return Some("an unspecified (0.0.0.0/8) address");
    }
    if ip.is_private() {
        return Some("a private address");
    }
    if ip.is_link_local() {
        return Some("a link-local address");
    }
    if o[0] == 100 && (o[1] & 0xc0) == 64 {
        return Some("a carrier-grade NAT (100.64.0.0/10) address");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    if ip.is_broadcast() || o[0] >= 240 {
        return Some("a reserved address");
    }
    let ietf = o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2);
    let documentation =
        (o[0] == 198 && o[1] == 51 && o[2] == 100) || (o[0] == 203 && o[1] == 0 && o[2] == 113);
    let benchmarking = o[0] == 198 && (o[1] & 0xfe) == 18;
    if ietf || documentation || benchmarking {
        return Some("a reserved (IETF, documentation or benchmarking) address");
    }
    None
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) and the deprecated IPv4-compatible form carry an IPv4 address.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]) || (s[..6] == [0; 6] && s[6] != 0) {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return v4_reason(v4);
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        return Some("a private (unique local) address");
    }
    if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        return Some("a link-local address");
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 {
        return Some("a documentation address");
    }
    None
}

/// Resolves `host:port` and keeps only allowed addresses; refuses when none is left, naming
/// the first forbidden address and why.
pub fn resolve_checked(netloc: &str, allow_private: bool) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
    if allow_private {
        return Ok(addrs);
    }
    let mut refused = None;
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| match forbidden_reason(a.ip()) {
            Some(reason) => {
                refused.get_or_insert((a.ip(), reason));
                false
            }
            None => true,
        })
        .collect();
    if allowed.is_empty() {
        let message = match refused {
            Some((ip, reason)) => format!(
                "{netloc} resolves to {ip}, {reason}; fetching such URLs is refused unless the server runs with --allow-private-urls"
            ),
            None => format!("{netloc} did not resolve to any address"),
        };
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, message));
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(forbidden_reason(bad.parse().unwrap()).is_some(), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(forbidden_reason(good.parse().unwrap()).is_none(), "{good} must be allowed");
        }
    }

    #[test]
    fn resolving_refuses_loopback_names() {
        let err = resolve_checked("localhost:80", false).unwrap_err().to_string();
        assert!(err.contains("--allow-private-urls"), "{err}");
        assert!(resolve_checked("127.0.0.1:80", true).is_ok());
    }
}
