//! Behavioural tests of the load_balancer core: OpenSIPS vectors and the cases it gets wrong (#3294
//! wrap, #3297 pile-up between heartbeats), scores and flags, reservation and release, and property tests
//! that hammer the shared counters from real threads and check a call lifecycle against a simple model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use proptest::prelude::*;

use super::*;

fn res(effective: u32, load: u32) -> Option<LbResource> {
    Some(LbResource::fixed(effective, Arc::new(LoadCounter::new(load))))
}

fn dest(n: usize, resources: Vec<Option<LbResource>>) -> LbDestination {
    LbDestination {
        uri: format!("sip:fs{n}.example.com"),
        addr: SocketAddr::from(([10, 0, 0, n as u8], 5060)),
        enabled: true,
        resources,
    }
}

/// A group with resource `ch` (id 0) and, when asked, `conf` (id 1); `rows[i]` are destination i's
/// resources in id order.
fn group(names: &[&str], rows: Vec<Vec<Option<LbResource>>>) -> LbGroup {
    LbGroup {
        group_id: 1,
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        destinations: rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| dest(i, r))
            .collect(),
    }
}

fn load(g: &LbGroup, d: usize, r: usize) -> u32 {
    g.destinations[d].resource(r).unwrap().current()
}

const CH: &[usize] = &[0];
const ABS: LbFlags = LbFlags {
    relative: false,
    random_tie: false,
    allow_negative: false,
};
const REL: LbFlags = LbFlags {
    relative: true,
    random_tie: false,
    allow_negative: false,
};
const NEG: LbFlags = LbFlags {
    relative: false,
    random_tie: false,
    allow_negative: true,
};

// ---------------------------------------------------------------- capacity vectors as resources

#[test]
fn architecture_vector_availability_684_falls_to_674_after_ten_more_calls() {
    let cap = capacity_from_heartbeat(78_400_000, 1000, 100, 1, 40);
    let g = group(&["ch"], vec![vec![res(cap.effective, 40)]]);
    let r = g.destinations[0].resource(0).unwrap();
    assert_eq!(availability(r, false, Instant::now()), 684);
    for _ in 0..10 {
        assert!(reserve(&g.destinations[0], CH, false));
    }
    assert_eq!(availability(r, false, Instant::now()), 674);
    assert_eq!(available(r, Instant::now()), cap.available(50));
}

#[test]
fn architecture_vector_full_half_idle_box_is_never_selected() {
    let cap = capacity_from_heartbeat(50_000_000, 20, 20, 1, 0);
    let g = group(&["ch"], vec![vec![res(cap.effective, 0)]]);
    assert_eq!(available(g.destinations[0].resource(0).unwrap(), Instant::now()), 0);
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), None);
    assert!(!reserve(&g.destinations[0], CH, false));
}

#[test]
fn before_the_first_heartbeat_initial_capacity_is_the_effective_capacity() {
    // The control plane builds `LbResource { effective: initial_capacity }` until a box's first
    // heartbeat, so availability is `initial_capacity − p` and admission stops exactly there.
    let initial_capacity = 3;
    let g = group(&["ch"], vec![vec![res(initial_capacity, 1)]]);
    assert_eq!(
        availability(g.destinations[0].resource(0).unwrap(), false, Instant::now()),
        2
    );
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), Some(0));
    assert!(reserve(&g.destinations[0], CH, false));
    assert!(reserve(&g.destinations[0], CH, false));
    assert!(!reserve(&g.destinations[0], CH, false));
    assert_eq!(load(&g, 0, 0), initial_capacity);
}

#[test]
fn stale_box_built_with_zero_effective_takes_no_new_calls_but_keeps_its_count() {
    let g = group(&["ch"], vec![vec![res(0, 7)], vec![res(10, 0)]]);
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), Some(1));
    assert!(!reserve(&g.destinations[0], CH, false));
    assert_eq!(load(&g, 0, 0), 7);
}

// ---------------------------------------------------------------- what OpenSIPS gets wrong

#[test]
fn negative_availability_never_wraps_when_a_box_reports_more_sessions_than_max() {
    // S > M, and fsroute holds more calls than the new heartbeat allows (OpenSIPS #3294: 4294967295).
    let cap = capacity_from_heartbeat(50_000_000, 20, 30, 1, 5);
    assert_eq!(cap.effective, 0);
    let g = group(&["ch"], vec![vec![res(cap.effective, 5)]]);
    let r = g.destinations[0].resource(0).unwrap();
    assert_eq!(availability(r, false, Instant::now()), -5);
    assert_eq!(availability(r, true, Instant::now()), 0, "relative with effective 0 is 0");
    assert_eq!(available(r, Instant::now()), 0);
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), None);
    assert_eq!(select(&g, CH, REL, 0, 0, Instant::now()), None);

    let over = group(&["ch"], vec![vec![res(4, 10)]]);
    let r = over.destinations[0].resource(0).unwrap();
    assert_eq!(availability(r, false, Instant::now()), -6);
    assert_eq!(availability(r, true, Instant::now()), 100 - 250);
    assert_eq!(available(r, Instant::now()), 0);
    assert_eq!(select(&over, CH, ABS, 0, 0, Instant::now()), None);
}

/// OpenSIPS's `lb_update_max_loads` per timer tick, with its float arithmetic truncated into an unsigned:
/// `max_load = c × (M − (S − p))` if `p < M`, else `c × M`; availability `max_load − p`.
fn opensips_availability(c: f64, m: u32, s: u32, p: u32) -> i64 {
    let max_load = if p < m {
        c * (f64::from(m) - (f64::from(s) - f64::from(p)))
    } else {
        c * f64::from(m)
    };
    max_load as u32 as i64 - i64::from(p)
}

