//! What `fsroute demo` runs: three emulated FreeSWITCH boxes of unequal size in-process (the
//! ESL crate's emulator), the fsroute binary found next to the current executable on a
//! built-in config, and a short fs-aware comparison (blind round-robin vs FreeSWITCH weights,
//! plus the load_balancer when this build has it). Prints the table and one line saying what
//! it shows. Under a minute, no flags. The proxy runs as a child process because it owns
//! process-wide signals (SIGHUP/SIGTERM).

use std::time::Duration;

use crate::fs_aware::{self, BoxSpec, Params};

/// Sizes for the demo: smaller boxes and a shorter run than the `fs-aware` scenario, so all
/// modes finish well inside a minute on a 2-core machine.
pub fn demo_params() -> Params {
    Params {
        boxes: [(200, 5), (100, 50), (50, 5)].into_iter().map(|(m, bg)| BoxSpec { max_sessions: m, background_cpu: bg }).collect(),
        load: 0.85,
        hold: Duration::from_secs(2),
        answer_delay: Duration::from_millis(100),
        heartbeat: Duration::from_secs(1),
        duration: Duration::from_secs(10),
        shards: 2,
    }
}

/// Runs the demo and prints its table to stdout. Err carries a message for the user.
pub fn demo() -> Result<(), String> {
    println!("fsroute demo: 3 emulated FreeSWITCH boxes (Max-Sessions 200/100/50, the middle one 50% busy), a proxy, one caller load; ~40 s");
    let r = fs_aware::run_with(&demo_params(), &std::env::temp_dir(), "demo")?;
    print!("{}", fs_aware::render(&r));
    Ok(())
}
