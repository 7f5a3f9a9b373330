//! End-to-end specs of SIGHUP reloads under traffic: a broken file keeps the running table and is
//! reported; a file that moves the listeners (UDP or `tcp:`) or changes a stream limit is refused the same way, so fsroute keeps answering
//! where it listens; a new destination takes calls without a restart; twenty reloads lose no call.

mod common;

use std::time::Duration;

use common::*;

fn forwarded(proxy: &Proxy) -> Vec<(String, u64)> {
    proxy.status()["dispatcher"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["uri"].as_str().unwrap().to_string(), d["forwarded"].as_u64().unwrap()))
        .collect()
}


#[test]
fn sighup_with_a_broken_file_keeps_calls_flowing_and_reports_the_error() {
    let _g = serial();
    let b1 = free_udp_port();
    let _uas = Sipp::uas(b1, None, &[]);
    let good = dispatcher_config(2, &[b1], "round-robin");
    let proxy = Proxy::start(&good);
    proxy.rewrite_config(&format!("{good}\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:70000\"\n"));
    proxy.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || proxy.status()["config"]["reload_failures"] == 1));
    let st = proxy.status();
    let err = st["config"]["last_error"].as_str().unwrap();
    assert!(err.contains("fsroute.toml:") && err.contains("dispatcher[1].destination"), "{err}");
    let run = Sipp::uac(proxy.sip, None, 50, 50, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    assert!(proxy.log().contains("reload rejected"));
}

#[test]
fn reload_that_changes_listen_is_refused_and_keeps_serving() {
    let _g = serial();
    let b1 = free_udp_port();
    let _uas = Sipp::uas(b1, None, &[]);
    let good = dispatcher_config(2, &[b1], "round-robin");
    let proxy = Proxy::start(&good);
    // Same file, another port, and a weight that would show whether anything of it was taken.
    let moved = format!("127.0.0.1:{}", free_udp_port());
    proxy.rewrite_config(&good.replace("{SIP}", &moved).replace("weight = 1", "weight = 7"));
    proxy.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || proxy.status()["config"]["reload_failures"] == 1), "{}", proxy.log());
    let st = proxy.status();
    let err = st["config"]["last_error"].as_str().unwrap();
    let expected = format!("proxy.listen: changes only on restart (running: [{}], new: [{moved}])", proxy.sip);
    assert!(err.contains("fsroute.toml: ") && err.contains(&expected), "{err}");
    assert_eq!(st["config"]["reloads"], 0);
    assert_eq!(st["dispatcher"][0]["destinations"][0]["weight"], 1, "the running table stays entirely");
    let m = http(proxy.admin, "GET", "/metrics", "").1;
    assert!(m.contains("fsroute_config_reload_failures_total 1"), "{m}");
    // fsroute still knows itself by the address it listens on, and still writes it in Via.
    assert_eq!(options_ping(proxy.sip).as_deref(), Some("SIP/2.0 200 OK"));
    let run = Sipp::uac(proxy.sip, None, 50, 50, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    let not_ours: u64 = proxy.status()["shards"].as_array().unwrap().iter().map(|s| s["dropped"]["not_our_via"].as_u64().unwrap()).sum();
    assert_eq!(not_ours, 0);
    assert!(proxy.log().contains("restart fsroute to apply it"));
}

#[test]
fn sighup_adding_a_destination_sends_it_calls_without_a_restart() {
    let _g = serial();
    let (b1, b2) = (free_udp_port(), free_udp_port());
    let _uas1 = Sipp::uas(b1, None, &[]);
    let _uas2 = Sipp::uas(b2, None, &[]);
    let proxy = Proxy::start(&dispatcher_config(2, &[b1], "round-robin"));
    proxy.rewrite_config(&dispatcher_config(2, &[b1, b2], "round-robin"));
    proxy.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || forwarded(&proxy).len() == 2));
    let run = Sipp::uac(proxy.sip, None, 100, 100, &[], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}", run.explain());
    let f = forwarded(&proxy);
    assert!(f.iter().all(|(_, n)| *n >= 40), "{f:?}");
    assert_eq!(proxy.status()["config"]["reloads"], 1);
}

#[test]
fn twenty_reloads_during_a_sipp_run_lose_no_call() {
    let _g = serial();
    let (b1, b2) = (free_udp_port(), free_udp_port());
    let _uas1 = Sipp::uas(b1, None, &[]);
    let _uas2 = Sipp::uas(b2, None, &[]);
    let config = dispatcher_config(2, &[b1, b2], "round-robin");
    let proxy = Proxy::start(&config);
    let target = proxy.sip;
    let caller = std::thread::spawn(move || Sipp::uac(target, None, 1500, 300, &[], Duration::from_secs(40)));
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        // Alternate weights so every reload really changes the table.
        let w = if i % 2 == 0 { 2 } else { 1 };
        proxy.rewrite_config(&config.replacen("weight = 1", &format!("weight = {w}"), 1));
        proxy.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(150));
    }
    let run = caller.join().unwrap();
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(1500));
    assert_eq!(proxy.status()["config"]["reloads"], 20);
}

#[test]
fn reload_that_changes_a_tcp_listener_or_a_stream_limit_is_refused_naming_the_field_and_tcp_calls_go_on() {
    let _g = serial();
    let b1 = free_udp_port();
    let _uas = Sipp::uas(b1, None, &[]);
    let tcp: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let good = dispatcher_config(2, &[b1], "round-robin").replace("listen = [\"{SIP}\"]", &format!("listen = [\"{{SIP}}\", \"tcp:{tcp}\"]"));
    let proxy = Proxy::start(&good);
    let moved = format!("127.0.0.1:{}", free_tcp_port());
    let changes = [
        (good.replace(&format!("tcp:{tcp}"), &format!("tcp:{moved}")), format!("proxy.listen (tcp:): changes only on restart (running: [{tcp}], new: [{moved}])")),
        (good.replace("record_route = true", "record_route = true\ntcp_idle_timeout = \"30s\""), "proxy.tcp_idle_timeout: changes only on restart".into()),
        (good.replace("record_route = true", "record_route = true\ntcp_max_message = 10000"), "proxy.tcp_max_message: changes only on restart".into()),
        (good.replace("record_route = true", "record_route = true\ntcp_connections_per_source = 5"), "proxy.tcp_connections_per_source: changes only on restart".into()),
    ];
    for (i, (file, expected)) in changes.iter().enumerate() {
        proxy.rewrite_config(file);
        proxy.signal(libc::SIGHUP);
        assert!(wait_for(Duration::from_secs(5), || proxy.status()["config"]["reload_failures"] == i as u64 + 1), "{}", proxy.log());
        let st = proxy.status();
        let err = st["config"]["last_error"].as_str().unwrap();
        assert!(err.contains(expected.as_str()), "{err}");
        assert_eq!(st["config"]["reloads"], 0);
    }
    // Still listening where it was, with its limits: calls over TCP complete.
    let run = Sipp::uac(tcp, None, 50, 50, &["-t", "t1"], Duration::from_secs(20));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert_eq!(run.counter("Successful call"), Some(50), "{}", run.explain());
}
