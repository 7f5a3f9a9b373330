//! Parsers for the small value languages inside config strings: `host[:port]`, `sip:` destination
//! URIs, `fs://` ESL URLs, CIDR prefixes, durations, load_balancer resource lists. Each returns
//! the reason as a plain sentence; validation attaches the file, line and field.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use fsroute_dataplane::conn::Transport;
use fsroute_dataplane::table::Cidr;
use fsroute_esl::DEFAULT_ESL_PORT;

use super::{Capacity, DnsTarget, FsEndpoint, Host, HostPort, LbResource, Secret};

pub const SIP_DEFAULT_PORT: u16 = 5060;
/// The port of `sips:` and `;transport=tls` when none is written (RFC 3261 §19.1.2).
pub const SIPS_DEFAULT_PORT: u16 = 5061;

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address; host names are lower-cased.
pub(crate) fn parse_host_port(s: &str, default_port: u16) -> Result<HostPort, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty host".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("{inner:?} is not an IPv6 address"))?;
        let port = match after {
            "" => default_port,
            p => parse_port(p.strip_prefix(':').ok_or("expected ':port' after ']'")?)?,
        };
        return Ok(HostPort {
            host: Host::Ip(IpAddr::V6(ip)),
            port,
        });
    }
    if let Ok(ip) = s.parse::<Ipv6Addr>() {
        return Ok(HostPort {
            host: Host::Ip(IpAddr::V6(ip)),
            port: default_port,
        });
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) if !p.contains(':') => (h, parse_port(p)?),
        Some(_) => return Err("IPv6 addresses with a port must be bracketed: [addr]:port".into()),
        None => (s, default_port),
    };
    Ok(HostPort {
        host: parse_host(host)?,
        port,
    })
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) => Err("port 0 is not a usable port".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
    }
}

/// An IPv4 literal or a DNS host name.
fn parse_host(h: &str) -> Result<Host, String> {
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    // A name whose last label is numeric would be a malformed IPv4 address, not a host name.
    let looks_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if !labels_ok || looks_numeric {
        return Err(format!("{h:?} is neither an IP address nor a host name"));
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// Where a `sip:` destination sends: an IP literal as written, or a name the control plane resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SipDest {
    Addr(SocketAddr),
    Name(DnsTarget),
}

/// `sip:host[:port]`: an IP literal host (IPv6 bracketed) is the address to send to; a host name
/// is resolved on the control plane (docs/DNS.md): SRV first when no port is written (RFC 3263).
pub(crate) fn parse_sip_destination(uri: &str) -> Result<SipDest, String> {
    let (rest, sips) = match uri.get(..4) {
        Some(scheme) if scheme.eq_ignore_ascii_case("sip:") => (&uri[4..], false),
        _ if uri.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("sips:")) => (&uri[5..], true),
        _ => return Err("a destination is a sip: or sips: URI, e.g. \"sip:10.0.0.5:5060\"".into()),
    };
    if rest.contains('@') {
        return Err("a destination has no user part: write sip:host[:port]".into());
    }
    // One parameter is understood: the transport (docs/TCP.md).
    let (rest, transport) = match rest.split_once(';') {
        None => (rest, if sips { Transport::Tls } else { Transport::Udp }),
        Some((hostport, params)) => (hostport, destination_transport_param(params)?),
    };
    // sips: is TLS end to end (RFC 3261 §19.1.2); `sips:...;transport=tcp` is the old spelling
    // of the same (TLS runs over TCP), but sips: over UDP is a contradiction.
    let transport = match (sips, transport) {
        (true, Transport::Udp) => return Err("sips: is TLS, which does not run over UDP: drop ;transport=udp".into()),
        (true, _) => Transport::Tls,
        (false, t) => t,
    };
    if rest.contains([';', '?', '>', '<', ' ', '#']) {
        return Err("URI parameters and headers other than ;transport= are not supported: write sip:host[:port][;transport=tcp]".into());
    }
    let default_port = if transport == Transport::Tls { SIPS_DEFAULT_PORT } else { SIP_DEFAULT_PORT };
    let hp = parse_host_port(rest, default_port)?;
    if !rest.starts_with('[') && matches!(hp.host, Host::Ip(IpAddr::V6(_))) {
        return Err("an IPv6 host must be bracketed in a URI: sip:[addr]:port".into());
    }
    match hp.host {
        Host::Ip(ip) if ip.is_unspecified() || ip.is_multicast() => {
            Err(format!("{ip} cannot be a destination address"))
        }
        Host::Ip(ip) => Ok(SipDest::Addr(SocketAddr::new(ip, hp.port))),
        // RFC 3263 would ask _sip._tcp for it; the resolver asks for UDP targets only (docs/DNS.md).
        Host::Name(_) if transport.is_stream() => Err(
            "a host name over TCP or TLS is not resolved yet (SRV _sip._tcp, _sips._tcp): write the box's IP".into(),
        ),
        Host::Name(host) => {
            // The port as written, not the default: `sip:host` asks for SRV, `sip:host:5060` does not.
            let explicit = rest.rsplit_once(':').is_some();
            Ok(SipDest::Name(DnsTarget { host, port: explicit.then_some(hp.port) }))
        }
    }
}

