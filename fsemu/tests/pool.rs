//! `EslPool` against real emulators on loopback: handshake and seed, heartbeats, auth
//! failure with backoff, kill and restart, the watchdog, and isolation between boxes.

mod common;

use std::time::{Duration, Instant};

use common::emulator;
use fsroute_esl::{ConnId, EslPool, EslUrl, HeartbeatFormat, PoolConfig, PoolEvent};
use fsroute_fsemu::{EmulatorHandle, Fault};

fn config() -> PoolConfig {
    PoolConfig {
        connect_timeout: Duration::from_secs(2),
        heartbeat_timeout: Duration::from_millis(600),
        recycle_after: None,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(800),
        format: HeartbeatFormat::Json,
        ..PoolConfig::default()
    }
}

fn url(emu: &EmulatorHandle, password: &str) -> EslUrl {
    url_at(emu.esl_addr(), password)
}

fn url_at(addr: std::net::SocketAddr, password: &str) -> EslUrl {
    EslUrl::new(addr.ip().to_string(), addr.port(), fsroute_esl::Secret::new(password))
}

/// Polls until `done` says so or `limit` passes; returns every event with its arrival time.
fn run_until(
    pool: &mut EslPool,
    limit: Duration,
    mut done: impl FnMut(&[(Instant, PoolEvent)]) -> bool,
) -> Vec<(Instant, PoolEvent)> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut out = Vec::new();
    while Instant::now() < deadline {
        pool.poll(Some(Duration::from_millis(20)), Instant::now(), &mut out)
            .unwrap();
        let now = Instant::now();
        seen.extend(out.drain(..).map(|e| (now, e)));
        if done(&seen) {
            break;
        }
    }
    seen
}

fn heartbeats(seen: &[(Instant, PoolEvent)], id: ConnId) -> Vec<Instant> {
    seen.iter()
        .filter(|(_, e)| matches!(e, PoolEvent::Heartbeat(i, _) if *i == id))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn pool_connects_authenticates_seeds_and_receives_heartbeats() {
    let emu = emulator(|c| c.max_sessions = 250);
    emu.set_reported(10, 250, 75_000_000);
    let mut pool = EslPool::new(config()).unwrap();
    let id = pool.add(url(&emu, "ClueCon"));
    let seen = run_until(&mut pool, Duration::from_secs(3), |s| {
        heartbeats(s, id).len() >= 2
    });
    let kinds: Vec<&PoolEvent> = seen.iter().map(|(_, e)| e).collect();
    assert!(
        matches!(kinds[0], PoolEvent::Connected(i) if *i == id),
        "{kinds:?}"
    );
    let seed = kinds.iter().find_map(|e| match e {
        PoolEvent::Seed(_, s) => Some(s.clone()),
        _ => None,
    });
    let seed = seed.expect("api status seed before heartbeats");
    assert_eq!(
        (seed.session_count, seed.max_sessions, seed.idle_cpu_micro),
        (10, 250, 75_000_000)
    );
    let hb = kinds.iter().rev().find_map(|e| match e {
        PoolEvent::Heartbeat(_, s) => Some(s.clone()),
        _ => None,
    });
    let hb = hb.expect("heartbeats");
    assert_eq!(
        (hb.session_count, hb.max_sessions, hb.idle_cpu_micro),
        (10, 250, 75_000_000)
    );
    let st = pool.status(id).unwrap();
    assert!(st.connected && !st.stale);
    assert_eq!(st.core_uuid.as_deref(), Some(emu.core_uuid().as_str()));
    assert_eq!(st.url, format!("fs://{}", emu.esl_addr()));
}

#[test]
fn wrong_password_reports_auth_failed_and_backs_off_instead_of_hammering() {
    let emu = emulator(|_| {});
    let mut pool = EslPool::new(config()).unwrap();
    let id = pool.add(url(&emu, "wrong-secret"));
    let seen = run_until(&mut pool, Duration::from_millis(1600), |_| false);
    let fails: Vec<Instant> = seen
        .iter()
        .filter(|(_, e)| *e == PoolEvent::AuthFailed(id))
        .map(|(t, _)| *t)
        .collect();
    // 100, 200, 400, 800 ms (±20 %) between attempts: at most 5 failures in 1.6 s, not dozens.
    assert!(
        (2..=5).contains(&fails.len()),
        "{} auth failures: {seen:?}",
        fails.len()
    );
    let gaps: Vec<Duration> = fails.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "backoff grows: {gaps:?}"
    );
    assert!(!seen
        .iter()
        .any(|(_, e)| matches!(e, PoolEvent::Connected(_))));
    let st = pool.status(id).unwrap();
    assert!(!st.connected && st.failures >= 2);
    let dbg = format!("{seen:?} {st:?} {pool:?}");
    assert!(!dbg.contains("wrong-secret"), "password leaked: {dbg}");
}

