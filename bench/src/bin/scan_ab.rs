//! The fast scanner against the full one, interleaved in one process: on a shared, noisy machine
//! criterion's runs of one variant after the other see different noise, while rounds that
//! alternate see the same. Prints the best round of each (the least disturbed), per message:
//!
//! ```sh
//! cargo run --release -p fsroute-bench --bin scan_ab
//! ```

use std::hint::black_box;
use std::time::Instant;

use fsroute_dataplane::sip;

const MESSAGES: [(&str, &str); 2] = [
    ("INVITE", include_str!("../../../dataplane/testdata/sip-corpus/01-invite-from-sbc.sip")),
    ("180", include_str!("../../../dataplane/testdata/sip-corpus/03-180.sip")),
];
const ROUNDS: usize = 200;
const PER_ROUND: usize = 2000;

fn best_of(msg: &[u8], scan: fn(&[u8]) -> Result<sip::Message<'_>, sip::ParseError>, best: &mut f64) {
    let t = Instant::now();
    for _ in 0..PER_ROUND {
        black_box(scan(black_box(msg)).map(|m| m.call_id).ok());
    }
    *best = best.min(t.elapsed().as_nanos() as f64 / PER_ROUND as f64);
}

fn main() {
    for (name, text) in MESSAGES {
        let msg = text.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes();
        assert_eq!(sip::parse(&msg), sip::parse_full(&msg), "{name}: the scanners disagree");
        let (mut fast, mut full) = (f64::MAX, f64::MAX);
        for _ in 0..ROUNDS {
            best_of(&msg, sip::parse, &mut fast);
            best_of(&msg, sip::parse_full, &mut full);
        }
        println!("{name:>6} ({} B): fast {fast:.0} ns, full {full:.0} ns, full/fast {:.2}", msg.len(), full / fast);
    }
}
