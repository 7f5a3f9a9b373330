//! Destination names (docs/DNS.md): what the control plane knows about each `sip:name` of the
//! config and when it asks again. [`DnsBook`] is the sans-IO core: it is told the names, says which
//! are due, takes each answer or failure with a `now`, clamps TTLs, and keeps a failing name's last
//! addresses for `dns.grace` before they leave; [`ResolvedNames`] is what it hands the pure table
//! builder. [`expand`] turns a config with names into rows with addresses (pure), and [`resolver`]
//! is the I/O shell: hickory-resolver on a thread of its own, so nothing on the control loop, and
//! nothing on the fast path, ever waits on DNS.

mod expand;
pub mod resolver;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{DnsConfig, DnsTarget};

pub use expand::{expand, expanded_uri, scaled_weight, weight_shares, Skipped};

/// An SRV record's ordering, as RFC 2782 gives it: lower `priority` first, `weight` within one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrvRank {
    pub priority: u16,
    pub weight: u16,
}

/// One address a name resolved to: from an SRV target (with its rank) or an A/AAAA record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsAddr {
    /// None for an A/AAAA answer (the port is the URI's, or 5060).
    pub srv: Option<SrvRank>,
    pub addr: SocketAddr,
}

/// A successful resolution: the addresses (sorted, distinct) and the TTL the answer came with
/// (the smallest of its records, before clamping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<DnsAddr>,
    pub ttl: Duration,
}

impl Answer {
    pub fn new(mut addrs: Vec<DnsAddr>, ttl: Duration) -> Answer {
        addrs.sort_unstable();
        addrs.dedup();
        Answer { addrs, ttl }
    }
}

/// The addresses in force per name: what the table builder expands rows with. A name that never
/// resolved, or whose grace ran out, is absent.
pub type ResolvedNames = HashMap<DnsTarget, Vec<DnsAddr>>;

/// The clock settings of the book, from `[dns]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsTimers {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub grace: Duration,
    /// A query with no result after this long counts as failed (the resolver thread is gone or
    /// stuck); the resolver's own timeouts end every query well before it.
    pub lost_after: Duration,
}

impl DnsTimers {
    pub fn from_config(c: &DnsConfig) -> DnsTimers {
        // Two attempts per server, a TCP retry, and slack: a result later than that is not coming.
        let servers = u32::try_from(c.servers.len().max(1)).unwrap_or(u32::MAX);
        DnsTimers { min_ttl: c.min_ttl, max_ttl: c.max_ttl, grace: c.grace, lost_after: c.timeout * 4 * servers + Duration::from_secs(5) }
    }

    /// When an answer with `ttl` is asked again: never sooner than `min_ttl` (a TTL of 0 must not
    /// spin), never later than `max_ttl`.
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
    }
}

/// What the book knows about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameState {
    /// The addresses in force: the last answer's, kept through failures until the grace runs out.
    pub addrs: Vec<DnsAddr>,
    /// The last answer's TTL as received, and as clamped into the refresh interval.
    pub ttl: Option<Duration>,
    pub refresh: Option<Duration>,
    pub answered_at: Option<Instant>,
    /// When the name is asked next (while a query is out: when it was sent).
    pub next_query: Instant,
    pub in_flight: Option<Instant>,
    /// Since when every query has failed (None while the last one succeeded).
    pub failing_since: Option<Instant>,
    /// The last failure's reason, kept after a recovery (with `failing_since` cleared).
    pub last_error: Option<String>,
    /// Set when the grace ran out: the addresses have left the table.
    pub expired: bool,
    pub resolutions: u64,
    pub failures: u64,
    /// Times the addresses in force changed (a table rebuild each).
    pub changes: u64,
}

impl NameState {
    fn new(now: Instant) -> NameState {
        NameState {
            addrs: Vec::new(),
            ttl: None,
            refresh: None,
            answered_at: None,
            next_query: now,
            in_flight: None,
            failing_since: None,
            last_error: None,
            expired: false,
            resolutions: 0,
            failures: 0,
            changes: 0,
        }
    }

    /// When a failing name's addresses leave the table (None when not failing or nothing to keep).
    pub fn leaves_at(&self, grace: Duration) -> Option<Instant> {
        self.failing_since.filter(|_| !self.addrs.is_empty()).map(|t| t + grace)
    }
}

/// Every destination name of the running config and its state (sans-IO: the caller brings `now`
/// and carries queries and results).
#[derive(Debug, Clone)]
pub struct DnsBook {
    timers: DnsTimers,
    names: BTreeMap<DnsTarget, NameState>,
}

