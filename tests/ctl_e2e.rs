//! End-to-end specs of `fsroute ctl` against a real fsroute: the lists show what is configured,
//! a state set with it is what `/status` then says, a reload over the admin API applies or is
//! refused with the reason, a box's ESL numbers are shown, and a wrong token or an admin address
//! nobody listens on fail with a message saying so and a nonzero exit. Loopback only.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use fsroute_fsemu::{Emulator, EmulatorConfig};

const TOKEN: &str = "ctl-e2e-0123456789abcdef";

/// Two dispatcher destinations in set 1, one load_balancer destination in group 7, a token.
fn config(a: u16, b: u16, lb: u16) -> String {
    format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = 1\n\n[control]\nadmin = \"{{ADMIN}}\"\nadmin_token = \"{TOKEN}\"\n\n\
         [[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:{a}\"\nweight = 10\n\n\
         [[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:{b}\"\nweight = 20\n\n\
         [[load_balancer]]\ngroup_id = 7\ndst_uri = \"sip:127.0.0.1:{lb}\"\nresources = \"ch=10\"\n\n\
         [[route]]\nmethod = \"INVITE\"\nto_load_balancer = 7\nresources = \"ch\"\n\n[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\n"
    )
}

/// `fsroute ctl --admin http://ADMIN ARGS...` with `env` added, bounded in time.
fn ctl_env(admin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(fsroute_bin());
    cmd.args(["ctl", "--admin", admin, "--timeout", "3s"]).args(args).env_remove("FSROUTE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn fsroute ctl");
    child.wait_with_output().expect("fsroute ctl output")
}