#[test]
fn between_two_heartbeats_every_routed_call_moves_availability_by_exactly_one_and_stops_at_capacity(
) {
    // c = 0.9, M = 100, S = 50 (none of them fsroute's) and no new heartbeat while calls arrive.
    let cap = capacity_from_heartbeat(90_000_000, 100, 50, 1, 0);
    assert_eq!((cap.capacity, cap.others, cap.effective), (90, 50, 40));
    let g = group(&["ch"], vec![vec![res(cap.effective, 0)]]);
    let r = g.destinations[0].resource(0).unwrap();

    let mut admitted = 0;
    for _ in 0..200 {
        let before = availability(r, false, Instant::now());
        match select(&g, CH, ABS, 0, 0, Instant::now()) {
            Some(0) => {
                assert!(reserve(&g.destinations[0], CH, false));
                assert_eq!(availability(r, false, Instant::now()), before - 1, "one call, one unit");
                admitted += 1;
            }
            other => {
                assert_eq!(other, None);
                break;
            }
        }
    }
    assert_eq!(admitted, 40);

    // OpenSIPS re-evaluates the same stale S every tick, so each call costs only 1 − c and the box is
    // still "available" long after fsroute's formula has stopped.
    let mut opensips_admitted = 0;
    while opensips_availability(0.9, 100, 50, opensips_admitted) > 0 {
        opensips_admitted += 1;
    }
    assert!(
        opensips_admitted > 50,
        "OpenSIPS piles {opensips_admitted} calls onto a box with 50 free sessions"
    );
    // Ending a call between heartbeats gives back exactly one too.
    assert_eq!(release(&g.destinations[0], CH), 1);
    assert_eq!(availability(r, false, Instant::now()), 1);
}

#[test]
fn calls_between_heartbeats_spread_across_boxes_instead_of_piling_onto_the_best() {
    let g = group(&["ch"], vec![vec![res(12, 0)], vec![res(8, 0)]]);
    let (mut picks, mut calls) = (Vec::new(), Vec::new());
    while let Some((i, held)) = select_and_reserve(&g, CH, ABS, 0, 0, Instant::now()) {
        picks.push(i);
        calls.push(held); // the calls stay up
    }
    // The first four go to the emptier box, then the two alternate as each call costs exactly one.
    assert_eq!(&picks[..6], &[0, 0, 0, 0, 0, 1]);
    assert_eq!(picks.len(), 20);
    assert_eq!((load(&g, 0, 0), load(&g, 1, 0)), (12, 8));
}

// ---------------------------------------------------------------- relative flag

#[test]
fn relative_opensips_vector_max_736_with_40_calls_is_95() {
    // docs/OPENSIPS.md §6: 78.4 %, 100/1000, p = 40 → max_load 736; 100 − 4000/736 = 100 − 5.
    let g = group(&["ch"], vec![vec![res(736, 40)]]);
    let r = g.destinations[0].resource(0).unwrap();
    assert_eq!(availability(r, true, Instant::now()), 95);
    assert_eq!(availability(r, false, Instant::now()), 696);
}

#[test]
fn relative_vector_adapted_to_fsroutes_formula_is_95_with_684_absolute() {
    let cap = capacity_from_heartbeat(78_400_000, 1000, 100, 1, 40);
    assert_eq!(cap.effective, 724);
    let g = group(&["ch"], vec![vec![res(cap.effective, 40)]]);
    let r = g.destinations[0].resource(0).unwrap();
    assert_eq!(availability(r, true, Instant::now()), 100 - 4000 / 724);
    assert_eq!(availability(r, true, Instant::now()), 95);
    assert_eq!(availability(r, false, Instant::now()), 684);
}

#[test]
fn relative_availability_uses_opensips_integer_division() {
    let at = |effective, load| availability(&res(effective, load).unwrap(), true, Instant::now());
    assert_eq!(at(3, 0), 100);
    assert_eq!(at(3, 1), 67, "100 − 33");
    assert_eq!(at(3, 2), 34, "100 − 66");
    assert_eq!(at(3, 3), 0);
    assert_eq!(at(0, 0), 0);
    assert_eq!(at(0, 9), 0);
    assert_eq!(at(u32::MAX, u32::MAX), 0);
    assert_eq!(at(1, u32::MAX), 100 - 100 * i64::from(u32::MAX));
}

#[test]
fn relative_flag_prefers_the_box_with_the_larger_free_share() {
    // A: 500 of 1000 free (50 %); B: 90 of 100 free (90 %).
    let g = group(&["ch"], vec![vec![res(1000, 500)], vec![res(100, 10)]]);
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), Some(0));
    assert_eq!(select(&g, CH, REL, 0, 0, Instant::now()), Some(1));
}

#[test]
fn relative_flag_skips_a_box_under_one_percent_free_unless_n() {
    // A full box is at 100 − 100·1000/1000 = 0 percent free: not eligible without n.
    let g = group(&["ch"], vec![vec![res(1000, 1000)]]);
    assert_eq!(select(&g, CH, REL, 0, 0, Instant::now()), None);
    let n = LbFlags {
        allow_negative: true,
        ..REL
    };
    assert_eq!(select(&g, CH, n, 0, 0, Instant::now()), Some(0));
}

// ---------------------------------------------------------------- score and flags

#[test]
fn highest_minimum_availability_over_the_wanted_resources_wins() {
    let g = group(
        &["ch", "conf"],
        vec![
            vec![res(100, 0), res(2, 0)],  // min 2
            vec![res(10, 0), res(10, 0)],  // min 10
            vec![res(50, 45), res(90, 0)], // min 5
        ],
    );
    assert_eq!(g.destinations[0].score(&[0, 1], false, Instant::now()), Some(2));
    assert_eq!(select(&g, &[0, 1], ABS, 0, 0, Instant::now()), Some(1));
    // Asking only for ch, the first box has the most.
    assert_eq!(select(&g, &[0], ABS, 0, 0, Instant::now()), Some(0));
}

#[test]
fn a_destination_missing_a_wanted_resource_is_skipped_however_free_it_is() {
    let g = group(
        &["ch", "conf"],
        vec![vec![res(1000, 0), None], vec![res(5, 0), res(5, 0)]],
    );
    assert_eq!(select(&g, &[0, 1], ABS, 0, 0, Instant::now()), Some(1));
    assert_eq!(select(&g, &[0], ABS, 0, 0, Instant::now()), Some(0));
    assert_eq!(select(&g, &[1], ABS, 0, 0, Instant::now()), Some(1));
    // An id beyond every destination's resources (a route naming an unknown resource) matches nobody.
    assert_eq!(select(&g, &[2], ABS, 0, 0, Instant::now()), None);
    assert!(!reserve(&g.destinations[0], &[0, 1], false));
    assert_eq!(
        load(&g, 0, 0),
        0,
        "nothing taken on the resource it does have"
    );
}

