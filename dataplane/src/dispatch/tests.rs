//! Behavioural tests of [`Selector`]: OpenSIPS vectors, weight distributions, minimal disruption,
//! round-robin order, priorities, empty/inactive sets, and property tests over arbitrary sets.

use super::*;
use rand::{Rng, SeedableRng};

fn m(key: &str, weight: u32) -> Member<'_> {
    Member {
        key,
        weight,
        priority: 0,
        active: true,
    }
}

fn inactive(mut member: Member<'_>) -> Member<'_> {
    member.active = false;
    member
}

const KEYS: usize = 100_000;

/// Realistic Call-IDs (random hex @ host): OpenSIPS's additive hash is weak on sequential strings, and
/// real Call-IDs are random, so that is what distribution tests should feed it.
fn call_ids(n: usize, seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            format!(
                "{:016x}{:08x}@pc{}.example.com",
                rng.gen::<u64>(),
                rng.gen::<u32>(),
                rng.gen_range(1..50)
            )
        })
        .collect()
}

fn shares(picks: impl Iterator<Item = Option<usize>>, n: usize) -> Vec<f64> {
    let mut counts = vec![0usize; n];
    let mut total = 0usize;
    for p in picks {
        counts[p.expect("a member must be picked")] += 1;
        total += 1;
    }
    counts.iter().map(|&c| c as f64 / total as f64).collect()
}

