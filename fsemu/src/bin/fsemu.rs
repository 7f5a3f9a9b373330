//! `fsemu`: one emulated FreeSWITCH box (SIP UAS + ESL server telling the same story and
//! refusing what FreeSWITCH refuses), with the command line of docs/CONTRACT.md plus the
//! admission and network knobs. Prints one `fsemu ready sip=ADDR esl=ADDR
//! core-uuid=UUID` line on stdout once both sockets are bound, so harnesses that pass
//! port 0 can learn the real ports; logs go to stderr. Runs until killed, or exits 0
//! once an `fsctl shutdown elegant|asap` has completed.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fsroute_fsemu::{Emulator, EmulatorConfig, Fault, Respond503};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

fn percent(s: &str) -> Result<u32, String> {
    match s.trim_end_matches('%').parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!("{s:?} is not a percentage between 0 and 100")),
    }
}

fn percent_f64(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(n) if (0.0..=100.0).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a percentage between 0 and 100")),
    }
}

fn cost(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!("{s:?} is not a non-negative number of Idle-CPU points")),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "fsemu",
    version,
    about = "Emulated FreeSWITCH box: SIP UAS + ESL server sharing one capacity model"
)]
struct Args {
    /// UDP address of the SIP UAS (port 0 picks a free port).
    #[arg(long)]
    sip: SocketAddr,
    /// TCP address of the Event Socket (port 0 picks a free port).
    #[arg(long)]
    esl: SocketAddr,
    /// Event Socket password.
    #[arg(long, default_value = "ClueCon", hide_default_value = true)]
    password: String,
    /// Max-Sessions: sessions (channels) the box holds before answering 503.
    #[arg(long, default_value_t = 1000)]
    max_sessions: u64,
    /// How long an answered call lasts before the box hangs up with BYE.
    #[arg(long, default_value = "60s", value_parser = duration)]
    hold: Duration,
    /// HEARTBEAT interval (FreeSWITCH's event-heartbeat-interval, default 20 s).
    #[arg(long, default_value = "20s", value_parser = duration)]
    heartbeat: Duration,
    /// Answer delay of an idle box; grows with load as base × (1 + 4 × load²).
    #[arg(long, default_value = "50ms", value_parser = duration)]
    answer_delay: Duration,
    /// CPU percent busy with other work; Idle-CPU = 100 − this − cost × Session-Count.
    #[arg(long, default_value = "5", value_parser = percent)]
    background_cpu: u32,
    /// Idle-CPU points one session costs.
    #[arg(long, default_value_t = fsroute_fsemu::DEFAULT_CPU_PER_SESSION, value_parser = cost)]
    cpu_per_session: f64,
    /// FreeSWITCH's min-idle-cpu: refuse new sessions while Idle-CPU is below it (0 = unset).
    #[arg(long, default_value = "0", value_parser = percent_f64)]
    min_idle_cpu: f64,
    /// FreeSWITCH's cpu-idle-smoothing-depth: Idle-CPU is the mean of this many 1 s samples.
    #[arg(long, default_value_t = fsroute_fsemu::DEFAULT_IDLE_CPU_SMOOTHING,
          value_parser = clap::value_parser!(u32).range(1..))]
    idle_cpu_smoothing: u32,
    /// Channels one call occupies (2 where FreeSWITCH bridges the call onward).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    channels_per_call: u64,
    /// FreeSWITCH's sessions-per-second: only N − 1 new sessions get through per second.
    #[arg(long = "sps", visible_alias = "sps-limit", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    sps: u64,
    /// One-way network delay on every SIP datagram in and out and every ESL frame out.
    #[arg(long, default_value = "0s", value_parser = duration)]
    network_delay: Duration,
    /// FreeSWITCH-Hostname / Switchname.
    #[arg(long, default_value = "fsemu")]
    hostname: String,
    /// ESL fault to inject from the start: none, split, stall or garbage.
    #[arg(long, default_value = "none")]
    fault: Fault,
    /// When to answer 503: when-full (like FreeSWITCH), always, never.
    #[arg(long, default_value = "when-full")]
    respond_503: Respond503,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let a = Args::parse();
    let cfg = EmulatorConfig {
        sip: a.sip,
        esl: a.esl,
        password: a.password,
        max_sessions: a.max_sessions,
        hold: a.hold,
        heartbeat: a.heartbeat,
        answer_delay: a.answer_delay,
        background_cpu: a.background_cpu,
        cpu_per_session: a.cpu_per_session,
        min_idle_cpu: a.min_idle_cpu,
        idle_cpu_smoothing: a.idle_cpu_smoothing,
        channels_per_call: a.channels_per_call,
        sessions_per_second: a.sps,
        network_delay: a.network_delay,
        hostname: a.hostname,
        fault: a.fault,
        respond_503: a.respond_503,
    };
    let handle = match Emulator::start(cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("fsemu: cannot start: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "fsemu ready sip={} esl={} core-uuid={}",
        handle.sip_addr(),
        handle.esl_addr(),
        handle.core_uuid()
    );
    // A real FreeSWITCH exits once its requested shutdown completes.
    while !handle.is_down() {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("fsemu: shutdown complete, exiting");
}
