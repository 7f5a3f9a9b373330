//! `fsroute ctl`: the operator's client for a running fsroute's admin API (docs/CONTRACT.md §3),
//! so listing sets and groups, changing a destination's state, reloading and reading one box's
//! ESL numbers need neither curl nor jq. This module owns the command line of `ctl` (clap), the
//! HTTP exchange (hyper's HTTP/1 client, the crate the admin listener already uses, on a
//! one-thread tokio runtime, every exchange bounded by `--timeout`), the translation of what went
//! wrong into a message an operator can act on plus an exit code, and the rendering of `/status`
//! as tables in the spirit of OpenSIPS's `ds_list` and `lb_list`. Rendering is pure and tested
//! without sockets; `tests/ctl_e2e.rs` drives the whole thing against a real fsroute.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Where the admin listener is when `--admin` is not given: the address `tuning/fsroute.toml`,
/// the README and the Debian package's default config use.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9060";

/// Exit codes of `fsroute ctl` (docs/CONTRACT.md).
pub const EXIT_OK: i32 = 0;
/// fsroute answered and said no: a wrong or missing token, an unknown destination, a rejected reload.
pub const EXIT_REFUSED: i32 = 1;
/// No usable answer: a bad `--admin`, nothing listening, a timeout, something that is not fsroute.
pub const EXIT_UNREACHABLE: i32 = 2;

/// The largest answer read (a `/status` of a very large farm is a few MiB).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// `fsroute ctl [--admin URL] [--token T] [--json] COMMAND`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The admin listener: `http://HOST:PORT`, `HOST:PORT` or a bare port (loopback), as
    /// `[control] admin` in the config.
    #[arg(long, global = true, default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// The bearer token (`[control] admin_token`). Prefer the environment variable: a flag shows
    /// in `ps`.
    #[arg(long, global = true, env = "FSROUTE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print fsroute's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long one exchange with the admin API may take.
    #[arg(long, global = true, default_value = "5s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CtlCommand {
    /// Dispatcher sets and their destinations (OpenSIPS `ds_list`).
    #[command(name = "ds-list", visible_alias = "list")]
    DsList,
    /// A dispatcher destination's state (OpenSIPS `ds_set_state`): active, inactive or probing.
    /// Sticky until changed again.
    #[command(name = "ds-set-state", visible_alias = "set-state")]
    DsSetState {
        setid: i32,
        /// The row's `destination`, e.g. `sip:10.0.0.11:5060`.
        destination: String,
        #[arg(value_parser = ["active", "inactive", "probing"])]
        state: String,
    },
    /// load_balancer groups, destinations and resources (OpenSIPS `lb_list`).
    #[command(name = "lb-list")]
    LbList,
    /// Enable or disable a load_balancer destination (OpenSIPS `lb_status`); disabling is sticky.
    #[command(name = "lb-status")]
    LbStatus {
        group_id: i32,
        /// The row's `dst_uri`.
        dst_uri: String,
        #[arg(value_parser = ["enable", "disable"])]
        status: String,
    },
    /// Reload the config file now, as SIGHUP does; a rejected file is reported and keeps the
    /// running config.
    Reload,
    /// FreeSWITCH boxes and their ESL numbers; with a box (`fs://HOST:PORT` or `HOST:PORT`), all
    /// of that one's numbers.
    #[command(name = "box")]
    Box { url: Option<String> },
}

/// What went wrong, worded for the operator at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("--admin {given:?}: {reason}")]
    BadAddress { given: String, reason: String },
    #[error("cannot reach the admin API at {url}: {source} (is fsroute running, with [control] admin on that address?)")]
    Unreachable {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin API at {url} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("the admin API at {url} answered {what}: {detail}")]
    Protocol { url: String, what: &'static str, detail: String },
    #[error("the admin API at {url} refused the request (401): {hint}")]
    Unauthorized { url: String, hint: &'static str },
    #[error("{method} {path}: fsroute answered {status}: {message}")]
    Refused { method: &'static str, path: &'static str, status: u16, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("cannot start the HTTP client: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Unauthorized { .. } | CtlError::Refused { .. } | CtlError::NotFound(_) => EXIT_REFUSED,
            _ => EXIT_UNREACHABLE,
        }
    }
}

/// `fsroute ctl`: runs one command, prints its answer on stdout and any error on stderr; the exit code.
pub fn main(args: CtlArgs) -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match AdminClient::new(&args.admin, args.token.clone(), args.timeout).and_then(|c| run(&c, &args.command, args.json, &mut out)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("fsroute ctl: {e}");
            e.exit_code()
        }
    }
}

