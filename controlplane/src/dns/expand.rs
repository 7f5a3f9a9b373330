//! A config with names, as the table sees it: every row naming a host becomes one row per address
//! the name resolves to now (docs/DNS.md, "One name, several destinations"). Pure: the same config
//! and names give the same rows, in the same order.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;

use super::{DnsAddr, ResolvedNames};
use crate::config::{is_own_listener, Config, DnsTarget, ResolvedFrom};

/// A resolved address that did not become a destination, and why (for `/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: DnsTarget,
    pub addr: SocketAddr,
    pub why: String,
}

/// A dispatcher or load_balancer row at one address of its name (the rows share these fields).
macro_rules! at_address {
    ($row:expr, $addr:expr, $share:expr) => {{
        let mut e = $row.clone();
        e.uri = expanded_uri(&$row.uri, $addr.addr);
        e.addr = $addr.addr;
        e.name = None;
        e.resolved = Some(ResolvedFrom { uri: $row.uri.clone(), share: $share });
        e
    }};
}

/// `config` with each named row replaced by its addresses in `names` (none while the name has
/// none). Rows with an IP literal stay as written; a config without names is borrowed as it is.
///
/// An expanded row is the written row with `uri` = `<as written>#<address>` (its own counters,
/// probe and hash key, so an address that leaves moves only its own calls), `addr` = the address,
/// `priority` = the row's plus the SRV priority, and `resolved` naming the written row and its
/// share of the row's weight (see `weight_share`). An address that is one of fsroute's own
/// listeners, of a family fsroute has no listener for, or already a destination of the same set
/// or group (a literal row wins, then the first row) is skipped and reported.
pub fn expand<'a>(config: &'a Config, names: &ResolvedNames) -> (Cow<'a, Config>, Vec<Skipped>) {
    let named = config.dispatcher.iter().any(|r| r.name.is_some()) || config.load_balancer.iter().any(|r| r.name.is_some());
    if !named {
        return (Cow::Borrowed(config), Vec::new());
    }
    let listen = &config.proxy.listen;
    let mut skipped = Vec::new();
    let dispatcher = expand_rows(
        &config.dispatcher,
        |r| (r.setid, r.name.as_ref(), r.addr),
        "set",
        true,
        names,
        listen,
        &mut skipped,
        |r, a, share| {
            let mut e = at_address!(r, a, share);
            e.priority = r.priority.saturating_add(a.srv.map_or(0, |s| i32::from(s.priority)));
            e
        },
    );
    // load_balancer has no weight to make a backup of: only the preferred SRV priority serves.
    let load_balancer = expand_rows(
        &config.load_balancer,
        |r| (r.group_id, r.name.as_ref(), r.addr),
        "group",
        false,
        names,
        listen,
        &mut skipped,
        |r, a, share| at_address!(r, a, share),
    );

    let out = Config {
        path: config.path.clone(),
        proxy: config.proxy.clone(),
        control: config.control.clone(),
        failover: config.failover.clone(),
        limits: config.limits,
        dns: config.dns.clone(),
        capture: config.capture,
        tls: config.tls.clone(),
        dispatcher,
        load_balancer,
        routes: config.routes.clone(),
    };
    (Cow::Owned(out), skipped)
}

/// One table's rows (dispatcher or load_balancer) with each named row replaced by `make` for each
/// usable address; `key` gives a row's set or group, name and literal address; `backups` keeps the
/// SRV targets of higher priorities.
#[allow(clippy::too_many_arguments)]
fn expand_rows<R: Clone>(
    rows: &[R],
    key: impl Fn(&R) -> (i32, Option<&DnsTarget>, SocketAddr),
    kind: &str,
    backups: bool,
    names: &ResolvedNames,
    listen: &[SocketAddr],
    skipped: &mut Vec<Skipped>,
    make: impl Fn(&R, &DnsAddr, (u32, u32)) -> R,
) -> Vec<R> {
    let mut taken: HashSet<(i32, SocketAddr)> =
        rows.iter().map(&key).filter(|(_, name, _)| name.is_none()).map(|(id, _, addr)| (id, addr)).collect();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (id, Some(name), _) = key(r) else {
            out.push(r.clone());
            continue;
        };
        let addrs = names.get(name).map_or(&[][..], Vec::as_slice);
        for (a, share) in addrs.iter().zip(weight_shares(addrs)).filter(|(_, s)| backups || s.0 > 0) {
            let why = if is_own_listener(listen, a.addr) {
                Some("one of fsroute's own listeners: calls would loop".to_string())
            } else if !listen.iter().any(|l| l.is_ipv4() == a.addr.is_ipv4()) {
                Some(format!("fsroute has no {} listener to send from", if a.addr.is_ipv4() { "IPv4" } else { "IPv6" }))
            } else if !taken.insert((id, a.addr)) {
                Some(format!("{kind} {id} already has a destination at {}", a.addr))
            } else {
                None
            };
            match why {
                Some(why) => skipped.push(Skipped { name: name.clone(), addr: a.addr, why }),
                None => out.push(make(r, a, share)),
            }
        }
    }
    out
}

/// The identity of one address of a named row: `#` never appears in a written URI, so it cannot
/// collide with another row.
pub fn expanded_uri(written: &str, addr: SocketAddr) -> String {
    format!("{written}#{addr}")
}

/// Each address's share of its row's weight, as `(numerator, denominator)`:
/// - an A/AAAA address weighs the row's weight (several addresses are several boxes of that size,
///   and one leaving changes no other's weight, so only its own calls move);
/// - an SRV target of the lowest priority weighs the row's weight × its SRV weight / the heaviest
///   SRV weight of that priority (RFC 2782's proportion, with the row's weight as the scale; a
///   weight of 0 counts as 1, the least chance that is still a chance);
/// - an SRV target of a higher priority is a backup: weight 0, which the selector passes over while
///   any weighted destination of the set is active and uses, evenly, once none is.
pub fn weight_shares(addrs: &[DnsAddr]) -> Vec<(u32, u32)> {
    let best = addrs.iter().filter_map(|a| a.srv).map(|s| s.priority).min();
    let top = addrs.iter().filter_map(|a| a.srv).filter(|s| Some(s.priority) == best).map(|s| s.weight).max().unwrap_or(0);
    addrs
        .iter()
        .map(|a| match a.srv {
            None => (1, 1),
            Some(s) if Some(s.priority) != best => (0, 1),
            Some(s) => (u32::from(s.weight.max(1)), u32::from(top.max(1))),
        })
        .collect()
}

/// `weight × share`, rounded half up; at least 1 when both are non-zero (a target the row and its
/// SRV record both give a chance keeps one).
pub fn scaled_weight(weight: u32, share: (u32, u32)) -> u32 {
    let (num, den) = share;
    if weight == 0 || num == 0 || den == 0 {
        return 0;
    }
    let w = (u64::from(weight) * u64::from(num) + u64::from(den) / 2) / u64::from(den);
    u32::try_from(w.max(1)).unwrap_or(u32::MAX)
}