#[test]
fn a_disabled_destination_is_skipped() {
    let mut g = group(&["ch"], vec![vec![res(100, 0)], vec![res(10, 0)]]);
    g.destinations[0].enabled = false;
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), Some(1));
    g.destinations[1].enabled = false;
    assert_eq!(select(&g, CH, NEG, 0, 0, Instant::now()), None);
}

#[test]
fn tried_bits_skip_destinations_for_failover() {
    let g = group(
        &["ch"],
        vec![vec![res(30, 0)], vec![res(20, 0)], vec![res(10, 0)]],
    );
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), Some(0));
    assert_eq!(select(&g, CH, ABS, 0b001, 0, Instant::now()), Some(1));
    assert_eq!(select(&g, CH, ABS, 0b011, 0, Instant::now()), Some(2));
    assert_eq!(select(&g, CH, ABS, 0b101, 0, Instant::now()), Some(1));
    assert_eq!(select(&g, CH, ABS, 0b111, 0, Instant::now()), None);
}

#[test]
fn zero_or_negative_scores_are_eligible_only_with_n_and_rank_by_how_far_over() {
    let g = group(
        &["ch"],
        vec![vec![res(5, 5)], vec![res(5, 8)], vec![res(5, 6)]],
    );
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), None);
    assert_eq!(select(&g, CH, NEG, 0, 0, Instant::now()), Some(0), "0 beats −1 and −3");
    assert_eq!(select(&g, CH, NEG, 0b001, 0, Instant::now()), Some(2), "−1 beats −3");
    assert!(!reserve(&g.destinations[0], CH, false));
    assert!(reserve(&g.destinations[0], CH, true));
    assert_eq!(load(&g, 0, 0), 6);
}

#[test]
fn ties_go_to_the_first_in_config_order_without_s_whatever_r_is() {
    let g = group(
        &["ch"],
        vec![vec![res(5, 0)], vec![res(9, 4)], vec![res(5, 0)]],
    );
    for r in [0, 1, 2, 3, u64::MAX, 0xdead_beef] {
        assert_eq!(select(&g, CH, ABS, 0, r, Instant::now()), Some(0));
    }
}

#[test]
fn s_flag_spreads_ties_over_r_but_never_picks_a_worse_destination() {
    let s = LbFlags {
        random_tie: true,
        ..ABS
    };
    // 0, 2 and 3 tie at 5; 1 is worse; 4 has none left.
    let g = group(
        &["ch"],
        vec![
            vec![res(5, 0)],
            vec![res(9, 5)],
            vec![res(5, 0)],
            vec![res(6, 1)],
            vec![res(5, 5)],
        ],
    );
    let mut counts = [0usize; 5];
    for r in 0..3000u64 {
        counts[select(&g, CH, s, 0, r, Instant::now()).unwrap()] += 1;
    }
    assert_eq!((counts[1], counts[4]), (0, 0));
    for i in [0, 2, 3] {
        assert!(
            counts[i] > 800,
            "tied destination {i} picked {} of 3000: {counts:?}",
            counts[i]
        );
    }
    // Two-way tie after excluding one.
    let mut two = [0usize; 5];
    for r in 0..1000u64 {
        two[select(&g, CH, s, 0b1000, r, Instant::now()).unwrap()] += 1;
    }
    assert!(two[0] > 400 && two[2] > 400, "{two:?}");
}

#[test]
fn no_capacity_anywhere_selects_nothing() {
    let g = group(
        &["ch"],
        vec![vec![res(3, 3)], vec![res(0, 0)], vec![res(2, 2)]],
    );
    assert_eq!(select(&g, CH, ABS, 0, 0, Instant::now()), None);
    assert_eq!(select(&g, CH, REL, 0, 0, Instant::now()), None);
    assert!(select_and_reserve(&g, CH, ABS, 0, 0, Instant::now()).is_none());
    let empty = group(&["ch"], vec![]);
    assert_eq!(select(&empty, CH, NEG, 0, 0, Instant::now()), None);
}

#[test]
fn a_route_asking_for_no_resource_matches_nothing() {
    let g = group(&["ch"], vec![vec![res(3, 0)]]);
    assert_eq!(g.destinations[0].score(&[], false, Instant::now()), None);
    assert_eq!(select(&g, &[], NEG, 0, 0, Instant::now()), None);
}

#[test]
fn flags_parse_the_opensips_letters_and_reject_anything_else() {
    assert_eq!(LbFlags::parse(""), Ok(LbFlags::default()));
    assert_eq!(
        LbFlags::parse("rsn"),
        Ok(LbFlags {
            relative: true,
            random_tie: true,
            allow_negative: true
        })
    );
    assert_eq!(LbFlags::parse("n"), Ok(NEG));
    assert_eq!(LbFlags::parse("rr"), Ok(REL));
    for bad in ["x", "r s", "R", "rn,"] {
        let err = LbFlags::parse(bad).unwrap_err();
        assert!(err.contains("unknown load_balancer flag"), "{bad}: {err}");
    }
}

#[test]
fn resource_ids_follow_the_group_order_by_exact_name() {
    let g = group(&["ch", "conf"], vec![]);
    assert_eq!(g.resource_id("ch"), Some(0));
    assert_eq!(g.resource_id("conf"), Some(1));
    assert_eq!(g.resource_id("CH"), None);
    assert_eq!(g.resource_id("pstn"), None);
}

// ---------------------------------------------------------------- reserve and release

// Bare counter operations: what a `Reservation` does underneath, without holding the units.
/// Takes one unit of each wanted resource with compare-and-swap so two shards never take the last unit
/// twice; if any one is exhausted (load >= effective, unless `allow_negative`) or missing, gives back what
/// it took and returns false. Does not look at `enabled` ([`select`] does). A resource id listed twice
/// takes two units. While a multi-resource reservation is being rolled back another shard may briefly
/// see a unit as taken: admission errs on the safe side, never over `effective`.
fn reserve(dest: &LbDestination, wanted: &[usize], allow_negative: bool) -> bool {
    for (j, &id) in wanted.iter().enumerate() {
        let taken = dest
            .resource(id)
            .is_some_and(|r| take_one(r, allow_negative));
        if !taken {
            for &undo in wanted[..j].iter().rev() {
                if let Some(r) = dest.resource(undo) {
                    r.load.give_back();
                }
            }
            return false;
        }
    }
    true
}

