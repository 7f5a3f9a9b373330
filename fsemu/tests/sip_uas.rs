//! The emulator's SIP UAS driven by a plain UDP socket acting as the caller (and, where
//! routing matters, as a record-routing proxy), plus SIPp as an independent UAC.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{emulator, recv, Raw, Uac};
use fsroute_esl::{Event, HeartbeatStats};

#[test]
fn invite_gets_100_180_then_200_with_sdp_and_ack_then_bye_gets_200() {
    let emu = emulator(|_| {});
    let uac = Uac::new(&emu);
    uac.send(&uac.invite("c1", ""));
    let codes: Vec<u16> = (0..3).map(|_| uac.recv().status().unwrap()).collect();
    assert_eq!(codes, [100, 180, 200]);
    // Re-read the 200 by retransmitting the INVITE: the UAS answers with its last response.
    uac.send(&uac.invite("c1", ""));
    let ok = uac.recv();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.header("Via"),
        Some("SIP/2.0/UDP ".to_owned() + &uac.addr().to_string() + ";branch=z9hG4bK-c1;rport")
            .as_deref()
    );
    assert_eq!(ok.from_tag(), Some("ft-c1"));
    assert_eq!(ok.cseq(), Some((1, "INVITE".into())));
    assert_eq!(ok.call_id(), "c1");
    assert_eq!(ok.header("Content-Type"), Some("application/sdp"));
    assert!(ok.body.starts_with(b"v=0\r\no=FreeSWITCH "));
    assert_eq!(
        ok.contact_uri(),
        Some(format!("sip:fsemu@{}", emu.sip_addr()))
    );
    let tag = ok.to_tag().expect("To-tag on 200").to_owned();
    assert_eq!(emu.active_calls(), 1);
    assert_eq!(emu.calls_answered(), 1);

    uac.send(&uac.in_dialog("ACK", "c1", &tag, 1));
    assert!(
        uac.recv_within(Duration::from_millis(700)).is_none(),
        "no 200 retransmission after ACK"
    );
    uac.send(&uac.in_dialog("BYE", "c1", &tag, 2));
    let bye_ok = uac.recv();
    assert_eq!(
        (bye_ok.status(), bye_ok.cseq()),
        (Some(200), Some((2, "BYE".into())))
    );
    assert_eq!(emu.active_calls(), 0);
    assert_eq!(emu.peak_calls(), 1);
}

#[test]
fn unacknowledged_200_is_retransmitted_with_t1_doubling() {
    let emu = emulator(|_| {});
    let uac = Uac::new(&emu);
    uac.call("rtx");
    let t0 = Instant::now();
    let first = uac
        .recv_within(Duration::from_millis(900))
        .expect("first retransmission after T1");
    let t1 = t0.elapsed();
    let second = uac
        .recv_within(Duration::from_millis(1400))
        .expect("second after 2·T1");
    let t2 = t0.elapsed();
    assert_eq!((first.status(), second.status()), (Some(200), Some(200)));
    assert!(
        t1 >= Duration::from_millis(350) && t1 <= Duration::from_millis(700),
        "{t1:?}"
    );
    assert!(
        t2 - t1 >= Duration::from_millis(850),
        "interval doubled: {:?}",
        t2 - t1
    );
}

#[test]
fn full_box_answers_invite_and_options_with_503() {
    let emu = emulator(|c| c.max_sessions = 2);
    let uac = Uac::new(&emu);
    uac.call("a");
    uac.call("b");
    uac.send(&uac.invite("c", ""));
    let r = uac.recv();
    assert_eq!(r.status(), Some(503));
    assert_eq!(emu.calls_rejected(), 1);
    assert_eq!(emu.active_calls(), 2);
    uac.send(&format!(
        "OPTIONS sip:{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-o\r\nFrom: <sip:p@{me}>;tag=o\r\n\
         To: <sip:{uas}>\r\nCall-ID: opt\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        uas = uac.uas,
        me = uac.addr()
    ));
    assert_eq!(uac.recv().status(), Some(503), "OPTIONS while full");
}

#[test]
fn options_on_an_idle_box_gets_200() {
    let emu = emulator(|_| {});
    let uac = Uac::new(&emu);
    uac.send(&format!(
        "OPTIONS sip:{uas} SIP/2.0\r\nv: SIP/2.0/UDP {me};branch=z9hG4bK-o\r\nf: <sip:p@{me}>;tag=o\r\n\
         t: <sip:{uas}>\r\ni: opt\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n",
        uas = uac.uas,
        me = uac.addr()
    ));
    let r = uac.recv();
    assert_eq!(r.status(), Some(200));
    assert!(r.header("Allow").unwrap().contains("INVITE"));
}

#[test]
fn cancel_before_answer_gets_200_and_the_invite_gets_487() {
    let emu = emulator(|c| c.answer_delay = Duration::from_secs(3));
    let uac = Uac::new(&emu);
    uac.send(&uac.invite("cx", ""));
    assert_eq!(uac.recv().status(), Some(100));
    assert_eq!(emu.active_calls(), 1);
    uac.send(&format!(
        "CANCEL sip:100@{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-cx;rport\r\n\
         From: <sip:caller@{me}>;tag=ft-cx\r\nTo: <sip:100@{uas}>\r\nCall-ID: cx\r\nCSeq: 1 CANCEL\r\n\
         Content-Length: 0\r\n\r\n",
        uas = uac.uas,
        me = uac.addr()
    ));
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = uac.recv();
        got.push((m.status().unwrap(), m.cseq().unwrap().1));
    }
    got.sort();
    assert_eq!(
        got,
        [(200, "CANCEL".to_owned()), (487, "INVITE".to_owned())]
    );
    assert_eq!(emu.active_calls(), 0);
    assert_eq!(emu.calls_cancelled(), 1);
    assert_eq!(emu.calls_answered(), 0);
}

