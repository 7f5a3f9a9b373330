//! Dispatcher selection algorithms: given one dispatcher set (its destinations with weight, priority and
//! active state) and a call's keys, choose the destination. The control plane builds one immutable
//! [`Selector`] per set whenever it rebuilds the routing table; every shard then picks from it
//! concurrently, without locks and without allocating. Time, randomness and the round-robin cursor come
//! in as arguments (sans-IO), so every pick is a pure function of its inputs.
//!
//! Layout: [`opensips`] reproduces OpenSIPS's hash and cumulative-weight pick bit for bit,
//! [`rendezvous`] is the default minimal-disruption hash, `wrr` builds the smooth round-robin schedule.

mod log2_table;
pub mod opensips;
pub mod rendezvous;
mod wrr;

#[cfg(test)]
mod tests;

use std::fmt;

pub use opensips::{opensips_hash, opensips_uri_keys, trim_callid};
pub use rendezvous::rendezvous_call_hash;

/// A dispatcher algorithm, numbered as in OpenSIPS's `ds_select_dst`.
/// OpenSIPS numbering: hash-callid 0, hash-from 1, hash-to 2, hash-ruri 3, round-robin 4 (weighted),
/// hash-auth-username 5, random 6 (weighted), first 8. (7 `hash-pvar`, 9 and 10 are script-driven in
/// OpenSIPS and not offered.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HashCallId,
    HashFrom,
    HashTo,
    HashRuri,
    RoundRobin,
    HashAuthUsername,
    Random,
    First,
}

impl Algorithm {
    pub const ALL: [Algorithm; 8] = [
        Algorithm::HashCallId,
        Algorithm::HashFrom,
        Algorithm::HashTo,
        Algorithm::HashRuri,
        Algorithm::RoundRobin,
        Algorithm::HashAuthUsername,
        Algorithm::Random,
        Algorithm::First,
    ];

