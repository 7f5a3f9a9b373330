//! End-to-end spec of the Grafana dashboard (`tuning/grafana/fsroute.json`): every metric any of
//! its PromQL expressions names (panel targets and template-variable queries) exists in the
//! `/metrics` of a real fsroute with a dispatcher set, a load_balancer group and an emulated
//! FreeSWITCH box behind it, so a renamed or removed metric breaks this test instead of a panel.
//!
//! The metric extractor is deliberately small: every fsroute metric is `fsroute_`-prefixed
//! (`Registry::with_prefix`), so a metric reference is an identifier that starts with `fsroute_`
//! outside label matchers (`{...}`), range selectors (`[...]`) and string literals. Identifiers of
//! other exporters are not checked, and an expression naming no fsroute metric at all is an error.
//!
//! The live names follow OpenMetrics: a family `# TYPE name counter` has samples `name_total`
//! (and `name_created`), a histogram `name_bucket`, `name_sum`, `name_count`, and so on; a query
//! has to use the sample name Prometheus stores, so `fsroute_config_reloads` (the family) is
//! wrong where `fsroute_config_reloads_total` is right.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use fsroute_fsemu::{Emulator, EmulatorConfig};
use serde_json::Value;

/// The metric names an expression uses (see the module comment for the rule).
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut braces, mut brackets) = (0, 0usize, 0usize);
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                // A string literal, with backslash escapes except in raw (backtick) strings.
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' && c != b'`' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' => (braces, i) = (braces + 1, i + 1),
            b'}' => (braces, i) = (braces.saturating_sub(1), i + 1),
            b'[' => (brackets, i) = (brackets + 1, i + 1),
            b']' => (brackets, i) = (brackets.saturating_sub(1), i + 1),
            b'0'..=b'9' | b'.' => {
                // A number such as 1e6 or 0x1f: not an identifier.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' || c == b'$' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':' || b[i] == b'$') {
                    i += 1;
                }
                let word = &expr[start..i];
                if braces == 0 && brackets == 0 && word.starts_with("fsroute_") {
                    out.push(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Every sample name a scrape can hold, from its `# TYPE` lines by the OpenMetrics suffix rules,
