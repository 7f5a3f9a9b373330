//! Validation: turns the raw serde tree into a [`Config`], applying defaults and collecting every
//! error instead of stopping at the first, so one `fsroute check` run shows the operator the
//! whole list. Cross-checks (routes naming sets that exist, duplicate destinations, sockets that
//! are listeners, one set of ESL credentials per box) happen here too.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fsroute_dataplane::shard::StreamSettings;
use fsroute_dataplane::socket::Ingress;
use fsroute_dataplane::dispatch::{Algorithm, HashMode};
use fsroute_dataplane::table::{CaptureSettings, LbWanted, RouteMatch};
use toml::Spanned;

use super::error::{redact, ConfigError, LineIndex, Position};
use fsroute_dataplane::conn::Transport;

use super::raw::{
    IntOrStr, Number, Opt, RawCapture, RawConfig, RawControl, RawDispatcher, RawDns, RawFailover, RawLimits, RawLoadBalancer,
    RawProxy, RawRoute, RawTls,
};
use super::value::{
    destination_transport, is_fs_url, is_stream_destination, parse_cidr, parse_duration, parse_fs_url, parse_host_port, parse_resource_names,
    parse_resources, parse_sip_destination, SipDest, SIP_DEFAULT_PORT,
};
use super::{
    Capacity, CapacityModel, Config, ControlConfig, DestState, DispatcherRow, DnsConfig, DnsTarget, FailoverConfig, FsEndpoint, FsKey,
    Host, HostPort, LbFlags, LoadBalancerRow, ProxyConfig, RouteConfig, RouteTo, RowInfo, Secret, TlsConfig, VerifyClient, Weight,
    XAuthMode,
};

pub(crate) fn validate(raw: &RawConfig, text: &str, path: &Path) -> (Config, Vec<ConfigError>) {
    let mut cx = Ctx {
        path,
        text,
        lines: LineIndex::new(text),
        errors: Vec::new(),
        fs_seen: HashMap::new(),
    };
    let proxy = cx.proxy(raw.proxy.as_ref());
    let control = cx.control(raw.control.as_ref().map(Spanned::get_ref));
    let failover = cx.failover(raw.failover.as_ref().map(Spanned::get_ref));
    let limits = cx.limits(raw.limits.as_ref().map(Spanned::get_ref));
    let dns = cx.dns(raw.dns.as_ref().map(Spanned::get_ref));
    let capture = cx.capture(raw.capture.as_ref().map(Spanned::get_ref), &proxy.listen);
    let dispatcher = cx.dispatcher_rows(&raw.dispatcher, &proxy.listen);
    let load_balancer = cx.load_balancer_rows(&raw.load_balancer, &proxy.listen);
    let routes = cx.routes(&raw.route, &dispatcher, &load_balancer);
    let tls = cx.tls(raw.tls.as_ref(), &proxy);
    cx.tcp_destinations(raw, &proxy, tls.as_ref(), &dispatcher, &load_balancer);
    let config = Config {
        path: path.to_path_buf(),
        proxy,
        control,
        failover,
        limits,
        dns,
        capture,
        tls,
        dispatcher,
        load_balancer,
        routes,
    };
    (config, cx.errors)
}

fn split_dest(dest: SipDest) -> (SocketAddr, Option<DnsTarget>) {
    match dest {
        SipDest::Addr(a) => (a, None),
        SipDest::Name(n) => (UNRESOLVED_ADDR, Some(n)),
    }
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    lines: LineIndex,
    errors: Vec<ConfigError>,
    /// Credentials per ESL endpoint and the line that first gave them: one connection serves
    /// every row naming a box, so two rows must not disagree about how to log in.
    fs_seen: HashMap<FsKey, (FsEndpoint, usize)>,
}

/// `capture.capture_id` when absent: Kamailio's siptrace `hep_capture_id` default.
pub(crate) const DEFAULT_CAPTURE_ID: u32 = 1;
/// `capture.queue` when absent: HEP packets waiting per shard, about 16 batches' worth.
pub(crate) const DEFAULT_CAPTURE_QUEUE: usize = 1024;

/// Shortest admin token accepted: a guessable token is no better than none.
pub(crate) const ADMIN_TOKEN_MIN_LEN: usize = 16;
/// Longest admin token accepted: it must fit in the admin listener's 8 KiB of headers.
pub(crate) const ADMIN_TOKEN_MAX_LEN: usize = 1024;

/// An admin token is sent as `Authorization: Bearer <token>`, so it must be an RFC 6750
/// `b64token` (letters, digits, `-._~+/`, then optional `=` padding) long enough not to be guessed.
fn check_admin_token(t: &str) -> Result<(), String> {
    let body = t.trim_end_matches('=');
    let charset_ok = !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'));
    if !charset_ok {
        return Err("an admin token holds only letters, digits and -._~+/ (then optional '=' padding), \
                    e.g. the output of `openssl rand -hex 32`"
            .into());
    }
    if t.len() < ADMIN_TOKEN_MIN_LEN || t.len() > ADMIN_TOKEN_MAX_LEN {
        return Err(format!("an admin token is {ADMIN_TOKEN_MIN_LEN} to {ADMIN_TOKEN_MAX_LEN} characters long"));
    }
    Ok(())
}

/// An answered call with no BYE for this long is taken as over (its units go back).
pub(crate) const DEFAULT_MAX_CALL_DURATION: Duration = Duration::from_secs(4 * 3600);

/// Shortest `proxy.branch_secret` accepted: it keys the MAC that stops forged responses.
pub(crate) const BRANCH_SECRET_MIN_LEN: usize = 16;

const DNS_DEFAULT_PORT: u16 = 53;
const DNS_MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// The `addr` of a row that names a host: never sent to (such a row reaches the table only as the
/// rows of its resolved addresses), and unspecified so that a slip would be refused, not routed.
pub(crate) const UNRESOLVED_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// `proxy.udp_max_message` unless the file says: RFC 3261 §18.1.1's limit for an unknown path MTU.
pub const DEFAULT_UDP_MAX_MESSAGE: usize = 1300;

/// Stand-in for a value that failed validation; the config is discarded anyway.
const PLACEHOLDER_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), SIP_DEFAULT_PORT);

/// Whether sending to `addr` would reach fsroute itself (a loop): one of its listeners, or loopback
/// at the port of a wildcard listener. Resolved addresses are checked the same way (docs/DNS.md).
pub(crate) fn is_own_listener(listen: &[SocketAddr], addr: SocketAddr) -> bool {
    listen.contains(&addr)
        || listen.iter().any(|l| l.ip().is_unspecified() && l.port() == addr.port() && addr.ip().is_loopback())
}