#[test]
fn killed_box_is_disconnected_at_once_and_reconnects_after_restart_with_a_new_core_uuid() {
    let emu = emulator(|_| {});
    let mut pool = EslPool::new(config()).unwrap();
    let id = pool.add(url(&emu, "ClueCon"));
    run_until(&mut pool, Duration::from_secs(3), |s| {
        !heartbeats(s, id).is_empty()
    });
    let old_uuid = pool.status(id).unwrap().core_uuid.unwrap();

    let killed_at = Instant::now();
    emu.kill();
    let seen = run_until(&mut pool, Duration::from_secs(1), |s| {
        s.iter()
            .any(|(_, e)| matches!(e, PoolEvent::Disconnected(..)))
    });
    let (at, reason) = seen
        .iter()
        .find_map(|(t, e)| match e {
            PoolEvent::Disconnected(i, r) if *i == id => Some((*t, r.to_string())),
            _ => None,
        })
        .expect("Disconnected after kill");
    assert!(
        at - killed_at < Duration::from_millis(300),
        "took {:?}",
        at - killed_at
    );
    assert!(reason.contains("closed"), "{reason}");
    assert!(!pool.status(id).unwrap().connected);

    // While the port is closed, attempts fail and are retried.
    let seen = run_until(&mut pool, Duration::from_millis(400), |s| {
        s.iter()
            .any(|(_, e)| matches!(e, PoolEvent::ConnectFailed(..)))
    });
    assert!(
        seen.iter()
            .any(|(_, e)| matches!(e, PoolEvent::ConnectFailed(i, _) if *i == id)),
        "{seen:?}"
    );

    emu.restart().unwrap();
    let seen = run_until(&mut pool, Duration::from_secs(3), |s| {
        !heartbeats(s, id).is_empty()
    });
    assert!(seen.iter().any(|(_, e)| *e == PoolEvent::Connected(id)));
    let new_uuid = seen.iter().find_map(|(_, e)| match e {
        PoolEvent::Heartbeat(_, s) => s.core_uuid.clone(),
        _ => None,
    });
    let new_uuid = new_uuid.expect("heartbeat after restart");
    assert_ne!(new_uuid, old_uuid);
    assert_eq!(new_uuid, emu.core_uuid());
}

#[test]
fn silent_but_connected_box_goes_stale_once_after_the_timeout_and_recovers_on_the_next_heartbeat() {
    let emu = emulator(|c| c.heartbeat = Duration::from_millis(100));
    let mut pool = EslPool::new(config()).unwrap();
    let id = pool.add(url(&emu, "ClueCon"));
    run_until(&mut pool, Duration::from_secs(3), |s| {
        !heartbeats(s, id).is_empty()
    });
    emu.stop_heartbeats(true);
    let stopped = Instant::now();
    let seen = run_until(&mut pool, Duration::from_millis(1500), |_| false);
    let stale: Vec<Instant> = seen
        .iter()
        .filter(|(_, e)| *e == PoolEvent::Stale(id))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(stale.len(), 1, "{seen:?}");
    let after = stale[0] - stopped;
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_millis(900),
        "stale after {after:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, PoolEvent::Disconnected(..))),
        "kept while stale"
    );
    let st = pool.status(id).unwrap();
    assert!(st.connected && st.stale);

    emu.stop_heartbeats(false);
    run_until(&mut pool, Duration::from_secs(1), |s| {
        !heartbeats(s, id).is_empty()
    });
    assert!(!pool.status(id).unwrap().stale);
}

#[test]
fn stale_connection_is_recycled_after_recycle_after() {
    let emu = emulator(|c| c.heartbeat = Duration::from_millis(100));
    let mut pool = EslPool::new(PoolConfig {
        recycle_after: Some(Duration::from_millis(900)),
        ..config()
    })
    .unwrap();
    let id = pool.add(url(&emu, "ClueCon"));
    run_until(&mut pool, Duration::from_secs(3), |s| {
        !heartbeats(s, id).is_empty()
    });
    emu.stop_heartbeats(true);
    let seen = run_until(&mut pool, Duration::from_secs(2), |s| {
        s.iter()
            .filter(|(_, e)| matches!(e, PoolEvent::Connected(_)))
            .count()
            >= 1
    });
    let order: Vec<&str> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            PoolEvent::Stale(_) => Some("stale"),
            PoolEvent::Disconnected(_, r) if r.to_string().contains("no heartbeat") => Some("recycled"),
            PoolEvent::Connected(_) => Some("connected"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["stale", "recycled", "connected"], "{seen:?}");
}

