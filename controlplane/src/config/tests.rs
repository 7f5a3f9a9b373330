//! Specs for the config file: what parses, which defaults apply, and that every rejection names
//! the file, the line and the field.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fsroute_dataplane::dispatch::{Algorithm, HashMode};
use fsroute_dataplane::conn::Transport;

use super::*;

const PATH: &str = "/etc/fsroute/fsroute.toml";

fn ok(text: &str) -> Config {
    parse(text, Path::new(PATH)).unwrap_or_else(|e| panic!("expected the config to parse:\n{e}"))
}

fn errs(text: &str) -> ConfigErrors {
    match parse(text, Path::new(PATH)) {
        Ok(_) => panic!("expected errors, the config parsed"),
        Err(e) => e,
    }
}

/// The error naming `field`, asserting there is exactly one.
fn only<'a>(errors: &'a ConfigErrors, field: &str) -> &'a ConfigError {
    let hits: Vec<&ConfigError> = errors.iter().filter(|e| e.field() == Some(field)).collect();
    assert_eq!(
        hits.len(),
        1,
        "one error for {field} expected in:\n{errors}"
    );
    hits[0]
}

fn line_of(errors: &ConfigErrors, field: &str) -> usize {
    only(errors, field)
        .line()
        .expect("errors inside the file have a line")
}

const LISTEN: &str = "[proxy]\nlisten = [\"127.0.0.1:5060\"]\n";

fn with_listen(rest: &str) -> String {
    format!("{LISTEN}{rest}")
}

#[test]
fn the_contract_example_without_fs_and_load_balancer_parses() {
    let c = ok(include_str!("testdata/contract.toml"));
    let p = &c.proxy;
    assert_eq!(p.listen, ["127.0.0.1:5060".parse::<SocketAddr>().unwrap()]);
    assert_eq!(p.advertise.to_string(), "127.0.0.1:5060");
    assert_eq!(p.shards, 2);
    assert!(p.record_route);
    assert_eq!(p.max_forwards, 70);
    assert_eq!(p.hash, HashMode::Rendezvous);
    assert_eq!(p.no_route_reply, 404);
    assert_eq!(p.transaction_memory, Duration::from_secs(190));
    assert_eq!(p.dialog_memory, Duration::from_secs(12 * 3600));
    assert_eq!(c.control.admin, Some("127.0.0.1:9060".parse().unwrap()));
    assert_eq!(
        c.control,
        ControlConfig {
            admin: c.control.admin,
            ..ControlConfig::default()
        }
    );
    assert_eq!(c.failover, FailoverConfig::default());
    assert_eq!(c.dispatcher.len(), 1);
    let d = &c.dispatcher[0];
    assert_eq!(
        (d.setid, d.uri.as_str(), d.weight.clone(), d.priority),
        (1, "sip:127.0.0.1:5071", Weight::Static(50), 0)
    );
    assert_eq!(d.addr, "127.0.0.1:5071".parse::<SocketAddr>().unwrap());
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].matcher.ruri_user_prefix.as_deref(), Some("+1"));
    assert_eq!(
        c.routes[0].target,
        RouteTo::Dispatcher {
            setid: 1,
            algorithm: Algorithm::HashCallId,
            failover: false
        }
    );
}

#[test]
fn the_tuning_example_parses() {
    let c = ok(include_str!("../../../tuning/fsroute.toml"));
    let uris: Vec<&str> = c.dispatcher.iter().map(|d| d.uri.as_str()).collect();
    assert_eq!(uris, ["sip:127.0.0.1:5071", "sip:127.0.0.1:5072"]);
    assert_eq!(
        c.routes[0].target,
        RouteTo::Dispatcher {
            setid: 1,
            algorithm: Algorithm::RoundRobin,
            failover: false
        }
    );
}

#[test]
fn defaults_apply_when_only_listen_is_given() {
    let c = ok("[proxy]\nlisten = [\"10.0.0.1:5070\"]\n");
    let p = &c.proxy;
    assert_eq!(
        p.advertise.to_string(),
        "10.0.0.1:5070",
        "advertise defaults to the first listener"
    );
    assert_eq!(
        p.shards,
        super::validate::default_shards(std::thread::available_parallelism().unwrap().get())
    );
    assert!(p.record_route);
    assert_eq!(p.max_forwards, 70);
    assert_eq!(p.hash, HashMode::Rendezvous);
    assert_eq!(p.no_route_reply, 404);
    assert_eq!(p.transaction_memory, Duration::from_secs(190));
    assert_eq!(p.dialog_memory, Duration::from_secs(43_200));
    assert!(p.aliases.is_empty());
    let k = &c.control;
    assert_eq!(k.admin, None, "admin is off unless configured");
    assert_eq!(k.heartbeat_timeout, Duration::from_secs(60));
    assert_eq!(
        (
            k.stale_weight,
            k.max_freeswitch_weight,
            k.initial_capacity,
            k.channels_per_call
        ),
        (0, 100, 1000, 1)
    );
    assert_eq!(k.probe_interval, Duration::ZERO);
    assert_eq!(
        (k.probe_failure_threshold, k.probe_success_threshold),
        (3, 1)
    );
    assert_eq!(c.failover.codes, [408, 500, 503]);
    assert_eq!(c.failover.no_answer_timeout, Duration::from_secs(2));
    assert_eq!(c.failover.max_attempts, 3);
    assert!(c.dispatcher.is_empty() && c.routes.is_empty());
}

#[test]
fn row_defaults_are_opensips_defaults() {
    let c = ok(&with_listen(
        "[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.5\"\n[[route]]\nto_dispatcher = 1\n",
    ));
    let d = &c.dispatcher[0];
    assert_eq!(
        d.addr,
        "10.0.0.5:5060".parse::<SocketAddr>().unwrap(),
        "port 5060 when absent"
    );
    assert_eq!(
        (d.weight.clone(), d.priority, d.state, d.fallback_weight),
        (Weight::Static(1), 0, DestState::Active, None)
    );
    assert_eq!(d.info.line, 3);
    assert_eq!(
        c.routes[0].target,
        RouteTo::Dispatcher {
            setid: 1,
            algorithm: Algorithm::HashCallId,
            failover: false
        }
    );
}