/// `proxy.shards` when the file does not say: one per CPU, except on 2 CPUs or fewer, where one
/// shard. There the other CPU is the control plane's, the kernel's network processing and every
/// other process's, and a second shard costs more than it brings: measured side by side in one
/// `fsroute-bench throughput` run on 2 cores (bench/README.md, "Shards on a 2-core machine"),
/// 2 shards used 2.0x the CPU per call of 1 shard at 2,000 calls/s for a 1.07x higher maximum rate.
pub fn default_shards(cpus: usize) -> usize {
    if cpus <= 2 {
        1
    } else {
        cpus
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

impl Ctx<'_> {
    /// What TCP and TLS destinations need: not a TCP/TLS listener of fsroute's own (a loop).
    /// OPTIONS probes reach them over their own transport (`probe.rs`).
    ///
    /// A TLS destination (`sips:`, `;transport=tls`) also needs `[tls] ca`: fsroute verifies
    /// the box's certificate against it and never against a system trust store (docs/TCP.md §9).
    fn tcp_destinations(
        &mut self,
        raw: &RawConfig,
        proxy: &ProxyConfig,
        tls: Option<&TlsConfig>,
        ds: &[DispatcherRow],
        lb: &[LoadBalancerRow],
    ) {
        let rows = ds.iter().map(|r| (&r.uri, r.addr, r.info.line, "dispatcher")).chain(lb.iter().map(|r| (&r.uri, r.addr, r.info.line, "load_balancer")));
        for (uri, addr, line, table) in rows.filter(|(uri, ..)| is_stream_destination(uri)) {
            let span = self.line_span(line);
            if proxy.listen_tcp.contains(&addr) || proxy.listen_tls.contains(&addr) {
                self.invalid(&span, &format!("{table}.destination"), quoted(uri), "this is one of fsroute's own TCP/TLS listeners: calls would loop");
            }
            let needs_ca = destination_transport(uri) == Transport::Tls && tls.is_none_or(|t| t.ca.is_none());
            // A [tls] that failed to load has its own error; do not pile a second one on it.
            if needs_ca && (tls.is_some() || raw.tls.is_none()) {
                self.missing(
                    &span,
                    "tls.ca",
                    format!("the TLS destination {uri} is verified against [tls] ca, the CAs that sign the boxes' certificates (PEM)"),
                );
            }
        }
    }

    /// The span of the start of 1-based line `line`.
    fn line_span(&self, line: usize) -> Range<usize> {
        let at = self.text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum::<usize>();
        at..at
    }

    fn at(&self, span: &Range<usize>) -> Position {
        self.lines.position(self.path, self.text, span.start)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.lines.locate(self.text, span.start).0
    }

    fn invalid(
        &mut self,
        span: &Range<usize>,
        field: &str,
        value: impl Display,
        reason: impl Into<String>,
    ) {
        let at = self.at(span);
        self.errors.push(ConfigError::Invalid {
            at,
            field: field.to_string(),
            value: redact(&value.to_string()),
            reason: redact(&reason.into()),
        });
    }

    fn missing(&mut self, span: &Range<usize>, field: &str, reason: impl Into<String>) {
        let at = self.at(span);
        self.errors.push(ConfigError::Missing {
            at,
            field: field.to_string(),
            reason: redact(&reason.into()),
        });
    }

    fn conflict(&mut self, span: &Range<usize>, field: &str, reason: impl Into<String>) {
        let at = self.at(span);
        self.errors.push(ConfigError::Conflict {
            at,
            field: field.to_string(),
            reason: redact(&reason.into()),
        });
    }

    /// Records a (set or group, address) pair; false (and a Duplicate error pointing at the first
    /// row) when the set or group already has a destination there.
    fn first_destination(
        &mut self,
        seen: &mut HashMap<(i32, SocketAddr), usize>,
        key: (i32, SocketAddr),
        span: &Range<usize>,
        field: &str,
        uri: &str,
        kind: &str,
    ) -> bool {
        if let Some(&first) = seen.get(&key) {
            let reason = format!("{kind} {} already has a destination at {}", key.0, key.1);
            self.duplicate(span, field, quoted(uri), first, &reason);
            return false;
        }
        seen.insert(key, self.line(span));
        true
    }

    fn duplicate(
        &mut self,
        span: &Range<usize>,
        field: &str,
        value: impl Display,
        first_line: usize,
        reason: &str,
    ) {
        let at = self.at(span);
        self.errors.push(ConfigError::Duplicate {
            at,
            field: field.to_string(),
            value: redact(&value.to_string()),
            first_line,
            reason: redact(reason),
        });
    }

    fn unknown(
        &mut self,
        span: &Range<usize>,
        field: &str,
        value: impl Display,
        reason: impl Into<String>,
    ) {
        let at = self.at(span);
        self.errors.push(ConfigError::UnknownReference {
            at,
            field: field.to_string(),
            value: redact(&value.to_string()),
            reason: redact(&reason.into()),
        });
    }

    /// An integer within `lo..=hi`, converted to `T`; `default` when absent or wrong.
    fn ranged<T: TryFrom<i64> + Copy>(
        &mut self,
        v: &Opt<i64>,
        field: &str,
        lo: i64,
        hi: i64,
        default: T,
    ) -> T {
        let Some(s) = v else { return default };
        let n = *s.get_ref();
        match T::try_from(n) {
            Ok(t) if (lo..=hi).contains(&n) => t,
            _ => {
                self.invalid(
                    &s.span(),
                    field,
                    n,
                    format!("must be between {lo} and {hi}"),
                );
                default
            }
        }
    }

    /// A required integer; `None` (after reporting) when absent or wrong.
    fn required_i32(
        &mut self,
        v: &Opt<i64>,
        row: &Range<usize>,
        field: &str,
        what: &str,
    ) -> Option<i32> {
        match v {
            None => {
                self.missing(row, field, what.to_string());
                None
            }
            Some(s) => match i32::try_from(*s.get_ref()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.invalid(
                        &s.span(),
                        field,
                        s.get_ref(),
                        "must fit a 32-bit signed integer",
                    );
                    None
                }
            },
        }
    }

    fn duration(
        &mut self,
        v: &Opt<IntOrStr>,
        field: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        let Some(s) = v else { return default };
        match s.get_ref() {
            IntOrStr::Int(n) => {
                self.invalid(
                    &s.span(),
                    field,
                    n,
                    "a duration is a string with a unit, e.g. \"250ms\", \"3s\", \"12h\"",
                );
                default
            }
            IntOrStr::Str(text) => match parse_duration(text) {
                Ok(d) if d.is_zero() && !allow_zero => {
                    self.invalid(&s.span(), field, quoted(text), "must be longer than zero");
                    default
                }
                Ok(d) => d,
                Err(why) => {
                    self.invalid(&s.span(), field, quoted(text), why);
                    default
                }
            },
        }
    }

    fn proxy(&mut self, raw: Option<&Spanned<RawProxy>>) -> ProxyConfig {
        let absent = RawProxy::default();
        let (p, table) = match raw {
            Some(s) => (s.get_ref(), s.span()),
            None => {
                self.missing(
                    &(0..0),
                    "proxy",
                    "a [proxy] table with listen = [\"IP:PORT\"] is required",
                );
                (&absent, 0..0)
            }
        };

        let mut listen: Vec<SocketAddr> = Vec::new();
        let mut listen_tcp: Vec<SocketAddr> = Vec::new();
        let mut listen_tls: Vec<SocketAddr> = Vec::new();
        // Every listener once, with its transport and line, for the duplicate check.
        let mut seen: Vec<(&str, SocketAddr, usize)> = Vec::new();
        match &p.listen {
            None if raw.is_some() => self.missing(
                &table,
                "proxy.listen",
                "at least one UDP listener, e.g. listen = [\"0.0.0.0:5060\"]",
            ),
            None => {}
            Some(l) if l.get_ref().is_empty() => self.invalid(
                &l.span(),
                "proxy.listen",
                "[]",
                "at least one UDP listener is required",
            ),
            Some(l) => {
                for (i, a) in l.get_ref().iter().enumerate() {
                    let field = format!("proxy.listen[{i}]");
                    let span = a.span();
                    let text = a.get_ref().trim();
                    // A bare IP:PORT is UDP, as it always was.
                    let (transport, addr) = match text.split_once(':') {
                        Some((t, rest)) if t.eq_ignore_ascii_case("udp") => ("udp", rest),
                        Some((t, rest)) if t.eq_ignore_ascii_case("tcp") => ("tcp", rest),
                        Some((t, rest)) if t.eq_ignore_ascii_case("tls") => ("tls", rest),
                        _ => ("udp", text),
                    };
                    match addr.parse::<SocketAddr>() {
                        Ok(sa) if sa.port() == 0 => self.invalid(
                            &span,
                            &field,
                            quoted(a.get_ref()),
                            "port 0 is not a usable port",
                        ),
                        // tcp: and tls: on one address would be one TCP port twice.
                        Ok(sa) => match seen.iter().find(|(t, x, _)| (*t == "udp") == (transport == "udp") && *x == sa) {
                            Some(&(_, _, first)) => self.duplicate(&span, &field, quoted(a.get_ref()), first, "listed twice"),
                            None => {
                                seen.push((transport, sa, self.line(&span)));
                                match transport {
                                    "tcp" => listen_tcp.push(sa),
                                    "tls" => listen_tls.push(sa),
                                    _ => listen.push(sa),
                                }
                            }
                        },
                        Err(_) => self.invalid(
                            &span,
                            &field,
                            quoted(a.get_ref()),
                            "not an IP:PORT socket address (IPv6 as \"[addr]:port\"), optionally after udp:, tcp: or tls:",
                        ),
                    }
                }
                if listen.is_empty() && !(listen_tcp.is_empty() && listen_tls.is_empty()) {
                    // Requests to destinations leave over UDP in this build.
                    self.invalid(
                        &l.span(),
                        "proxy.listen",
                        format!("{:?}", l.get_ref().iter().map(|s| s.get_ref().as_str()).collect::<Vec<_>>()),
                        "at least one UDP listener is required besides tcp: and tls: ones (requests to destinations leave over UDP)",
                    );
                }
            }
        }

        let placeholder = HostPort {
            host: Host::Ip(PLACEHOLDER_ADDR.ip()),
            port: SIP_DEFAULT_PORT,
        };
        let first = listen.first().copied();
        let advertise = match &p.advertise {
            Some(a) => {
                match parse_host_port(a.get_ref(), first.map_or(SIP_DEFAULT_PORT, |f| f.port())) {
                    Ok(HostPort {
                        host: Host::Ip(ip), ..
                    }) if ip.is_unspecified() || ip.is_multicast() => {
                        self.invalid(
                            &a.span(),
                            "proxy.advertise",
                            quoted(a.get_ref()),
                            "peers cannot reach this address",
                        );
                        placeholder.clone()
                    }
                    Ok(hp) => hp,
                    Err(why) => {
                        self.invalid(&a.span(), "proxy.advertise", quoted(a.get_ref()), why);
                        placeholder.clone()
                    }
                }
            }
            None => match first {
                Some(f) if f.ip().is_unspecified() => {
                    let span = p.listen.as_ref().map_or(table.clone(), Spanned::span);
                    self.missing(
                        &span,
                        "proxy.advertise",
                        format!("listening on {f} (any address) needs advertise = the address peers reach"),
                    );
                    placeholder.clone()
                }
                Some(f) => HostPort {
                    host: Host::Ip(f.ip()),
                    port: f.port(),
                },
                None => placeholder.clone(),
            },
        };

        let mut aliases = Vec::new();
        if let Some(list) = &p.aliases {
            for (i, a) in list.get_ref().iter().enumerate() {
                match parse_host_port(a.get_ref(), advertise.port) {
                    Ok(hp) => aliases.push(hp),
                    Err(why) => self.invalid(
                        &a.span(),
                        &format!("proxy.aliases[{i}]"),
                        quoted(a.get_ref()),
                        why,
                    ),
                }
            }
        }

        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = self.ranged(&p.shards, "proxy.shards", 1, 1024, default_shards(cpus));
        let record_route = p.record_route.as_ref().is_none_or(|b| *b.get_ref());
        let max_forwards = self.ranged(&p.max_forwards, "proxy.max_forwards", 1, 255, 70u8);
        let hash = match &p.hash {
            None => HashMode::default(),
            Some(h) => HashMode::from_name(h.get_ref()).unwrap_or_else(|| {
                self.invalid(
                    &h.span(),
                    "proxy.hash",
                    quoted(h.get_ref()),
                    "must be \"rendezvous\" or \"opensips\"",
                );
                HashMode::default()
            }),
        };
        let ingress = match &p.ingress {
            None => Ingress::default(),
            Some(i) => Ingress::from_name(i.get_ref()).unwrap_or_else(|| {
                self.invalid(&i.span(), "proxy.ingress", quoted(i.get_ref()), "must be \"flow\" or \"random\"");
                Ingress::default()
            }),
        };
        let no_route_reply = match &p.no_route_reply {
            None => 404,
            Some(c) if matches!(*c.get_ref(), 404 | 503) => *c.get_ref() as u16,
            Some(c) => {
                self.invalid(
                    &c.span(),
                    "proxy.no_route_reply",
                    c.get_ref(),
                    "must be 404 or 503",
                );
                404
            }
        };
        let transaction_memory = self.duration(
            &p.transaction_memory,
            "proxy.transaction_memory",
            Duration::from_secs(190),
            false,
        );
        let dialog_memory = self.duration(
            &p.dialog_memory,
            "proxy.dialog_memory",
            Duration::from_secs(12 * 3600),
            true,
        );
        let max_call_duration =
            self.duration(&p.max_call_duration, "proxy.max_call_duration", DEFAULT_MAX_CALL_DURATION, false);
        let stream_defaults = StreamSettings::default();
        let stream = StreamSettings {
            idle_timeout: self.duration(&p.tcp_idle_timeout, "proxy.tcp_idle_timeout", stream_defaults.idle_timeout, false),
            // Below 1 kB no INVITE fits; above 16 MiB a peer could make fsroute buffer a file.
            max_message: self.ranged(&p.tcp_max_message, "proxy.tcp_max_message", 1024, 16 << 20, stream_defaults.max_message),
            connections_per_source: self.ranged(
                &p.tcp_connections_per_source,
                "proxy.tcp_connections_per_source",
                1,
                1 << 20,
                stream_defaults.connections_per_source,
            ),
        };
        // RFC 3261 §18.1.1's 1300 bytes; below 512 ordinary requests would all switch, above
        // 65507 no UDP datagram exists.
        let udp_max_message = match self.ranged(&p.udp_max_message, "proxy.udp_max_message", 0, 65_507, DEFAULT_UDP_MAX_MESSAGE) {
            n @ 1..=511 => {
                let span = p.udp_max_message.as_ref().map_or(0..0, Spanned::span);
                self.invalid(&span, "proxy.udp_max_message", n, "must be 0 (never switch to TCP) or between 512 and 65507");
                DEFAULT_UDP_MAX_MESSAGE
            }
            n => n,
        };
        let branch_secret = p.branch_secret.as_ref().and_then(|t| match t.get_ref().len() {
            BRANCH_SECRET_MIN_LEN.. => Some(Secret::new(t.get_ref().as_str())),
            _ => {
                self.invalid(
                    &t.span(),
                    "proxy.branch_secret",
                    "****",
                    format!("at least {BRANCH_SECRET_MIN_LEN} characters (e.g. the output of `openssl rand -hex 32`)"),
                );
                None
            }
        });

        let x_auth_ip = match &p.x_auth_ip {
            None => XAuthMode::default(),
            Some(x) => XAuthMode::from_name(x.get_ref()).unwrap_or_else(|| {
                self.invalid(&x.span(), "proxy.x_auth_ip", quoted(x.get_ref()), "must be \"fs\", \"always\" or \"never\"");
                XAuthMode::default()
            }),
        };

        ProxyConfig {
            listen,
            listen_tcp,
            listen_tls,
            stream,
            udp_max_message,
            advertise,
            aliases,
            shards,
            record_route,
            max_forwards,
            hash,
            ingress,
            no_route_reply,
            transaction_memory,
            dialog_memory,
            max_call_duration,
            branch_secret,
            x_auth_ip,
        }
    }

    fn limits(&mut self, raw: Option<&RawLimits>) -> fsroute_dataplane::table::MemoryLimits {
        let d = fsroute_dataplane::table::MemoryLimits::default();
        let Some(l) = raw else { return d };
        // Below 1000 an edge refuses calls under any real load; the ceilings keep the arithmetic
        // of the defaults (docs/SECURITY.md, "Bounded call state") within a machine.
        fsroute_dataplane::table::MemoryLimits {
            transactions: self.ranged(&l.transactions, "limits.transactions", 1000, 1 << 26, d.transactions),
            dialogs: self.ranged(&l.dialogs, "limits.dialogs", 1000, 1 << 26, d.dialogs),
            forks: self.ranged(&l.forks, "limits.forks", 100, 1 << 24, d.forks),
            fork_bytes: self.ranged::<usize>(&l.fork_memory_mib, "limits.fork_memory_mib", 1, 1 << 16, d.fork_bytes >> 20) << 20,
        }
    }

    /// `[capture]`: off without `hep`; the other keys are checked either way.
    fn capture(&mut self, raw: Option<&RawCapture>, listen: &[SocketAddr]) -> Option<CaptureSettings> {
        let c = raw?;
        let capture_id = self.ranged(&c.capture_id, "capture.capture_id", 0, i64::from(u32::MAX), DEFAULT_CAPTURE_ID);
        let queue = self.ranged(&c.queue, "capture.queue", 16, 1 << 16, DEFAULT_CAPTURE_QUEUE);
        let hep = c.hep.as_ref()?;
        let text = hep.get_ref().trim();
        let collector = match text.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 || a.ip().is_unspecified() => {
                self.invalid(&hep.span(), "capture.hep", quoted(text), "the collector needs a real address and a port (e.g. \"127.0.0.1:9060\")");
                return None;
            }
            Ok(a) => a,
            Err(_) => {
                self.invalid(&hep.span(), "capture.hep", quoted(text), "must be IP:PORT, an IP literal (no DNS): e.g. \"127.0.0.1:9060\" or \"[2001:db8::1]:9060\"");
                return None;
            }
        };
        // HEP packets arriving at a SIP listener would come back as malformed SIP, captured again.
        let own = listen.iter().any(|l| {
            l.port() == collector.port() && (l.ip() == collector.ip() || (l.ip().is_unspecified() && l.is_ipv4() == collector.is_ipv4()))
        });
        if own {
            self.conflict(&hep.span(), "capture.hep", format!("{collector} is one of fsroute's own SIP listeners"));
            return None;
        }
        Some(CaptureSettings { collector, capture_id, queue })
    }

    /// `[tls]`: the files are read here, so a missing, unreadable, malformed or mismatched one is
    /// an error naming its field and path (relative paths are taken from the config file's
    /// directory). A `tls:` listener needs `certificate` and `private_key`.
    fn tls(&mut self, raw: Option<&Spanned<RawTls>>, proxy: &ProxyConfig) -> Option<TlsConfig> {
        let listener = proxy.listen_tls.first();
        let Some(raw) = raw else {
            if let Some(l) = listener {
                self.missing(&(0..0), "tls", format!("the tls:{l} listener needs a [tls] table with certificate and private_key"));
            }
            return None;
        };
        let (t, table) = (raw.get_ref(), raw.span());
        let base = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let file = |v: &Opt<String>, field: &str, cx: &mut Self| -> Option<(PathBuf, Range<usize>)> {
            let s = v.as_ref()?;
            let text = s.get_ref().trim();
            if text.is_empty() {
                cx.invalid(&s.span(), field, "\"\"", "a path to a PEM file");
                return None;
            }
            Some((base.join(text), s.span()))
        };
        let certificate = file(&t.certificate, "tls.certificate", self);
        let private_key = file(&t.private_key, "tls.private_key", self);
        let client_ca = file(&t.client_ca, "tls.client_ca", self);
        let ca = file(&t.ca, "tls.ca", self);
        match (&certificate, &private_key) {
            (Some(_), None) if t.private_key.is_none() => self.missing(&table, "tls.private_key", "the key of tls.certificate, a PEM file"),
            (None, Some(_)) if t.certificate.is_none() => self.missing(&table, "tls.certificate", "the certificate of tls.private_key, a PEM file"),
            (None, None) if listener.is_some() && t.certificate.is_none() && t.private_key.is_none() => self.missing(
                &table,
                "tls.certificate",
                format!("the tls:{} listener needs certificate and private_key (PEM files)", listener.map(ToString::to_string).unwrap_or_default()),
            ),
            _ => {}
        }
        if client_ca.is_some() && t.certificate.is_none() {
            self.conflict(&table, "tls.client_ca", "client certificates are asked for by a tls: listener, which needs certificate and private_key");
        }
        let verify_client = match &t.verify_client {
            None => VerifyClient::default(),
            Some(v) => match VerifyClient::from_name(v.get_ref()) {
                Some(_) if t.client_ca.is_none() => {
                    self.conflict(&v.span(), "tls.verify_client", "needs tls.client_ca, the CAs client certificates are verified against");
                    VerifyClient::default()
                }
                Some(m) => m,
                None => {
                    self.invalid(&v.span(), "tls.verify_client", quoted(v.get_ref()), "must be \"require\" or \"optional\"");
                    VerifyClient::default()
                }
            },
        };
        let span_of = |f: &str| match f {
            "tls.certificate" => certificate.as_ref().map(|c| c.1.clone()),
            "tls.private_key" => private_key.as_ref().map(|c| c.1.clone()),
            "tls.client_ca" => client_ca.as_ref().map(|c| c.1.clone()),
            _ => ca.as_ref().map(|c| c.1.clone()),
        };
        let path = |f: &Option<(PathBuf, Range<usize>)>| f.as_ref().map(|(p, _)| p.clone());
        let built = super::tls::build(
            path(&certificate).as_deref(),
            path(&private_key).as_deref(),
            path(&client_ca).as_deref(),
            verify_client,
            path(&ca).as_deref(),
        );
        let (contexts, certificate_info) = match built {
            Ok(b) => b,
            Err(e) => {
                let span = span_of(e.field).unwrap_or(table);
                let value = match e.field {
                    "tls.certificate" => path(&certificate),
                    "tls.private_key" => path(&private_key),
                    "tls.client_ca" => path(&client_ca),
                    _ => path(&ca),
                };
                let value = value.map(|p| quoted(&p.display().to_string())).unwrap_or_default();
                self.invalid(&span, e.field, value, e.reason);
                return None;
            }
        };
        Some(TlsConfig {
            certificate: path(&certificate),
            private_key: path(&private_key),
            client_ca: path(&client_ca),
            verify_client,
            ca: path(&ca),
            certificate_info,
            contexts,
        })
    }

    fn control(&mut self, raw: Option<&RawControl>) -> ControlConfig {
        let d = ControlConfig::default();
        let Some(c) = raw else { return d };
        let admin = c.admin.as_ref().and_then(|a| {
            let parsed = match a.get_ref() {
                IntOrStr::Int(n) => u16::try_from(*n).ok().map(|p| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p)),
                IntOrStr::Str(s) => s.trim().parse::<SocketAddr>().ok().or_else(|| {
                    let port = s.trim().strip_prefix(':').unwrap_or(s.trim());
                    port.parse::<u16>().ok().map(|p| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p))
                }),
            };
            match parsed {
                Some(sa) if sa.port() != 0 => Some(sa),
                _ => {
                    self.invalid(
                        &a.span(),
                        "control.admin",
                        a.get_ref(),
                        "must be IP:PORT, or a port for loopback (e.g. \"127.0.0.1:9060\" or \"9060\")",
                    );
                    None
                }
            }
        });
        let admin_token = c.admin_token.as_ref().and_then(|t| match check_admin_token(t.get_ref()) {
            Ok(()) => Some(Secret::new(t.get_ref().as_str())),
            Err(reason) => {
                // The value is a secret even when malformed: never echo it.
                self.invalid(&t.span(), "control.admin_token", "****", reason);
                None
            }
        });
        if let (Some(addr), None, None) = (admin, &admin_token, &c.admin_token) {
            if !addr.ip().is_loopback() {
                let span = c.admin.as_ref().map(Spanned::span).unwrap_or_default();
                self.missing(
                    &span,
                    "control.admin_token",
                    format!(
                        "the admin listener {addr} is reachable from other hosts, so it needs a bearer token: \
                         set control.admin_token, or listen on loopback (e.g. \"127.0.0.1:{}\")",
                        addr.port()
                    ),
                );
            }
        }
        let u32max = i64::from(u32::MAX);
        ControlConfig {
            admin,
            admin_token,
            heartbeat_timeout: self.duration(
                &c.heartbeat_timeout,
                "control.heartbeat_timeout",
                d.heartbeat_timeout,
                false,
            ),
            stale_weight: self.ranged(
                &c.stale_weight,
                "control.stale_weight",
                0,
                u32max,
                d.stale_weight,
            ),
            max_freeswitch_weight: self.ranged(
                &c.max_freeswitch_weight,
                "control.max_freeswitch_weight",
                1,
                u32max,
                d.max_freeswitch_weight,
            ),
            initial_capacity: self.ranged(
                &c.initial_capacity,
                "control.initial_capacity",
                0,
                u32max,
                d.initial_capacity,
            ),
            channels_per_call: self.ranged(
                &c.channels_per_call,
                "control.channels_per_call",
                1,
                1000,
                d.channels_per_call,
            ),
            probe_interval: self.duration(
                &c.probe_interval,
                "control.probe_interval",
                d.probe_interval,
                true,
            ),
            probe_failure_threshold: self.ranged(
                &c.probe_failure_threshold,
                "control.probe_failure_threshold",
                1,
                1000,
                d.probe_failure_threshold,
            ),
            probe_success_threshold: self.ranged(
                &c.probe_success_threshold,
                "control.probe_success_threshold",
                1,
                1000,
                d.probe_success_threshold,
            ),
            capacity_model: match &c.capacity_model {
                None => d.capacity_model,
                Some(m) => CapacityModel::from_name(m.get_ref().trim()).unwrap_or_else(|| {
                    self.invalid(&m.span(), "control.capacity_model", quoted(m.get_ref()), "must be \"headroom\" or \"opensips\"");
                    d.capacity_model
                }),
            },
            cpu_cost_prior_micro: self.percent_micro(&c.cpu_cost_prior, "control.cpu_cost_prior", 0.0001, 100.0, d.cpu_cost_prior_micro),
            cpu_cost_prior_configured: c.cpu_cost_prior.is_some(),
            cpu_cost_floor_micro: self.percent_micro(&c.cpu_cost_floor, "control.cpu_cost_floor", 0.0001, 100.0, d.cpu_cost_floor_micro),
            cpu_margin_micro: self.percent_micro(&c.cpu_margin, "control.cpu_margin", 0.0, 100.0, u64::from(d.cpu_margin_micro)) as u32,
            status_interval: self.duration(&c.status_interval, "control.status_interval", d.status_interval, true),
            idle_cpu_smoothing: self.ranged(&c.idle_cpu_smoothing, "control.idle_cpu_smoothing", 1, 3600, d.idle_cpu_smoothing),
            max_sessions_ceiling: self.ranged(&c.max_sessions_ceiling, "control.max_sessions_ceiling", 1, u32max, d.max_sessions_ceiling),
        }
    }

    /// A percentage written as a number of points (`0.1` = 0.1 %), in millionths of a percent.
    fn percent_micro(&mut self, v: &Opt<Number>, field: &str, lo: f64, hi: f64, default: u64) -> u64 {
        let Some(s) = v else { return default };
        let x = s.get_ref().value();
        if x.is_finite() && (lo..=hi).contains(&x) {
            (x * 1e6).round() as u64
        } else {
            self.invalid(&s.span(), field, s.get_ref(), format!("must be a number of percent points between {lo} and {hi}"));
            default
        }
    }

    fn dns(&mut self, raw: Option<&RawDns>) -> DnsConfig {
        let d = DnsConfig::default();
        let Some(r) = raw else { return d };
        let mut servers = Vec::new();
        for (i, s) in r.servers.iter().flat_map(|l| l.get_ref()).enumerate() {
            match parse_host_port(s.get_ref(), DNS_DEFAULT_PORT) {
                Ok(HostPort { host: Host::Ip(ip), port }) if !ip.is_unspecified() && !ip.is_multicast() => {
                    servers.push(SocketAddr::new(ip, port))
                }
                Ok(_) => self.invalid(
                    &s.span(),
                    &format!("dns.servers[{i}]"),
                    quoted(s.get_ref()),
                    "a name server is an IP address with an optional port (53 by default), e.g. \"127.0.0.1:5353\"",
                ),
                Err(why) => self.invalid(&s.span(), &format!("dns.servers[{i}]"), quoted(s.get_ref()), why),
            }
        }
        let min_ttl = self.duration(&r.min_ttl, "dns.min_ttl", d.min_ttl, false);
        let max_ttl = self.duration(&r.max_ttl, "dns.max_ttl", d.max_ttl, false);
        if min_ttl > max_ttl {
            let span = r.max_ttl.as_ref().or(r.min_ttl.as_ref()).map_or(0..0, Spanned::span);
            let field = if r.max_ttl.is_some() { "dns.max_ttl" } else { "dns.min_ttl" };
            self.conflict(
                &span,
                field,
                format!(
                    "max_ttl ({}) is shorter than min_ttl ({})",
                    humantime::format_duration(max_ttl),
                    humantime::format_duration(min_ttl)
                ),
            );
        }
        let grace = self.duration(&r.grace, "dns.grace", d.grace, true);
        let timeout = self.duration(&r.timeout, "dns.timeout", d.timeout, false);
        if timeout > DNS_MAX_TIMEOUT {
            if let Some(s) = &r.timeout {
                self.invalid(&s.span(), "dns.timeout", s.get_ref(), "at most 30s: a slower answer is no answer");
            }
        }
        DnsConfig { servers, min_ttl, max_ttl, grace, timeout: timeout.min(DNS_MAX_TIMEOUT) }
    }

    fn failover(&mut self, raw: Option<&RawFailover>) -> FailoverConfig {
        let d = FailoverConfig::default();
        let Some(f) = raw else { return d };
        let codes = match &f.codes {
            None => d.codes.clone(),
            Some(list) => {
                let mut codes: Vec<u16> = Vec::new();
                let mut lines: Vec<usize> = Vec::new();
                for (i, c) in list.get_ref().iter().enumerate() {
                    let field = format!("failover.codes[{i}]");
                    let n = *c.get_ref();
                    if !(300..=699).contains(&n) {
                        self.invalid(
                            &c.span(),
                            &field,
                            n,
                            "failover codes are final non-2xx responses, 300-699",
                        );
                    } else if let Some(j) = codes.iter().position(|x| i64::from(*x) == n) {
                        self.duplicate(&c.span(), &field, n, lines[j], "listed twice");
                    } else {
                        codes.push(n as u16);
                        lines.push(self.line(&c.span()));
                    }
                }
                codes
            }
        };
        FailoverConfig {
            codes,
            no_answer_timeout: self.duration(
                &f.no_answer_timeout,
                "failover.no_answer_timeout",
                d.no_answer_timeout,
                false,
            ),
            max_attempts: self.ranged(
                &f.max_attempts,
                "failover.max_attempts",
                1,
                fsroute_dataplane::router::MAX_ATTEMPTS as i64,
                d.max_attempts,
            ),
            exhausted_reply: match &f.exhausted_reply {
                None => d.exhausted_reply,
                Some(c) if matches!(*c.get_ref(), 500 | 503) => *c.get_ref() as u16,
                Some(c) => {
                    self.invalid(&c.span(), "failover.exhausted_reply", c.get_ref(), "must be 503 (with Retry-After) or 500 (RFC 3261 §16.7 step 6)");
                    d.exhausted_reply
                }
            },
            exhausted_retry_after: self.duration(&f.exhausted_retry_after, "failover.exhausted_retry_after", d.exhausted_retry_after, true),
            refused_cooldown: self.duration(&f.refused_cooldown, "failover.refused_cooldown", d.refused_cooldown, true),
        }
    }

    /// A row's `sip:` URI, resolved; `None` (after reporting) when absent or wrong.
    fn destination(
        &mut self,
        v: &Opt<String>,
        row: &Range<usize>,
        field: &str,
        listen: &[SocketAddr],
    ) -> Option<(String, SipDest, Range<usize>)> {
        let Some(s) = v else {
            self.missing(
                row,
                field,
                "the destination's URI, e.g. \"sip:10.0.0.5:5060\" or \"sip:fs1.example.net\"",
            );
            return None;
        };
        let uri = s.get_ref().trim();
        match parse_sip_destination(uri) {
            Err(why) => {
                self.invalid(&s.span(), field, quoted(uri), why);
                None
            }
            Ok(SipDest::Addr(addr)) if is_own_listener(listen, addr) => {
                self.invalid(
                    &s.span(),
                    field,
                    quoted(uri),
                    "this is one of fsroute's own listeners: calls would loop",
                );
                None
            }
            Ok(dest) => Some((uri.to_string(), dest, s.span())),
        }
    }

    /// Records a destination of a set or group: an address once per set (as
    /// [`Ctx::first_destination`]), a name once per set.
    #[allow(clippy::too_many_arguments)]
    fn first_of_set(
        &mut self,
        seen: &mut HashMap<(i32, SocketAddr), usize>,
        names: &mut HashMap<(i32, DnsTarget), usize>,
        id: i32,
        dest: &SipDest,
        span: &Range<usize>,
        field: &str,
        uri: &str,
        kind: &str,
    ) -> bool {
        match dest {
            SipDest::Addr(addr) => self.first_destination(seen, (id, *addr), span, field, uri, kind),
            SipDest::Name(n) => {
                if let Some(&first) = names.get(&(id, n.clone())) {
                    self.duplicate(span, field, quoted(uri), first, &format!("{kind} {id} already names {n}"));
                    return false;
                }
                names.insert((id, n.clone()), self.line(span));
                true
            }
        }
    }

    fn state(&mut self, v: &Opt<IntOrStr>, field: &str) -> DestState {
        let Some(s) = v else { return DestState::Active };
        let st = match s.get_ref() {
            IntOrStr::Int(n) => DestState::from_number(*n),
            IntOrStr::Str(t) => DestState::from_name(t),
        };
        st.unwrap_or_else(|| {
            self.invalid(
                &s.span(),
                field,
                s.get_ref(),
                "must be 0 (active), 1 (inactive) or 2 (probing)",
            );
            DestState::Active
        })
    }

    /// Remembers an ESL endpoint's credentials and reports a second row that disagrees.
    fn note_fs(&mut self, fs: &FsEndpoint, span: &Range<usize>, field: &str) {
        let line = self.line(span);
        match self.fs_seen.get(&fs.key()) {
            Some((first, first_line)) if first.user != fs.user || first.password != fs.password => {
                let first_line = *first_line;
                self.conflict(
                    span,
                    field,
                    format!(
                        "{fs} is given other credentials than at line {first_line}; one ESL connection serves every row naming a box"
                    ),
                );
            }
            Some(_) => {}
            None => {
                self.fs_seen.insert(fs.key(), (fs.clone(), line));
            }
        }
    }

    fn weight(&mut self, v: &Opt<IntOrStr>, field: &str) -> Weight {
        let Some(s) = v else { return Weight::Static(1) };
        const HOW: &str =
            "a weight is an integer (0 or more) or \"fs://[user]:password@host[:port]\"";
        match s.get_ref() {
            IntOrStr::Int(n) => match u32::try_from(*n) {
                Ok(w) => Weight::Static(w),
                Err(_) => {
                    self.invalid(&s.span(), field, n, HOW);
                    Weight::Static(1)
                }
            },
            IntOrStr::Str(t) if is_fs_url(t.trim()) => match parse_fs_url(t.trim()) {
                Ok(fs) => {
                    self.note_fs(&fs, &s.span(), field);
                    Weight::Fs(fs)
                }
                Err(why) => {
                    self.invalid(&s.span(), field, quoted(t), why);
                    Weight::Static(1)
                }
            },
            // OpenSIPS keeps weight in a string column, so rows copied from its database say "10".
            IntOrStr::Str(t) => match t.trim().parse::<u32>() {
                Ok(w) => Weight::Static(w),
                Err(_) => {
                    self.invalid(&s.span(), field, quoted(t), HOW);
                    Weight::Static(1)
                }
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row_info(
        &mut self,
        pre: &str,
        line: usize,
        id: &Opt<i64>,
        probe_mode: &Opt<i64>,
        max_probe_mode: i64,
        attrs: &Opt<String>,
        description: &Opt<String>,
        socket: &Opt<String>,
        listen: &[SocketAddr],
        seen_ids: &mut HashMap<i64, usize>,
    ) -> RowInfo {
        if let Some(idv) = id {
            let n = *idv.get_ref();
            if let Some(first) = seen_ids.get(&n) {
                self.duplicate(
                    &idv.span(),
                    &format!("{pre}.id"),
                    n,
                    *first,
                    "row id used twice",
                );
            } else {
                seen_ids.insert(n, line);
            }
        }
        let probe_mode = probe_mode.as_ref().map(|_| {
            let m: u8 = self.ranged(
                probe_mode,
                &format!("{pre}.probe_mode"),
                0,
                max_probe_mode,
                0u8,
            );
            m
        });
        let socket = socket.as_ref().and_then(|s| {
            let text = s.get_ref().trim();
            // OpenSIPS writes sockets as proto:ip:port; fsroute only speaks UDP.
            let addr_part = match text.split_once(':') {
                Some((proto, rest)) if proto.eq_ignore_ascii_case("udp") => rest,
                Some((proto, _))
                    if proto.chars().all(|c| c.is_ascii_alphabetic()) && proto.len() <= 4 =>
                {
                    self.invalid(
                        &s.span(),
                        &format!("{pre}.socket"),
                        quoted(text),
                        "fsroute only listens on UDP",
                    );
                    return None;
                }
                _ => text,
            };
            match addr_part.parse::<SocketAddr>() {
                Ok(sa) if listen.contains(&sa) => Some(sa),
                Ok(_) => {
                    let names: Vec<String> = listen.iter().map(ToString::to_string).collect();
                    self.unknown(
                        &s.span(),
                        &format!("{pre}.socket"),
                        quoted(text),
                        format!("not one of fsroute's listeners ({})", names.join(", ")),
                    );
                    None
                }
                Err(_) => {
                    self.invalid(
                        &s.span(),
                        &format!("{pre}.socket"),
                        quoted(text),
                        "expected [udp:]IP:PORT",
                    );
                    None
                }
            }
        });
        RowInfo {
            line,
            id: id.as_ref().map(|v| *v.get_ref()),
            probe_mode,
            attrs: attrs.as_ref().map(|v| v.get_ref().clone()),
            description: description.as_ref().map(|v| v.get_ref().clone()),
            socket,
        }
    }

    fn dispatcher_rows(
        &mut self,
        rows: &[Spanned<RawDispatcher>],
        listen: &[SocketAddr],
    ) -> Vec<DispatcherRow> {
        let mut out = Vec::new();
        let mut seen_dest: HashMap<(i32, SocketAddr), usize> = HashMap::new();
        let mut seen_names: HashMap<(i32, DnsTarget), usize> = HashMap::new();
        let mut seen_ids = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let (r, span) = (row.get_ref(), row.span());
            let pre = format!("dispatcher[{i}]");
            let line = self.line(&span);
            let setid = self.required_i32(
                &r.setid,
                &span,
                &format!("{pre}.setid"),
                "the set this row belongs to",
            );
            let dest =
                self.destination(&r.destination, &span, &format!("{pre}.destination"), listen);
            let weight = self.weight(&r.weight, &format!("{pre}.weight"));
            let priority = self.ranged(
                &r.priority,
                &format!("{pre}.priority"),
                i64::from(i32::MIN),
                i64::from(i32::MAX),
                0i32,
            );
            let fallback_weight = r.fallback_weight.as_ref().map(|fw| {
                let w: u32 = self.ranged(&r.fallback_weight, &format!("{pre}.fallback_weight"), 0, i64::from(u32::MAX), 0u32);
                if matches!(weight, Weight::Static(_)) {
                    self.conflict(
                        &fw.span(),
                        &format!("{pre}.fallback_weight"),
                        "fallback_weight applies to fs:// weights only (a static weight is never stale)",
                    );
                }
                w
            });
            let state = self.state(&r.state, &format!("{pre}.state"));
            let info = self.row_info(
                &pre,
                line,
                &r.id,
                &r.probe_mode,
                1,
                &r.attrs,
                &r.description,
                &r.socket,
                listen,
                &mut seen_ids,
            );
            let (Some(setid), Some((uri, dest, dspan))) = (setid, dest) else {
                continue;
            };
            let field = format!("{pre}.destination");
            if !self.first_of_set(&mut seen_dest, &mut seen_names, setid, &dest, &dspan, &field, &uri, "set") {
                continue;
            }
            let (addr, name) = split_dest(dest);
            out.push(DispatcherRow {
                setid,
                uri,
                addr,
                name,
                resolved: None,
                weight,
                priority,
                fallback_weight,
                state,
                info,
            });
        }
        out
    }

    fn load_balancer_rows(
        &mut self,
        rows: &[Spanned<RawLoadBalancer>],
        listen: &[SocketAddr],
    ) -> Vec<LoadBalancerRow> {
        let mut out = Vec::new();
        let mut seen_dest: HashMap<(i32, SocketAddr), usize> = HashMap::new();
        let mut seen_names: HashMap<(i32, DnsTarget), usize> = HashMap::new();
        let mut seen_ids = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let (r, span) = (row.get_ref(), row.span());
            let pre = format!("load_balancer[{i}]");
            let line = self.line(&span);
            let group_id = self.required_i32(
                &r.group_id,
                &span,
                &format!("{pre}.group_id"),
                "the group this row belongs to",
            );
            let dest = self.destination(&r.dst_uri, &span, &format!("{pre}.dst_uri"), listen);
            let resources = match &r.resources {
                None => {
                    self.missing(
                        &span,
                        &format!("{pre}.resources"),
                        "e.g. resources = \"ch=100\"",
                    );
                    None
                }
                Some(s) => match parse_resources(s.get_ref()) {
                    Ok(list) => {
                        for res in &list {
                            if let Capacity::Fs(fs) = &res.capacity {
                                self.note_fs(fs, &s.span(), &format!("{pre}.resources"));
                            }
                        }
                        Some(list)
                    }
                    Err(why) => {
                        self.invalid(
                            &s.span(),
                            &format!("{pre}.resources"),
                            quoted(s.get_ref()),
                            why,
                        );
                        None
                    }
                },
            };
            let state = self.state(&r.state, &format!("{pre}.state"));
            let info = self.row_info(
                &pre,
                line,
                &r.id,
                &r.probe_mode,
                2,
                &r.attrs,
                &r.description,
                &r.socket,
                listen,
                &mut seen_ids,
            );
            let (Some(group_id), Some((uri, dest, dspan)), Some(resources)) =
                (group_id, dest, resources)
            else {
                continue;
            };
            let field = format!("{pre}.dst_uri");
            if !self.first_of_set(&mut seen_dest, &mut seen_names, group_id, &dest, &dspan, &field, &uri, "group") {
                continue;
            }
            let (addr, name) = split_dest(dest);
            out.push(LoadBalancerRow {
                group_id,
                uri,
                addr,
                name,
                resolved: None,
                resources,
                state,
                info,
            });
        }
        out
    }

    fn routes(
        &mut self,
        rows: &[Spanned<RawRoute>],
        dispatcher: &[DispatcherRow],
        load_balancer: &[LoadBalancerRow],
    ) -> Vec<RouteConfig> {
        let mut out = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let (r, span) = (row.get_ref(), row.span());
            let pre = format!("route[{i}]");
            let matcher = self.route_match(r, &pre);
            let failover = r.failover.as_ref().map(|b| *b.get_ref());
            let target = match (&r.to_dispatcher, &r.to_load_balancer) {
                (None, None) => {
                    self.conflict(
                        &span,
                        &pre,
                        "a route needs exactly one of to_dispatcher or to_load_balancer",
                    );
                    None
                }
                (Some(_), Some(lb)) => {
                    self.conflict(
                        &lb.span(),
                        &format!("{pre}.to_load_balancer"),
                        "a route goes to_dispatcher or to_load_balancer, not both",
                    );
                    None
                }
                (Some(_), None) => self.dispatcher_target(r, &pre, failover, dispatcher),
                (None, Some(_)) => {
                    self.load_balancer_target(r, &span, &pre, failover.unwrap_or(true), load_balancer)
                }
            };
            if let (Some(matcher), Some(target)) = (matcher, target) {
                out.push(RouteConfig {
                    line: self.line(&span),
                    matcher,
                    target,
                });
            }
        }
        out
    }

    fn route_match(&mut self, r: &RawRoute, pre: &str) -> Option<RouteMatch> {
        let mut ok = true;
        let mut text_key = |cx: &mut Self, v: &Opt<String>, key: &str| -> Option<String> {
            let s = v.as_ref()?;
            let t = s.get_ref();
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                cx.invalid(
                    &s.span(),
                    &format!("{pre}.{key}"),
                    quoted(t),
                    "must be non-empty and without spaces",
                );
                ok = false;
                return None;
            }
            Some(t.clone())
        };
        let ruri_user_prefix = text_key(self, &r.ruri_user_prefix, "ruri_user_prefix");
        let ruri_domain =
            text_key(self, &r.ruri_domain, "ruri_domain").map(|d| d.to_ascii_lowercase());
        let method = text_key(self, &r.method, "method");
        if let (Some(m), Some(s)) = (&method, &r.method) {
            // The table compares methods byte for byte, as SIP does (RFC 3261 7.1: case-sensitive).
            if !m
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-._!%*+`'~".contains(&b))
            {
                self.invalid(
                    &s.span(),
                    &format!("{pre}.method"),
                    quoted(m),
                    "SIP methods are case-sensitive tokens: write e.g. \"INVITE\"",
                );
                ok = false;
            }
        }
        let source = r
            .source
            .as_ref()
            .and_then(|s| match parse_cidr(s.get_ref()) {
                Ok(c) => Some(c),
                Err(why) => {
                    self.invalid(
                        &s.span(),
                        &format!("{pre}.source"),
                        quoted(s.get_ref()),
                        why,
                    );
                    ok = false;
                    None
                }
            });
        ok.then_some(RouteMatch {
            ruri_user_prefix,
            ruri_domain,
            method,
            source,
        })
    }

    fn dispatcher_target(
        &mut self,
        r: &RawRoute,
        pre: &str,
        failover: Option<bool>,
        dispatcher: &[DispatcherRow],
    ) -> Option<RouteTo> {
        let to = r.to_dispatcher.as_ref()?;
        for (v, key) in [(&r.resources, "resources"), (&r.lb_flags, "lb_flags")] {
            if let Some(s) = v {
                self.conflict(
                    &s.span(),
                    &format!("{pre}.{key}"),
                    format!("{key} applies to to_load_balancer routes only"),
                );
            }
        }
        let algorithm = match &r.algorithm {
            // OpenSIPS's algorithm 0, what an unset parameter means there.
            None => Some(Algorithm::HashCallId),
            Some(a) => {
                let alg = match a.get_ref() {
                    IntOrStr::Int(n) => Algorithm::from_number(*n),
                    IntOrStr::Str(s) => Algorithm::from_name(s.trim()),
                };
                if alg.is_none() {
                    let names: Vec<String> = Algorithm::ALL
                        .iter()
                        .map(|a| format!("{} ({})", a.name(), a.number()))
                        .collect();
                    self.invalid(
                        &a.span(),
                        &format!("{pre}.algorithm"),
                        a.get_ref(),
                        format!("unknown algorithm; one of {}", names.join(", ")),
                    );
                }
                alg
            }
        };
        let setid = self.required_i32(
            &r.to_dispatcher,
            &to.span(),
            &format!("{pre}.to_dispatcher"),
            "a setid",
        )?;
        if !dispatcher.iter().any(|d| d.setid == setid) {
            self.unknown(
                &to.span(),
                &format!("{pre}.to_dispatcher"),
                setid,
                format!("no [[dispatcher]] row has setid {setid}"),
            );
            return None;
        }
        // A set driven by FreeSWITCH numbers fails over by default: a box may still refuse a call
        // its numbers said it could take, and that call should move on (docs/ADMISSION.md).
        let fs_driven = dispatcher.iter().any(|d| d.setid == setid && matches!(d.weight, Weight::Fs(_)));
        Some(RouteTo::Dispatcher {
            setid,
            algorithm: algorithm?,
            failover: failover.unwrap_or(fs_driven),
        })
    }

    fn load_balancer_target(
        &mut self,
        r: &RawRoute,
        row: &Range<usize>,
        pre: &str,
        failover: bool,
        load_balancer: &[LoadBalancerRow],
    ) -> Option<RouteTo> {
        let to = r.to_load_balancer.as_ref()?;
        if let Some(a) = &r.algorithm {
            self.conflict(
                &a.span(),
                &format!("{pre}.algorithm"),
                "algorithm applies to to_dispatcher routes (load_balancer picks by free capacity)",
            );
        }
        let flags = match &r.lb_flags {
            None => Some(LbFlags::default()),
            Some(s) => {
                // The data plane's parser, case-insensitive here as the config always was.
                let f = LbFlags::parse(&s.get_ref().to_ascii_lowercase()).ok();
                if f.is_none() {
                    self.invalid(
                        &s.span(),
                        &format!("{pre}.lb_flags"),
                        quoted(s.get_ref()),
                        "flags are r (relative), s (random tie-break), n (allow zero/negative)",
                    );
                }
                f
            }
        };
        let resources = match &r.resources {
            None => {
                self.missing(
                    row,
                    &format!("{pre}.resources"),
                    "what one call consumes, e.g. resources = \"ch\"",
                );
                None
            }
            Some(s) => match parse_resource_names(s.get_ref()) {
                Ok(names) if names.len() > LbWanted::MAX => {
                    self.invalid(
                        &s.span(),
                        &format!("{pre}.resources"),
                        quoted(s.get_ref()),
                        format!("a route may ask for at most {} resources", LbWanted::MAX),
                    );
                    None
                }
                Ok(names) => Some((names, s.span())),
                Err(why) => {
                    self.invalid(
                        &s.span(),
                        &format!("{pre}.resources"),
                        quoted(s.get_ref()),
                        why,
                    );
                    None
                }
            },
        };
        let group_id = self.required_i32(
            &r.to_load_balancer,
            &to.span(),
            &format!("{pre}.to_load_balancer"),
            "a group_id",
        )?;
        let rows: Vec<&LoadBalancerRow> = load_balancer
            .iter()
            .filter(|l| l.group_id == group_id)
            .collect();
        if rows.is_empty() {
            self.unknown(
                &to.span(),
                &format!("{pre}.to_load_balancer"),
                group_id,
                format!("no [[load_balancer]] row has group_id {group_id}"),
            );
            return None;
        }
        let (resources, rspan) = resources?;
        let mut ok = true;
        for name in &resources {
            if !rows
                .iter()
                .any(|l| l.resources.iter().any(|res| &res.name == name))
            {
                self.unknown(
                    &rspan,
                    &format!("{pre}.resources"),
                    quoted(name),
                    format!("no destination of group {group_id} offers this resource"),
                );
                ok = false;
            }
        }
        ok.then_some(RouteTo::LoadBalancer {
            group_id,
            resources,
            flags: flags?,
            failover,
        })
    }
}
