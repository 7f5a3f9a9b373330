//! What `fsroute demo` runs: three emulated FreeSWITCH boxes in-process (`fsroute-fsemu`,
//! the emulator), each bound by a different FreeSWITCH limit, the fsroute binary found next to the
//! current executable on a built-in config, and a short fs-aware comparison of four balancing
//! modes (see `fs_aware`). Prints the table and one line saying what it shows. Under a minute, no flags. The proxy runs as a child process because it owns
//! process-wide signals (SIGHUP/SIGTERM).

use std::time::Duration;

use crate::fs_aware::{self, Params};

/// Sizes for the demo: the fs-aware pool with a shorter run at 1 s heartbeats only, so all four
/// modes finish in about a minute on a 2-core machine.
pub fn demo_params() -> Params {
    Params {
        boxes: fs_aware::pool(1),
        load: 0.85,
        hold: Duration::from_secs(2),
        answer_delay: Duration::from_millis(10),
        heartbeats: vec![Duration::from_secs(1)],
        network_delay: Duration::from_millis(10),
        idle_cpu_smoothing: 3,
        // Long enough for fsroute to have learned the boxes (a few readings after their Idle-CPU
        // smoothing has settled), as it would have in production.
        warmup: Duration::from_secs(5),
        duration: Duration::from_secs(4),
        shards: 2,
    }
}

/// Runs the demo and prints its table to stdout. Err carries a message for the user.
pub fn demo() -> Result<(), String> {
    println!("fsroute demo: 3 emulated FreeSWITCH boxes 10 ms away (one bound by Max-Sessions, one by CPU, one by sessions-per-second), a proxy, one caller load per balancing mode; ~1 min");
    let r = fs_aware::run_with(&demo_params(), &std::env::temp_dir(), "demo")?;
    print!("{}", fs_aware::render(&r));
    Ok(())
}
