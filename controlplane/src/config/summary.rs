//! `fsroute check`'s one-screen summary of a validated config: what fsroute will listen on, where
//! each set sends calls and by which rule. ESL endpoints appear as `fs://host:port` with the
//! password replaced by `****`.

use std::fmt::Write;
use std::time::Duration;

use super::{Capacity, Config, RouteConfig, RouteTo, Weight, XAuthMode};

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub(crate) fn render(c: &Config) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_summary(&mut s, c);
    s
}

fn write_summary(s: &mut String, c: &Config) -> std::fmt::Result {
    let p = &c.proxy;
    writeln!(s, "config {}", c.path.display())?;
    let udp = p.listen.iter().map(|a| format!("udp {a}"));
    let listen: Vec<String> =
        udp.chain(p.listen_tcp.iter().map(|a| format!("tcp {a}"))).chain(p.listen_tls.iter().map(|a| format!("tls {a}"))).collect();
    writeln!(s, "listen      {}", listen.join(", "))?;
    if let Some(t) = &c.tls {
        let mut parts = Vec::new();
        if let Some(cert) = &t.certificate {
            let info = t.certificate_info.as_ref();
            let cn = info.and_then(|i| i.subject_cn.as_deref()).map_or(String::new(), |cn| format!(" (CN={cn}"));
            let until = info.and_then(|i| i.not_after.as_deref()).map_or(String::new(), |u| format!("{}until {u}", if cn.is_empty() { " (" } else { ", " }));
            let close = if cn.is_empty() && until.is_empty() { "" } else { ")" };
            parts.push(format!("certificate {}{cn}{until}{close}", cert.display()));
        }
        match &t.client_ca {
            Some(ca) => parts.push(format!("client certificates {} by {}", t.verify_client.name(), ca.display())),
            None => parts.push("no client certificates".to_string()),
        }
        match &t.ca {
            Some(ca) => parts.push(format!("destinations verified by {}", ca.display())),
            None => parts.push("no tls destinations (no ca)".to_string()),
        }
        writeln!(s, "tls         {}", parts.join("; "))?;
    }
    if !(p.listen_tcp.is_empty() && p.listen_tls.is_empty()) {
        let st = &p.stream;
        writeln!(
            s,
            "tcp         idle timeout {}, max message {} bytes, {} connections per source",
            dur(st.idle_timeout),
            st.max_message,
            st.connections_per_source
        )?;
    }
    writeln!(s, "advertise   {}", p.advertise)?;
    if !p.aliases.is_empty() {
        let aliases: Vec<String> = p.aliases.iter().map(ToString::to_string).collect();
        writeln!(s, "aliases     {}", aliases.join(", "))?;
    }
    writeln!(
        s,
        "proxy       shards {} (ingress {}), record_route {}, max_forwards {}, hash {}, no route -> {}",
        p.shards,
        p.ingress.name(),
        if p.record_route { "on" } else { "off" },
        p.max_forwards,
        p.hash.name(),
        p.no_route_reply
    )?;
    writeln!(
        s,
        "memory      transactions {}, dialogs {}, max call {}; branch MAC key {}",
        dur(p.transaction_memory),
        dur(p.dialog_memory),
        dur(p.max_call_duration),
        if p.branch_secret.is_some() { "from branch_secret" } else { "random per process" }
    )?;
    writeln!(s, "x-auth-ip   {}", match p.x_auth_ip {
        XAuthMode::Fs => "added towards fs:// boxes, removed from callers",
        XAuthMode::Always => "added to every request, removed from callers",
        XAuthMode::Never => "neither added nor removed",
    })?;
    match p.udp_max_message {
        0 => writeln!(s, "udp->tcp    off: requests of any size leave over udp")?,
        n => writeln!(s, "udp->tcp    requests above {n} bytes leave over tcp (udp where the box takes no tcp)")?,
    }
    let l = &c.limits;
    writeln!(
        s,
        "limits      per shard: {} transactions, {} dialogs, {} forks, {} MiB of failover INVITEs",
        l.transactions,
        l.dialogs,
        l.forks,
        l.fork_bytes >> 20
    )?;
    let k = &c.control;
    writeln!(
        s,
        "admin       {}",
        match (k.admin, &k.admin_token) {
            (None, _) => "off".to_string(),
            (Some(a), None) => format!("http://{a}, no token"),
            (Some(a), Some(t)) => format!("http://{a}, bearer token {t}"),
        }
    )?;
    let probing = if k.probe_interval.is_zero() {
        "off".to_string()
    } else {
        format!(
            "every {} (down after {}, up after {})",
            dur(k.probe_interval),
            k.probe_failure_threshold,
            k.probe_success_threshold
        )
    };
    writeln!(s, "probing     {probing}")?;
    match &c.capture {
        None => writeln!(s, "capture     off")?,
        Some(h) => writeln!(
            s,
            "capture     HEP3 to udp {} as capture id {}, {} packets queued per shard at most",
            h.collector, h.capture_id, h.queue
        )?,
    }
    writeln!(
        s,
        "capacity    {} model; {} channel(s) per call; CPU cost prior {} points, margin {}; status every {}",
        k.capacity_model.name(),
        k.channels_per_call,
        k.cpu_cost_prior_micro as f64 / 1e6,
        f64::from(k.cpu_margin_micro) / 1e6,
        dur(k.status_interval)
    )?;
    let f = &c.failover;
    let codes: Vec<String> = f.codes.iter().map(ToString::to_string).collect();
    writeln!(
        s,
        "failover    on {}; no answer {}; at most {} attempts; exhausted: {}",
        if codes.is_empty() {
            "no codes".to_string()
        } else {
            codes.join(",")
        },
        dur(f.no_answer_timeout),
        f.max_attempts,
        if f.exhausted_reply == 500 { "500".to_string() } else { format!("503, Retry-After {}", dur(f.exhausted_retry_after)) }
    )?;

    let names = c.dns_names();
    if !names.is_empty() {
        let d = &c.dns;
        let servers = if d.servers.is_empty() {
            "/etc/resolv.conf".to_string()
        } else {
            d.servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        writeln!(
            s,
            "dns         {} name(s) via {servers}; refresh at the TTL within {}..{}, grace {}, timeout {}",
            names.len(),
            dur(d.min_ttl),
            dur(d.max_ttl),
            dur(d.grace),
            dur(d.timeout)
        )?;
        for n in &names {
            writeln!(s, "  {:<30} {}", n.uri(), n.query())?;
        }
        writeln!(s, "  (resolved by `fsroute run`, not by check: `fsroute check --resolve` tries them now)")?;
    }
    let setids = c.setids();
    writeln!(s, "dispatcher sets: {}", setids.len())?;
    for setid in setids {
        let rows: Vec<_> = c.dispatcher.iter().filter(|r| r.setid == setid).collect();
        writeln!(s, "  set {setid}: {} destination(s)", rows.len())?;
        for r in rows {
            let weight = match &r.weight {
                Weight::Static(w) => w.to_string(),
                Weight::Fs(fs) => format!("{fs} (password ****)"),
            };
            writeln!(
                s,
                "    {:<28} weight {weight}  priority {}  {}",
                r.uri, r.priority, r.state
            )?;
        }
    }
    let groups = c.group_ids();
    if !groups.is_empty() {
        writeln!(s, "load_balancer groups: {}", groups.len())?;
        for gid in groups {
            writeln!(s, "  group {gid}:")?;
            for r in c.load_balancer.iter().filter(|r| r.group_id == gid) {
                let res: Vec<String> = r
                    .resources
                    .iter()
                    .map(|res| match &res.capacity {
                        Capacity::Fixed(n) => format!("{}={n}", res.name),
                        Capacity::Fs(fs) => format!("{}={fs} (password ****)", res.name),
                    })
                    .collect();
                writeln!(s, "    {:<28} {}  {}", r.uri, res.join(";"), r.state)?;
            }
        }
    }
    writeln!(s, "routes: {} (first match wins)", c.routes.len())?;
    for (i, r) in c.routes.iter().enumerate() {
        writeln!(s, "  #{i} (line {}): {}", r.line, describe_route(r))?;
    }
    let fs = c.fs_endpoints();
    if fs.is_empty() {
        writeln!(s, "ESL endpoints: none (static weights only)")?;
    } else {
        writeln!(s, "ESL endpoints: {}", fs.len())?;
        for e in fs {
            let user = e.user.as_deref().unwrap_or("");
            writeln!(s, "  fs://{user}:****@{}", e.endpoint)?;
        }
    }
    Ok(())
}

fn describe_route(r: &RouteConfig) -> String {
    let m = &r.matcher;
    let mut conds = Vec::new();
    if let Some(v) = &m.method {
        conds.push(format!("method {v}"));
    }
    if let Some(v) = &m.ruri_user_prefix {
        conds.push(format!("user prefix {v:?}"));
    }
    if let Some(v) = &m.ruri_domain {
        conds.push(format!("domain {v}"));
    }
    if let Some(v) = &m.source {
        conds.push(format!("source {}/{}", v.addr, v.prefix));
    }
    let when = if conds.is_empty() {
        "any request".to_string()
    } else {
        conds.join(", ")
    };
    let to = match &r.target {
        RouteTo::Dispatcher {
            setid,
            algorithm,
            failover,
        } => format!(
            "dispatcher set {setid}, {} ({}){}",
            algorithm.name(),
            algorithm.number(),
            if *failover { ", failover" } else { "" }
        ),
        RouteTo::LoadBalancer {
            group_id,
            resources,
            failover,
            ..
        } => format!(
            "load_balancer group {group_id}, uses {}{}",
            resources.join(";"),
            if *failover { ", failover" } else { "" }
        ),
    };
    format!("{when} -> {to}")
}
