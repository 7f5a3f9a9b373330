//! The `fsroute` binary: a thin command line over the control plane (`run`, `check`, and `ctl`, the
//! admin API's client in `fsroute_controlplane::ctl`) and the
//! first-run demo (which lives in the bench crate with the scenario it shortens). All behaviour lives in the workspace crates.
//! The demo is the `demo` cargo feature (on by default); a build without it
//! (`--no-default-features`) has no `demo` subcommand and links neither the bench harness nor the
//! FreeSWITCH emulator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fsroute", version, about = "Carrier-grade SIP load balancer for FreeSWITCH farms")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground (SIGHUP reloads the config, SIGTERM/SIGINT stop gracefully).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// How long a graceful stop waits for INVITEs in flight and answered calls to end (a second
        /// SIGTERM stops at once).
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        drain_timeout: Duration,
    },
    /// Validate a config file without binding anything.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also resolve every destination name once (with the `[dns]` servers) and fail if one does
        /// not resolve; without it, check needs no DNS.
        #[arg(long)]
        resolve: bool,
    },
    /// Talk to a running fsroute over its admin API: list sets and groups, set a destination's
    /// state, reload, show a box's ESL numbers (tables, or `--json`).
    Ctl(fsroute_controlplane::ctl::CtlArgs),
    /// First run: three emulated FreeSWITCH boxes of unequal size, a proxy on a built-in config and
    /// a short load, once per balancing mode; prints what happened. No flags, under a minute.
    #[cfg(feature = "demo")]
    Demo,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    fsroute_controlplane::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own table; its emulators' start-up lines would only bury it.
    #[cfg(feature = "demo")]
    let default_level = if matches!(cli.command, Command::Demo) { "warn" } else { "info" };
    #[cfg(not(feature = "demo"))]
    let default_level = "info";
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.command {
        Command::Run { config, drain_timeout } => {
            fsroute_controlplane::runtime::run(fsroute_controlplane::runtime::RunOptions { config_path: config, drain_timeout })
        }
        Command::Check { config, resolve } => fsroute_controlplane::runtime::check(&config, resolve),
        Command::Ctl(args) => fsroute_controlplane::ctl::main(args),
        #[cfg(feature = "demo")]
        Command::Demo => match fsroute_bench::demo() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("fsroute demo failed: {e}");
                2
            }
        },
    };
    ExitCode::from(code as u8)
}