#[test]
fn opensips_spellings_are_accepted_numbers_names_and_string_columns() {
    let c = ok(&with_listen(
        r#"
[[dispatcher]]
id = 7
setid = 1
destination = "sip:[2001:db8::5]:5080"
weight = "10"
state = "probing"
probe_mode = 1
attrs = "gw=east"
description = "fs-east"
socket = "udp:127.0.0.1:5060"

[[dispatcher]]
setid = 1
destination = "SIP:10.0.0.6"
state = 1

[[route]]
to_dispatcher = 1
algorithm = 4

[[route]]
to_dispatcher = 1
algorithm = "8"

[[route]]
to_dispatcher = 1
algorithm = "Random"
"#,
    ));
    let d = &c.dispatcher[0];
    assert_eq!(d.addr, "[2001:db8::5]:5080".parse::<SocketAddr>().unwrap());
    assert_eq!(d.weight, Weight::Static(10));
    assert_eq!(d.state, DestState::Probing);
    assert_eq!(
        d.info,
        RowInfo {
            line: 4,
            id: Some(7),
            probe_mode: Some(1),
            attrs: Some("gw=east".into()),
            description: Some("fs-east".into()),
            socket: Some("127.0.0.1:5060".parse().unwrap()),
        }
    );
    assert_eq!(c.dispatcher[1].state, DestState::Inactive);
    let algs: Vec<Algorithm> = c
        .routes
        .iter()
        .map(|r| match r.target {
            RouteTo::Dispatcher { algorithm, .. } => algorithm,
            RouteTo::LoadBalancer { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(
        algs,
        [Algorithm::RoundRobin, Algorithm::First, Algorithm::Random]
    );
}

#[test]
fn route_match_keys_are_normalised() {
    let c = ok(&with_listen(
        r#"
[[dispatcher]]
setid = 1
destination = "sip:10.0.0.5"

[[route]]
ruri_domain = "PBX.Example.COM"
method = "INVITE"
source = "10.0.0.0/8"
to_dispatcher = 1
"#,
    ));
    let m = &c.routes[0].matcher;
    assert_eq!(m.ruri_domain.as_deref(), Some("pbx.example.com"));
    let src = m.source.unwrap();
    assert!(
        src.contains("10.200.0.1".parse().unwrap()) && !src.contains("11.0.0.1".parse().unwrap())
    );
}

#[test]
fn aliases_take_the_advertise_port_unless_given() {
    let c = ok("[proxy]\nlisten = [\"0.0.0.0:5080\"]\nadvertise = \"203.0.113.9\"\naliases = [\"LB.example.net\", \"sbc.example.net:5060\"]\n");
    assert_eq!(c.proxy.advertise.to_string(), "203.0.113.9:5080");
    let aliases: Vec<String> = c.proxy.aliases.iter().map(ToString::to_string).collect();
    assert_eq!(aliases, ["lb.example.net:5080", "sbc.example.net:5060"]);
}

#[test]
fn an_unknown_key_is_rejected_naming_file_line_and_table() {
    let e = errs(&with_listen(
        "\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.5\"\nweigth = 5\n",
    ));
    assert_eq!(e.len(), 1, "a serde error stops at the first");
    let err = &e.0[0];
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert_eq!(err.line(), Some(7));
    assert_eq!(err.field(), Some("dispatcher[0].weigth"));
    let text = err.to_string();
    assert!(
        text.starts_with(
            "/etc/fsroute/fsroute.toml:7:1: dispatcher[0].weigth: unknown field `weigth`"
        ),
        "{text}"
    );
}

#[test]
fn an_unknown_table_is_rejected() {
    let e = errs(&with_listen("[dispatchers]\nsetid = 1\n"));
    assert_eq!(e.0[0].line(), Some(3));
    assert!(e.to_string().contains("unknown field `dispatchers`"), "{e}");
}

#[test]
fn a_type_error_stops_at_the_first_and_names_its_line() {
    let e = errs(&with_listen(
        "[control]\nstale_weight = \"zero\"\nmax_freeswitch_weight = 1.5\n",
    ));
    assert_eq!(e.len(), 1);
    assert_eq!(e.0[0].line(), Some(4));
    assert_eq!(e.0[0].field(), Some("control.stale_weight"));
    assert!(
        e.to_string()
            .contains(":4:16: control.stale_weight: invalid type: string \"zero\", expected i64"),
        "{e}"
    );
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let e = errs("[proxy]\nlisten = [\"127.0.0.1:5060\"\nshards = 2\n");
    assert!(matches!(e.0[0], ConfigError::Syntax { .. }));
    assert_eq!(e.0[0].line(), Some(3));
}

#[test]
fn every_validation_error_is_reported_together_one_per_line_in_file_order() {
    let text = r#"[proxy]
listen = ["127.0.0.1:5060"]
max_forwards = 0
no_route_reply = 302

[[dispatcher]]
setid = 1
destination = "sip:fs1.example.net;lr"

[[dispatcher]]
setid = 1
destination = "sip:10.0.0.5:5060"
socket = "udp:10.9.9.9:5060"

[[dispatcher]]
setid = 1
destination = "sip:10.0.0.5"

[[route]]
to_dispatcher = 2

[[route]]
to_dispatcher = 1
algorithm = "least-loaded"
"#;
    let e = errs(text);
    let lines: Vec<String> = e.to_string().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 7, "{e}");
    assert_eq!(lines.len(), e.len());
    for l in &lines {
        assert!(l.starts_with("/etc/fsroute/fsroute.toml:"), "{l}");
    }
    assert_eq!(line_of(&e, "proxy.max_forwards"), 3);
    assert_eq!(line_of(&e, "proxy.no_route_reply"), 4);
    assert_eq!(line_of(&e, "dispatcher[0].destination"), 8);
    assert_eq!(line_of(&e, "dispatcher[1].socket"), 13);
    assert_eq!(line_of(&e, "dispatcher[2].destination"), 17);
    assert_eq!(line_of(&e, "route[0].to_dispatcher"), 20);
    assert_eq!(line_of(&e, "route[1].algorithm"), 24);
    let sorted: Vec<usize> = e.iter().map(|x| x.line().unwrap()).collect();
    assert!(
        sorted.windows(2).all(|w| w[0] <= w[1]),
        "file order: {sorted:?}"
    );

    assert_eq!(
        lines[0],
        "/etc/fsroute/fsroute.toml:3:16: proxy.max_forwards: 0: must be between 1 and 255"
    );
    assert!(
        lines[2].contains(
            "dispatcher[0].destination: \"sip:fs1.example.net;lr\": the only destination parameter is ;transport=udp, ;transport=tcp or ;transport=tls"
        ),
        "{}",
        lines[2]
    );
    assert!(matches!(
        only(&e, "dispatcher[2].destination"),
        ConfigError::Duplicate { first_line: 12, .. }
    ));
    assert!(lines[4].contains("(first at line 12)"), "{}", lines[4]);
    assert!(matches!(
        only(&e, "route[0].to_dispatcher"),
        ConfigError::UnknownReference { .. }
    ));
    assert!(
        lines[5].contains("no [[dispatcher]] row has setid 2"),
        "{}",
        lines[5]
    );
    assert!(
        lines[6].contains("unknown algorithm; one of hash-callid (0)"),
        "{}",
        lines[6]
    );
    assert!(matches!(
        only(&e, "dispatcher[1].socket"),
        ConfigError::UnknownReference { .. }
    ));
}

#[test]
fn proxy_is_required_and_so_is_a_listener() {
    let e = errs("[control]\nstale_weight = 1\n");
    assert!(matches!(only(&e, "proxy"), ConfigError::Missing { .. }));
    assert_eq!(line_of(&e, "proxy"), 1);

    let e = errs("# comment\n[proxy]\nshards = 2\n");
    assert!(matches!(
        only(&e, "proxy.listen"),
        ConfigError::Missing { .. }
    ));
    assert_eq!(line_of(&e, "proxy.listen"), 2);

    let e = errs("[proxy]\nlisten = []\n");
    assert_eq!(line_of(&e, "proxy.listen"), 2);
}

#[test]
fn bad_proxy_values_are_rejected_with_their_line() {
    let e = errs(
        r#"[proxy]
listen = ["127.0.0.1:5060", "localhost:5060", "127.0.0.1:5060", "127.0.0.1:0"]
advertise = "[::1"
aliases = ["bad host"]
shards = 0
hash = "maglev"
transaction_memory = "forever"
dialog_memory = 3600
x_auth_ip = "sometimes"
"#,
    );
    assert_eq!(line_of(&e, "proxy.x_auth_ip"), 9);
    assert!(only(&e, "proxy.x_auth_ip").to_string().contains("\"fs\", \"always\" or \"never\""));
    assert_eq!(line_of(&e, "proxy.listen[1]"), 2);
    assert!(matches!(
        only(&e, "proxy.listen[2]"),
        ConfigError::Duplicate { first_line: 2, .. }
    ));
    assert_eq!(line_of(&e, "proxy.listen[3]"), 2);
    assert_eq!(line_of(&e, "proxy.advertise"), 3);
    assert_eq!(line_of(&e, "proxy.aliases[0]"), 4);
    assert_eq!(line_of(&e, "proxy.shards"), 5);
    assert_eq!(line_of(&e, "proxy.hash"), 6);
    assert_eq!(line_of(&e, "proxy.transaction_memory"), 7);
    assert!(only(&e, "proxy.dialog_memory")
        .to_string()
        .contains("a duration is a string with a unit"));
    assert_eq!(line_of(&e, "proxy.dialog_memory"), 8);
}

#[test]
fn a_wildcard_listener_needs_an_advertise_address() {
    let e = errs("[proxy]\nlisten = [\"0.0.0.0:5060\"]\n");
    assert!(matches!(
        only(&e, "proxy.advertise"),
        ConfigError::Missing { .. }
    ));
    assert_eq!(line_of(&e, "proxy.advertise"), 2);
}

#[test]
fn bad_control_and_failover_values_are_rejected_with_their_line() {
    let e = errs(&with_listen(
        r#"[control]
admin = "localhost:http"
heartbeat_timeout = "0s"
channels_per_call = 0
probe_failure_threshold = 0

[failover]
codes = [408, 200, 408]
max_attempts = 0
no_answer_timeout = "2 fortnights"
"#,
    ));
    assert_eq!(line_of(&e, "control.admin"), 4);
    assert_eq!(line_of(&e, "control.heartbeat_timeout"), 5);
    assert_eq!(line_of(&e, "control.channels_per_call"), 6);
    assert_eq!(line_of(&e, "control.probe_failure_threshold"), 7);
    assert_eq!(line_of(&e, "failover.codes[1]"), 10);
    assert!(matches!(
        only(&e, "failover.codes[2]"),
        ConfigError::Duplicate { first_line: 10, .. }
    ));
    assert_eq!(line_of(&e, "failover.max_attempts"), 11);
    assert_eq!(line_of(&e, "failover.no_answer_timeout"), 12);
}

#[test]
fn an_admin_port_alone_means_loopback() {
    let c = ok(&with_listen("[control]\nadmin = 9060\n"));
    assert_eq!(c.control.admin, Some("127.0.0.1:9060".parse().unwrap()));
    let c = ok(&with_listen("[control]\nadmin = \":9061\"\n"));
    assert_eq!(c.control.admin, Some("127.0.0.1:9061".parse().unwrap()));
}

#[test]
fn bad_dispatcher_rows_are_rejected_with_their_line() {
    let e = errs(&with_listen(
        r#"
[[dispatcher]]
destination = "sip:10.0.0.1"

[[dispatcher]]
setid = 1

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5060"
weight = -1
state = 5
probe_mode = 3
fallback_weight = 4
id = 3

[[dispatcher]]
setid = 1
destination = "sip:user@10.0.0.9;transport=tcp"
weight = "heavy"
socket = "tcp:127.0.0.1:5060"
id = 3
"#,
    ));
    assert!(matches!(
        only(&e, "dispatcher[0].setid"),
        ConfigError::Missing { .. }
    ));
    assert_eq!(
        line_of(&e, "dispatcher[0].setid"),
        4,
        "a missing key is reported at its row"
    );
    assert_eq!(line_of(&e, "dispatcher[1].destination"), 7);
    assert!(only(&e, "dispatcher[2].destination")
        .to_string()
        .contains("fsroute's own listeners"));
    assert_eq!(line_of(&e, "dispatcher[2].destination"), 12);
    assert_eq!(line_of(&e, "dispatcher[2].weight"), 13);
    assert_eq!(line_of(&e, "dispatcher[2].state"), 14);
    assert_eq!(line_of(&e, "dispatcher[2].probe_mode"), 15);
    assert!(matches!(
        only(&e, "dispatcher[2].fallback_weight"),
        ConfigError::Conflict { .. }
    ));
    assert_eq!(line_of(&e, "dispatcher[2].fallback_weight"), 16);
    assert_eq!(line_of(&e, "dispatcher[3].destination"), 21);
    assert_eq!(line_of(&e, "dispatcher[3].weight"), 22);
    assert_eq!(line_of(&e, "dispatcher[3].socket"), 23);
    assert!(matches!(
        only(&e, "dispatcher[3].id"),
        ConfigError::Duplicate { first_line: 10, .. }
    ));
}

#[test]
fn bad_routes_are_rejected_with_their_line() {
    let e = errs(&with_listen(
        r#"
[[dispatcher]]
setid = 1
destination = "sip:10.0.0.1"

[[route]]
method = "invite"

[[route]]
source = "10.1.0.0/8"
to_dispatcher = 1
to_load_balancer = 1

[[route]]
to_dispatcher = 1
resources = "ch"
lb_flags = "r"
ruri_user_prefix = ""
"#,
    ));
    assert!(matches!(only(&e, "route[0]"), ConfigError::Conflict { .. }));
    assert_eq!(line_of(&e, "route[0]"), 8);
    assert_eq!(line_of(&e, "route[0].method"), 9);
    assert_eq!(line_of(&e, "route[1].source"), 12);
    assert!(only(&e, "route[1].source")
        .to_string()
        .contains("bits set beyond the /8 prefix"));
    assert!(
        e.iter().any(|x| matches!(x, ConfigError::Conflict { field, .. } if field == "route[1].to_load_balancer")),
        "{e}"
    );
    assert_eq!(line_of(&e, "route[2].resources"), 18);
    assert_eq!(line_of(&e, "route[2].lb_flags"), 19);
    assert_eq!(line_of(&e, "route[2].ruri_user_prefix"), 20);
}

#[test]
fn an_fs_weight_is_accepted_and_never_shows_its_password() {
    let c = ok(&with_listen(
        "\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.1\"\nweight = \"fs://:ClueCon@10.0.0.1:8021\"\nfallback_weight = 5\n",
    ));
    let Weight::Fs(fs) = &c.dispatcher[0].weight else { panic!("not an fs weight") };
    assert_eq!(fs.password.expose(), "ClueCon");
    assert_eq!(fs.to_string(), "fs://10.0.0.1:8021");
    assert_eq!(c.dispatcher[0].fallback_weight, Some(5));
    assert!(!format!("{c:?}").contains("ClueCon"));
    assert!(!c.summary().contains("ClueCon"));
}

#[test]
fn a_malformed_fs_weight_is_an_error_naming_line_and_field_without_the_password() {
    let e = errs(&with_listen(
        "\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.1\"\nweight = \"fs://:ClueCon@10.0.0.1:notaport\"\n",
    ));
    let err = only(&e, "dispatcher[0].weight");
    assert_eq!(err.line(), Some(7));
    assert!(!e.to_string().contains("ClueCon"), "{e}");
}

#[test]
fn a_load_balancer_route_fails_over_unless_it_says_failover_false() {
    let lb = "[[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:127.0.0.1:5081\"\nresources = \"ch=10\"\n";
    let failover_of = |c: &Config| match &c.routes[0].target {
        RouteTo::LoadBalancer { failover, .. } => *failover,
        other => panic!("{other:?}"),
    };
    assert!(failover_of(&ok(&with_listen(&format!("{lb}[[route]]\nto_load_balancer = 1\nresources = \"ch\"\n")))));
    assert!(!failover_of(&ok(&with_listen(&format!("{lb}[[route]]\nto_load_balancer = 1\nresources = \"ch\"\nfailover = false\n")))));
}

#[test]
fn a_load_balancer_route_asking_for_more_than_four_resources_is_refused_naming_the_field() {
    let e = errs(&with_listen(
        "[[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:127.0.0.1:5081\"\nresources = \"a=1;b=1;c=1;d=1;e=1\"\n[[route]]\nto_load_balancer = 1\nresources = \"a;b;c;d;e\"\n",
    ));
    assert!(e.iter().any(|x| x.to_string().contains("route[0].resources") && x.to_string().contains("at most 4")), "{e}");
}

#[test]
fn max_attempts_above_what_the_router_keeps_per_call_is_refused() {
    let e = errs(&with_listen("[failover]\nmax_attempts = 9\n"));
    assert!(e.to_string().contains("failover.max_attempts"), "{e}");
    assert_eq!(ok(&with_listen("[failover]\nmax_attempts = 8\n")).failover.max_attempts, 8);
}

#[test]
fn load_balancer_rows_keep_every_resource_and_routes_keep_their_flags() {
    let text = with_listen(
        r#"
[[load_balancer]]
group_id = 1
dst_uri = "sip:127.0.0.1:5081"
resources = "ch=fs://:ClueCon@127.0.0.1:8022;conf=10"

[[route]]
to_load_balancer = 1
resources = "ch"
lb_flags = "rs"
"#,
    );
    // OpenSIPS keeps only the fs resource of such a row; fsroute keeps them all.
    let c = parse(&text, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!format!("{c:?}").contains("ClueCon"));
    let row = &c.load_balancer[0];
    assert_eq!(row.resources.len(), 2);
    assert_eq!(
        row.resources[1],
        LbResource {
            name: "conf".into(),
            capacity: Capacity::Fixed(10)
        }
    );
    match &row.resources[0].capacity {
        Capacity::Fs(fs) => assert_eq!(
            (fs.endpoint.to_string(), fs.password.expose()),
            ("127.0.0.1:8022".into(), "ClueCon")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.routes[0].target,
        RouteTo::LoadBalancer {
            group_id: 1,
            resources: vec!["ch".into()],
            flags: LbFlags {
                relative: true,
                random_tie: true,
                allow_negative: false
            },
            failover: true,
        }
    );
}

#[test]
fn load_balancer_validation_runs_even_while_the_feature_is_refused() {
    let e = errs(&with_listen(
        r#"
[[load_balancer]]
group_id = 1
dst_uri = "sip:127.0.0.1:5081"
resources = "ch=lots"

[[route]]
to_load_balancer = 2
resources = "ch"
algorithm = "round-robin"
"#,
    ));
    assert_eq!(line_of(&e, "load_balancer[0].resources"), 7);
    assert!(matches!(
        only(&e, "route[0].algorithm"),
        ConfigError::Conflict { .. }
    ));
    assert!(e.iter().any(|x| matches!(x, ConfigError::UnknownReference { field, .. } if field == "route[0].to_load_balancer")));
}

#[test]
fn two_rows_may_not_give_one_esl_endpoint_different_passwords() {
    let e = parse(
        &with_listen(
            r#"
[[dispatcher]]
setid = 1
destination = "sip:10.0.0.1"
weight = "fs://:one@10.0.0.1"

[[dispatcher]]
setid = 2
destination = "sip:10.0.0.1"
weight = "fs://:two@10.0.0.1:8021"
"#,
        ),
        Path::new(PATH),
    )
    .unwrap_err();
    let err = only(&e, "dispatcher[1].weight");
    assert!(matches!(err, ConfigError::Conflict { .. }));
    assert_eq!(err.line(), Some(12));
    assert!(
        err.to_string().contains("other credentials than at line 7"),
        "{err}"
    );
    assert!(
        !e.to_string().contains("one@") && !e.to_string().contains("two@"),
        "{e}"
    );
}

const FS_CONFIG: &str = r#"[proxy]
listen = ["127.0.0.1:5060"]

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5071"
weight = "fs://freeswitch:S3cr3tPw@127.0.0.1:8021"
fallback_weight = 5

[[dispatcher]]
setid = 1
destination = "sip:127.0.0.1:5072"
weight = 10

[[route]]
to_dispatcher = 1
algorithm = "round-robin"
"#;

#[test]
fn passwords_never_appear_in_summary_debug_or_display() {
    let c =
        parse(FS_CONFIG, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
    let summary = c.summary();
    let debug = format!("{c:?}");
    let pretty = format!("{c:#?}");
    let Weight::Fs(fs) = &c.dispatcher[0].weight else {
        panic!("fs weight expected")
    };
    for shown in [
        &summary,
        &debug,
        &pretty,
        &fs.to_string(),
        &format!("{fs:?}"),
        &fs.password.to_string(),
    ] {
        assert!(!shown.contains("S3cr3tPw"), "password leaked:\n{shown}");
    }
    assert_eq!(fs.password.expose(), "S3cr3tPw");
    assert_eq!(fs.user.as_deref(), Some("freeswitch"));
    assert_eq!(fs.to_string(), "fs://127.0.0.1:8021");
    assert!(
        summary.contains("ESL endpoints: 1\n  fs://freeswitch:****@127.0.0.1:8021"),
        "{summary}"
    );
    assert_eq!(c.fs_endpoints().len(), 1);
}

#[test]
fn a_malformed_fs_url_is_reported_without_its_password() {
    let e = parse(
        &with_listen("[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.1\"\nweight = \"fs://:Hunter2@bad host\"\n"),
        Path::new(PATH),
    )
    .unwrap_err();
    assert_eq!(line_of(&e, "dispatcher[0].weight"), 6);
    assert!(!e.to_string().contains("Hunter2"), "{e}");
    // A password typed into a field that only takes numbers is masked in serde's message too.
    let e = errs(&with_listen(
        "[control]\nstale_weight = \"fs://:Hunter2@10.0.0.1\"\n",
    ));
    assert!(!e.to_string().contains("Hunter2"), "{e}");
}

#[test]
fn an_esl_password_with_a_line_break_is_refused_because_it_would_inject_an_esl_command() {
    for weight in ["fs://:Clue\\nCon@10.0.0.1", "fs://:ClueCon\\r\\n\\r\\napi shutdown@10.0.0.1", "fs://us\\ter:ClueCon@10.0.0.1"] {
        let e = errs(&with_listen(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.1\"\nweight = \"{weight}\"\n")));
        assert_eq!(line_of(&e, "dispatcher[0].weight"), 6, "{weight}: {e}");
        assert!(e.to_string().contains("control characters"), "{weight}: {e}");
        assert!(!e.to_string().contains("Con"), "the password leaked: {e}");
    }
}

#[test]
fn a_capacity_that_is_not_an_fs_url_but_holds_one_is_reported_without_its_password() {
    // Found by the `config` fuzz target: the reason quoted the capacity unredacted.
    let e = errs(&with_listen(
        "[[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:10.0.0.1\"\nresources = \"ch=xfs://u:Hunter2@10.0.0.1:8021\"\n",
    ));
    assert_eq!(line_of(&e, "load_balancer[0].resources"), 6);
    assert!(e.to_string().contains("neither a count nor fs://"), "{e}");
    assert!(!e.to_string().contains("Hunter2"), "{e}");
}

#[test]
fn redact_masks_every_fs_password_and_keeps_the_rest() {
    assert_eq!(
        redact("fs://:ClueCon@1.2.3.4:8021"),
        "fs://:****@1.2.3.4:8021"
    );
    assert_eq!(redact("x \"FS://u:p@w@h\" y"), "x \"FS://u:****@h\" y");
    assert_eq!(
        redact("ch=fs://:a@h1;conf=fs://:b@h2"),
        "ch=fs://:****@h1;conf=fs://:****@h2"
    );
    assert_eq!(redact("fs://nopassword"), "fs://nopassword");
    assert_eq!(redact("\"fs://:pass word@h\" x"), "\"fs://:****@h\" x", "a password with a space");
    assert_eq!(redact("no url here"), "no url here");
}

#[test]
fn the_summary_shows_listeners_sets_weights_and_routes() {
    let c = ok(include_str!("../../../tuning/fsroute.toml"));
    let s = c.summary();
    for want in [
        "listen      udp 127.0.0.1:5060",
        "advertise   127.0.0.1:5060",
        "udp->tcp    requests above 1300 bytes leave over tcp",
        "shards 2",
        "dispatcher sets: 1",
        "set 1: 2 destination(s)",
        "sip:127.0.0.1:5071",
        "weight 50",
        "routes: 2",
        "method INVITE -> dispatcher set 1, round-robin (4)",
        "admin       http://127.0.0.1:9060",
        "ESL endpoints: none",
    ] {
        assert!(s.contains(want), "summary lacks {want:?}:\n{s}");
    }
    assert!(s.lines().count() <= 24, "one screen:\n{s}");
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fsroute.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = [\"127.0.0.1:5060\"]\nmax_forwards = 300\n",
    )
    .unwrap();
    let e = load(&path).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3:16: proxy.max_forwards: 300", path.display())),
        "{e}"
    );

    std::fs::write(&path, include_str!("../../../tuning/fsroute.toml")).unwrap();
    assert_eq!(load(&path).unwrap().path, path);

    let missing = dir.path().join("nope.toml");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e.0[0], ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .contains("nope.toml: cannot read the config file"),
        "{e}"
    );
}


#[test]
fn admission_keys_default_to_the_headroom_model_and_parse_points_and_durations() {
    let c = ok(LISTEN);
    assert_eq!(c.control.capacity_model, CapacityModel::Headroom);
    assert_eq!((c.control.cpu_cost_prior_micro, c.control.cpu_margin_micro), (100_000, 2_000_000));
    assert_eq!((c.failover.exhausted_reply, c.failover.exhausted_retry_after), (503, Duration::from_secs(5)));
    let c = ok(&with_listen(
        "[control]\ncapacity_model = \"opensips\"\ncpu_cost_prior = 0.25\ncpu_cost_floor = 1\ncpu_margin = 0\nstatus_interval = \"0s\"\n\n[failover]\nexhausted_reply = 500\nexhausted_retry_after = \"0s\"\nrefused_cooldown = \"250ms\"\n",
    ));
    assert_eq!(c.control.capacity_model, CapacityModel::Opensips);
    assert_eq!((c.control.cpu_cost_prior_micro, c.control.cpu_cost_floor_micro, c.control.cpu_margin_micro), (250_000, 1_000_000, 0));
    assert_eq!(c.control.status_interval, Duration::ZERO);
    assert_eq!((c.failover.exhausted_reply, c.failover.refused_cooldown), (500, Duration::from_millis(250)));
}

#[test]
fn bad_admission_keys_are_rejected_naming_the_field_and_line() {
    let e = errs(&with_listen(
        "[control]\ncapacity_model = \"least-loaded\"\ncpu_cost_prior = 0\ncpu_margin = -1\n\n[failover]\nexhausted_reply = 486\n",
    ));
    assert_eq!(line_of(&e, "control.capacity_model"), 4);
    assert!(only(&e, "control.capacity_model").to_string().contains("\"headroom\" or \"opensips\""));
    assert_eq!(line_of(&e, "control.cpu_cost_prior"), 5);
    assert_eq!(line_of(&e, "control.cpu_margin"), 6);
    assert!(only(&e, "failover.exhausted_reply").to_string().contains("503"));
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn an_admin_token_is_kept_and_never_shown() {
    let c = ok(&with_listen(&format!("[control]\nadmin = \"127.0.0.1:9060\"\nadmin_token = \"{TOKEN}\"\n")));
    let token = c.control.admin_token.as_ref().expect("token parsed");
    assert_eq!(token.expose(), TOKEN);
    let summary = c.summary();
    assert!(summary.contains("admin       http://127.0.0.1:9060, bearer token ****"), "{summary}");
    for shown in [summary, format!("{c:?}"), format!("{c:#?}"), token.to_string()] {
        assert!(!shown.contains(TOKEN), "token leaked:\n{shown}");
    }
    assert_eq!(ok(&with_listen("[control]\nadmin = 9060\n")).control.admin_token, None);
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    for addr in ["0.0.0.0:9060", "10.0.0.1:9060", "[::]:9060"] {
        let e = errs(&with_listen(&format!("[control]\nstale_weight = 0\nadmin = \"{addr}\"\n")));
        assert!(matches!(only(&e, "control.admin_token"), ConfigError::Missing { .. }), "{e}");
        assert_eq!(line_of(&e, "control.admin_token"), 5, "points at the admin line: {e}");
        let text = e.to_string();
        assert!(text.contains(addr) && text.contains("set control.admin_token"), "{text}");
    }
    for addr in ["127.0.0.1:9060", "127.3.4.5:9060", "[::1]:9060"] {
        ok(&with_listen(&format!("[control]\nadmin = \"{addr}\"\n")));
    }
    let c = ok(&with_listen(&format!("[control]\nadmin = \"0.0.0.0:9060\"\nadmin_token = \"{TOKEN}\"\n")));
    assert_eq!(c.control.admin, Some("0.0.0.0:9060".parse().unwrap()));
}

#[test]
fn a_malformed_admin_token_is_rejected_without_echoing_it() {
    for bad in ["short-Tok3n", "has a space in it, and long enough", "quote\\\"inside0123456789", "tab\\tinside0123456789", "", "==================", &"x".repeat(1025)] {
        let e = errs(&with_listen(&format!("[control]\nadmin = \"127.0.0.1:9060\"\nadmin_token = \"{bad}\"\n")));
        assert!(matches!(only(&e, "control.admin_token"), ConfigError::Invalid { .. }), "{bad:?}: {e}");
        assert_eq!(line_of(&e, "control.admin_token"), 5);
        let text = e.to_string();
        assert!(text.contains("control.admin_token: ****:"), "{text}");
        if bad.len() >= 4 {
            assert!(!text.contains(bad), "token echoed: {text}");
        }
    }
    // A rejected token on a public listener reports the bad token, not a second "missing" error.
    let e = errs(&with_listen("[control]\nadmin = \"0.0.0.0:9060\"\nadmin_token = \"short\"\n"));
    assert!(matches!(only(&e, "control.admin_token"), ConfigError::Invalid { .. }), "{e}");
    let e = errs(&with_listen("[control]\nadmin_token = 12345678901234567890\n"));
    assert_eq!(line_of(&e, "control.admin_token"), 4);
    ok(&with_listen("[control]\nadmin = 9060\nadmin_token = \"a-b.c_d~e+f/0123456789==\"\n"));
}

#[test]
fn limits_and_max_call_duration_have_defaults_and_can_be_set() {
    let c = ok(LISTEN);
    assert_eq!(c.limits, fsroute_dataplane::table::MemoryLimits::default());
    assert_eq!(c.proxy.max_call_duration, Duration::from_secs(4 * 3600));
    assert!(c.proxy.branch_secret.is_none());
    let c = ok(&with_listen(
        "max_call_duration = \"90m\"\nbranch_secret = \"0123456789abcdef0123\"\n[limits]\ntransactions = 2000\ndialogs = 3000\nforks = 400\nfork_memory_mib = 16\n",
    ));
    assert_eq!(c.proxy.max_call_duration, Duration::from_secs(90 * 60));
    assert_eq!(c.proxy.branch_secret.as_ref().map(|s| s.expose().len()), Some(20));
    assert_eq!(
        c.limits,
        fsroute_dataplane::table::MemoryLimits { transactions: 2000, dialogs: 3000, forks: 400, fork_bytes: 16 << 20 }
    );
}

#[test]
fn limits_out_of_range_a_short_branch_secret_and_unknown_limit_keys_are_named() {
    let e = errs(&with_listen("branch_secret = \"short\"\n[limits]\ntransactions = 10\nfork_memory_mib = 0\n"));
    assert_eq!(line_of(&e, "limits.transactions"), 5);
    assert_eq!(line_of(&e, "limits.fork_memory_mib"), 6);
    let secret = only(&e, "proxy.branch_secret").to_string();
    assert!(secret.contains("at least 16") && !secret.contains("short"), "{secret}");
    let e = errs(&with_listen("[limits]\nsessions = 10\n"));
    assert!(e.to_string().contains("sessions"), "{e}");
}

#[test]
fn a_destination_may_name_a_host_srv_without_a_port_a_aaaa_with_one() {
    let c = ok(&with_listen(
        r#"
[[dispatcher]]
setid = 1
destination = "sip:FS-Pool.Example.NET"

[[dispatcher]]
setid = 1
destination = "sip:fs1.example.net:5080"

[[dispatcher]]
setid = 1
destination = "sip:10.0.0.5"

[[load_balancer]]
group_id = 1
dst_uri = "sip:fs-pool.example.net"
resources = "ch=10"
"#,
    ));
    let names: Vec<Option<DnsTarget>> = c.dispatcher.iter().map(|r| r.name.clone()).collect();
    assert_eq!(
        names,
        [
            Some(DnsTarget { host: "fs-pool.example.net".into(), port: None }),
            Some(DnsTarget { host: "fs1.example.net".into(), port: Some(5080) }),
            None,
        ]
    );
    assert_eq!(c.dispatcher[2].addr, "10.0.0.5:5060".parse::<SocketAddr>().unwrap());
    assert!(c.dispatcher[0].addr.ip().is_unspecified(), "a named row has no address to send to before expansion");
    // One query per distinct name, the load_balancer row sharing the dispatcher's.
    assert_eq!(c.dns_names().len(), 2);
    assert_eq!(c.dns_names()[0].query(), "SRV _sip._udp.fs-pool.example.net, else A/AAAA fs-pool.example.net (port 5060)");
    assert_eq!(c.dns_names()[1].query(), "A/AAAA fs1.example.net (port 5080)");
    assert_eq!(c.dns, DnsConfig::default());
    let summary = c.summary();
    assert!(summary.contains("2 name(s) via /etc/resolv.conf") && summary.contains("sip:fs1.example.net:5080"), "{summary}");
}

#[test]
fn the_same_name_twice_in_a_set_is_a_duplicate_and_a_bad_name_is_named() {
    let e = errs(&with_listen(
        "[[dispatcher]]\nsetid = 1\ndestination = \"sip:fs.example.net\"\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:FS.example.net\"\n\n[[dispatcher]]\nsetid = 2\ndestination = \"sip:-bad-.example.net\"\n",
    ));
    assert!(matches!(only(&e, "dispatcher[1].destination"), ConfigError::Duplicate { first_line: 5, .. }), "{e}");
    assert!(only(&e, "dispatcher[2].destination").to_string().contains("neither an IP address nor a host name"), "{e}");
    // SRV _sip._tcp is not asked yet: a name over TCP is refused rather than resolved for UDP.
    let e = errs(&with_listen("[[dispatcher]]\nsetid = 1\ndestination = \"sip:fs.example.net;transport=tcp\"\n"));
    assert!(only(&e, "dispatcher[0].destination").to_string().contains("not resolved yet (SRV _sip._tcp"), "{e}");
    let c = ok(&with_listen("[[dispatcher]]\nsetid = 1\ndestination = \"sip:fs.example.net;transport=udp\"\n"));
    assert_eq!(c.dns_names(), [DnsTarget { host: "fs.example.net".into(), port: None }]);
    assert!(!is_stream_destination(&crate::dns::expanded_uri(&c.dispatcher[0].uri, "10.0.0.1:5060".parse().unwrap())));
    assert!(is_stream_destination("sip:10.0.0.1;transport=tcp#10.0.0.1:5060"), "an expanded row keeps its row's transport");
}

#[test]
fn dns_settings_parse_and_their_errors_name_the_field() {
    let c = ok(&with_listen(
        "[dns]\nservers = [\"127.0.0.1:5353\", \"::1\"]\nmin_ttl = \"1s\"\nmax_ttl = \"10m\"\ngrace = \"0s\"\ntimeout = \"500ms\"\n",
    ));
    assert_eq!(
        c.dns,
        DnsConfig {
            servers: vec!["127.0.0.1:5353".parse().unwrap(), "[::1]:53".parse().unwrap()],
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(600),
            grace: Duration::ZERO,
            timeout: Duration::from_millis(500),
        }
    );
    let e = errs(&with_listen(
        "[dns]\nservers = [\"ns1.example.net\"]\nmin_ttl = \"1m\"\nmax_ttl = \"10s\"\ntimeout = \"0s\"\n",
    ));
    assert_eq!(line_of(&e, "dns.servers[0]"), 4);
    assert!(only(&e, "dns.max_ttl").to_string().contains("shorter than min_ttl"), "{e}");
    assert_eq!(line_of(&e, "dns.timeout"), 7);
    let e = errs(&with_listen("[dns]\nretries = 3\n"));
    assert!(e.to_string().contains("retries"), "unknown keys are refused: {e}");
}

#[test]
fn listeners_name_their_transport_and_a_bare_address_stays_udp() {
    let c = ok("[proxy]\nlisten = [\"127.0.0.1:5060\", \"udp:127.0.0.1:5062\", \"tcp:127.0.0.1:5060\", \"TCP:[::1]:5060\"]\n");
    let p = &c.proxy;
    let addrs = |v: &[&str]| v.iter().map(|a| a.parse::<SocketAddr>().unwrap()).collect::<Vec<_>>();
    assert_eq!(p.listen, addrs(&["127.0.0.1:5060", "127.0.0.1:5062"]));
    assert_eq!(p.listen_tcp, addrs(&["127.0.0.1:5060", "[::1]:5060"]), "one port may serve UDP and TCP");
    assert_eq!(p.stream, fsroute_dataplane::shard::StreamSettings::default());
    assert!(c.summary().contains("listen      udp 127.0.0.1:5060, udp 127.0.0.1:5062, tcp 127.0.0.1:5060, tcp [::1]:5060"), "{}", c.summary());
    assert!(c.summary().contains("tcp         idle timeout"), "{}", c.summary());
}

#[test]
fn a_tls_listener_needs_a_tls_table_and_tcp_only_configs_are_refused_naming_the_field() {
    let e = errs("[proxy]\nlisten = [\"127.0.0.1:5060\", \"tls:127.0.0.1:5061\", \"tcp:127.0.0.1:5060\", \"tcp:127.0.0.1:5060\"]\n");
    assert!(only(&e, "tls").to_string().contains("tls:127.0.0.1:5061 listener needs a [tls] table"), "{e}");
    assert!(matches!(only(&e, "proxy.listen[3]"), ConfigError::Duplicate { first_line: 2, .. }), "{e}");
    let e = errs("[proxy]\nlisten = [\"tcp:127.0.0.1:5060\"]\n");
    assert!(only(&e, "proxy.listen").to_string().contains("at least one UDP listener"), "{e}");
    let e = errs("[proxy]\nlisten = [\"127.0.0.1:5060\", \"tcp:127.0.0.1:5061\", \"tls:127.0.0.1:5061\"]\n");
    assert!(matches!(only(&e, "proxy.listen[2]"), ConfigError::Duplicate { .. }), "tcp: and tls: on one port: {e}");
}

#[test]
fn tcp_limits_are_read_and_ranged() {
    let c = ok(&with_listen("tcp_idle_timeout = \"30s\"\ntcp_max_message = 8192\ntcp_connections_per_source = 4\n"));
    let st = c.proxy.stream;
    assert_eq!((st.idle_timeout, st.max_message, st.connections_per_source), (Duration::from_secs(30), 8192, 4));
    let e = errs(&with_listen("tcp_max_message = 100\ntcp_connections_per_source = 0\ntcp_idle_timeout = \"0s\"\n"));
    assert_eq!(line_of(&e, "proxy.tcp_max_message"), 3);
    assert_eq!(line_of(&e, "proxy.tcp_connections_per_source"), 4);
    assert_eq!(line_of(&e, "proxy.tcp_idle_timeout"), 5);
}

#[test]
fn a_destination_may_ask_for_tcp_or_tls_and_nothing_else() {
    let c = ok(&with_listen("[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.1:5060;transport=TCP\"\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.2;transport=udp\"\n"));
    assert!(is_stream_destination(&c.dispatcher[0].uri));
    assert!(!is_stream_destination(&c.dispatcher[1].uri));
    assert_eq!(c.dispatcher[1].addr, "10.0.0.2:5060".parse::<SocketAddr>().unwrap());
    for (uri, why) in [
        ("sips:10.0.0.1;transport=udp", "does not run over UDP"),
        ("sip:10.0.0.1;transport=sctp", "not supported"),
        ("sip:10.0.0.1;lr", "transport=udp, ;transport=tcp or ;transport=tls"),
        ("sip:10.0.0.1;transport=tcp;lr", "transport=udp, ;transport=tcp or ;transport=tls"),
    ] {
        let e = errs(&with_listen(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"{uri}\"\n")));
        assert!(only(&e, "dispatcher[0].destination").to_string().contains(why), "{uri}: {e}");
    }
}

#[test]
fn a_tcp_destination_may_be_probed_but_not_aimed_at_our_own_tcp_listener() {
    let e = errs("[proxy]\nlisten = [\"127.0.0.1:5060\", \"tcp:127.0.0.1:5070\"]\n[control]\nprobe_interval = \"5s\"\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:127.0.0.1:5070;transport=tcp\"\n");
    assert!(only(&e, "dispatcher.destination").to_string().contains("own TCP/TLS listeners"), "{e}");
    assert_eq!(e.0.len(), 1, "probing a TCP destination is no error: {e}");
}

#[test]
fn the_default_is_one_shard_on_two_cpus_or_fewer_and_one_per_cpu_above() {
    use super::validate::default_shards;
    assert_eq!([1, 2, 3, 4, 16].map(default_shards), [1, 1, 3, 4, 16]);
}

#[test]
fn capture_is_off_without_a_collector_and_takes_its_defaults_with_one() {
    assert_eq!(ok(LISTEN).capture, None);
    assert_eq!(ok(&with_listen("[capture]\ncapture_id = 2001\n")).capture, None, "no hep: off");
    let c = ok(&with_listen("[capture]\nhep = \"127.0.0.1:9060\"\n")).capture.unwrap();
    assert_eq!((c.collector, c.capture_id, c.queue), ("127.0.0.1:9060".parse().unwrap(), 1, 1024));
    let c = ok(&with_listen("[capture]\nhep = \"[::1]:9061\"\ncapture_id = 4294967295\nqueue = 16\n")).capture.unwrap();
    assert_eq!((c.collector, c.capture_id, c.queue), ("[::1]:9061".parse().unwrap(), u32::MAX, 16));
    assert!(ok(&with_listen("[capture]\nhep = \"127.0.0.1:9060\"\ncapture_id = 2001\n")).summary().contains("capture     HEP3 to udp 127.0.0.1:9060 as capture id 2001"));
    assert!(ok(LISTEN).summary().contains("capture     off"));
}

#[test]
fn a_bad_capture_key_names_its_field_and_line() {
    let e = errs(&with_listen("[capture]\nhep = \"collector.example.net:9060\"\n"));
    assert_eq!(line_of(&e, "capture.hep"), 4);
    assert!(only(&e, "capture.hep").to_string().contains("no DNS"), "{e}");
    let e = errs(&with_listen("[capture]\nhep = \"0.0.0.0:9060\"\n"));
    assert_eq!(line_of(&e, "capture.hep"), 4);
    let e = errs(&with_listen("[capture]\nhep = \"127.0.0.1:0\"\n"));
    assert_eq!(line_of(&e, "capture.hep"), 4);
    let e = errs(&with_listen("[capture]\nhep = \"127.0.0.1:5060\"\n"));
    assert!(only(&e, "capture.hep").to_string().contains("own SIP listeners"), "{e}");
    let e = errs(&with_listen("[capture]\nhep = \"127.0.0.1:9060\"\ncapture_id = -1\nqueue = 8\n"));
    assert_eq!((line_of(&e, "capture.capture_id"), line_of(&e, "capture.queue")), (5, 6));
    let e = errs(&with_listen("[capture]\nhep = \"127.0.0.1:9060\"\nqueues = 8\n"));
    assert_eq!(e.len(), 1, "an unknown key: {e}");
}

/// Certificate files made now for the `[tls]` specs: a CA, a server certificate for 127.0.0.1 that
/// it signed, its key, and a second key that matches nothing.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new() -> TlsFiles {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "fsroute test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "sbc.example.net");
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("cert.pem", cert.pem()),
            ("key.pem", key.serialize_pem()),
            ("other-key.pem", other.serialize_pem()),
            ("garbage.pem", "not a certificate\n".to_string()),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        TlsFiles { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A config with a UDP and a TLS listener and `[tls]` holding `keys`.
    fn config(&self, keys: &str) -> String {
        format!("[proxy]\nlisten = [\"127.0.0.1:5060\", \"tls:127.0.0.1:5061\"]\n[tls]\n{keys}")
    }

    fn pair(&self) -> String {
        format!("certificate = \"{}\"\nprivate_key = \"{}\"\n", self.path("cert.pem"), self.path("key.pem"))
    }
}

#[test]
fn a_tls_listener_with_a_certificate_and_its_key_is_read_at_validation() {
    let f = TlsFiles::new();
    let c = ok(&f.config(&f.pair()));
    assert_eq!(c.proxy.listen_tls, ["127.0.0.1:5061".parse::<SocketAddr>().unwrap()]);
    let t = c.tls.as_ref().unwrap();
    assert!(t.contexts.server.is_some(), "the server config is built now, not by the shards");
    assert!(t.contexts.client.is_none(), "no ca: no TLS destination can be verified");
    let info = t.certificate_info.as_ref().unwrap();
    assert_eq!(info.subject_cn.as_deref(), Some("sbc.example.net"));
    assert_eq!(info.not_after.as_deref(), Some("2031-05-17 00:00:00 UTC"));
    let summary = c.summary();
    assert!(summary.contains("listen      udp 127.0.0.1:5060, tls 127.0.0.1:5061"), "{summary}");
    assert!(summary.contains("(CN=sbc.example.net, until 2031-05-17 00:00:00 UTC)"), "{summary}");
    assert!(summary.contains("no client certificates; no tls destinations (no ca)"), "{summary}");
}

#[test]
fn a_missing_unreadable_or_mismatched_certificate_names_the_field_and_the_file() {
    let f = TlsFiles::new();
    let e = errs(&f.config(&format!("certificate = \"{}\"\n", f.path("cert.pem"))));
    assert!(matches!(only(&e, "tls.private_key"), ConfigError::Missing { .. }), "{e}");
    let e = errs(&f.config(""));
    assert!(matches!(only(&e, "tls.certificate"), ConfigError::Missing { .. }), "{e}");
    let e = errs(&f.config(&format!("certificate = \"{}\"\nprivate_key = \"{}\"\n", f.path("nowhere.pem"), f.path("key.pem"))));
    assert!(only(&e, "tls.certificate").to_string().contains("nowhere.pem"), "{e}");
    assert_eq!(line_of(&e, "tls.certificate"), 4);
    let e = errs(&f.config(&format!("certificate = \"{}\"\nprivate_key = \"{}\"\n", f.path("garbage.pem"), f.path("key.pem"))));
    assert!(only(&e, "tls.certificate").to_string().contains("no PEM CERTIFICATE"), "{e}");
    let e = errs(&f.config(&format!("certificate = \"{}\"\nprivate_key = \"{}\"\n", f.path("cert.pem"), f.path("cert.pem"))));
    assert!(only(&e, "tls.private_key").to_string().contains("no usable PEM private key"), "{e}");
    let e = errs(&f.config(&format!("certificate = \"{}\"\nprivate_key = \"{}\"\n", f.path("cert.pem"), f.path("other-key.pem"))));
    let why = only(&e, "tls.certificate").to_string();
    assert!(why.contains("cert.pem") && why.contains("does not match tls.private_key"), "{e}");
    let e = errs(&f.config(&format!("{}shape = 1\n", f.pair())));
    assert!(e.to_string().contains("shape"), "unknown keys are refused: {e}");
}

#[test]
fn client_certificates_are_verified_against_client_ca_as_verify_client_says() {
    let f = TlsFiles::new();
    let c = ok(&f.config(&format!("{}client_ca = \"{}\"\n", f.pair(), f.path("ca.pem"))));
    let t = c.tls.as_ref().unwrap();
    assert_eq!((t.verify_client, t.client_ca.is_some()), (VerifyClient::Require, true), "require by default");
    assert!(c.summary().contains("client certificates require by"), "{}", c.summary());
    let c = ok(&f.config(&format!("{}client_ca = \"{}\"\nverify_client = \"optional\"\n", f.pair(), f.path("ca.pem"))));
    assert_eq!(c.tls.unwrap().verify_client, VerifyClient::Optional);
    let e = errs(&f.config(&format!("{}client_ca = \"{}\"\nverify_client = \"sometimes\"\n", f.pair(), f.path("ca.pem"))));
    assert_eq!(line_of(&e, "tls.verify_client"), 7);
    let e = errs(&f.config(&format!("{}verify_client = \"require\"\n", f.pair())));
    assert!(only(&e, "tls.verify_client").to_string().contains("needs tls.client_ca"), "{e}");
    let e = errs(&f.config(&format!("{}client_ca = \"{}\"\n", f.pair(), f.path("garbage.pem"))));
    assert!(only(&e, "tls.client_ca").to_string().contains("garbage.pem"), "{e}");
}

#[test]
fn a_ca_builds_the_config_tls_destinations_are_verified_with() {
    let f = TlsFiles::new();
    let c = ok(&with_listen(&format!("[tls]\nca = \"{}\"\n", f.path("ca.pem"))));
    let t = c.tls.unwrap();
    assert!(t.contexts.client.is_some() && t.contexts.server.is_none());
    let e = errs(&with_listen(&format!("[tls]\nca = \"{}\"\n", f.path("garbage.pem"))));
    assert!(only(&e, "tls.ca").to_string().contains("garbage.pem"), "{e}");
}

#[test]
fn a_tls_destination_is_sips_or_transport_tls_on_5061_and_needs_a_ca_to_verify_it() {
    let f = TlsFiles::new();
    let rows = "[[dispatcher]]\nsetid = 1\ndestination = \"sips:10.0.0.1\"\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sip:10.0.0.2;transport=TLS\"\n\n[[dispatcher]]\nsetid = 1\ndestination = \"sips:10.0.0.3:5071;transport=tcp\"\n";
    let c = ok(&with_listen(&format!("[tls]\nca = \"{}\"\n{rows}", f.path("ca.pem"))));
    let got: Vec<_> = c.dispatcher.iter().map(|d| (d.addr, destination_transport(&d.uri))).collect();
    assert_eq!(
        got,
        [
            ("10.0.0.1:5061".parse().unwrap(), Transport::Tls),
            ("10.0.0.2:5061".parse().unwrap(), Transport::Tls),
            ("10.0.0.3:5071".parse().unwrap(), Transport::Tls),
        ]
    );
    let e = errs(&with_listen(rows));
    assert_eq!(e.0.len(), 3, "{e}");
    assert!(e.to_string().contains("tls.ca") && e.to_string().contains("sips:10.0.0.1"), "{e}");
}

#[test]
fn udp_max_message_is_1300_by_default_0_turns_the_switch_off_and_it_is_ranged() {
    assert_eq!(ok(&with_listen("")).proxy.udp_max_message, 1300);
    assert_eq!(ok(&with_listen("udp_max_message = 0\n")).proxy.udp_max_message, 0);
    assert_eq!(ok(&with_listen("udp_max_message = 1400\n")).proxy.udp_max_message, 1400);
    for bad in ["100", "70000", "-1"] {
        let e = errs(&with_listen(&format!("udp_max_message = {bad}\n")));
        assert_eq!(line_of(&e, "proxy.udp_max_message"), 3, "{bad}: {e}");
    }
}