fn assert_shares(got: &[f64], weights: &[u32], tolerance: f64, what: &str) {
    let sum: u32 = weights.iter().sum();
    for (i, (&g, &w)) in got.iter().zip(weights).enumerate() {
        let want = f64::from(w) / f64::from(sum);
        assert!(
            (g - want).abs() <= tolerance,
            "{what}: member {i} got {g:.4}, want {want:.4} ± {tolerance}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Algorithm names

#[test]
fn algorithm_names_and_numbers_follow_opensips() {
    let table = [
        ("hash-callid", 0, true),
        ("hash-from", 1, true),
        ("hash-to", 2, true),
        ("hash-ruri", 3, true),
        ("round-robin", 4, false),
        ("hash-auth-username", 5, true),
        ("random", 6, false),
        ("first", 8, false),
    ];
    for (name, number, hash) in table {
        let a = Algorithm::from_name(name).unwrap();
        assert_eq!(a.name(), name);
        assert_eq!(a.number(), number);
        assert_eq!(a.is_hash(), hash);
        assert_eq!(Algorithm::from_number(i64::from(number)), Some(a));
        assert_eq!(Algorithm::from_name(&number.to_string()), Some(a));
        assert_eq!(a.to_string(), name);
    }
    assert_eq!(
        Algorithm::from_name("Round-Robin"),
        Some(Algorithm::RoundRobin)
    );
}

#[test]
fn unsupported_algorithm_numbers_and_names_are_rejected() {
    for n in [-1, 7, 9, 10, 256] {
        assert_eq!(Algorithm::from_number(n), None, "{n}");
    }
    for s in [
        "7",
        "9",
        "",
        "-1",
        "+4",
        " 4",
        "hash",
        "roundrobin",
        "99999999999999999999999",
    ] {
        assert_eq!(Algorithm::from_name(s), None, "{s:?}");
    }
}

#[test]
fn hash_mode_defaults_to_rendezvous_and_parses_config_names() {
    assert_eq!(HashMode::default(), HashMode::Rendezvous);
    assert_eq!(HashMode::from_name("opensips"), Some(HashMode::Opensips));
    assert_eq!(
        HashMode::from_name("rendezvous"),
        Some(HashMode::Rendezvous)
    );
    assert_eq!(HashMode::from_name("maglev"), None);
    assert_eq!(HashMode::Opensips.name(), "opensips");
}

// ---------------------------------------------------------------------------------------------------
// OpenSIPS mode: vectors of docs/OPENSIPS.md §6

const VECTOR_CALLID: &[u8] = b"a84b4c76e66710@pc33.atlanta.com";
const VECTOR_HASH: u32 = 2175018094;

fn opensips_pick(weights: &[u32]) -> Option<usize> {
    let keys: Vec<String> = (0..weights.len())
        .map(|i| format!("sip:10.0.0.{i}"))
        .collect();
    let members: Vec<Member> = keys.iter().zip(weights).map(|(k, &w)| m(k, w)).collect();
    let s = Selector::new(&members);
    let by_hash = s.pick_opensips(VECTOR_HASH);
    assert_eq!(s.pick_hash(HashMode::Opensips, VECTOR_CALLID, b""), by_hash);
    by_hash
}

#[test]
fn opensips_pick_vector_equal_weights() {
    assert_eq!(opensips_pick(&[1, 1, 1]), Some(1));
}

#[test]
fn opensips_pick_vector_78_25_0() {
    assert_eq!(u64::from(VECTOR_HASH) % 103, 54);
    assert_eq!(opensips_pick(&[78, 25, 0]), Some(0));
}

#[test]
fn opensips_pick_vector_50_50() {
    assert_eq!(opensips_pick(&[50, 50]), Some(1));
}

#[test]
fn opensips_pick_vector_all_weights_zero_spreads_by_hash_mod_n() {
    assert_eq!(opensips_pick(&[0, 0, 0]), Some(1));
}

#[test]
fn opensips_mode_hashes_the_trimmed_callid_like_ds_hash_callid() {
    let s = Selector::new(&[m("a", 1), m("b", 1), m("c", 1)]);
    let raw = b"  a84b4c76e66710@pc33.atlanta.com\r\n";
    assert_eq!(
        s.pick_hash(HashMode::Opensips, trim_callid(raw), b""),
        Some(1)
    );
}

#[test]
fn opensips_mode_hashes_uri_keys_like_ds_hash_fromuri() {
    // From sip:alice@atlanta.com hashes to 1053853112; 1053853112 % 3 == 2.
    let (u, h) = opensips_uri_keys(b"<sip:alice@atlanta.com>;tag=88");
    let s = Selector::new(&[m("a", 1), m("b", 1), m("c", 1)]);
    assert_eq!(1053853112 % 3, 2);
    assert_eq!(
        s.pick(Algorithm::HashFrom, HashMode::Opensips, (u, h), 0, 0),
        Some(2)
    );
}

#[test]
fn opensips_mode_repicks_an_inactive_candidate_over_active_weights() {
    // Weights [1,1,1], hash -> candidate 1. With 1 inactive: active running [1,2], h % 2 = 0 -> member 0.
    let s = Selector::new(&[m("a", 1), inactive(m("b", 1)), m("c", 1)]);
    assert_eq!(VECTOR_HASH % 2, 0);
    assert_eq!(s.pick_opensips(VECTOR_HASH), Some(0));
    // Active weights all zero: h % active_count over the active members (0 and 2) -> index 0 -> member 0.
    let s = Selector::new(&[m("a", 0), inactive(m("b", 5)), m("c", 0)]);
    assert_eq!(s.pick_opensips(VECTOR_HASH), Some(0));
    let s = Selector::new(&[
        inactive(m("a", 0)),
        inactive(m("b", 5)),
        m("c", 0),
        m("d", 0),
    ]);
    assert_eq!(s.pick_opensips(VECTOR_HASH + 1), Some(3));
}

#[test]
fn opensips_mode_spreads_by_weight_over_100k_callids() {
    let weights = [50, 30, 20];
    let s = Selector::new(&[m("a", 50), m("b", 30), m("c", 20)]);
    let ids = call_ids(KEYS, 1);
    let got = shares(
        ids.iter()
            .map(|c| s.pick_hash(HashMode::Opensips, c.as_bytes(), b"")),
        3,
    );
    assert_shares(&got, &weights, 0.03, "opensips");
}

#[test]
fn opensips_mode_inactive_member_moves_only_its_own_calls_and_spreads_them_by_weight() {
    let all = [m("a", 40), m("b", 30), m("c", 20), m("d", 10)];
    let mut one_down = all;
    one_down[1].active = false;
    let (before, after) = (Selector::new(&all), Selector::new(&one_down));
    let ids = call_ids(KEYS, 2);
    let mut moved_to = [0usize; 4];
    let mut moved = 0;
    for id in &ids {
        let (b, a) = (
            before.pick_hash(HashMode::Opensips, id.as_bytes(), b""),
            after.pick_hash(HashMode::Opensips, id.as_bytes(), b""),
        );
        if b == Some(1) {
            moved += 1;
            moved_to[a.unwrap()] += 1;
        } else {
            assert_eq!(a, b, "{id} was not on the inactive member but moved");
        }
    }
    assert_eq!(moved_to[1], 0);
    // #387: the orphaned calls spread over 40/20/10, not all onto one neighbour.
    let got: Vec<f64> = [0, 2, 3]
        .iter()
        .map(|&i| moved_to[i] as f64 / moved as f64)
        .collect();
    assert_shares(&got, &[40, 20, 10], 0.03, "re-picked calls");
}

#[test]
fn opensips_mode_removing_a_member_reshuffles_far_more_than_its_share() {
    // Why rendezvous is the default: removing 10% of the weight moves most calls in OpenSIPS mode.
    let all = [m("a", 40), m("b", 30), m("c", 20), m("d", 10)];
    let (before, after) = (Selector::new(&all), Selector::new(&all[..3]));
    let ids = call_ids(KEYS, 3);
    let moved = ids
        .iter()
        .filter(|id| {
            let b = before.pick_hash(HashMode::Opensips, id.as_bytes(), b"");
            b != Some(3) && after.pick_hash(HashMode::Opensips, id.as_bytes(), b"") != b
        })
        .count();
    assert!(
        moved as f64 / KEYS as f64 > 0.3,
        "only {moved} surviving calls moved"
    );
}

// ---------------------------------------------------------------------------------------------------
// Rendezvous mode

#[test]
fn rendezvous_spreads_by_weight_over_100k_callids() {
    let s = Selector::new(&[m("sip:a", 50), m("sip:b", 30), m("sip:c", 20)]);
    let ids = call_ids(KEYS, 4);
    let got = shares(
        ids.iter()
            .map(|c| s.pick_hash(HashMode::Rendezvous, c.as_bytes(), b"")),
        3,
    );
    assert_shares(&got, &[50, 30, 20], 0.03, "rendezvous");
}

#[test]
fn rendezvous_spreads_by_weight_even_for_sequential_keys() {
    let weights = [1, 2, 3, 4];
    let s = Selector::new(&[m("sip:a", 1), m("sip:b", 2), m("sip:c", 3), m("sip:d", 4)]);
    let got = shares(
        (0..KEYS).map(|i| s.pick_hash(HashMode::Rendezvous, format!("{i}").as_bytes(), b"")),
        4,
    );
    assert_shares(&got, &weights, 0.03, "rendezvous sequential");
}

#[test]
fn rendezvous_all_active_weights_zero_spreads_evenly() {
    let s = Selector::new(&[
        m("sip:a", 0),
        m("sip:b", 0),
        inactive(m("sip:c", 9)),
        m("sip:d", 0),
    ]);
    let ids = call_ids(KEYS, 5);
    let got = shares(
        ids.iter()
            .map(|c| s.pick_hash(HashMode::Rendezvous, c.as_bytes(), b"")),
        4,
    );
    assert_shares(&got, &[1, 1, 0, 1], 0.03, "rendezvous all zero");
}

#[test]
fn rendezvous_zero_weight_member_gets_nothing_while_others_have_weight() {
    let s = Selector::new(&[m("sip:a", 1), m("sip:b", 0), m("sip:c", 1)]);
    for id in call_ids(10_000, 6) {
        assert_ne!(
            s.pick_hash(HashMode::Rendezvous, id.as_bytes(), b""),
            Some(1)
        );
    }
}

fn assert_only_leavers_calls_move(
    before: &Selector,
    before_keys: &[&str],
    after: &Selector,
    after_keys: &[&str],
    leaver: &str,
) {
    let ids = call_ids(KEYS, 7);
    let mut moved = 0;
    let mut landed = std::collections::HashMap::<&str, usize>::new();
    for id in &ids {
        let b = before_keys[before
            .pick_hash(HashMode::Rendezvous, id.as_bytes(), b"")
            .unwrap()];
        let a = after_keys[after
            .pick_hash(HashMode::Rendezvous, id.as_bytes(), b"")
            .unwrap()];
        assert_ne!(a, leaver);
        if b == leaver {
            moved += 1;
            *landed.entry(a).or_default() += 1;
        } else {
            assert_eq!(a, b, "call {id} moved from {b} to {a} though {b} stayed");
        }
    }
    assert!(
        moved > KEYS / 10,
        "the leaver should have had ~20% of the calls, had {moved}"
    );
    // Its calls spread over the survivors by weight (40/30/10 of 80), not onto one of them.
    for (k, w) in [("sip:a", 40.0), ("sip:b", 30.0), ("sip:d", 10.0)] {
        let share = landed.get(k).copied().unwrap_or(0) as f64 / moved as f64;
        assert!(
            (share - w / 80.0).abs() < 0.03,
            "{k} took {share:.3} of the moved calls"
        );
    }
}

#[test]
fn rendezvous_removing_a_member_moves_only_its_calls() {
    let keys = ["sip:a", "sip:b", "sip:c", "sip:d"];
    let weights = [40, 30, 20, 10];
    let all: Vec<Member> = keys.iter().zip(weights).map(|(k, w)| m(k, w)).collect();
    let without_c: Vec<Member> = all.iter().copied().filter(|x| x.key != "sip:c").collect();
    let kept: Vec<&str> = without_c.iter().map(|x| x.key).collect();
    assert_only_leavers_calls_move(
        &Selector::new(&all),
        &keys,
        &Selector::new(&without_c),
        &kept,
        "sip:c",
    );
}

#[test]
fn rendezvous_marking_a_member_inactive_moves_only_its_calls() {
    let keys = ["sip:a", "sip:b", "sip:c", "sip:d"];
    let weights = [40, 30, 20, 10];
    let all: Vec<Member> = keys.iter().zip(weights).map(|(k, w)| m(k, w)).collect();
    let mut c_down = all.clone();
    c_down[2].active = false;
    assert_only_leavers_calls_move(
        &Selector::new(&all),
        &keys,
        &Selector::new(&c_down),
        &keys,
        "sip:c",
    );
}

#[test]
fn rendezvous_adding_a_member_moves_calls_only_onto_it() {
    let before = Selector::new(&[m("sip:a", 1), m("sip:b", 1), m("sip:c", 1)]);
    let after = Selector::new(&[m("sip:a", 1), m("sip:b", 1), m("sip:new", 1), m("sip:c", 1)]);
    let names_before = ["sip:a", "sip:b", "sip:c"];
    let names_after = ["sip:a", "sip:b", "sip:new", "sip:c"];
    let mut gained = 0;
    for id in call_ids(KEYS, 8) {
        let b = names_before[before
            .pick_hash(HashMode::Rendezvous, id.as_bytes(), b"")
            .unwrap()];
        let a = names_after[after
            .pick_hash(HashMode::Rendezvous, id.as_bytes(), b"")
            .unwrap()];
        if a == "sip:new" {
            gained += 1;
        } else {
            assert_eq!(a, b);
        }
    }
    assert!(
        (gained as f64 / KEYS as f64 - 0.25).abs() < 0.03,
        "new member took {gained}"
    );
}

#[test]
fn rendezvous_raising_one_weight_only_pulls_calls_onto_that_member() {
    let before = Selector::new(&[m("sip:a", 10), m("sip:b", 10), m("sip:c", 10)]);
    let after = Selector::new(&[m("sip:a", 10), m("sip:b", 25), m("sip:c", 10)]);
    for id in call_ids(20_000, 9) {
        let (b, a) = (
            before.pick_hash(HashMode::Rendezvous, id.as_bytes(), b""),
            after.pick_hash(HashMode::Rendezvous, id.as_bytes(), b""),
        );
        assert!(a == b || a == Some(1), "{id} moved from {b:?} to {a:?}");
    }
}

#[test]
fn rendezvous_mapping_follows_keys_not_positions() {
    let forward = Selector::new(&[m("sip:a", 3), m("sip:b", 2), m("sip:c", 1)]);
    let reversed = Selector::new(&[m("sip:c", 1), m("sip:b", 2), m("sip:a", 3)]);
    for id in call_ids(10_000, 10) {
        let f = forward
            .pick_hash(HashMode::Rendezvous, id.as_bytes(), b"")
            .unwrap();
        let r = reversed
            .pick_hash(HashMode::Rendezvous, id.as_bytes(), b"")
            .unwrap();
        assert_eq!(f, 2 - r);
    }
}

#[test]
fn rendezvous_duplicate_destinations_both_take_calls() {
    let s = Selector::new(&[m("sip:a", 1), m("sip:a", 1)]);
    let got = shares(
        call_ids(20_000, 11)
            .iter()
            .map(|c| s.pick_hash(HashMode::Rendezvous, c.as_bytes(), b"")),
        2,
    );
    assert_shares(&got, &[1, 1], 0.03, "duplicates");
}

/// Frozen mapping of fixed Call-IDs onto a fixed, unequally weighted set. Changing these literals (or
/// anything that makes this test fail) sends live calls' CANCELs, ACKs and re-INVITEs to a different
/// FreeSWITCH than their INVITE across an upgrade or a mixed-version cluster: don't, unless that is the
/// point of the release.
#[test]
fn rendezvous_golden_mapping_is_frozen() {
    let set = [
        m("sip:fs1.example.net:5060", 10),
        m("sip:fs2.example.net:5060", 20),
        m("sip:10.0.0.3:5080;transport=udp", 30),
        m("sip:[2001:db8::4]:5060", 40),
    ];
    let s = Selector::new(&set);
    for (callid, want) in GOLDEN {
        assert_eq!(
            s.pick_hash(HashMode::Rendezvous, callid.as_bytes(), b""),
            Some(want),
            "{callid}"
        );
    }
}

// Computed once from the implementation and frozen; see the test above before touching any of it.
const GOLDEN: [(&str, usize); 20] = [
    ("a84b4c76e66710@pc33.atlanta.com", 0),
    ("3848276298220188511@atlanta.example.com", 2),
    ("f81d4fae-7dec-11d0-a765-00a0c91e6bf6@foo.bar.com", 3),
    ("1-12345@127.0.0.1", 3),
    ("2-12345@127.0.0.1", 3),
    ("3-12345@127.0.0.1", 3),
    ("843817637684230@998sdasdh09", 2),
    ("é-callid", 3),
    ("0f1e2d3c4b5a69788796a5b4c3d2e1f0", 2),
    ("abc", 1),
    ("1234", 3),
    ("12345", 3),
    ("call-0001@fsroute.test", 1),
    ("call-0002@fsroute.test", 3),
    ("call-0003@fsroute.test", 3),
    ("call-0004@fsroute.test", 3),
    ("NDg0ZmJkZjQ4YjFjNjg1ZWY1ZDc3YzNjZmRjMzVjZjE.", 1),
    ("5f3c9e2a-1b7d-4c8e-9a6f-2d4b8e1c7a90", 3),
    ("9c1b2a3d@[2001:db8::1]", 1),
    ("z", 3),
];

// ---------------------------------------------------------------------------------------------------
// Round-robin

#[test]
fn round_robin_interleaves_five_one_one_smoothly() {
    let s = Selector::new(&[m("a", 5), m("b", 1), m("c", 1)]);
    let order: Vec<usize> = (0..14).map(|c| s.pick_round_robin(c).unwrap()).collect();
    assert_eq!(order, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn round_robin_alternates_with_equal_weights() {
    // OpenSIPS #1889: all weights 1 must alternate.
    let s = Selector::new(&[m("a", 1), m("b", 1), m("c", 1)]);
    let order: Vec<usize> = (0..6).map(|c| s.pick_round_robin(c).unwrap()).collect();
    assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    let s = Selector::new(&[m("a", 100), m("b", 100)]);
    let order: Vec<usize> = (0..4).map(|c| s.pick_round_robin(c).unwrap()).collect();
    assert_eq!(order, [0, 1, 0, 1]);
}

#[test]
fn round_robin_skips_inactive_and_zero_weight_members() {
    let s = Selector::new(&[m("a", 1), inactive(m("b", 1)), m("c", 0), m("d", 2)]);
    let order: Vec<usize> = (0..6).map(|c| s.pick_round_robin(c).unwrap()).collect();
    assert_eq!(order, [3, 0, 3, 3, 0, 3]);
}

#[test]
fn round_robin_with_all_active_weights_zero_visits_each_active_member_once() {
    let s = Selector::new(&[m("a", 0), inactive(m("b", 3)), m("c", 0)]);
    assert_eq!(s.round_robin_period(), 2);
    assert_eq!(
        (s.pick_round_robin(0), s.pick_round_robin(1)),
        (Some(0), Some(2))
    );
}

#[test]
fn round_robin_is_exact_over_one_period() {
    let weights = [50, 30, 20, 7];
    let s = Selector::new(&[m("a", 50), m("b", 30), m("c", 20), m("d", 7)]);
    assert_eq!(s.round_robin_period(), 107);
    let mut counts = [0u32; 4];
    for c in 0..s.round_robin_period() as u64 {
        counts[s.pick_round_robin(c).unwrap()] += 1;
    }
    assert_eq!(counts, weights);
    // And so within ±3% over 100k picks starting anywhere.
    let got = shares(
        (12_345..12_345 + KEYS as u64).map(|c| s.pick_round_robin(c)),
        4,
    );
    assert_shares(&got, &weights, 0.03, "round-robin");
}

#[test]
fn round_robin_cursor_wraps_at_u64_max_without_panicking() {
    let s = Selector::new(&[m("a", 2), m("b", 1)]);
    assert!(s.pick_round_robin(u64::MAX).is_some());
}

// ---------------------------------------------------------------------------------------------------
// Random

#[test]
fn random_spreads_by_active_weight_over_100k_draws() {
    let s = Selector::new(&[m("a", 50), inactive(m("x", 1000)), m("b", 30), m("c", 20)]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let got = shares((0..KEYS).map(|_| s.pick_random(rng.gen())), 4);
    assert_shares(&got, &[50, 0, 30, 20], 0.03, "random");
}

#[test]
fn random_with_all_active_weights_zero_is_uniform_over_active() {
    let s = Selector::new(&[m("a", 0), m("b", 0), inactive(m("c", 5))]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let got = shares((0..KEYS).map(|_| s.pick_random(rng.gen())), 3);
    assert_shares(&got, &[1, 1, 0], 0.03, "random all zero");
}

#[test]
fn random_pick_is_a_pure_function_of_r() {
    let s = Selector::new(&[m("a", 1), m("b", 3)]);
    // Cumulative [1, 4]: r % 4 == 0 -> a, 1..=3 -> b.
    assert_eq!(s.pick_random(0), Some(0));
    assert_eq!(s.pick_random(4), Some(0));
    assert_eq!(s.pick_random(1), Some(1));
    assert_eq!(s.pick_random(u64::MAX), Some(1));
}

// ---------------------------------------------------------------------------------------------------
// First

#[test]
fn first_picks_lowest_priority_value_skipping_inactive() {
    let set = [
        Member {
            key: "a",
            weight: 1,
            priority: 5,
            active: true,
        },
        Member {
            key: "b",
            weight: 1,
            priority: -3,
            active: false,
        },
        Member {
            key: "c",
            weight: 0,
            priority: 1,
            active: true,
        },
        Member {
            key: "d",
            weight: 1,
            priority: 1,
            active: true,
        },
    ];
    // b has the lowest value but is inactive; c and d tie on 1, config order keeps c (weight is irrelevant).
    assert_eq!(Selector::new(&set).pick_first(), Some(2));
    let mut all_up = set;
    all_up[1].active = true;
    assert_eq!(Selector::new(&all_up).pick_first(), Some(1));
}

// ---------------------------------------------------------------------------------------------------
// Nothing to pick

fn every_pick(s: &Selector) -> Vec<Option<usize>> {
    let mut out = Vec::new();
    for alg in Algorithm::ALL {
        for mode in [HashMode::Rendezvous, HashMode::Opensips] {
            for (cursor, r) in [(0, 0), (1, 7), (u64::MAX, u64::MAX)] {
                out.push(s.pick(alg, mode, (b"callid@host", b""), cursor, r));
            }
        }
    }
    out.push(s.pick_opensips(VECTOR_HASH));
    out.push(s.pick_rendezvous(42));
    out
}

#[test]
fn empty_set_picks_nothing() {
    let s = Selector::new(&[]);
    assert!(s.is_empty());
    assert_eq!(
        (s.len(), s.active_count(), s.round_robin_period()),
        (0, 0, 0)
    );
    assert!(every_pick(&s).iter().all(Option::is_none));
}

#[test]
fn set_with_nothing_active_picks_nothing_for_every_algorithm() {
    let s = Selector::new(&[
        inactive(m("a", 1)),
        inactive(m("b", 0)),
        inactive(m("c", 7)),
    ]);
    assert_eq!((s.len(), s.active_count()), (3, 0));
    assert!(every_pick(&s).iter().all(Option::is_none));
}

#[test]
fn single_active_member_takes_everything() {
    let s = Selector::new(&[inactive(m("a", 1)), m("b", 0), inactive(m("c", 7))]);
    assert!(every_pick(&s).iter().all(|&p| p == Some(1)));
}

// ---------------------------------------------------------------------------------------------------
// Properties

fn arb_members() -> impl proptest::strategy::Strategy<Value = Vec<(u32, i32, bool, u8)>> {
    use proptest::prelude::*;
    let weight = prop_oneof![Just(0u32), 0u32..5, 0u32..1000, any::<u32>()];
    proptest::collection::vec((weight, -3i32..3, any::<bool>(), 0u8..6), 0..40)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn picks_never_panic_and_return_an_active_member_with_weight_when_one_exists(
        spec in arb_members(),
        k1 in proptest::collection::vec(proptest::num::u8::ANY, 0..48),
        k2 in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
        cursor in proptest::num::u64::ANY,
        r in proptest::num::u64::ANY,
    ) {
        let keys: Vec<String> = spec.iter().map(|s| format!("sip:10.0.0.{}", s.3)).collect();
        let members: Vec<Member> = spec
            .iter()
            .zip(&keys)
            .map(|(&(weight, priority, active, _), key)| Member { key, weight, priority, active })
            .collect();
        let s = Selector::new(&members);
        let any_active = members.iter().any(|x| x.active);
        let any_weighted = members.iter().any(|x| x.active && x.weight > 0);
        proptest::prop_assert_eq!(s.active_count(), members.iter().filter(|x| x.active).count());
        for alg in Algorithm::ALL {
            for mode in [HashMode::Rendezvous, HashMode::Opensips] {
                let got = s.pick(alg, mode, (&k1, &k2), cursor, r);
                match got {
                    None => proptest::prop_assert!(!any_active, "{} returned None with an active member", alg),
                    Some(i) => {
                        proptest::prop_assert!(members[i].active, "{} picked inactive {}", alg, i);
                        if any_weighted && alg != Algorithm::First {
                            proptest::prop_assert!(members[i].weight > 0, "{} picked zero-weight {}", alg, i);
                        }
                    }
                }
            }
        }
        if let Some(i) = s.pick_first() {
            let best = members.iter().filter(|x| x.active).map(|x| x.priority).min().unwrap();
            proptest::prop_assert_eq!(members[i].priority, best);
            proptest::prop_assert!(members[..i].iter().all(|x| !x.active || x.priority > best));
        }
    }

    #[test]
    fn opensips_mode_keeps_every_active_candidates_calls(
        spec in arb_members(),
        hash in proptest::num::u32::ANY,
    ) {
        // Deactivating members never moves a call whose OpenSIPS candidate is still active.
        let keys: Vec<String> = spec.iter().map(|s| format!("k{}", s.3)).collect();
        let all_up: Vec<Member> = spec.iter().zip(&keys).map(|(&(w, p, _, _), k)| Member { key: k, weight: w, priority: p, active: true }).collect();
        let some_down: Vec<Member> = spec.iter().zip(&keys).map(|(&(w, p, a, _), k)| Member { key: k, weight: w, priority: p, active: a }).collect();
        if let Some(c) = Selector::new(&all_up).pick_opensips(hash) {
            if some_down[c].active {
                proptest::prop_assert_eq!(Selector::new(&some_down).pick_opensips(hash), Some(c));
            }
        }
    }

    #[test]
    fn round_robin_period_gives_each_member_its_weight_share(weights in proptest::collection::vec(0u32..200, 1..12)) {
        let keys: Vec<String> = (0..weights.len()).map(|i| i.to_string()).collect();
        let members: Vec<Member> = keys.iter().zip(&weights).map(|(k, &w)| m(k, w)).collect();
        let s = Selector::new(&members);
        let mut counts = vec![0u64; weights.len()];
        for c in 0..s.round_robin_period() as u64 {
            counts[s.pick_round_robin(c).unwrap()] += 1;
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let period = s.round_robin_period() as u64;
        for (i, &w) in weights.iter().enumerate() {
            if total == 0 {
                proptest::prop_assert_eq!(counts[i], 1);
            } else {
                // counts[i] / period == w / total exactly (period is total / gcd).
                proptest::prop_assert_eq!(counts[i] * total, u64::from(w) * period);
            }
        }
    }
}
