//! The I/O shell of destination names: hickory-resolver on a one-thread tokio runtime of its own
//! (like the admin listener's), so the control loop only hands it names and picks up results from
//! a channel between its other tasks, and a slow or dead name server holds up nothing. What is asked
//! for a name is RFC 3263 §4.2 for UDP (docs/DNS.md): `_sip._udp.<host>` SRV when the URI has no
//! port, each target's A/AAAA, and A/AAAA of the host itself on 5060 when there is no SRV record;
//! with a port, A/AAAA only.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use super::{Answer, DnsAddr, SrvRank};
use crate::config::{DnsConfig, DnsTarget, SIP_DEFAULT_PORT};

/// One name's outcome, as the thread sends it back.
pub type Outcome = (DnsTarget, Result<Answer, String>);

/// The resolver thread: names go in with [`Resolver::ask`], outcomes come out of
/// [`Resolver::try_recv`]. Dropping it closes the queue; the thread ends after the queries in flight.
pub struct Resolver {
    queue: tokio::sync::mpsc::UnboundedSender<DnsTarget>,
    results: mpsc::Receiver<Outcome>,
    /// The `[dns]` settings it was built from: a reload that changes them starts a new one.
    pub settings: DnsConfig,
}

impl Resolver {
    pub fn start(settings: &DnsConfig) -> std::io::Result<Resolver> {
        let (queue, mut names) = tokio::sync::mpsc::unbounded_channel::<DnsTarget>();
        let (out, results) = mpsc::channel();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let c = settings.clone();
        std::thread::Builder::new().name("fsroute-dns".into()).spawn(move || {
            rt.block_on(async move {
                let resolver = build(&c).map(Arc::new);
                if let Err(e) = &resolver {
                    tracing::error!(error = %e, "no DNS resolver: destination names will not resolve");
                }
                while let Some(name) = names.recv().await {
                    let (resolver, out) = (resolver.clone(), out.clone());
                    tokio::spawn(async move {
                        let result = match &resolver {
                            Ok(r) => resolve(r, &name).await,
                            Err(e) => Err(e.clone()),
                        };
                        // The control thread is gone: nothing left to tell.
                        let _ = out.send((name, result));
                    });
                }
            });
        })?;
        Ok(Resolver { queue, results, settings: settings.clone() })
    }

    /// Queues a query for `name`; its outcome comes back through [`Resolver::try_recv`].
    pub fn ask(&self, name: DnsTarget) {
        // The thread only stops when this handle is dropped; a send error cannot happen before.
        let _ = self.queue.send(name);
    }

    pub fn try_recv(&self) -> Option<Outcome> {
        self.results.try_recv().ok()
    }
}

/// The resolver `[dns]` describes: its servers (UDP, TCP when an answer is truncated), else
/// /etc/resolv.conf; both A and AAAA; TTLs capped like the book's so a long TTL does not keep an
/// answer in hickory's cache past `max_ttl`, nor a negative one past `min_ttl`.
fn build(c: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if c.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for s in &c.servers {
            group.push(NameServerConfig::new(*s, Protocol::Udp));
            group.push(NameServerConfig::new(*s, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(ResolverConfig::from_parts(None, Vec::new(), group), TokioConnectionProvider::default())
    };
    let o = builder.options_mut();
    o.timeout = c.timeout;
    o.attempts = 2;
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    o.positive_max_ttl = Some(c.max_ttl);
    o.negative_max_ttl = Some(c.min_ttl);
    Ok(builder.build())
}

/// Resolves every name of a config once, in the calling thread: `fsroute check --resolve`.
pub fn resolve_all(settings: &DnsConfig, names: &[DnsTarget]) -> Result<Vec<Outcome>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the resolver runtime: {e}"))?;
    rt.block_on(async {
        let r = build(settings)?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push((n.clone(), resolve(&r, n).await));
        }
        Ok(out)
    })
}

/// One name, RFC 3263 §4.2 for UDP. An SRV lookup that fails other than by "no such record"
/// (SERVFAIL, timeout) is a failure, not a reason to try A/AAAA: a name server that is down for a
/// minute must not turn a pool of SRV targets into the host's own address.
pub async fn resolve(r: &TokioResolver, name: &DnsTarget) -> Result<Answer, String> {
    let now = Instant::now();
    if let Some(port) = name.port {
        return lookup_ip(r, &name.host, port, None, now).await.map(|(addrs, ttl)| Answer::new(addrs, ttl));
    }
    let srv_name = format!("_sip._udp.{}", name.host);
    match r.srv_lookup(srv_name.as_str()).await {
        Ok(srv) => {
            let mut ttl = srv.as_lookup().valid_until().saturating_duration_since(now);
            let mut addrs = Vec::new();
            let mut errors = Vec::new();
            for rec in srv.iter() {
                // RFC 2782: a target of "." means the service is decidedly not there.
                if rec.target().is_root() {
                    continue;
                }
                let rank = SrvRank { priority: rec.priority(), weight: rec.weight() };
                let target = rec.target().to_utf8();
                match lookup_ip(r, &target, rec.port(), Some(rank), now).await {
                    Ok((a, t)) => {
                        ttl = ttl.min(t);
                        addrs.extend(a);
                    }
                    Err(e) => errors.push(e),
                }
            }
            if addrs.is_empty() {
                let why = if errors.is_empty() { "no target (\".\": not offered)".to_string() } else { errors.join("; ") };
                return Err(format!("SRV {srv_name}: {why}"));
            }
            Ok(Answer::new(addrs, ttl))
        }
        Err(e) if e.is_no_records_found() => {
            lookup_ip(r, &name.host, SIP_DEFAULT_PORT, None, now).await.map(|(addrs, ttl)| Answer::new(addrs, ttl))
        }
        Err(e) => Err(format!("SRV {srv_name}: {}", describe(&e))),
    }
}

async fn lookup_ip(
    r: &TokioResolver,
    host: &str,
    port: u16,
    srv: Option<SrvRank>,
    now: Instant,
) -> Result<(Vec<DnsAddr>, Duration), String> {
    let ips = r.lookup_ip(host).await.map_err(|e| format!("A/AAAA {host}: {}", describe(&e)))?;
    let ttl = ips.valid_until().saturating_duration_since(now);
    let addrs: Vec<DnsAddr> = ips.iter().map(|ip| DnsAddr { srv, addr: SocketAddr::new(ip, port) }).collect();
    if addrs.is_empty() {
        return Err(format!("A/AAAA {host}: no address"));
    }
    Ok((addrs, ttl))
}

/// A failure as an operator reads it in `/status` and the log.
fn describe(e: &ResolveError) -> String {
    if e.is_nx_domain() {
        "NXDOMAIN (no such name)".into()
    } else if e.is_no_records_found() {
        "no record of that type".into()
    } else {
        e.to_string()
    }
}
