//! End-to-end specs of OPTIONS probing and admin state: a silent box leaves after the failure
//! threshold and returns after the success threshold; a box answering 503 is full, not dead; an
//! admin's "inactive" sticks until an admin says "active"; TCP boxes are probed over their own
//! connection, and one that refuses connections or goes away leaves like a silent one.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use fsroute_fsemu::{Emulator, EmulatorConfig, EmulatorHandle, Respond503};

fn emulator_on(sip: SocketAddr) -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        sip,
        esl: "127.0.0.1:0".parse().unwrap(),
        hold: Duration::from_secs(120),
        answer_delay: Duration::from_millis(5),
        // These specs drive SIPp at up to 100 calls/s: above FreeSWITCH's default sps of 30.
        sessions_per_second: 10_000,
        ..EmulatorConfig::default()
    })
    .expect("start emulator")
}

fn config(backends: &[SocketAddr]) -> String {
    let mut c = "[proxy]\nlisten = [\"{SIP}\"]\nshards = 2\n\n[control]\nadmin = \"{ADMIN}\"\nprobe_interval = \"200ms\"\nprobe_failure_threshold = 3\nprobe_success_threshold = 2\n\n".to_string();
    for b in backends {
        c.push_str(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"sip:{b}\"\nweight = 1\n\n"));
    }
    c.push_str("[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\n");
    c
}

fn state_of(proxy: &Proxy, addr: SocketAddr) -> String {
    proxy.status()["dispatcher"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == addr.to_string())
        .map(|d| d["state"].as_str().unwrap().to_string())
        .unwrap()
}

fn wait_state(proxy: &Proxy, addr: SocketAddr, want: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if state_of(proxy, addr) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_silent_box_leaves_after_the_failure_threshold_and_returns_after_the_success_threshold() {
    let _g = serial();
    let a = emulator_on(addr(0));
    let silent = addr(free_udp_port());
    let proxy = Proxy::start(&config(&[a.sip_addr(), silent]));
    assert!(wait_state(&proxy, silent, "probing", Duration::from_secs(5)), "{}", proxy.status());
    assert_eq!(state_of(&proxy, a.sip_addr()), "active");
    // With the silent box out, every call reaches the live one.
    let run = Sipp::uac(proxy.sip, None, 20, 50, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    assert_eq!(a.calls_answered(), 20);
    // The box comes up: two answered probes bring it back.
    let b = emulator_on(silent);
    assert!(wait_state(&proxy, silent, "active", Duration::from_secs(5)), "{}", proxy.status());
    let run = Sipp::uac(proxy.sip, None, 20, 50, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    assert!(b.calls_answered() >= 8, "returned box got {} of 20", b.calls_answered());
}

#[test]
fn a_box_answering_503_to_options_is_full_not_dead() {
    let _g = serial();
    let full = emulator_on(addr(0));
    full.set_respond_503(Respond503::Always);
    let proxy = Proxy::start(&config(&[full.sip_addr()]));
    std::thread::sleep(Duration::from_millis(1500));
    let st = proxy.status();
    let d = &st["dispatcher"][0]["destinations"][0];
    assert_eq!(d["state"], "active", "{st}");
    assert_eq!(d["probe"]["full"], true, "{st}");
    assert_eq!(d["probe"]["last_status"], 503, "{st}");
}

#[test]
fn admin_inactive_is_sticky_until_an_admin_sets_active() {
    let _g = serial();
    let (a, b) = (emulator_on(addr(0)), emulator_on(addr(0)));
    let proxy = Proxy::start(&config(&[a.sip_addr(), b.sip_addr()]));
    let body = format!(r#"{{"setid":1,"destination":"sip:{}","state":"inactive"}}"#, b.sip_addr());
    assert_eq!(http(proxy.admin, "POST", "/dispatcher/state", &body).0, 200);
    // Probes answer, yet the admin's decision holds.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(state_of(&proxy, b.sip_addr()), "inactive");
    let run = Sipp::uac(proxy.sip, None, 20, 50, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    assert_eq!(b.calls_answered(), 0);
    let body = body.replace("inactive", "active");
    assert_eq!(http(proxy.admin, "POST", "/dispatcher/state", &body).0, 200);
    assert_eq!(state_of(&proxy, b.sip_addr()), "active");
    // An unknown destination is a 404, a bad state a 400.
    let unknown = r#"{"setid":1,"destination":"sip:127.0.0.1:1","state":"inactive"}"#;
    assert_eq!(http(proxy.admin, "POST", "/dispatcher/state", unknown).0, 404);
    let bad = body.replace("\"active\"", "\"sleepy\"");
    assert_eq!(http(proxy.admin, "POST", "/dispatcher/state", &bad).0, 400);
}

/// A box on a TCP listener that answers every request with 200 on its connection while `alive`;
/// when told to die it closes its connections and its listener (connects are then refused). It
/// counts connections and records each request's top Via.
struct TcpBox {
    addr: SocketAddr,
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TcpBox {
    fn start() -> TcpBox {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let b = TcpBox { addr, alive: Default::default(), seen: Default::default(), connections: Default::default() };
        b.alive.store(true, SeqCst);
        let (alive, seen, connections) = (b.alive.clone(), b.seen.clone(), b.connections.clone());
        // Bounded by `alive`, which the test clears (and the process's end).
        std::thread::spawn(move || {
            while alive.load(SeqCst) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                connections.fetch_add(1, SeqCst);
                let (alive, seen) = (alive.clone(), seen.clone());
                std::thread::spawn(move || {
                    use std::io::Write;
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let mut buf = Vec::new();
                    while alive.load(SeqCst) {
                        let Some(req) = read_sip(&mut s, &mut buf) else { continue };
                        let via = req.lines().find_map(|l| l.strip_prefix("Via: ")).unwrap_or_default().to_string();
                        seen.lock().unwrap().push(via);
                        let _ = s.write_all(sip_response(&req, "200 OK", &format!("sip:{addr};transport=tcp")).as_bytes());
                    }
                });
            }
        });
        b
    }

    fn die(&self) {
        self.alive.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_tcp_box_is_probed_over_its_connection_and_leaves_when_it_refuses_connections() {
    let _g = serial();
    let live = TcpBox::start();
    // Nothing listens here: every probe connection is refused.
    let dead = addr(free_tcp_port());
    let mut c = "[proxy]\nlisten = [\"{SIP}\"]\nshards = 1\n\n[control]\nadmin = \"{ADMIN}\"\nprobe_interval = \"200ms\"\nprobe_failure_threshold = 3\nprobe_success_threshold = 2\n\n".to_string();
    for b in [live.addr, dead] {
        c.push_str(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"sip:{b};transport=tcp\"\nweight = 1\n\n"));
    }
    c.push_str("[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\n");
    let proxy = Proxy::start(&c);
    assert!(wait_state(&proxy, dead, "probing", Duration::from_secs(5)), "{}", proxy.status());
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(state_of(&proxy, live.addr), "active", "{}", proxy.status());
    let seen = live.seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|v| v.starts_with("SIP/2.0/TCP ")), "the probe's Via names TCP: {seen:?}");
    assert_eq!(live.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "one probe connection, kept open");
    // The box goes away: its connection closes, reconnects are refused, and it leaves.
    live.die();
    assert!(wait_state(&proxy, live.addr, "probing", Duration::from_secs(5)), "{}", proxy.status());
}