impl DnsBook {
    pub fn new(timers: DnsTimers) -> DnsBook {
        DnsBook { timers, names: BTreeMap::new() }
    }

    pub fn timers(&self) -> DnsTimers {
        self.timers
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = (&DnsTarget, &NameState)> {
        self.names.iter()
    }

    pub fn get(&self, name: &DnsTarget) -> Option<&NameState> {
        self.names.get(name)
    }

    /// The config's names after a load or reload: new ones are due now; names that stay keep
    /// their addresses and clocks; names no row uses any more are forgotten. Whether the names in
    /// force changed.
    pub fn sync(&mut self, names: &[DnsTarget], timers: DnsTimers, now: Instant) -> bool {
        self.timers = timers;
        let before = self.names.len();
        self.names.retain(|n, _| names.contains(n));
        let mut changed = self.names.len() != before;
        for n in names {
            if !self.names.contains_key(n) {
                self.names.insert(n.clone(), NameState::new(now));
                changed = true;
            }
        }
        changed
    }

    /// A new resolver: queries the old one had in flight are asked again now.
    pub fn requeue(&mut self, now: Instant) {
        for s in self.names.values_mut() {
            if s.in_flight.take().is_some() {
                s.next_query = now;
            }
        }
    }

    /// The names to ask now; each is marked as asked until its result comes back.
    pub fn due(&mut self, now: Instant) -> Vec<DnsTarget> {
        let mut out = Vec::new();
        for (n, s) in &mut self.names {
            if s.in_flight.is_none() && s.next_query <= now {
                s.in_flight = Some(now);
                out.push(n.clone());
            }
        }
        out
    }

    /// A query's outcome. An answer with no address is a failure (the name stopped resolving).
    /// Whether the addresses in force changed, so the table must be rebuilt.
    pub fn on_result(&mut self, name: &DnsTarget, result: Result<Answer, String>, now: Instant) -> bool {
        let timers = self.timers;
        let Some(s) = self.names.get_mut(name) else { return false };
        s.in_flight = None;
        match result {
            Ok(a) if !a.addrs.is_empty() => {
                let refresh = timers.clamp(a.ttl);
                s.resolutions += 1;
                s.ttl = Some(a.ttl);
                s.refresh = Some(refresh);
                s.answered_at = Some(now);
                s.next_query = now + refresh;
                s.failing_since = None;
                s.expired = false;
                let changed = s.addrs != a.addrs;
                if changed {
                    s.addrs = a.addrs;
                    s.changes += 1;
                }
                changed
            }
            Ok(_) => Self::failed(s, "the answer holds no address".into(), timers, now),
            Err(e) => Self::failed(s, e, timers, now),
        }
    }

    fn failed(s: &mut NameState, why: String, timers: DnsTimers, now: Instant) -> bool {
        s.failures += 1;
        s.failing_since.get_or_insert(now);
        s.last_error = Some(why);
        // Asked again at the floor: a name that is failing is asked as often as any.
        s.next_query = now + timers.min_ttl;
        Self::expire(s, timers.grace, now)
    }

    /// A failing name whose grace ran out loses its addresses.
    fn expire(s: &mut NameState, grace: Duration, now: Instant) -> bool {
        match s.leaves_at(grace) {
            Some(t) if now >= t => {
                s.addrs.clear();
                s.expired = true;
                s.changes += 1;
                true
            }
            _ => false,
        }
    }

    /// The clock: graces that ran out, and queries whose result never came (counted as failures).
    /// The names whose addresses left the table (none: nothing to rebuild).
    pub fn tick(&mut self, now: Instant) -> Vec<DnsTarget> {
        let timers = self.timers;
        let mut left = Vec::new();
        for (n, s) in &mut self.names {
            let mut gone = false;
            if s.in_flight.is_some_and(|t| now.saturating_duration_since(t) >= timers.lost_after) {
                s.in_flight = None;
                gone |= Self::failed(s, "no result from the resolver".into(), timers, now);
            }
            gone |= Self::expire(s, timers.grace, now);
            if gone {
                left.push(n.clone());
            }
        }
        left
    }

    /// The addresses in force, per name that has any.
    pub fn resolved(&self) -> ResolvedNames {
        self.names.iter().filter(|(_, s)| !s.addrs.is_empty()).map(|(n, s)| (n.clone(), s.addrs.clone())).collect()
    }
}
