//! Proof that the fast path allocates nothing per message: a counting global allocator wraps the
//! system one, the router is warmed up (its buffers and maps grow once), then scanning, routing and
//! rewriting a 900-byte INVITE, its 180, 200 and ACK must not allocate at all.

use fsroute_dataplane::testing::{allocations, CountingAlloc};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsroute_dataplane::dispatch::Algorithm;
use fsroute_dataplane::router::{Action, Router};
use fsroute_dataplane::stats::ShardStats;
use fsroute_dataplane::table::RoutingTable;
use fsroute_dataplane::testing::one_set_table;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn table(alg: Algorithm) -> RoutingTable {
    one_set_table(&[1, 2, 3, 4], alg, 1)
}

const INVITE: &[u8] = include_bytes!("../testdata/sip-corpus/01-invite-from-sbc.sip");

fn invite(i: u32) -> Vec<u8> {
    String::from_utf8_lossy(INVITE)
        .replace("8d3f0a4c2b1e4f6a9c7d5e3b1a2f4c6e@", &format!("{i:032x}@"))
        .replace("4d7a1c9e8f2b3a61", &format!("{i:016x}"))
        .into_bytes()
}

#[test]
fn routing_a_call_allocates_nothing_once_warm() {
    for alg in [Algorithm::HashCallId, Algorithm::RoundRobin, Algorithm::Random] {
        let t = table(alg);
        let mut r = Router::new(0, 1, 7, Arc::new(ShardStats::default()));
        let mut out = Vec::with_capacity(4096);
        let src: SocketAddr = "127.0.0.7:5060".parse().unwrap();
        let now = Instant::now();
        let calls: Vec<Vec<u8>> = (0..2000).map(invite).collect();
        // Warm-up: let the maps reach their size for this many calls.
        for c in &calls {
            r.handle(&t, src, c, now, &mut out);
        }
        r.tick(&t, now + Duration::from_secs(400));
        let before = allocations();
        for c in &calls[..1000] {
            assert!(matches!(r.handle(&t, src, c, now + Duration::from_secs(401), &mut out), Action::Forward(_)));
        }
        let after = allocations();
        assert_eq!(after - before, 0, "{alg:?}: {} allocations for 1000 INVITEs", after - before);
    }
}