#[test]
fn hold_expiry_sends_bye_through_the_record_route_set() {
    let emu = emulator(|c| c.hold = Duration::from_millis(300));
    let uac = Uac::new(&emu);
    let proxy = UdpSocket::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let rr = format!("Record-Route: <sip:{proxy_addr};lr;ftag=x>\r\n");
    uac.send(&uac.invite("rr", &rr));
    let ok = loop {
        let m = uac.recv();
        if m.status() == Some(200) {
            break m;
        }
    };
    assert_eq!(
        ok.record_routes(),
        [format!("<sip:{proxy_addr};lr;ftag=x>")],
        "2xx echoes Record-Route"
    );
    let tag = ok.to_tag().unwrap().to_owned();
    uac.send(&uac.in_dialog("ACK", "rr", &tag, 1));
    let bye =
        recv(&proxy, Duration::from_secs(2)).expect("BYE goes to the first Route's host:port");
    assert_eq!(bye.method(), Some("BYE"));
    assert!(
        matches!(&bye.start, fsroute_fsemu::sip::StartLine::Request { uri, .. } if *uri == format!("sip:caller@{}", uac.addr()))
    );
    assert_eq!(
        bye.header("Route"),
        Some(format!("<sip:{proxy_addr};lr;ftag=x>").as_str())
    );
    assert_eq!(
        bye.from_tag(),
        Some(tag.as_str()),
        "From carries the UAS's tag"
    );
    assert_eq!(bye.to_tag(), Some("ft-rr"));
    assert_eq!(
        emu.active_calls(),
        0,
        "the session ends when the box hangs up"
    );
    // Answer the BYE; the UAS stops retransmitting.
    let mut answer = String::from("SIP/2.0 200 OK\r\n");
    for (n, v) in &bye.headers {
        if matches!(n.as_str(), "Via" | "From" | "To" | "Call-ID" | "CSeq") {
            answer.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    answer.push_str("Content-Length: 0\r\n\r\n");
    proxy.send_to(answer.as_bytes(), emu.sip_addr()).unwrap();
    assert!(
        recv(&proxy, Duration::from_millis(800)).is_none(),
        "no BYE retransmission after 200"
    );
}

#[test]
fn without_record_route_the_bye_goes_to_the_contact() {
    let emu = emulator(|c| c.hold = Duration::from_millis(200));
    let uac = Uac::new(&emu);
    let ok = uac.call("direct");
    uac.send(&uac.in_dialog("ACK", "direct", ok.to_tag().unwrap(), 1));
    let bye = uac.recv();
    assert_eq!(bye.method(), Some("BYE"));
    assert!(bye.header("Route").is_none());
}

#[test]
fn session_count_in_the_next_heartbeat_matches_active_calls() {
    let emu = emulator(|c| {
        c.channels_per_call = 2;
        c.max_sessions = 20;
        c.background_cpu = 0;
        c.cpu_per_session = 3.0;
        c.idle_cpu_smoothing = 1;
        c.heartbeat = Duration::from_millis(100);
    });
    let uac = Uac::new(&emu);
    for id in ["h1", "h2", "h3"] {
        uac.call(id);
    }
    let mut esl = Raw::login(&emu);
    esl.command("event plain HEARTBEAT");
    let f = esl.frame();
    let s = HeartbeatStats::from_event(&Event::parse_plain(&f.body).unwrap()).unwrap();
    assert_eq!(s.session_count, 6, "3 calls × 2 channels");
    assert_eq!(s.max_sessions, 20);
    // Idle-CPU moves on the box's 1 s sample: wait for the first one taken with 6 sessions.
    let deadline = Instant::now() + Duration::from_secs(4);
    let idle = loop {
        let f = esl.frame();
        let s = HeartbeatStats::from_event(&Event::parse_plain(&f.body).unwrap()).unwrap();
        if s.idle_cpu_micro != 100_000_000 || Instant::now() > deadline {
            break s.idle_cpu_micro;
        }
    };
    assert_eq!(idle, emu.model().idle_sample(6) * 1_000_000);
    assert_eq!(idle, 82_000_000, "100 − 3 × 6 sessions");
    assert_eq!(esl.command("api show calls count").body, b"\n3 total.\n");
}

#[test]
fn sipp_uac_completes_every_call_against_the_emulator() {
    if std::process::Command::new("sipp")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: sipp is not on PATH; install SIPp to run this check");
        return;
    }
    let emu = emulator(|c| c.hold = Duration::from_secs(30));
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new("sipp")
        .args([
            "-sn",
            "uac",
            &emu.sip_addr().to_string(),
            "-m",
            "20",
            "-r",
            "10",
            "-d",
            "100",
        ])
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
        ])
        .args(["-trace_err", "-error_file", "/dev/stderr"])
        .output()
        .expect("sipp runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sipp exit {:?}\n{stdout}\n{stderr}",
        out.status.code()
    );
    assert_eq!(emu.calls_answered(), 20);
    assert_eq!(
        emu.active_calls(),
        0,
        "every call ended with the caller's BYE"
    );
}
