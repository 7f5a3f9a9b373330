//! `fsroute-bench`: one subcommand per scenario (`throughput`, `fs-aware`, `single-peer`,
//! `reload`, `soak`), each printing a human table (or JSON with `--json`), plus the `relay` mode
//! that the throughput scenario launches as a separate process (so /proc charges its CPU to it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fsroute_bench::transport::{self, Transport};
use fsroute_bench::{fs_aware, relay, reload, single_peer, soak, throughput, Opts};

#[derive(Parser)]
#[command(name = "fsroute-bench", version, about = "fsroute's benchmark harness (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Print the result as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Length of the main measurement (per step for searches), e.g. "2s".
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// A few seconds in total, for CI.
    #[arg(long)]
    smoke: bool,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    uac_threads: usize,
    /// Directory for pictures (fs-aware PDD CDF).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    /// udp: the built-in generator against direct, the relay, fsroute and Kamailio; tcp / both:
    /// SIPp over TCP (and over UDP beside it) through one fsroute (bench/README.md, "SIP over TCP").
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    /// With --transport tcp|both: idle TCP connections for the memory and UDP-latency section (0: none).
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
}

#[derive(Args, Clone)]
struct TcpIdleArgs {
    #[command(flatten)]
    common: Common,
    /// Idle TCP connections to open against fsroute's tcp: listener.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
}

#[derive(Args, Clone)]
struct SoakArgs {
    /// Length of the run in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Length in seconds instead (short smoke runs); overrides --minutes.
    #[arg(long)]
    seconds: Option<f64>,
    /// Directory for soak.csv, soak-rss.png, soak-summary.{json,txt} and fsroute's log.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Legitimate new calls per second (half per route).
    #[arg(long)]
    rate: Option<f64>,
    /// Multiplies every flood rate (0 = no floods).
    #[arg(long)]
    flood_scale: Option<f64>,
    /// Seconds between SIGHUPs.
    #[arg(long)]
    hup_every: Option<f64>,
    /// fsroute RSS at which the floods stop (killed at twice it), MiB.
    #[arg(long)]
    rss_limit_mib: Option<u64>,
    /// Print the summary as JSON on stdout instead of the tables.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Highest zero-failure call rate: direct, bare relay, fsroute 1 and N shards, Kamailio
    /// (--transport tcp|both: SIPp over TCP beside UDP through fsroute).
    Throughput(ThroughputArgs),
    /// fsroute's VmRSS per idle TCP connection, and UDP PDD without and with them open.
    TcpIdle(TcpIdleArgs),
    /// Heterogeneous emulated FreeSWITCH pool: blind round-robin vs FreeSWITCH weights.
    FsAware(Common),
    /// All load from one source address: per-shard shares, throughput, reordering per ingress mode.
    SinglePeer(Common),
    /// SIGHUP every 100 ms under load: failed calls must be 0.
    Reload(Common),
    /// Minutes of legitimate calls, floods and SIGHUPs against one fsroute: RSS over time, failed calls.
    Soak(SoakArgs),
    /// What `fsroute demo` runs: three unequal emulated boxes, blind vs FreeSWITCH-weighted routing (< 1 min).
    Demo,
    /// The bare UDP relay (recv + send per datagram, no parsing); runs until killed.
    Relay {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long, required = true)]
        backend: Vec<std::net::SocketAddr>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 3s, 1m)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

fn opts(c: &Common) -> Opts {
    Opts {
        json: c.json,
        duration: c.duration,
        smoke: c.smoke,
        uac_threads: c.uac_threads.max(1),
        out_dir: c.out_dir.clone().unwrap_or_else(std::env::temp_dir),
    }
}

fn emit<T: serde::Serialize>(o: &Opts, r: Result<T, String>, render: impl Fn(&T) -> String, ok: impl Fn(&T) -> bool) -> ExitCode {
    match r {
        Ok(v) => {
            if o.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", render(&v));
            }
            if ok(&v) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("fsroute-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Throughput(a) => {
            let o = opts(&a.common);
            match a.transport {
                Transport::Udp => emit(&o, throughput::run(&o), throughput::render, |_| true),
                t => emit(&o, transport::run(&o, t, a.idle_connections), transport::render, |_| true),
            }
        }
        Cmd::TcpIdle(a) => {
            let o = opts(&a.common);
            emit(&o, transport::run_idle(&o, a.connections.max(1)), transport::render_idle, |_| true)
        }
        Cmd::SinglePeer(c) => {
            let o = opts(&c);
            emit(&o, single_peer::run(&o), single_peer::render, |_| true)
        }
        Cmd::FsAware(c) => {
            let o = opts(&c);
            emit(&o, fs_aware::run(&o), fs_aware::render, |_| true)
        }
        Cmd::Reload(c) => {
            let o = opts(&c);
            // Exit 3 when a call failed: the scenario's requirement is zero failed calls.
            emit(&o, reload::run(&o), reload::render, reload::ok)
        }
        Cmd::Soak(a) => {
            let secs = a.seconds.unwrap_or(a.minutes * 60.0);
            if !secs.is_finite() || secs <= 0.0 {
                eprintln!("fsroute-bench: the soak needs a positive length");
                return ExitCode::from(2);
            }
            let out = a.out.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("fsroute-soak-{}", std::process::id())));
            let mut p = soak::SoakParams::new(Duration::from_secs_f64(secs), out);
            if let Some(r) = a.rate {
                p.rate = r.max(1.0);
            }
            if let Some(f) = a.flood_scale {
                p.flood_scale = f.max(0.0);
            }
            if let Some(h) = a.hup_every {
                p.hup_every_s = h.max(0.1);
            }
            if let Some(l) = a.rss_limit_mib {
                p.rss_limit_mib = l.max(16);
            }
            let o = Opts { json: a.json, ..Opts::default() };
            // Exit 3 when fsroute died (or had to be killed): surviving is the soak's requirement.
            emit(&o, soak::run(&p), soak::render, soak::ok)
        }
        Cmd::Demo => match fsroute_bench::demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Relay { listen, backend, threads } => match relay::run(listen, backend, threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e}");
                ExitCode::from(2)
            }
        },
    }
}