/// Runs `command` against `client`, writing the answer to `out`.
pub fn run(client: &AdminClient, command: &CtlCommand, json_out: bool, out: &mut dyn Write) -> Result<(), CtlError> {
    let text = match command {
        CtlCommand::DsList => {
            let st = client.get("/status")?;
            if json_out { pretty(&st["dispatcher"]) } else { render_ds_list(&st) }
        }
        CtlCommand::LbList => {
            let st = client.get("/status")?;
            if json_out { pretty(&st["load_balancer"]) } else { render_lb_list(&st) }
        }
        CtlCommand::Box { url } => {
            let st = client.get("/status")?;
            match url {
                None if json_out => pretty(&st["freeswitch"]),
                None => render_boxes(&st),
                Some(u) => {
                    let b = find_box(&st, u)?;
                    if json_out { pretty(b) } else { render_box(b) }
                }
            }
        }
        CtlCommand::DsSetState { setid, destination, state } => {
            let body = json!({ "setid": setid, "destination": destination, "state": state });
            let answer = client.post("/dispatcher/state", &body)?;
            if json_out { pretty(&answer) } else { format!("set {setid} {destination}: {state}\n") }
        }
        CtlCommand::LbStatus { group_id, dst_uri, status } => {
            let enabled = status == "enable";
            let body = json!({ "group_id": group_id, "dst_uri": dst_uri, "enabled": enabled });
            let answer = client.post("/load_balancer/status", &body)?;
            let word = if enabled { "enabled" } else { "disabled" };
            if json_out { pretty(&answer) } else { format!("group {group_id} {dst_uri}: {word}\n") }
        }
        CtlCommand::Reload => {
            let answer = client.post("/reload", &json!({}))?;
            if json_out {
                pretty(&answer)
            } else {
                format!("reloaded {} (reload {}, table generation {})\n", text(&answer["path"]), text(&answer["reloads"]), text(&answer["generation"]))
            }
        }
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `fsroute ctl ds-list | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(CtlError::Output),
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// One admin listener, as `--admin` and `--token` name it.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `http://host:port`, for messages.
    url: String,
    /// What the Host header says.
    authority: String,
    addrs: Vec<SocketAddr>,
    token: Option<String>,
    timeout: Duration,
}

impl AdminClient {
    /// Reads `--admin` (`http://HOST:PORT`, `HOST:PORT`, or a port meaning loopback, as the
    /// config's `control.admin` does) and resolves it once.
    pub fn new(admin: &str, token: Option<String>, timeout: Duration) -> Result<AdminClient, CtlError> {
        let bad = |reason: &str| CtlError::BadAddress { given: admin.to_string(), reason: reason.to_string() };
        let rest = if let Some(r) = admin.strip_prefix("http://") {
            r
        } else if admin.starts_with("https://") {
            return Err(bad("the admin listener speaks plain HTTP; across hosts, reach it through a tunnel and name the tunnel's end"));
        } else if admin.contains("://") {
            return Err(bad("only http:// is understood"));
        } else {
            admin
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(bad("give the listener only (http://HOST:PORT), no path"));
        }
        let authority = match authority.trim_start_matches(':').parse::<u16>() {
            Ok(port) => format!("127.0.0.1:{port}"),
            Err(_) => authority.to_string(),
        };
        let addrs: Vec<SocketAddr> = authority
            .to_socket_addrs()
            .map_err(|e| bad(&format!("not HOST:PORT, or the host does not resolve ({e})")))?
            .collect();
        if addrs.is_empty() {
            return Err(bad("the host resolves to no address"));
        }
        let token = token.filter(|t| !t.is_empty());
        Ok(AdminClient { url: format!("http://{authority}"), authority, addrs, token, timeout })
    }

    pub fn get(&self, path: &'static str) -> Result<Value, CtlError> {
        self.call(Method::GET, path, None)
    }

    pub fn post(&self, path: &'static str, body: &Value) -> Result<Value, CtlError> {
        self.call(Method::POST, path, Some(body.to_string()))
    }

    /// One request, a JSON answer; every status but 2xx becomes the error it means.
    fn call(&self, method: Method, path: &'static str, body: Option<String>) -> Result<Value, CtlError> {
        let (status, bytes) = self.exchange(&method, path, body)?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status == 401 {
            let hint = if self.token.is_some() {
                "the token given (--token or FSROUTE_ADMIN_TOKEN) is not the one in [control] admin_token"
            } else {
                "this fsroute has an admin_token: pass it with --token or FSROUTE_ADMIN_TOKEN"
            };
            return Err(CtlError::Unauthorized { url: self.url.clone(), hint });
        }
        if !(200..300).contains(&status) {
            let message = parsed
                .as_ref()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
            let method = if method == Method::POST { "POST" } else { "GET" };
            if status == 404 && message == "not found" {
                return Err(CtlError::Protocol {
                    url: self.url.clone(),
                    what: "404 for an admin endpoint",
                    detail: format!("{method} {path} is unknown there: an older fsroute, or not fsroute"),
                });
            }
            return Err(CtlError::Refused { method, path, status, message });
        }
        parsed.ok_or_else(|| CtlError::Protocol {
            url: self.url.clone(),
            what: "something that is not JSON",
            detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        })
    }

    fn exchange(&self, method: &Method, path: &str, body: Option<String>) -> Result<(u16, Bytes), CtlError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CtlError::Runtime)?;
        let timeout = self.timeout;
        rt.block_on(async {
            match tokio::time::timeout(timeout, self.exchange_async(method, path, body)).await {
                Ok(r) => r,
                Err(_) => Err(CtlError::Timeout { url: self.url.clone(), timeout }),
            }
        })
    }

    async fn exchange_async(&self, method: &Method, path: &str, body: Option<String>) -> Result<(u16, Bytes), CtlError> {
        let mut last = None;
        let mut stream = None;
        for a in &self.addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(stream) = stream else {
            let source = last.unwrap_or_else(|| std::io::Error::other("no address"));
            return Err(CtlError::Unreachable { url: self.url.clone(), source });
        };
        let protocol = |what: &'static str| move |e: hyper::Error| CtlError::Protocol { url: self.url.clone(), what, detail: e.to_string() };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(protocol("no HTTP"))?;
        // The connection future moves the bytes; it ends when the answer is read or the peer goes.
        tokio::spawn(conn);
        let mut req = Request::builder().method(method.clone()).uri(path).header(HOST, &self.authority);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| CtlError::BadAddress {
            given: self.url.clone(),
            reason: format!("cannot form a request to it: {e}"),
        })?;
        let resp = sender.send_request(req).await.map_err(protocol("no HTTP response"))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect().await.map_err(|e| CtlError::Protocol {
            url: self.url.clone(),
            what: "a body that could not be read",
            detail: e.to_string(),
        })?;
        Ok((status, bytes.to_bytes()))
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns two spaces apart; the header in capitals.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = String>| {
        let l: Vec<String> = cells.zip(&width).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(l.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().map(|h| h.to_string()));
    for r in rows {
        line(&mut r.iter().cloned());
    }
    out
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// `ds-list`: one line per destination, set by set.
pub fn render_ds_list(status: &Value) -> String {
    let mut rows = Vec::new();
    for set in items(&status["dispatcher"]) {
        for d in items(&set["destinations"]) {
            let probe = match &d["probe"] {
                Value::Null => "-".to_string(),
                p if p["full"] == true => "full".into(),
                p if p["up"] == true => "up".into(),
                _ => "down".into(),
            };
            let fs = match &d["fs"] {
                Value::Null => "-".to_string(),
                f => format!("{} {} sessions {}/{}", text(&f["url"]), text(&f["lifecycle"]), text(&f["session_count"]), text(&f["max_sessions"])),
            };
            rows.push(vec![
                text(&set["setid"]),
                text(&d["uri"]),
                text(&d["state"]),
                text(&d["weight"]),
                text(&d["configured_weight"]),
                text(&d["priority"]),
                text(&d["forwarded"]),
                probe,
                fs,
            ]);
        }
    }
    if rows.is_empty() {
        return "no dispatcher sets\n".into();
    }
    table(&["SET", "URI", "STATE", "WEIGHT", "CONFIGURED", "PRIO", "FORWARDED", "PROBE", "FREESWITCH"], &rows)
}

/// `lb-list`: one line per destination, group by group, each resource as `name load/max`.
pub fn render_lb_list(status: &Value) -> String {
    let mut rows = Vec::new();
    for g in items(&status["load_balancer"]) {
        for d in items(&g["destinations"]) {
            let res: Vec<String> = items(&d["resources"])
                .iter()
                .map(|r| {
                    let forgiven = r["forgiven"].as_u64().filter(|&f| f > 0).map_or(String::new(), |f| format!(" ({f} forgiven)"));
                    format!("{} {}/{}{forgiven}", text(&r["name"]), text(&r["load"]), text(&r["max"]))
                })
                .collect();
            let enabled = if d["enabled"] == true { "yes" } else { "no" };
            rows.push(vec![text(&g["group_id"]), text(&d["uri"]), enabled.to_string(), res.join(", ")]);
        }
    }
    if rows.is_empty() {
        return "no load_balancer groups\n".into();
    }
    table(&["GROUP", "URI", "ENABLED", "RESOURCES (load/max)"], &rows)
}

/// `box`: one line per FreeSWITCH box.
pub fn render_boxes(status: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&status["freeswitch"])
        .iter()
        .map(|b| {
            vec![
                text(&b["url"]),
                text(&b["lifecycle"]),
                format!("{}/{}", text(&b["session_count"]), text(&b["max_sessions"])),
                text(&b["idle_cpu"]),
                text(&b["heartbeat_age_ms"]),
                text(&b["headroom"]["available"]),
                text(&b["headroom"]["binding"]),
                text(&b["reconnects"]),
                text(&b["rejected_heartbeats"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no FreeSWITCH boxes (no fs:// weight or resource in the config)\n".into();
    }
    table(&["BOX", "LIFECYCLE", "SESSIONS", "IDLE_CPU", "HEARTBEAT_AGE_MS", "AVAILABLE", "BINDING", "RECONNECTS", "REJECTED"], &rows)
}

/// The box `wanted` names: its `fs://host:port`, or `host:port` alone.
fn find_box<'a>(status: &'a Value, wanted: &str) -> Result<&'a Value, CtlError> {
    let boxes = items(&status["freeswitch"]);
    let bare = wanted.strip_prefix("fs://").unwrap_or(wanted);
    boxes
        .iter()
        .find(|b| b["url"].as_str().is_some_and(|u| u.strip_prefix("fs://").unwrap_or(u) == bare))
        .ok_or_else(|| {
            let known: Vec<String> = boxes.iter().map(|b| text(&b["url"])).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            CtlError::NotFound(format!("no FreeSWITCH box {wanted} in this fsroute (boxes: {known})"))
        })
}

/// `box URL`: every number `/status` has for one box, one `key: value` a line, nested keys dotted.
pub fn render_box(b: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), text(other))),
        }
    }
    let mut lines = Vec::new();
    walk("", b, &mut lines);
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines.iter().map(|(k, v)| format!("{:<w$}  {v}\n", format!("{k}:"), w = w + 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        json!({
            "dispatcher": [{ "setid": 1, "destinations": [
                { "uri": "sip:10.0.0.11:5060", "state": "active", "weight": 50, "configured_weight": "50", "priority": 0, "forwarded": 12, "probe": null, "fs": null },
                { "uri": "sip:10.0.0.12:5060", "state": "inactive", "weight": 0, "configured_weight": "fs://10.0.0.12:8021", "priority": 1, "forwarded": 0,
                  "probe": { "up": true, "full": true, "last_status": 503 },
                  "fs": { "url": "fs://10.0.0.12:8021", "lifecycle": "running", "session_count": 7, "max_sessions": 100 } }
            ]}],
            "load_balancer": [{ "group_id": 2, "destinations": [
                { "uri": "sip:10.0.0.21:5060", "enabled": false, "resources": [{ "name": "ch", "max": 10, "load": 3, "forgiven": 1 }, { "name": "conf", "max": 5, "load": 0, "forgiven": 0 }] }
            ]}],
            "freeswitch": [{ "url": "fs://10.0.0.12:8021", "lifecycle": "running", "session_count": 7, "max_sessions": 100, "idle_cpu": 97.5,
                             "heartbeat_age_ms": 300, "headroom": { "available": 93, "binding": "sessions", "by_limit": { "sessions": 93 } },
                             "reconnects": 0, "rejected_heartbeats": 2 }]
        })
    }

    #[test]
    fn ds_list_shows_every_destination_with_state_weight_probe_and_box() {
        let t = render_ds_list(&status());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("SET  URI"), "{t}");
        assert!(lines[1].contains("sip:10.0.0.11:5060") && lines[1].contains("active") && lines[1].contains(" 12 "), "{t}");
        assert!(lines[2].contains("inactive") && lines[2].contains("full") && lines[2].contains("sessions 7/100"), "{t}");
        // Columns line up: every URI starts where the header says.
        let col = lines[0].find("URI").unwrap();
        assert!(lines[1..].iter().all(|l| l[col..].starts_with("sip:")), "{t}");
    }

    #[test]
    fn lb_list_shows_load_over_max_per_resource_and_what_was_forgiven() {
        let t = render_lb_list(&status());
        assert!(t.contains("ch 3/10 (1 forgiven), conf 0/5") && t.contains(" no "), "{t}");
    }

    #[test]
    fn a_box_is_found_with_or_without_its_scheme_and_an_unknown_one_names_the_known() {
        let st = status();
        assert!(find_box(&st, "10.0.0.12:8021").is_ok() && find_box(&st, "fs://10.0.0.12:8021").is_ok());
        let e = find_box(&st, "10.0.0.99:8021").unwrap_err();
        assert_eq!(e.exit_code(), EXIT_REFUSED);
        assert!(e.to_string().contains("boxes: fs://10.0.0.12:8021"), "{e}");
        let detail = render_box(find_box(&st, "10.0.0.12:8021").unwrap());
        assert!(detail.contains("headroom.by_limit.sessions:") && detail.contains("rejected_heartbeats:"), "{detail}");
    }

    #[test]
    fn admin_addresses_read_like_the_config_and_https_is_refused_with_a_reason() {
        let t = Duration::from_secs(1);
        for (given, url) in [("http://127.0.0.1:9060", "http://127.0.0.1:9060"), ("127.0.0.1:9061/", "http://127.0.0.1:9061"), ("9062", "http://127.0.0.1:9062"), (":9063", "http://127.0.0.1:9063")] {
            assert_eq!(AdminClient::new(given, None, t).unwrap().url, url, "{given}");
        }
        for given in ["https://127.0.0.1:9060", "http://127.0.0.1:9060/status", "nonsense"] {
            let e = AdminClient::new(given, None, t).unwrap_err();
            assert!(matches!(e, CtlError::BadAddress { .. }) && e.exit_code() == EXIT_UNREACHABLE, "{given}: {e}");
        }
    }

    #[test]
    fn empty_tables_say_so_instead_of_printing_a_bare_header() {
        let empty = json!({ "dispatcher": [], "load_balancer": [], "freeswitch": [] });
        assert_eq!(render_ds_list(&empty), "no dispatcher sets\n");
        assert_eq!(render_lb_list(&empty), "no load_balancer groups\n");
        assert!(render_boxes(&empty).starts_with("no FreeSWITCH boxes"));
    }
}