/// The transport a destination URI that passed `parse_sip_destination` asks for.
pub fn destination_transport(uri: &str) -> Transport {
    // An address of a name (`<as written>#<address>`, docs/DNS.md) is its row's.
    let uri = uri.split_once('#').map_or(uri, |(written, _)| written);
    if uri.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("sips:")) {
        return Transport::Tls;
    }
    uri.split_once(';').and_then(|(_, params)| destination_transport_param(params).ok()).unwrap_or_default()
}

/// Whether a destination URI that passed `parse_sip_destination` is reached over a stream.
pub fn is_stream_destination(uri: &str) -> bool {
    destination_transport(uri).is_stream()
}

/// `transport=udp`, `tcp` or `tls` (any case), the only parameter a destination may carry.
fn destination_transport_param(params: &str) -> Result<Transport, String> {
    const ONLY: &str = "the only destination parameter is ;transport=udp, ;transport=tcp or ;transport=tls";
    let Some((name, value)) = params.split_once('=') else {
        return Err(ONLY.into());
    };
    if !name.trim().eq_ignore_ascii_case("transport") {
        return Err(ONLY.into());
    }
    match value.trim().to_ascii_lowercase().as_str() {
        "udp" => Ok(Transport::Udp),
        "tcp" => Ok(Transport::Tcp),
        "tls" => Ok(Transport::Tls),
        "sctp" | "ws" | "wss" => Err(format!("transport={} is not supported (udp, tcp and tls are)", value.trim())),
        _ => Err(ONLY.into()),
    }
}

/// `fs://[user]:password@host[:port]`, port 8021 by default: the one parser of ESL URLs (the ESL
/// crate takes the parts, as an `EslUrl`). Strict: a path (even a lone trailing `/`) or a query
/// such as OpenSIPS's `?EVENT,...` is refused rather than ignored, and the host must be an IP
/// literal (IPv6 bracketed when a port follows) or a valid host name.
pub(crate) fn parse_fs_url(s: &str) -> Result<FsEndpoint, String> {
    let rest = match s.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("fs://") => &s[5..],
        _ => return Err("an ESL URL starts with fs://".into()),
    };
    // The password may itself hold '@' or ':', so the host starts after the last '@' and the
    // password after the first ':'.
    let (userinfo, hostport) = rest
        .rsplit_once('@')
        .ok_or("an ESL URL needs a password: fs://[user]:password@host[:port]")?;
    let (user, password) = userinfo
        .split_once(':')
        .ok_or("an ESL URL needs a password: fs://[user]:password@host[:port]")?;
    if password.is_empty() {
        return Err("the ESL password is empty".into());
    }
    // ESL commands are lines: a line break in the password would end `auth` early and send the
    // rest to FreeSWITCH as a command of its own.
    if password.chars().any(char::is_control) || user.chars().any(char::is_control) {
        return Err("the ESL user and password may not hold control characters (a line break would end the auth command)".into());
    }
    if hostport.contains('/') {
        return Err("an ESL URL has no path: fs://[user]:password@host[:port]".into());
    }
    let endpoint = parse_host_port(hostport, DEFAULT_ESL_PORT)?;
    Ok(FsEndpoint {
        user: (!user.is_empty()).then(|| user.to_string()),
        password: Secret::new(password),
        endpoint,
    })
}

pub(crate) fn is_fs_url(s: &str) -> bool {
    s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("fs://"))
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). Host bits must be zero, so a
/// typo such as `10.1.0.0/8` is caught instead of silently meaning `10.0.0.0/8`.
pub(crate) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("prefix length must be 0-{max}")),
        },
    };
    let cidr = Cidr { addr, prefix };
    let host_bits_zero = match addr {
        IpAddr::V4(v4) => prefix == 32 || u32::from(v4) & (u32::MAX >> prefix) == 0,
        IpAddr::V6(v6) => prefix == 128 || u128::from(v6) & (u128::MAX >> prefix) == 0,
    };
    if !host_bits_zero {
        return Err(format!("{addr} has bits set beyond the /{prefix} prefix"));
    }
    Ok(cidr)
}