fn ctl(proxy: &Proxy, args: &[&str]) -> Output {
    ctl_env(&format!("http://{}", proxy.admin), args, &[("FSROUTE_ADMIN_TOKEN", TOKEN)])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status(proxy: &Proxy) -> serde_json::Value {
    let (code, body) = http_with(proxy.admin, "GET", "/status", &[&format!("Authorization: Bearer {TOKEN}")], "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn dest_state(st: &serde_json::Value, uri: &str) -> String {
    st["dispatcher"][0]["destinations"].as_array().unwrap().iter().find(|d| d["uri"] == uri).map(|d| d["state"].as_str().unwrap().to_string()).unwrap()
}

#[test]
fn ds_list_and_lb_list_show_every_configured_destination_as_a_table_and_as_json() {
    let (a, b, lb) = (free_udp_port(), free_udp_port(), free_udp_port());
    let proxy = Proxy::start(&config(a, b, lb));

    let out = ctl(&proxy, &["ds-list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("SET") && lines[0].contains("STATE"), "{text}");
    for (port, weight) in [(a, "10"), (b, "20")] {
        let row = lines.iter().find(|l| l.contains(&format!("sip:127.0.0.1:{port}"))).unwrap_or_else(|| panic!("{port} missing:\n{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[..4], ["1", &format!("sip:127.0.0.1:{port}"), "active", weight], "{text}");
    }

    let out = ctl(&proxy, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sets: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(sets[0]["destinations"].as_array().unwrap().len(), 2, "{sets}");

    let out = ctl(&proxy, &["lb-list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("7 ") && l.contains(&format!("sip:127.0.0.1:{lb}")) && l.contains("yes") && l.contains("ch 0/10")), "{text}");
}

#[test]
fn a_state_set_with_ctl_is_what_status_says_and_an_unknown_destination_is_refused() {
    let (a, b, lb) = (free_udp_port(), free_udp_port(), free_udp_port());
    let proxy = Proxy::start(&config(a, b, lb));
    let uri = format!("sip:127.0.0.1:{a}");

    let out = ctl(&proxy, &["ds-set-state", "1", &uri, "inactive"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("set 1 {uri}: inactive\n"));
    assert_eq!(dest_state(&status(&proxy), &uri), "inactive");
    assert_eq!(dest_state(&status(&proxy), &format!("sip:127.0.0.1:{b}")), "active");
    let listed = stdout(&ctl(&proxy, &["ds-list"]));
    assert!(listed.lines().any(|l| l.contains(&uri) && l.contains("inactive")), "{listed}");

    let out = ctl(&proxy, &["set-state", "1", &uri, "active"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dest_state(&status(&proxy), &uri), "active");

    let lb_uri = format!("sip:127.0.0.1:{lb}");
    let out = ctl(&proxy, &["lb-status", "7", &lb_uri, "disable"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(status(&proxy)["load_balancer"][0]["destinations"][0]["enabled"], false);

    let out = ctl(&proxy, &["ds-set-state", "1", "sip:127.0.0.1:1", "inactive"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("404") && stderr(&out).contains("not found in set 1"), "{}", stderr(&out));
}

#[test]
fn reload_applies_a_good_file_and_reports_why_a_bad_one_was_refused() {
    let (a, b, lb) = (free_udp_port(), free_udp_port(), free_udp_port());
    let proxy = Proxy::start(&config(a, b, lb));
    let c = free_udp_port();
    let grown = config(a, b, lb).replace("[[load_balancer]]", &format!("[[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:{c}\"\nweight = 5\n\n[[load_balancer]]"));
    proxy.rewrite_config(&grown);

    let out = ctl(&proxy, &["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("reloaded ") && stdout(&out).contains("reload 1"), "{}", stdout(&out));
    let st = status(&proxy);
    assert_eq!(st["config"]["reloads"], 1);
    assert_eq!(st["dispatcher"][0]["destinations"].as_array().unwrap().len(), 3, "{st}");

    proxy.rewrite_config(&grown.replace("weight = 5", "weight = \"heavy\""));
    let out = ctl(&proxy, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("422") && err.contains("reload rejected") && err.contains("dispatcher[2].weight"), "{err}");
    let st = status(&proxy);
    assert_eq!((st["config"]["reloads"].as_u64(), st["config"]["reload_failures"].as_u64()), (Some(1), Some(1)));
    assert_eq!(st["dispatcher"][0]["destinations"].as_array().unwrap().len(), 3, "the running config stays");
}

#[test]
fn box_shows_one_freeswitch_boxes_esl_numbers() {
    let fs = Emulator::start(EmulatorConfig {
        sip: "127.0.0.1:0".parse().unwrap(),
        esl: "127.0.0.1:0".parse().unwrap(),
        password: "ClueCon".into(),
        max_sessions: 123,
        heartbeat: Duration::from_millis(200),
        ..EmulatorConfig::default()
    })
    .expect("start emulator");
    let config = format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = 1\n\n[control]\nadmin = \"{{ADMIN}}\"\n\n\
         [[dispatcher]]\nsetid = 1\ndestination = \"sip:{}\"\nweight = \"fs://:ClueCon@{}\"\n\n[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\n",
        fs.sip_addr(),
        fs.esl_addr()
    );
    let proxy = Proxy::start(&config);
    assert!(wait_for(Duration::from_secs(10), || proxy.status()["freeswitch"][0]["max_sessions"] == 123), "{}", proxy.log());
    let admin = format!("http://{}", proxy.admin);

    let out = ctl_env(&admin, &["box"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with(&format!("fs://{}", fs.esl_addr())) && l.contains("running") && l.contains("/123")), "{text}");

    let out = ctl_env(&admin, &["box", &fs.esl_addr().to_string()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for key in ["lifecycle:", "connected:", "max_sessions:", "idle_cpu:", "heartbeat_age_ms:", "headroom.available:", "reconnects:"] {
        assert!(text.lines().any(|l| l.starts_with(key)), "{key} missing:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("max_sessions:") && l.ends_with(" 123")), "{text}");
    assert!(!text.contains("ClueCon"), "the ESL password never shows: {text}");

    let out = ctl_env(&admin, &["box", "127.0.0.1:1", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no FreeSWITCH box 127.0.0.1:1"), "{}", stderr(&out));
}

#[test]
fn a_wrong_or_missing_token_fails_with_a_message_naming_the_token_and_exit_1() {
    let (a, b, lb) = (free_udp_port(), free_udp_port(), free_udp_port());
    let proxy = Proxy::start(&config(a, b, lb));
    let admin = format!("http://{}", proxy.admin);

    let out = ctl_env(&admin, &["ds-list", "--token", "not-the-token-0123456789"], &[]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(err.contains("401") && err.contains("is not the one in [control] admin_token"), "{err}");
    assert!(!err.contains("not-the-token"), "the token is not echoed: {err}");

    let out = ctl_env(&admin, &["ds-list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass it with --token or FSROUTE_ADMIN_TOKEN"), "{}", stderr(&out));

    // A refused state change changes nothing.
    let uri = format!("sip:127.0.0.1:{a}");
    let out = ctl_env(&admin, &["ds-set-state", "1", &uri, "inactive"], &[("FSROUTE_ADMIN_TOKEN", "wrong-token-0123456789ab")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(dest_state(&status(&proxy), &uri), "active");
}

#[test]
fn an_admin_address_nobody_listens_on_fails_with_a_clear_message_and_exit_2() {
    let port = free_tcp_port();
    let out = ctl_env(&format!("http://127.0.0.1:{port}"), &["ds-list"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot reach the admin API at http://127.0.0.1:{port}")) && err.contains("refused"), "{err}");

    let out = ctl_env("https://127.0.0.1:9060", &["ds-list"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("plain HTTP"), "{}", stderr(&out));
}