#[test]
fn a_stalled_box_does_not_delay_heartbeats_from_another_box() {
    let stalled = emulator(|c| c.fault = Fault::Stall);
    let healthy = emulator(|c| c.heartbeat = Duration::from_millis(100));
    let mut pool = EslPool::new(config()).unwrap();
    let a = pool.add(url(&stalled, "ClueCon"));
    let b = pool.add(url(&healthy, "ClueCon"));
    let seen = run_until(&mut pool, Duration::from_millis(1500), |_| false);
    let hb = heartbeats(&seen, b);
    assert!(
        hb.len() >= 8,
        "only {} heartbeats from the healthy box",
        hb.len()
    );
    let worst = hb.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        worst < Duration::from_millis(300),
        "gap of {worst:?} between heartbeats"
    );
    assert!(
        !pool.status(a).unwrap().connected,
        "the stalled box never greets"
    );
    assert!(!seen
        .iter()
        .any(|(_, e)| matches!(e, PoolEvent::Connected(i) if *i == a)));
}

#[test]
fn garbage_closes_only_that_connection_with_a_reason() {
    let bad = emulator(|_| {});
    let good = emulator(|c| c.heartbeat = Duration::from_millis(100));
    let mut pool = EslPool::new(config()).unwrap();
    let a = pool.add(url(&bad, "ClueCon"));
    let b = pool.add(url(&good, "ClueCon"));
    run_until(&mut pool, Duration::from_secs(3), |s| {
        !heartbeats(s, a).is_empty() && !heartbeats(s, b).is_empty()
    });
    bad.set_fault(Fault::Garbage);
    let seen = run_until(&mut pool, Duration::from_millis(800), |_| false);
    let reason = seen.iter().find_map(|(_, e)| match e {
        PoolEvent::Disconnected(i, r) if *i == a => Some(r.to_string()),
        _ => None,
    });
    let reason = reason.expect("the garbage box is dropped");
    assert!(reason.starts_with("protocol error"), "{reason}");
    assert!(!seen
        .iter()
        .any(|(_, e)| matches!(e, PoolEvent::Disconnected(i, _) if *i == b)));
    assert!(heartbeats(&seen, b).len() >= 5);
    assert!(pool.status(b).unwrap().connected);
}

#[test]
fn split_frames_and_plain_format_still_yield_seed_and_heartbeats() {
    let emu = emulator(|c| c.fault = Fault::Split);
    let mut pool = EslPool::new(PoolConfig {
        format: HeartbeatFormat::Plain,
        ..config()
    })
    .unwrap();
    let id = pool.add(url(&emu, "ClueCon"));
    let seen = run_until(&mut pool, Duration::from_secs(3), |s| {
        !heartbeats(s, id).is_empty()
    });
    assert!(seen.iter().any(|(_, e)| matches!(e, PoolEvent::Seed(..))));
    assert!(!heartbeats(&seen, id).is_empty());
}

#[test]
fn refused_port_is_retried_with_backoff_and_remove_closes_politely() {
    let emu = emulator(|_| {});
    let mut pool = EslPool::new(config()).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = closed.local_addr().unwrap();
    drop(closed);
    let dead = pool.add(url_at(dead_addr, "ClueCon"));
    let live = pool.add(url(&emu, "ClueCon"));
    let seen = run_until(&mut pool, Duration::from_secs(1), |_| false);
    let failures = seen
        .iter()
        .filter(|(_, e)| matches!(e, PoolEvent::ConnectFailed(i, _) if *i == dead))
        .count();
    assert!((2..=5).contains(&failures), "{failures} attempts");
    assert!(pool.status(dead).unwrap().next_attempt.is_some());
    assert_eq!(emu.esl_connections(), 1);
    pool.remove(live);
    let deadline = Instant::now() + Duration::from_secs(2);
    while emu.esl_connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        emu.esl_connections(),
        0,
        "the emulator saw the connection end"
    );
    assert!(pool.status(live).is_none());
}