/// Gives back one unit of each wanted resource that `reserve` took on this same table's destination.
/// Never underflows: a counter at 0 stays 0. Returns how many units were actually given back (a
/// forgiven unit paid off counts as given back). Production code holds a
/// [`Reservation`], which holds the counters themselves and so stays correct across reloads.
fn release(dest: &LbDestination, wanted: &[usize]) -> usize {
    wanted
        .iter()
        .filter(|&&id| dest.resource(id).is_some_and(|r| r.load.give_back() != Returned::Nothing))
        .count()
}


#[test]
fn reserve_takes_one_unit_of_each_wanted_resource() {
    let g = group(&["ch", "conf"], vec![vec![res(10, 3), res(4, 0)]]);
    assert!(reserve(&g.destinations[0], &[0, 1], false));
    assert_eq!((load(&g, 0, 0), load(&g, 0, 1)), (4, 1));
    assert_eq!(release(&g.destinations[0], &[0, 1]), 2);
    assert_eq!((load(&g, 0, 0), load(&g, 0, 1)), (3, 0));
}

#[test]
fn reserve_rolls_back_when_any_wanted_resource_is_exhausted() {
    let g = group(
        &["ch", "conf", "rec"],
        vec![vec![res(10, 3), res(8, 0), res(2, 2)]],
    );
    assert!(!reserve(&g.destinations[0], &[0, 1, 2], false));
    assert_eq!((load(&g, 0, 0), load(&g, 0, 1), load(&g, 0, 2)), (3, 0, 2));
    assert!(reserve_held(&g.destinations[0], &[0, 1, 2], false, Instant::now()).is_none());
    assert_eq!((load(&g, 0, 0), load(&g, 0, 1), load(&g, 0, 2)), (3, 0, 2));
}

#[test]
fn reserve_with_n_goes_over_effective_but_never_wraps_the_counter() {
    let g = group(&["ch"], vec![vec![res(1, 1)], vec![res(1, u32::MAX)]]);
    assert!(reserve(&g.destinations[0], CH, true));
    assert_eq!(load(&g, 0, 0), 2);
    assert!(!reserve(&g.destinations[1], CH, true));
    assert_eq!(load(&g, 1, 0), u32::MAX);
}

#[test]
fn release_never_underflows() {
    let g = group(&["ch", "conf"], vec![vec![res(5, 1), res(5, 0)]]);
    assert_eq!(release(&g.destinations[0], &[0, 1]), 1);
    assert_eq!(release(&g.destinations[0], &[0, 1]), 0);
    assert_eq!((load(&g, 0, 0), load(&g, 0, 1)), (0, 0));
}

#[test]
fn a_resource_asked_for_twice_takes_two_units_and_select_and_reserve_moves_on_when_it_cannot() {
    // All three boxes score 1 (conf has one free unit everywhere), so box 0 is chosen first, but the
    // call needs two ch units: the reservation fails after selection, exactly as when another shard
    // takes the last unit first, rolls back, and the next box that can hold it is used.
    let g = group(
        &["ch", "conf"],
        vec![
            vec![res(1, 0), res(1, 0)],
            vec![res(1, 0), res(9, 8)],
            vec![res(2, 0), res(1, 0)],
        ],
    );
    let wanted = &[0, 0, 1];
    assert_eq!(select(&g, wanted, ABS, 0, 0, Instant::now()), Some(0));
    let (i, held) = select_and_reserve(&g, wanted, ABS, 0, 0, Instant::now()).unwrap();
    assert_eq!(i, 2);
    assert_eq!(held.units(), 3);
    let loads = |g: &LbGroup| [0, 1, 2].map(|d| (load(g, d, 0), load(g, d, 1)));
    assert_eq!(loads(&g), [(0, 0), (0, 8), (2, 1)]);
    held.release();
    assert_eq!(loads(&g), [(0, 0), (0, 8), (0, 0)]);
}

#[test]
fn a_reservation_gives_its_units_back_exactly_once_by_release_or_by_drop() {
    let g = group(&["ch", "conf"], vec![vec![res(5, 0), res(5, 0)]]);
    let d = &g.destinations[0];
    let a = reserve_held(d, &[0, 1], false, Instant::now()).unwrap();
    let b = reserve_held(d, &[0], false, Instant::now()).unwrap();
    assert_eq!((a.units(), b.units()), (2, 1));
    assert_eq!((load(&g, 0, 0), load(&g, 0, 1)), (2, 1));
    a.release(); // explicit; its Drop then finds nothing left to give back
    assert_eq!((load(&g, 0, 0), load(&g, 0, 1)), (1, 0));
    drop(b); // the safety net
    assert_eq!((load(&g, 0, 0), load(&g, 0, 1)), (0, 0));
}

#[test]
fn reserve_held_refuses_more_than_four_resources_and_takes_nothing() {
    let names = ["a", "b", "c", "d", "e"];
    let g = group(&names, vec![(0..5).map(|_| res(9, 0)).collect()]);
    assert!(reserve_held(&g.destinations[0], &[0, 1, 2, 3, 4], false, Instant::now()).is_none());
    assert!(select_and_reserve(&g, &[0, 1, 2, 3, 4], ABS, 0, 0, Instant::now()).is_none());
    assert!((0..5).all(|r| load(&g, 0, r) == 0));
    let four = reserve_held(&g.destinations[0], &[0, 1, 2, 3], false, Instant::now()).unwrap();
    assert_eq!(four.units(), MAX_RESOURCES_PER_CALL);
}