/// plus the names of the samples actually present.
fn live_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            let (Some(family), Some(kind)) = (it.next(), it.next()) else { continue };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Every PromQL expression in the dashboard, with where it is: panel targets (rows included) and
/// query-type template variables.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?} target {}", t["refId"]), e.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).or(v["definition"].as_str());
        if let Some(q) = q {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// What is wrong with the dashboard against `live`: one line per query naming no fsroute metric
/// and per metric the scrape does not have.
fn problems(queries: &[(String, String)], live: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (at, expr) in queries {
        let names = metric_names(expr);
        if names.is_empty() {
            out.push(format!("{at}: names no fsroute_ metric: {expr}"));
        }
        for n in names.iter().filter(|n| !live.contains(*n)) {
            let hint = if live.contains(&format!("{n}_total")) { format!(" (a counter: query {n}_total)") } else { String::new() };
            out.push(format!("{at}: {n} is not in /metrics{hint}: {expr}"));
        }
    }
    out
}

#[test]
fn the_extractor_finds_metric_names_and_skips_labels_ranges_strings_functions_and_numbers() {
    let e = r#"sum by (fs, reason) (rate(fsroute_shard_dropped_total{instance=~"$instance", reason!="fsroute_not_a_metric"}[$__rate_interval])) / 1e6 > on (fs) group_left fsroute_esl_connected"#;
    assert_eq!(metric_names(e), ["fsroute_shard_dropped_total", "fsroute_esl_connected"]);
    assert_eq!(metric_names("label_values(fsroute_esl_connected{instance=~\"$instance\"}, fs)"), ["fsroute_esl_connected"]);
    assert!(metric_names("up{job=\"fsroute_x\"}").is_empty());
}

#[test]
fn openmetrics_suffix_rules_give_counters_total_and_not_their_bare_family() {
    let scrape = "# TYPE fsroute_config_reloads counter\nfsroute_config_reloads_total 0\n# TYPE fsroute_x histogram\n# TYPE fsroute_table_generation gauge\nfsroute_table_generation 3\n# EOF\n";
    let live = live_names(scrape);
    assert!(live.contains("fsroute_config_reloads_total") && live.contains("fsroute_x_bucket") && live.contains("fsroute_table_generation"));
    let q = |e: &str| vec![("t".to_string(), e.to_string())];
    assert!(problems(&q("rate(fsroute_config_reloads_total[5m])"), &live).is_empty());
    let p = problems(&q("rate(fsroute_config_reloads[5m])"), &live);
    assert!(p.len() == 1 && p[0].contains("query fsroute_config_reloads_total"), "{p:?}");
    assert_eq!(problems(&q("sum(up)"), &live).len(), 1, "a query naming no fsroute metric is flagged");
}

#[test]
fn every_metric_the_grafana_dashboard_queries_exists_in_a_live_metrics_scrape() {
    let _g = serial();
    let fs = Emulator::start(EmulatorConfig {
        sip: "127.0.0.1:0".parse().unwrap(),
        esl: "127.0.0.1:0".parse().unwrap(),
        password: "ClueCon".into(),
        max_sessions: 100,
        heartbeat: Duration::from_millis(200),
        ..EmulatorConfig::default()
    })
    .expect("start emulator");
    // A dispatcher set with an fs:// weight, a load_balancer group with a static and a box-backed
    // resource: every family of /metrics has samples.
    let lb_port = free_udp_port();
    let config = format!(
        "[proxy]\nlisten = [\"{{SIP}}\"]\nshards = 2\n\n[control]\nadmin = \"{{ADMIN}}\"\n\n\
         [[dispatcher]]\nsetid = 1\ndestination = \"sip:{sip}\"\nweight = \"fs://:ClueCon@{esl}\"\n\n\
         [[load_balancer]]\ngroup_id = 1\ndst_uri = \"sip:127.0.0.1:{lb_port}\"\nresources = \"ch=fs://:ClueCon@{esl};conf=10\"\n\n\
         [[route]]\nmethod = \"INVITE\"\nto_load_balancer = 1\nresources = \"ch\"\n\n[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\n",
        sip = fs.sip_addr(),
        esl = fs.esl_addr(),
    );
    let proxy = Proxy::start(&config);
    let heard = wait_for(Duration::from_secs(10), || proxy.status()["freeswitch"][0]["heartbeat_age_ms"].is_u64());
    assert!(heard, "the box never reported: {}", proxy.log());

    let (code, scrape) = http(proxy.admin, "GET", "/metrics", "");
    assert_eq!(code, 200, "{scrape}");
    assert!(scrape.ends_with("# EOF\n"), "not OpenMetrics: {scrape}");
    let live = live_names(&scrape);
    assert!(live.contains("fsroute_fs_headroom_available") && live.contains("fsroute_lb_load"), "{scrape}");

    let path = repo_path("tuning/grafana/fsroute.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 30, "found only {} queries in {}", queries.len(), path.display());
    let wrong = problems(&queries, &live);
    assert!(wrong.is_empty(), "{} names metrics fsroute does not export:\n{}\n--- /metrics ---\n{scrape}", path.display(), wrong.join("\n"));

    // The dashboard covers what issue 13 asks of it.
    let used: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for needed in [
        "fsroute_fs_headroom_available",
        "fsroute_fs_binding_limit",
        "fsroute_destination_forwarded_total",
        "fsroute_fs_refusals_total",
        "fsroute_shard_refused_total",
        "fsroute_shard_failovers_total",
        "fsroute_esl_connected",
        "fsroute_esl_stale",
        "fsroute_shard_received_total",
        "fsroute_shard_dropped_total",
        "fsroute_config_reloads_total",
        "fsroute_config_reload_failures_total",
    ] {
        assert!(used.contains(needed), "the dashboard has no panel over {needed}");
    }
}