    /// Accepts the config spelling (`"hash-callid"`, ASCII case-insensitive) or the OpenSIPS number as
    /// a string (`"0"`), since rows and routes copied from OpenSIPS carry numbers.
    pub fn from_name(s: &str) -> Option<Self> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse::<i64>().ok().and_then(Self::from_number);
        }
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }

    pub fn from_number(n: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|a| i64::from(a.number()) == n)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HashCallId => "hash-callid",
            Algorithm::HashFrom => "hash-from",
            Algorithm::HashTo => "hash-to",
            Algorithm::HashRuri => "hash-ruri",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::HashAuthUsername => "hash-auth-username",
            Algorithm::Random => "random",
            Algorithm::First => "first",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Algorithm::HashCallId => 0,
            Algorithm::HashFrom => 1,
            Algorithm::HashTo => 2,
            Algorithm::HashRuri => 3,
            Algorithm::RoundRobin => 4,
            Algorithm::HashAuthUsername => 5,
            Algorithm::Random => 6,
            Algorithm::First => 8,
        }
    }

    /// True for the algorithms whose choice is a function of message fields (the ones that keep a
    /// CANCEL on its INVITE's destination while the set is unchanged).
    pub fn is_hash(self) -> bool {
        matches!(
            self,
            Algorithm::HashCallId
                | Algorithm::HashFrom
                | Algorithm::HashTo
                | Algorithm::HashRuri
                | Algorithm::HashAuthUsername
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the hash algorithms spread calls (`[proxy] hash` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashMode {
    /// Weighted rendezvous hashing: only a leaving destination's calls move.
    #[default]
    Rendezvous,
    /// OpenSIPS `ds_get_hash` + cumulative-weight pick: the destination OpenSIPS would choose.
    Opensips,
}

impl HashMode {
    pub fn from_name(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("rendezvous") {
            Some(HashMode::Rendezvous)
        } else if s.eq_ignore_ascii_case("opensips") {
            Some(HashMode::Opensips)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HashMode::Rendezvous => "rendezvous",
            HashMode::Opensips => "opensips",
        }
    }
}

/// One destination as the selector sees it. `key` is its stable identity (the destination URI string),
/// used by rendezvous hashing so that adding/removing one destination only moves that destination's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a str,
    pub weight: u32,
    pub priority: i32,
    pub active: bool,
}

/// Immutable selection structure for one dispatcher set, built once by the control plane when it rebuilds
/// the routing table (off the fast path; building may allocate), then read concurrently by every shard
/// (Send + Sync). Picks return an index into the `members` slice given to [`Selector::new`] and never
/// allocate: everything a pick needs is precomputed here.
#[derive(Debug, Clone)]
pub struct Selector {
    len: usize,
    /// OpenSIPS `running_weight`: cumulative weights over ALL members, in member order.
    running: Vec<u64>,
    /// Active flag per member, for OpenSIPS's "is the candidate active" check.
    active: Vec<bool>,
    /// Indices of active members in member order, and their cumulative weights (OpenSIPS
    /// `active_running_weight`, also the table for `random`).
    active_idx: Vec<u32>,
    active_running: Vec<u64>,
    rendezvous: Vec<rendezvous::Candidate>,
    /// Every rendezvous candidate has the same weight: picks compare hash bits only.
    rendezvous_equal: bool,
    /// The same candidates for the float pick (the bench's "before").
    #[cfg(feature = "testing")]
    rendezvous_float: Vec<rendezvous::FloatCandidate>,
    schedule: Vec<u32>,
    first: Option<usize>,
}

impl Selector {
    /// # Panics
    /// If `members` holds more than `u32::MAX` destinations.
    pub fn new(members: &[Member<'_>]) -> Selector {
        let len = members.len();
        assert!(
            u32::try_from(len).is_ok(),
            "a dispatcher set cannot hold more than u32::MAX destinations"
        );

        let mut running = Vec::with_capacity(len);
        let mut sum = 0u64;
        for m in members {
            sum += u64::from(m.weight);
            running.push(sum);
        }

        let active: Vec<bool> = members.iter().map(|m| m.active).collect();
        let active_idx: Vec<u32> = (0..len as u32).filter(|&i| active[i as usize]).collect();
        let mut active_running = Vec::with_capacity(active_idx.len());
        let mut sum = 0u64;
        for &i in &active_idx {
            sum += u64::from(members[i as usize].weight);
            active_running.push(sum);
        }
        let any_active_weight = sum > 0;

        // Weighted algorithms use active members with weight > 0; if every active weight is 0 (e.g. all
        // FreeSWITCH boxes report full) they spread evenly instead of rejecting, as OpenSIPS does.
        let eligible: Vec<(u32, u64)> = active_idx
            .iter()
            .map(|&i| (i, u64::from(members[i as usize].weight)))
            .filter_map(|(i, w)| match (any_active_weight, w) {
                (true, 0) => None,
                (true, w) => Some((i, w)),
                (false, _) => Some((i, 1)),
            })
            .collect();

        let ordinals = key_ordinals(members);
        let rendezvous: Vec<rendezvous::Candidate> = eligible
            .iter()
            .map(|&(i, w)| rendezvous::Candidate {
                index: i,
                key_hash: rendezvous::member_key_hash(
                    members[i as usize].key,
                    ordinals[i as usize],
                ),
                weight: w,
            })
            .collect();
        let rendezvous_equal = eligible.windows(2).all(|p| p[0].1 == p[1].1);

        let schedule = wrr::build_schedule(&eligible);

        let first = active_idx
            .iter()
            .copied()
            .min_by_key(|&i| (members[i as usize].priority, i))
            .map(|i| i as usize);

        Selector {
            len,
            running,
            active,
            active_idx,
            active_running,
            rendezvous_equal,
            #[cfg(feature = "testing")]
            rendezvous_float: rendezvous.iter().map(rendezvous::FloatCandidate::from).collect(),
            rendezvous,
            schedule,
            first,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn active_count(&self) -> usize {
        self.active_idx.len()
    }

    /// Length of one round-robin period: over this many consecutive cursors every eligible member is
    /// picked exactly in proportion to its (gcd-reduced, possibly capped) weight.
    pub fn round_robin_period(&self) -> usize {
        self.schedule.len()
    }

    /// Hash algorithms. In Opensips mode k1/k2 are the two keys of OpenSIPS's ds_get_hash (k2 may be empty);
    /// in Rendezvous mode both keys are hashed together (with an unambiguous separator).
    pub fn pick_hash(&self, mode: HashMode, k1: &[u8], k2: &[u8]) -> Option<usize> {
        match mode {
            HashMode::Opensips => self.pick_opensips(opensips_hash(k1, k2)),
            HashMode::Rendezvous => self.pick_rendezvous(rendezvous_call_hash(k1, k2)),
        }
    }

    /// OpenSIPS's cumulative-weight pick for an already computed `ds_get_hash` value: the first member
    /// whose running weight exceeds `hash % total` over ALL members (`hash % len` if every weight is 0);
    /// if that one is inactive, the same pick over the active members only (OpenSIPS #387's fix, so a
    /// disabled destination's calls spread by weight instead of all landing on its neighbour).
    pub fn pick_opensips(&self, hash: u32) -> Option<usize> {
        if self.active_idx.is_empty() {
            return None;
        }
        let h = u64::from(hash);
        let total = *self.running.last()?;
        let candidate = if total > 0 {
            opensips::first_above(&self.running, h % total)
        } else {
            (h % self.len as u64) as usize
        };
        if self.active[candidate] {
            return Some(candidate);
        }
        let active_total = self.active_running.last().copied().unwrap_or(0);
        let j = if active_total > 0 {
            opensips::first_above(&self.active_running, h % active_total)
        } else {
            (h % self.active_idx.len() as u64) as usize
        };
        Some(self.active_idx[j] as usize)
    }

    /// Weighted rendezvous pick for an already computed [`rendezvous_call_hash`].
    pub fn pick_rendezvous(&self, call_hash: u64) -> Option<usize> {
        rendezvous::pick(&self.rendezvous, self.rendezvous_equal, call_hash)
    }

    /// The float-scored pick before integer scores, for the dispatch bench's side-by-side (the
    /// tests' oracle); never in the product.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn pick_rendezvous_float(&self, call_hash: u64) -> Option<usize> {
        rendezvous::float_pick(&self.rendezvous_float, call_hash)
    }

    /// Weighted round-robin over ACTIVE members only. The caller keeps a per-shard cursor and passes the value
    /// it had before incrementing it (cursor counts picks); smooth interleaving (weights 5,1,1 -> a a b a c a a, not a a a a a b c).
    pub fn pick_round_robin(&self, cursor: u64) -> Option<usize> {
        let n = self.schedule.len() as u64;
        if n == 0 {
            return None;
        }
        Some(self.schedule[(cursor % n) as usize] as usize)
    }

    /// Weighted random over active members; `r` is a uniformly random u64 supplied by the caller (sans-IO: no RNG inside).
    pub fn pick_random(&self, r: u64) -> Option<usize> {
        let n = self.active_idx.len() as u64;
        if n == 0 {
            return None;
        }
        let total = self.active_running.last().copied().unwrap_or(0);
        let j = if total > 0 {
            opensips::first_above(&self.active_running, r % total)
        } else {
            (r % n) as usize
        };
        Some(self.active_idx[j] as usize)
    }

    /// Lowest priority value among active members (config order breaks ties), like OpenSIPS alg 8 after its priority sort.
    pub fn pick_first(&self) -> Option<usize> {
        self.first
    }

    /// Convenience dispatch: picks according to `alg`; `keys` supplies (k1,k2) for hash algorithms.
    pub fn pick(
        &self,
        alg: Algorithm,
        mode: HashMode,
        keys: (&[u8], &[u8]),
        cursor: u64,
        r: u64,
    ) -> Option<usize> {
        match alg {
            Algorithm::HashCallId
            | Algorithm::HashFrom
            | Algorithm::HashTo
            | Algorithm::HashRuri
            | Algorithm::HashAuthUsername => self.pick_hash(mode, keys.0, keys.1),
            Algorithm::RoundRobin => self.pick_round_robin(cursor),
            Algorithm::Random => self.pick_random(r),
            Algorithm::First => self.pick_first(),
        }
    }
}

/// For each member, how many earlier members share its key (0 for the first occurrence).
fn key_ordinals(members: &[Member<'_>]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|&a, &b| members[a].key.cmp(members[b].key).then(a.cmp(&b)));
    let mut ordinals = vec![0u64; members.len()];
    for w in 1..order.len() {
        let (prev, cur) = (order[w - 1], order[w]);
        if members[prev].key == members[cur].key {
            ordinals[cur] = ordinals[prev] + 1;
        }
    }
    ordinals
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Selector>();
};