#[test]
fn a_held_call_survives_a_reload_and_the_removal_of_its_destination() {
    let old = group(&["ch"], vec![vec![res(5, 0)], vec![res(5, 0)]]);
    let (i, held) = select_and_reserve(&old, CH, ABS, 0, 0, Instant::now()).unwrap();
    assert_eq!(i, 0);
    let kept = Arc::clone(&old.destinations[0].resources[0].as_ref().unwrap().load);
    // Reload: box 0 stays (its Load is carried over, its capacity changed), box 1 is new.
    let mut new = group(&["ch"], vec![vec![res(2, 0)], vec![res(5, 0)]]);
    new.destinations[0].resources[0].as_mut().unwrap().load = Arc::clone(&kept);
    drop(old);
    assert_eq!(load(&new, 0, 0), 1, "the count survived the reload");
    held.release();
    assert_eq!(load(&new, 0, 0), 0);

    // Removal: the call keeps the only reference to the counter and still releases into it, never into
    // whatever box takes the old slot.
    let (_, held) = select_and_reserve(&new, CH, ABS, 0, 0, Instant::now()).unwrap();
    let replaced = group(&["ch"], vec![vec![res(5, 0)]]);
    drop(new);
    held.release();
    assert_eq!(load(&replaced, 0, 0), 0);
    assert_eq!(kept.held(), 0);
}

// ---------------------------------------------------------------- reconciliation: written-off units

/// `n` calls held on destination 0's only resource.
fn hold(g: &LbGroup, n: usize) -> Vec<Reservation> {
    (0..n).map(|_| reserve_held(&g.destinations[0], CH, false, Instant::now()).expect("room")).collect()
}

fn counter(g: &LbGroup) -> &Load {
    &g.destinations[0].resource(0).unwrap().load
}

#[test]
fn written_off_units_come_back_at_once_and_their_late_release_pays_the_debt_without_double_counting() {
    let g = group(&["ch"], vec![vec![res(30, 0)]]);
    let lost = hold(&g, 20);
    let l = counter(&g);
    assert_eq!(availability(g.destinations[0].resource(0).unwrap(), false, Instant::now()), 10);
    // The box counts none of them: all twenty are written off and the capacity is back.
    assert_eq!(l.forgive(u32::MAX, 0, l.taken()), 20);
    assert_eq!((l.held(), l.forgiven()), (0, 20));
    assert_eq!(availability(g.destinations[0].resource(0).unwrap(), false, Instant::now()), 30);
    let live = hold(&g, 1);
    // The lost calls end after all (dialog memory expiry): each pays one unit of debt, none touches
    // the live call's unit.
    for r in lost {
        r.release();
    }
    assert_eq!((l.held(), l.forgiven()), (1, 0));
    drop(live);
    assert_eq!((l.held(), l.forgiven()), (0, 0));
    // A stray release finds nothing: no underflow, no debt created.
    assert_eq!(release(&g.destinations[0], CH), 0);
    assert_eq!(l.give_back(), Returned::Nothing);
    assert_eq!((l.held(), l.forgiven()), (0, 0));
}

#[test]
fn a_write_off_never_takes_held_below_the_calls_the_box_counts_plus_those_reserved_since() {
    let g = group(&["ch"], vec![vec![res(100, 0)]]);
    let mut calls = hold(&g, 10);
    let l = counter(&g);
    assert_eq!(l.forgive(u32::MAX, 4, l.taken()), 6, "the box counts 4 of the 10");
    assert_eq!(l.held(), 4);
    assert_eq!(l.forgive(u32::MAX, 4, l.taken()), 0, "nothing more to write off");
    let before = l.taken();
    calls.extend(hold(&g, 3));
    // Three calls reserved since `before` may not have reached the box: they are never written off,
    // even by a reading that counts nothing.
    assert_eq!(l.forgive(u32::MAX, 0, before), 4);
    assert_eq!(l.held(), 3);
    assert_eq!(l.forgive(2, 0, l.taken()), 2, "at most max");
    assert_eq!((l.held(), l.forgiven()), (1, 12));
    calls.drain(..).for_each(Reservation::release);
    assert_eq!((l.held(), l.forgiven()), (0, 0), "13 calls, 13 units given back, held + forgiven = outstanding");
}

#[test]
fn a_paid_debt_does_not_release_the_boxs_gate_unit_again() {
    use crate::admission::{BoxAdmission, BoxGate};
    let gate = Arc::new(BoxGate::default());
    let b = Arc::new(BoxAdmission { gate: Arc::clone(&gate), limit: 10, headroom: 10, rate: None, seq: 1, accepting: true });
    let row = LbResource { effective: u32::MAX, load: Arc::new(LoadCounter::new(0)), fs: Some(b) };
    let g = group(&["ch"], vec![vec![Some(row)]]);
    let lost = reserve_held(&g.destinations[0], CH, false, Instant::now()).unwrap();
    let live = reserve_held(&g.destinations[0], CH, false, Instant::now()).unwrap();
    assert_eq!(gate.used(), 2);
    let l = counter(&g);
    assert_eq!(l.forgive(u32::MAX, 1, l.taken()), 1);
    // The lost call's late end pays the row's debt; the box's gate was re-based on readings that no
    // longer counted it, so its unit stays where it is.
    lost.release();
    assert_eq!((l.held(), l.forgiven(), gate.used()), (1, 0, 2));
    live.release();
    assert_eq!((l.held(), l.forgiven(), gate.used()), (0, 0, 1));
}

/// What the model knows about one call holding a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// On the box; `counted` once its INVITE has arrived (reserved before the last snapshot).
    Live { counted: bool },
    /// Ended without fsroute seeing it: its unit is still outstanding.
    Dead,
}

#[derive(Debug, Clone)]
enum DebtOp {
    Call,
    /// The call at this position ends without fsroute seeing it (BYE lost).
    Lose(usize),
    /// The call at this position ends and fsroute sees it (or its dialog memory expires).
    End(usize),
    /// The control plane notes `taken`: every call reserved before now has reached the box.
    Snapshot,
    /// A reading: the box counts its live calls that have arrived plus `others`; write off at most
    /// `max`.
    Reading { others: u32, max: u32 },
}