/// `"250ms"`, `"3s"`, `"2m"`, `"12h"` (humantime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration ({e}); write e.g. \"250ms\", \"3s\", \"2m\", \"12h\""))
}

/// `name=capacity;name=fs://...`: every resource is kept, in order, names unique.
pub(crate) fn parse_resources(s: &str) -> Result<Vec<LbResource>, String> {
    let mut out: Vec<LbResource> = Vec::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, cap) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: a resource is name=capacity or name=fs://..."))?;
        let name = name.trim();
        check_resource_name(name)?;
        if out.iter().any(|r| r.name == name) {
            return Err(format!("resource {name:?} is listed twice"));
        }
        let cap = cap.trim();
        let capacity =
            if is_fs_url(cap) {
                Capacity::Fs(parse_fs_url(cap)?)
            } else {
                Capacity::Fixed(cap.parse::<u32>().map_err(|_| {
                    format!("{name}: capacity {cap:?} is neither a count nor fs://...")
                })?)
            };
        out.push(LbResource {
            name: name.to_string(),
            capacity,
        });
    }
    if out.is_empty() {
        return Err("no resources: write e.g. \"ch=100\"".into());
    }
    Ok(out)
}

/// `ch;conf`: the resources one call consumes (lb_start's second argument).
pub(crate) fn parse_resource_names(s: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        check_resource_name(name)?;
        if out.iter().any(|n| n == name) {
            return Err(format!("resource {name:?} is listed twice"));
        }
        out.push(name.to_string());
    }
    if out.is_empty() {
        return Err(
            "a load_balancer route must name the resources a call uses, e.g. \"ch\"".into(),
        );
    }
    Ok(out)
}

fn check_resource_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{name:?} is not a resource name (letters, digits, '_' and '-')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(s: &str) -> FsEndpoint {
        parse_fs_url(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn fs_urls_take_an_optional_user_a_password_with_any_bytes_and_port_8021_by_default() {
        let u = fs("fs://:ClueCon@127.0.0.1");
        assert_eq!(
            (
                u.user.as_deref(),
                u.password.expose(),
                u.endpoint.to_string()
            ),
            (None, "ClueCon", "127.0.0.1:8021".into())
        );
        assert_eq!(u.endpoint.port, fsroute_esl::DEFAULT_ESL_PORT);
        // The user may hold `@domain` and the password `@` and `:`: the host follows the last `@`.
        let u = fs("fs://1000@example.com:s3cr@t:x@FS1.example.net:8022");
        assert_eq!(
            (u.user.as_deref(), u.password.expose()),
            (Some("1000@example.com"), "s3cr@t:x")
        );
        assert_eq!(u.endpoint.to_string(), "fs1.example.net:8022");
        assert_eq!(fs("fs://:pw@[::1]:8023").endpoint.to_string(), "[::1]:8023");
        assert_eq!(fs("fs://:pw@::1").endpoint.to_string(), "[::1]:8021");
    }

    /// The ESL client once had a parser of its own that dropped a trailing `/` and a `?EVENT,...`
    /// list; this one, the only one now, refuses both, so what is written is what is connected to.
    #[test]
    fn fs_urls_with_a_path_or_a_query_are_refused_not_trimmed() {
        for bad in [
            "fs://:pw@127.0.0.1/",
            "fs://:pw@127.0.0.1:8021/",
            "fs://:pw@host/esl",
            "fs://:pw@[::1]:8021/",
        ] {
            let e = parse_fs_url(bad).expect_err(bad);
            assert!(e.contains("no path"), "{bad}: {e}");
        }
        for bad in [
            "fs://:pw@127.0.0.1:8021?HEARTBEAT",
            "fs://:pw@127.0.0.1?HEARTBEAT,CHANNEL_CREATE",
        ] {
            assert!(parse_fs_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fs_urls_without_scheme_password_host_or_a_usable_port_are_refused_without_echoing_the_password(
    ) {
        for (bad, why) in [
            ("http://:pw@h", "starts with fs://"),
            ("fs://127.0.0.1:8021", "needs a password"),
            ("fs://user@127.0.0.1", "needs a password"),
            ("fs://:@127.0.0.1", "password is empty"),
            ("fs://:hunter2@h:99999", "not a port"),
            ("fs://:hunter2@h:0", "port 0"),
            ("fs://:hunter2@", "empty host"),
            (
                "fs://:hunter2@bad host",
                "neither an IP address nor a host name",
            ),
        ] {
            let e = parse_fs_url(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
    }
}
