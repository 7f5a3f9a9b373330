//! `fsemu`: one emulated FreeSWITCH box (SIP UAS + ESL server telling the same story),
//! with the command line of CONTRACT.md. Prints one `fsemu ready sip=ADDR esl=ADDR
//! core-uuid=UUID` line on stdout once both sockets are bound, so harnesses that pass
//! port 0 can learn the real ports; logs go to stderr. Runs until killed.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fsroute_esl::emulator::{Emulator, EmulatorConfig, Fault, Respond503};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

fn percent(s: &str) -> Result<u32, String> {
    match s.trim_end_matches('%').parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!("{s:?} is not a percentage between 0 and 100")),
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
    /// Max-Sessions: channels the box accepts before answering 503.
    #[arg(long, default_value_t = 1000)]
    max_sessions: u64,
    /// How long an answered call lasts before the box hangs up with BYE.
    #[arg(long, default_value = "60s", value_parser = duration)]
    hold: Duration,
    /// HEARTBEAT interval (FreeSWITCH's event-heartbeat-interval).
    #[arg(long, default_value = "20s", value_parser = duration)]
    heartbeat: Duration,
    /// Answer delay of an idle box; grows with load as base × (1 + 4 × load²).
    #[arg(long, default_value = "50ms", value_parser = duration)]
    answer_delay: Duration,
    /// CPU percent busy with other work; Idle-CPU = 100 − this − 60 × load.
    #[arg(long, default_value = "5", value_parser = percent)]
    background_cpu: u32,
    /// Channels one call occupies (2 where FreeSWITCH bridges the call onward).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    channels_per_call: u64,
    /// sessions-per-second budget shown in heartbeats and `api status`.
    #[arg(long, default_value_t = 30)]
    sps_limit: u64,
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
        channels_per_call: a.channels_per_call,
        sessions_per_second: a.sps_limit,
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
    loop {
        std::thread::park();
    }
}
