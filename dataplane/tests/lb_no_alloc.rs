//! Proof that the load_balancer fast path allocates nothing: a counting global allocator wraps the
//! system one, then selecting, reserving (raw and held), failing over, releasing and paying off
//! written-off units over thousands of calls must not allocate (counted on the test's own thread). It lives in its own test binary,
//! not in `no_alloc.rs`, because the counter is process-wide and the table built here would be
//! counted by that file's test running in parallel.

use fsroute_dataplane::testing::{allocations, CountingAlloc};
use std::net::SocketAddr;
use std::sync::Arc;

use fsroute_dataplane::lb::{
    reserve_held, select, select_and_reserve, LbDestination, LbFlags, LbGroup,
    LbResource, LoadCounter,
};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn group() -> LbGroup {
    let destinations = (0..8u8)
        .map(|i| LbDestination {
            uri: format!("sip:fs{i}.example.com"),
            addr: SocketAddr::from(([10, 0, 0, i], 5060)),
            enabled: i != 3,
            resources: vec![
                Some(LbResource::fixed(500 + u32::from(i), Arc::new(LoadCounter::new(0)))),
                (i % 2 == 0).then(|| LbResource::fixed(300, Arc::new(LoadCounter::new(0)))),
            ],
        })
        .collect();
    LbGroup {
        group_id: 1,
        resource_names: vec!["ch".into(), "conf".into()],
        destinations,
    }
}

#[test]
fn selecting_reserving_failing_over_and_releasing_allocate_nothing() {
    let g = group();
    let now = std::time::Instant::now();
    let flags = [
        LbFlags::default(),
        LbFlags::parse("r").unwrap(),
        LbFlags::parse("s").unwrap(),
        LbFlags::parse("rsn").unwrap(),
    ];
    let wanted: [&[usize]; 2] = [&[0], &[0, 1]];
    // Calls in flight live in a pre-sized Vec, as a shard's dialog slab would.
    let mut calls = Vec::with_capacity(4096);
    let before = allocations();
    for i in 0..4000u64 {
        let (f, w) = (flags[(i % 4) as usize], wanted[(i % 2) as usize]);
        let Some((d, held)) = select_and_reserve(&g, w, f, 0, i, now) else {
            continue;
        };
        if i % 5 == 0 {
            // Failover: give the first box back and move on.
            held.release();
            if let Some((_, next)) = select_and_reserve(&g, w, f, 1 << d, i, now) {
                calls.push(next);
            }
        } else {
            calls.push(held);
        }
        if let Some(d) = select(&g, w, f, 0, i, now) {
            if let Some(h) = reserve_held(&g.destinations[d], w, f.allow_negative, now) {
                h.release();
            }
        }
        if i % 3 == 0 {
            if let Some(h) = reserve_held(&g.destinations[0], w, false, now) {
                drop(h);
            }
        }
        if i % 7 == 0 {
            // Reconciliation writes a unit off; the next release on that counter pays the debt.
            let l = &g.destinations[d].resources[0].as_ref().unwrap().load;
            l.forgive(1, 0, l.taken());
        }
        if calls.len() > 1500 {
            calls.swap_remove((i % 1500) as usize).release();
        }
    }
    let held = calls.len();
    calls.drain(..).for_each(|h| h.release());
    let after = allocations();
    assert!(held > 100, "the run must actually hold calls ({held})");
    assert_eq!(
        after - before,
        0,
        "{} allocations on the load_balancer fast path",
        after - before
    );
    for d in &g.destinations {
        assert!(
            d.resources
                .iter()
                .flatten()
                .all(|r| r.load.held() == 0 && r.load.forgiven() == 0),
            "{} leaked",
            d.uri
        );
    }
}