fn debt_op() -> impl Strategy<Value = DebtOp> {
    prop_oneof![
        4 => Just(DebtOp::Call),
        2 => any::<usize>().prop_map(DebtOp::Lose),
        3 => any::<usize>().prop_map(DebtOp::End),
        2 => Just(DebtOp::Snapshot),
        2 => (0u32..3, 0u32..50).prop_map(|(others, max)| DebtOp::Reading { others, max }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Calls start, end seen or unseen, readings write units off, in any order: `held + forgiven` is
    /// always the number of outstanding reservations, `held` never drops below the calls live on the
    /// box (counted there or still on their way), and once every call has ended both are 0.
    #[test]
    fn held_never_drops_below_the_live_calls_and_every_unit_comes_back_once(ops in proptest::collection::vec(debt_op(), 1..150)) {
        let g = group(&["ch"], vec![vec![res(1000, 0)]]);
        let l = Arc::clone(counter(&g));
        let mut calls: Vec<(Reservation, Fate)> = Vec::new();
        let mut taken_at = l.taken();
        for op in ops {
            match op {
                DebtOp::Call => calls.push((hold(&g, 1).pop().unwrap(), Fate::Live { counted: false })),
                DebtOp::Lose(i) if !calls.is_empty() => {
                    let n = calls.len();
                    calls[i % n].1 = Fate::Dead;
                }
                DebtOp::End(i) if !calls.is_empty() => {
                    let n = calls.len();
                    calls.swap_remove(i % n).0.release();
                }
                DebtOp::Snapshot => {
                    taken_at = l.taken();
                    for c in &mut calls {
                        if c.1 == (Fate::Live { counted: false }) {
                            c.1 = Fate::Live { counted: true };
                        }
                    }
                }
                DebtOp::Reading { others, max } => {
                    let counted = calls.iter().filter(|c| c.1 == Fate::Live { counted: true }).count() as u32;
                    l.forgive(max, counted + others, taken_at);
                }
                _ => {}
            }
            let live = calls.iter().filter(|c| c.1 != Fate::Dead).count() as u32;
            prop_assert_eq!(l.held() + l.forgiven(), calls.len() as u32);
            prop_assert!(l.held() >= live, "held {} below {} live calls", l.held(), live);
        }
        calls.drain(..).for_each(|c| c.0.release());
        prop_assert_eq!((l.held(), l.forgiven()), (0, 0));
    }
}

#[test]
fn releases_racing_write_offs_from_real_threads_give_every_unit_back_exactly_once() {
    let g = Arc::new(group(&["ch"], vec![vec![res(u32::MAX, 0)]]));
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(4));
    std::thread::scope(|s| {
        let writer = {
            let (g, done, start) = (Arc::clone(&g), Arc::clone(&done), Arc::clone(&start));
            s.spawn(move || {
                start.wait();
                let mut written = 0u64;
                // Until the shards are done, and at least once: the calls they leave are still held.
                while !(done.load(Ordering::Relaxed) && written > 0) {
                    let l = counter(&g);
                    written += u64::from(l.forgive(3, 0, l.taken()));
                }
                written
            })
        };
        let shards: Vec<_> = (0..3)
            .map(|_| {
                let (g, start) = (Arc::clone(&g), Arc::clone(&start));
                s.spawn(move || {
                    start.wait();
                    let mut mine = Vec::new();
                    for i in 0..20_000 {
                        mine.push(hold(&g, 1).pop().unwrap());
                        if i % 3 != 0 {
                            mine.swap_remove(i % mine.len()).release();
                        }
                    }
                    mine
                })
            })
            .collect();
        let left: Vec<Reservation> = shards.into_iter().flat_map(|h| h.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        assert!(writer.join().unwrap() > 0);
        let l = counter(&g);
        assert_eq!(u64::from(l.held()) + u64::from(l.forgiven()), left.len() as u64);
        left.into_iter().for_each(Reservation::release);
        assert_eq!((l.held(), l.forgiven()), (0, 0));
    });
}

// ---------------------------------------------------------------- concurrency property test

#[derive(Debug, Clone)]
enum ThreadOp {
    /// Route a call: `select_and_reserve` with a wanted-resource mask and a random value.
    Route { mask: u8, r: u64 },
    /// Reserve directly on one box (as a failover or `lb_count_call` would).
    Direct { dest: usize, mask: u8 },
    /// End the held call at this position (BYE / CANCEL / failure): explicit release.
    End(usize),
    /// Discard the held call's state (timeout sweep): the Drop safety net.
    Forget(usize),
}

fn wanted_from_mask(mask: u8, resources: usize, out: &mut [usize; 3]) -> usize {
    let mut n = 0;
    for id in 0..resources {
        if mask & (1 << id) != 0 {
            out[n] = id;
            n += 1;
        }
    }
    if n == 0 {
        out[0] = 0;
        n = 1;
    }
    n
}

fn thread_op() -> impl Strategy<Value = ThreadOp> {
    prop_oneof![
        3 => (any::<u8>(), any::<u64>()).prop_map(|(mask, r)| ThreadOp::Route { mask, r }),
        1 => (0usize..4, any::<u8>()).prop_map(|(dest, mask)| ThreadOp::Direct { dest, mask }),
        2 => any::<usize>().prop_map(ThreadOp::End),
        1 => any::<usize>().prop_map(ThreadOp::Forget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Arbitrary interleavings from 2–4 real threads: no load ever exceeds `effective` (without `n`),
    /// no thread ever sees a counter below the units it holds itself (so nothing was released twice),
    /// when the threads stop every load equals the units still held, and after those are released every
    /// load is back to 0.
    #[test]
    fn concurrent_reserve_and_release_never_exceed_capacity_and_return_to_zero(
        effectives in proptest::collection::vec(proptest::collection::vec(0u32..6, 3), 2..5),
        flags in (any::<bool>(), any::<bool>(), any::<bool>()),
        scripts in proptest::collection::vec(proptest::collection::vec(thread_op(), 1..80), 2..5),
    ) {
        const RES: usize = 3;
        const ROUNDS: usize = 40;
        let flags = LbFlags { relative: flags.0, random_tie: flags.1, allow_negative: flags.2 };
        let g = Arc::new(group(
            &["ch", "conf", "rec"],
            effectives.iter().map(|row| row.iter().map(|&e| res(e, 0)).collect()).collect(),
        ));
        let ndest = g.destinations.len();
        // Workers, the monitor and this thread start together.
        let barrier = Arc::new(Barrier::new(scripts.len() + 2));
        let done = Arc::new(AtomicBool::new(false));

        let monitor = {
            let (g, barrier, done) = (Arc::clone(&g), Arc::clone(&barrier), Arc::clone(&done));
            std::thread::spawn(move || {
                barrier.wait();
                let mut samples = 0u64;
                while !done.load(Ordering::Relaxed) || samples == 0 {
                    for d in &g.destinations {
                        for r in d.resources.iter().flatten() {
                            assert!(flags.allow_negative || r.current() <= r.effective,
                                "{} holds {} of {}", d.uri, r.current(), r.effective);
                        }
                    }
                    samples += 1;
                    std::thread::yield_now();
                }
            })
        };

        let workers: Vec<_> = scripts.into_iter().map(|script| {
            let (g, barrier) = (Arc::clone(&g), Arc::clone(&barrier));
            std::thread::spawn(move || {
                // (destination, mask) of each call this thread holds, plus its reservation.
                let mut held: Vec<(usize, [usize; 3], usize, Reservation)> = Vec::new();
                let mut mine = vec![[0u32; RES]; g.destinations.len()];
                barrier.wait();
                // Replaying the script keeps the threads overlapping long after they were spawned.
                for op in script.iter().cycle().take(script.len() * ROUNDS).cloned() {
                    let mut w = [0; 3];
                    match op {
                        ThreadOp::Route { mask, r } => {
                            let n = wanted_from_mask(mask, RES, &mut w);
                            if let Some((d, h)) = select_and_reserve(&g, &w[..n], flags, 0, r, Instant::now()) {
                                w[..n].iter().for_each(|&id| mine[d][id] += 1);
                                held.push((d, w, n, h));
                            }
                        }
                        ThreadOp::Direct { dest, mask } => {
                            let d = dest % g.destinations.len();
                            let n = wanted_from_mask(mask, RES, &mut w);
                            if let Some(h) = reserve_held(&g.destinations[d], &w[..n], flags.allow_negative, Instant::now()) {
                                w[..n].iter().for_each(|&id| mine[d][id] += 1);
                                held.push((d, w, n, h));
                            }
                        }
                        ThreadOp::End(i) | ThreadOp::Forget(i) if !held.is_empty() => {
                            let (d, w, n, h) = held.swap_remove(i % held.len());
                            if matches!(op, ThreadOp::End(_)) {
                                h.release();
                            } else {
                                drop(h);
                            }
                            w[..n].iter().for_each(|&id| mine[d][id] -= 1);
                        }
                        ThreadOp::End(_) | ThreadOp::Forget(_) => {}
                    }
                    for (d, row) in mine.iter().enumerate() {
                        for (id, &m) in row.iter().enumerate() {
                            let r = g.destinations[d].resource(id).unwrap();
                            let now = r.current();
                            assert!(now >= m, "thread holds {m} units of {d}/{id}, counter says {now}");
                            assert!(flags.allow_negative || now <= r.effective, "{d}/{id}: {now} > {}", r.effective);
                        }
                    }
                }
                (held, mine)
            })
        }).collect();

        barrier.wait();
        let mut all_held = Vec::new();
        let mut expected = vec![[0u32; RES]; ndest];
        for w in workers {
            let (held, mine) = w.join().expect("worker panicked");
            for (d, row) in mine.iter().enumerate() {
                for id in 0..RES { expected[d][id] += row[id]; }
            }
            all_held.extend(held.into_iter().map(|(_, _, _, h)| h));
        }
        done.store(true, Ordering::Relaxed);
        monitor.join().expect("monitor saw a load above effective");

        for (d, row) in expected.iter().enumerate() {
            for (id, &units) in row.iter().enumerate() {
                prop_assert_eq!(load(&g, d, id), units, "dest {} res {}", d, id);
                prop_assert!(flags.allow_negative || units <= g.destinations[d].resource(id).unwrap().effective);
            }
        }
        for h in all_held { h.release(); }
        for d in 0..ndest {
            for id in 0..RES { prop_assert_eq!(load(&g, d, id), 0); }
        }
    }
}

// ---------------------------------------------------------------- model-based call lifecycle

#[derive(Debug, Clone)]
enum CallOp {
    Invite {
        mask: u8,
        flags: (bool, bool, bool),
        r: u64,
    },
    /// The call ends: 0 = final failure to the INVITE, 1 = completed CANCEL, 2 = BYE (either side),
    /// 3 = maximum duration / transaction timeout (the shard drops its dialog state).
    End { call: usize, how: u8 },
    /// The chosen box failed (408/5xx or no answer): give its units back and try the next best.
    Failover { call: usize, r: u64 },
    /// SIGHUP: the box stays with a new capacity and admin state; its counters carry over.
    Reload {
        dest: usize,
        ch: u32,
        conf: Option<u32>,
        enabled: bool,
    },
    /// The box leaves the config and a box with the same slot comes back: fresh counters.
    Replace { dest: usize },
}

fn call_op() -> impl Strategy<Value = CallOp> {
    prop_oneof![
        4 => (1u8..4, (any::<bool>(), any::<bool>(), any::<bool>()), any::<u64>())
            .prop_map(|(mask, flags, r)| CallOp::Invite { mask, flags, r }),
        3 => (any::<usize>(), 0u8..4).prop_map(|(call, how)| CallOp::End { call, how }),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(call, r)| CallOp::Failover { call, r }),
        1 => (0usize..3, 0u32..6, proptest::option::of(0u32..6), proptest::bool::weighted(0.8))
            .prop_map(|(dest, ch, conf, enabled)| CallOp::Reload { dest, ch, conf, enabled }),
        1 => (0usize..3).prop_map(|dest| CallOp::Replace { dest }),
    ]
}

/// The model: every counter ever created with the units the model says it holds, and the table.
struct Model {
    counters: Vec<(Load, u32)>,
    /// Per destination and resource: index into `counters`, and `effective` (None = not provided).
    current: [[(usize, Option<u32>); 2]; 3],
    enabled: [bool; 3],
}

struct Call {
    dest: usize,
    wanted: [usize; 2],
    n: usize,
    tried: u64,
    flags: LbFlags,
    /// Indices into `Model::counters` of the units this call holds.
    counters: [usize; 2],
    held: Reservation,
}

impl Model {
    fn new(initial: [(u32, Option<u32>); 3]) -> Model {
        let mut counters = Vec::new();
        let current = initial.map(|(ch, conf)| {
            [Some(ch), conf].map(|eff| {
                counters.push((Arc::new(LoadCounter::new(0)), 0));
                (counters.len() - 1, eff)
            })
        });
        Model {
            counters,
            current,
            enabled: [true; 3],
        }
    }

    fn table(&self) -> LbGroup {
        let rows = (0..3)
            .map(|d| {
                self.current[d]
                    .iter()
                    .map(|&(idx, eff)| {
                        eff.map(|effective| LbResource::fixed(effective, Arc::clone(&self.counters[idx].0)))
                    })
                    .collect()
            })
            .collect();
        let mut g = group(&["ch", "conf"], rows);
        for (d, dest) in g.destinations.iter_mut().enumerate() {
            dest.enabled = self.enabled[d];
        }
        g
    }

    /// Independent restatement of OpenSIPS lb_route: every acceptable index with the best score.
    fn best(&self, wanted: &[usize], flags: LbFlags, tried: u64) -> Vec<usize> {
        let mut best: Option<i64> = None;
        let mut winners = Vec::new();
        for d in 0..3 {
            if !self.enabled[d] || tried & (1 << d) != 0 {
                continue;
            }
            let mut score = i64::MAX;
            for &id in wanted {
                let Some(eff) = self.current[d][id].1 else {
                    score = i64::MIN;
                    break;
                };
                let (eff, load) = (eff as i64, self.counters[self.current[d][id].0].1 as i64);
                let a = match (flags.relative, eff) {
                    (false, _) => eff - load,
                    (true, 0) => 0,
                    (true, _) => 100 - (100 * load) / eff,
                };
                score = score.min(a);
            }
            if score == i64::MIN || (score <= 0 && !flags.allow_negative) {
                continue;
            }
            if best.is_none_or(|b| score > b) {
                best = Some(score);
                winners.clear();
            }
            if best == Some(score) {
                winners.push(d);
            }
        }
        winners
    }

    /// Routes (or re-routes) a call the way a shard would, checking the choice against `best`.
    fn route(
        &mut self,
        wanted: [usize; 2],
        n: usize,
        flags: LbFlags,
        tried: u64,
        r: u64,
    ) -> Option<Call> {
        let expect = self.best(&wanted[..n], flags, tried);
        let g = self.table();
        let got = select_and_reserve(&g, &wanted[..n], flags, tried, r, Instant::now());
        match (&got, expect.first()) {
            (None, None) => return None,
            (Some((d, _)), Some(&first)) => {
                if flags.random_tie {
                    assert!(expect.contains(d), "picked {d}, best are {expect:?}");
                } else {
                    assert_eq!(*d, first, "ties go to the first");
                }
            }
            _ => panic!(
                "select_and_reserve gave {:?}, model expects one of {expect:?}",
                got.as_ref().map(|g| g.0)
            ),
        }
        let (dest, held) = got.unwrap();
        assert_eq!(held.units(), n);
        let mut counters = [0; 2];
        for (k, &id) in wanted[..n].iter().enumerate() {
            let (idx, eff) = self.current[dest][id];
            assert!(
                flags.allow_negative || self.counters[idx].1 < eff.unwrap(),
                "reserved past effective"
            );
            self.counters[idx].1 += 1;
            counters[k] = idx;
        }
        Some(Call {
            dest,
            wanted,
            n,
            tried,
            flags,
            counters,
            held,
        })
    }

    fn end(&mut self, call: Call, drop_state: bool) {
        if drop_state {
            drop(call.held);
        } else {
            call.held.release();
        }
        for &idx in &call.counters[..call.n] {
            self.counters[idx].1 -= 1;
        }
    }

    fn check(&self) {
        for (i, (load, expected)) in self.counters.iter().enumerate() {
            assert_eq!(load.held(), *expected, "counter {i}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// INVITE / CANCEL / BYE / failure / timeout / failover / reload / replace in any order, on one
    /// shard, against a model: every choice is one the model ranks best, every counter (including those
    /// of boxes that left the config) always equals the units the live calls hold, a call can end only
    /// once however many BYEs arrive, and when every call has ended every counter is 0.
    #[test]
    fn call_lifecycle_matches_the_model(
        initial in proptest::array::uniform3((0u32..6, proptest::option::of(0u32..6))),
        ops in proptest::collection::vec(call_op(), 1..120),
    ) {
        let mut m = Model::new(initial);
        let mut calls: Vec<Option<Call>> = Vec::new();
        for op in ops {
            match op {
                CallOp::Invite { mask, flags, r } => {
                    let flags = LbFlags { relative: flags.0, random_tie: flags.1, allow_negative: flags.2 };
                    let mut w = [0; 2];
                    let mut n = 0;
                    for id in 0..2 {
                        if mask & (1 << id) != 0 {
                            w[n] = id;
                            n += 1;
                        }
                    }
                    let call = m.route(w, n, flags, 0, r);
                    calls.push(call);
                }
                CallOp::End { call, how } => {
                    if calls.is_empty() { continue; }
                    let i = call % calls.len();
                    // A second end of the same call (BYE retransmission, BYE after CANCEL) finds nothing.
                    if let Some(c) = calls[i].take() {
                        m.end(c, how == 3);
                    }
                }
                CallOp::Failover { call, r } => {
                    if calls.is_empty() { continue; }
                    let i = call % calls.len();
                    if let Some(c) = calls[i].take() {
                        let (wanted, n, flags, tried) = (c.wanted, c.n, c.flags, c.tried | 1 << c.dest);
                        m.end(c, false);
                        calls[i] = m.route(wanted, n, flags, tried, r);
                    }
                }
                CallOp::Reload { dest, ch, conf, enabled } => {
                    m.current[dest][0].1 = Some(ch);
                    m.current[dest][1].1 = conf;
                    m.enabled[dest] = enabled;
                }
                CallOp::Replace { dest } => {
                    for id in 0..2 {
                        m.counters.push((Arc::new(LoadCounter::new(0)), 0));
                        m.current[dest][id].0 = m.counters.len() - 1;
                    }
                }
            }
            m.check();
        }
        for c in calls.into_iter().flatten() {
            m.end(c, false);
        }
        m.check();
        prop_assert!(m.counters.iter().all(|(l, _)| l.held() == 0));
    }
}
