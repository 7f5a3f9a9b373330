//! End-to-end specs of SIP over TLS (docs/TCP.md, "TLS"): `fsroute run` with a UDP and a `tls:`
//! listener, certificates made at test time (rcgen), a Rust rustls caller in front of SIPp
//! backends over UDP, mutual TLS, a SIGHUP that replaces the certificate under an open
//! connection, and peers that send garbage instead of a ClientHello. Bounded in calls and time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA and what it signed, as PEM files in a directory of the test's own.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A certificate the CA signed, with its key.
struct Leaf {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "fsroute test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// A certificate for 127.0.0.1 (an IP SAN) named `cn`, signed by the CA.
    fn leaf(&self, cn: &str) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Leaf {
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `leaf` as fsroute's certificate and key files.
    fn install(&self, leaf: &Leaf) {
        std::fs::write(self.path("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(self.path("key.pem"), &leaf.key_pem).unwrap();
    }

    /// The `[tls]` table naming the installed files, plus `extra` lines.
    fn tls_table(&self, extra: &str) -> String {
        format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n{extra}\n",
            self.path("cert.pem").display(),
            self.path("key.pem").display()
        )
    }

    /// A rustls client config trusting the CA, presenting `cert` when given.
    fn client(&self, cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match cert {
            Some(c) => b.with_client_auth_cert(vec![c.der.clone()], c.key.clone_key()).unwrap(),
            None => b.with_no_client_auth(),
        })
    }
}

/// A SIP caller on one TLS connection: writes messages and reads them back framed by
/// Content-Length, as fsroute's framer does.
struct TlsCaller {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsCaller {
    /// Connects and completes the handshake; Err: it failed (the text of the error).
    fn connect(to: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<TlsCaller, String> {
        let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = rustls::ClientConnection::new(config, ServerName::IpAddress(to.ip().into())).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
        }
        Ok(TlsCaller { s, buf: Vec::new() })
    }

    fn local(&self) -> SocketAddr {
        self.s.sock.local_addr().unwrap()
    }

    /// The certificate fsroute presented.
    fn server_certificate(&self) -> CertificateDer<'static> {
        self.s.conn.peer_certificates().unwrap()[0].clone()
    }

    fn send(&mut self, msg: &str) -> std::io::Result<()> {
        self.s.write_all(msg.as_bytes())?;
        self.s.flush()
    }

    /// The next message, None when the connection ends or nothing comes within the timeout.
    fn recv(&mut self) -> Option<String> {
        read_sip(&mut self.s, &mut self.buf)
    }

    /// The next response whose status line starts with `status` (earlier ones are skipped).
    fn expect(&mut self, status: &str) -> Option<String> {
        while let Some(m) = self.recv() {
            if m.starts_with(status) {
                return Some(m);
            }
            if !m.starts_with("SIP/2.0 1") {
                return None;
            }
        }
        None
    }

    /// An OPTIONS addressed to fsroute itself; its status line.
    fn options(&mut self, to: SocketAddr, n: u32) -> Option<String> {
        let me = self.local();
        let msg = format!(
            "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlsping{n}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p{n}\r\nTo: <sip:{to}>\r\nCall-ID: tls-ping-{n}-{}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            me.port()
        );
        self.send(&msg).ok()?;
        self.recv().and_then(|m| m.lines().next().map(str::to_string))
    }
}

/// The header `name` of `msg` (first one), without its name.
fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
}

/// A dispatcher config with a UDP listener and a TLS listener on `tls`, and `[tls]`.
fn tls_config(shards: usize, backends: &[u16], tls: SocketAddr, pki: &Pki, extra_tls: &str, extra_proxy: &str) -> String {
    let c = dispatcher_config(shards, backends, "round-robin")
        .replace("listen = [\"{SIP}\"]", &format!("listen = [\"{{SIP}}\", \"tls:{tls}\"]\n{extra_proxy}"));
    format!("{c}\n{}", pki.tls_table(extra_tls))
}

/// A SIPp UAS behind fsroute with one TLS listener at `tls`, whose certificate (`fsroute-1`) the
/// test CA `pki` signed; `extra_tls` adds lines to `[tls]` (it may name the CA's files).
struct TlsEdge {
    uas: Sipp,
    pki: Pki,
    /// The certificate fsroute serves.
    cert: Leaf,
    tls: SocketAddr,
    proxy: Proxy,
}

impl TlsEdge {
    fn start(shards: usize, extra_tls: impl Fn(&Pki) -> String, extra_proxy: &str) -> TlsEdge {
        let b = free_udp_port();
        let uas = Sipp::uas(b, None, &[]);
        let pki = Pki::new();
        let cert = pki.leaf("fsroute-1");
        pki.install(&cert);
        let tls = free_tcp_addr();
        let proxy = Proxy::start(&tls_config(shards, &[b], tls, &pki, &extra_tls(&pki), extra_proxy));
        TlsEdge { uas, pki, cert, tls, proxy }
    }
}

/// One call from `caller` through fsroute at `tls` to the SIPp UAS: INVITE, its 180 and 200 on
/// the caller's connection, ACK and BYE along the Record-Route, the BYE's 200.
fn call(caller: &mut TlsCaller, tls: SocketAddr, n: u32) -> Result<(), String> {
    let me = caller.local();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    let common = |method: &str, cseq: u32, branch: &str| {
        format!(
            "Via: SIP/2.0/TLS {me};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=a{n}\r\nCall-ID: tls-call-{n}-{}@test\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@{me};transport=tls>\r\n",
            me.port()
        )
    };
    let invite = format!(
        "INVITE sip:100@{tls} SIP/2.0\r\n{}To: <sip:100@{tls}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        common("INVITE", 1, &format!("inv{n}")),
        sdp.len()
    );
    caller.send(&invite).map_err(|e| e.to_string())?;
    // SIPp's UAS answers 180 then 200 (a stateless route adds no 100): both on this connection.
    let ringing = caller.recv().ok_or("no answer to the INVITE")?;
    if !ringing.starts_with("SIP/2.0 180") {
        return Err(format!("expected 180 first: {ringing}"));
    }
    let ok = caller.expect("SIP/2.0 200").ok_or("no 200 to the INVITE")?;
    let to = header(&ok, "To").ok_or("200 without To")?.to_string();
    let contact = header(&ok, "Contact").ok_or("200 without Contact")?;
    let target = contact.trim_start_matches('<').split('>').next().unwrap_or_default().to_string();
    let route = header(&ok, "Record-Route").map(|r| format!("Route: {r}\r\n")).unwrap_or_default();
    let in_dialog = |method: &str, cseq: u32, branch: String| {
        format!("{method} {target} SIP/2.0\r\n{route}{}To: {to}\r\nContent-Length: 0\r\n\r\n", common(method, cseq, &branch))
    };
    caller.send(&in_dialog("ACK", 1, format!("ack{n}"))).map_err(|e| e.to_string())?;
    caller.send(&in_dialog("BYE", 2, format!("bye{n}"))).map_err(|e| e.to_string())?;
    let bye_ok = caller.recv().ok_or("no answer to the BYE")?;
    if !bye_ok.starts_with("SIP/2.0 200") || !bye_ok.contains("CSeq: 2 BYE") {
        return Err(format!("expected the BYE's 200: {bye_ok}"));
    }
    Ok(())
}

#[test]
fn a_tls_caller_gets_its_responses_on_its_own_connection_and_completes_calls() {
    let _g = serial();
    let TlsEdge { uas, pki, tls, proxy, .. } = TlsEdge::start(2, |_| String::new(), "");
    let mut caller = TlsCaller::connect(tls, pki.client(None)).unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    // Several calls on one connection: some belong to the shard that does not own it, so their
    // responses reach the caller through the owner.
    for n in 0..6 {
        call(&mut caller, tls, n).unwrap_or_else(|e| panic!("call {n}: {e}\nuas: {}\n{}", uas.errors(), proxy.log()));
    }
    assert_eq!(tcp_total(&proxy, &["tls_handshakes"]), 1);
    assert_eq!(tcp_total(&proxy, &["tls_connections"]), 1);
    // INVITE, ACK and BYE per call came in over TLS; 180, 200 and the BYE's 200 went back.
    assert!(tcp_total(&proxy, &["received"]) >= 18, "{}", proxy.status()["shards"]);
    assert!(tcp_total(&proxy, &["sent"]) >= 18, "{}", proxy.status()["shards"]);
    let metrics = http(proxy.admin, "GET", "/metrics", "").1;
    assert!(metrics.contains("fsroute_shard_tls_handshakes_total{"), "{metrics}");
    assert!(metrics.contains("fsroute_shard_tls_connections{"), "{metrics}");
    drop(caller);
    assert!(wait_for(Duration::from_secs(5), || tcp_total(&proxy, &["tls_connections"]) == 0));
    assert!(proxy.stop().is_some_and(|s| s.success()));
}

#[test]
fn with_verify_client_require_a_caller_without_a_certificate_is_refused_and_one_the_client_ca_signed_is_served() {
    let _g = serial();
    let mutual = |pki: &Pki| format!("client_ca = \"{}\"\nverify_client = \"require\"", pki.path("ca.pem").display());
    let TlsEdge { uas: _uas, pki, tls, proxy, .. } = TlsEdge::start(1, mutual, "");
    // TLS 1.3: the client's side of the handshake is done before the server has judged it, so
    // the refusal shows on the first read.
    let anonymous = TlsCaller::connect(tls, pki.client(None)).map(|mut c| c.options(tls, 1));
    assert!(!matches!(anonymous, Ok(Some(_))), "a caller without a certificate gets no answer: {anonymous:?}");
    assert!(wait_for(Duration::from_secs(5), || tcp_total(&proxy, &["closed", "tls"]) == 1), "{}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["tls_handshake_failed"]), 1);
    let trunk = pki.leaf("trunk.example.net");
    let mut caller = TlsCaller::connect(tls, pki.client(Some(&trunk))).unwrap();
    assert_eq!(caller.options(tls, 2).as_deref(), Some("SIP/2.0 200 OK"), "{}", proxy.log());
    // A certificate from another CA is refused like none.
    let stranger = Pki::new().leaf("stranger");
    let refused = TlsCaller::connect(tls, pki.client(Some(&stranger))).map(|mut c| c.options(tls, 3));
    assert!(!matches!(refused, Ok(Some(_))), "{refused:?}");
    assert!(wait_for(Duration::from_secs(5), || tcp_total(&proxy, &["closed", "tls"]) == 2), "{}", proxy.status()["shards"]);
}

#[test]
fn a_sighup_with_a_new_certificate_reaches_new_connections_while_open_ones_go_on() {
    let _g = serial();
    let TlsEdge { uas: _uas, pki, cert: first, tls, proxy } = TlsEdge::start(2, |_| String::new(), "");
    let mut open = TlsCaller::connect(tls, pki.client(None)).unwrap();
    assert_eq!(open.server_certificate(), first.der);
    let second = pki.leaf("fsroute-2");
    pki.install(&second);
    proxy.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || proxy.status()["config"]["reloads"] == 1), "{}", proxy.log());
    let fresh = TlsCaller::connect(tls, pki.client(None)).unwrap();
    assert_eq!(fresh.server_certificate(), second.der, "a new connection sees the new certificate");
    assert_eq!(open.options(tls, 1).as_deref(), Some("SIP/2.0 200 OK"), "the open connection keeps working");
    call(&mut open, tls, 7).unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    // A broken certificate is refused naming the file; the running one stays.
    std::fs::write(pki.path("cert.pem"), "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    proxy.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || proxy.status()["config"]["reload_failures"] == 1), "{}", proxy.log());
    let st = proxy.status();
    let err = st["config"]["last_error"].as_str().unwrap();
    assert!(err.contains("tls.certificate") && err.contains("cert.pem"), "{err}");
    let after = TlsCaller::connect(tls, pki.client(None)).unwrap();
    assert_eq!(after.server_certificate(), second.der, "the running certificate stays");
    assert_eq!(open.options(tls, 2).as_deref(), Some("SIP/2.0 200 OK"));
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_and_counted_while_udp_calls_go_on() {
    let _g = serial();
    let TlsEdge { uas: _uas, pki: _pki, tls, proxy, .. } = TlsEdge::start(2, |_| String::new(), "tcp_idle_timeout = \"2s\"");
    let mut garbage = TcpStream::connect(tls).unwrap();
    garbage
        .write_all(b"INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    // A peer that connects and never says hello is cut by the idle timeout.
    let mut silent = TcpStream::connect(tls).unwrap();
    let run = Sipp::uac(proxy.sip, None, 100, 100, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    for (s, what) in [(&mut garbage, "garbage"), (&mut silent, "silent")] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(!String::from_utf8_lossy(&rest).contains("SIP/2.0"), "{what}: no SIP answer on a TLS port");
    }
    assert!(wait_for(Duration::from_secs(5), || tcp_total(&proxy, &["closed", "tls"]) == 1
        && tcp_total(&proxy, &["closed", "idle"]) == 1), "{}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["tls_handshake_failed"]), 2);
    assert_eq!(tcp_total(&proxy, &["tls_connections"]), 0);
    let metrics = http(proxy.admin, "GET", "/metrics", "").1;
    assert!(metrics.contains("reason=\"tls\"} 1"), "{metrics}");
}

/// A backend on a TLS listener presenting `leaf`: answers INVITE with 180 and 200 and BYE with
/// 200 on the connection the request came on, and records each request's method and top Via.
struct TlsUas {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl TlsUas {
    fn start(leaf: &Leaf) -> TlsUas {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
            .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        // The threads end with the test process; every read is bounded by a timeout.
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(tcp) = s else { continue };
                let (config, log) = (config.clone(), log.clone());
                std::thread::spawn(move || {
                    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut s = rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), tcp);
                    let contact = format!("sip:uas@{addr};transport=tls");
                    let mut buf = Vec::new();
                    while let Some(req) = read_sip(&mut s, &mut buf) {
                        let method = req.split_whitespace().next().unwrap_or("").to_string();
                        let via = header(&req, "Via").unwrap_or_default().to_string();
                        log.lock().unwrap().push((method.clone(), via));
                        let answers: &[&str] = match method.as_str() {
                            "INVITE" => &["180 Ringing", "200 OK"],
                            "ACK" => &[],
                            _ => &["200 OK"],
                        };
                        for status in answers {
                            if s.write_all(sip_response(&req, status, &contact).as_bytes()).and_then(|()| s.flush()).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        TlsUas { addr, seen }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// A config with a UDP listener in front of the `dests` (URIs as written) on a failover route,
/// and `[tls] ca` naming the CA the backends' certificates are verified against.
fn tls_destination_config(dests: &[String], pki: &Pki) -> String {
    let mut c = "[proxy]\nlisten = [\"{SIP}\"]\nshards = 2\nrecord_route = true\n\n[control]\nadmin = \"{ADMIN}\"\n\n".to_string();
    for d in dests {
        c.push_str(&format!("[[dispatcher]]\nsetid = 1\ndestination = \"{d}\"\nweight = 1\n\n"));
    }
    c.push_str("[[route]]\nto_dispatcher = 1\nalgorithm = \"round-robin\"\nfailover = true\n\n[failover]\nno_answer_timeout = \"5s\"\n\n");
    c.push_str(&format!("[tls]\nca = \"{}\"\n", pki.path("ca.pem").display()));
    c
}

#[test]
fn a_udp_caller_reaches_a_sips_backend_over_tls_verified_against_the_ca_with_tls_in_the_via() {
    let _g = serial();
    let pki = Pki::new();
    let uas = TlsUas::start(&pki.leaf("fs1.example.net"));
    let proxy = Proxy::start(&tls_destination_config(&[format!("sips:{}", uas.addr)], &pki));
    let run = Sipp::uac(proxy.sip, None, 20, 10, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\nuas saw {:?}\n{}", run.explain(), uas.seen(), proxy.log());
    let seen = uas.seen();
    for method in ["INVITE", "ACK", "BYE"] {
        assert_eq!(seen.iter().filter(|(m, _)| m == method).count(), 20, "{method}: {seen:?}");
    }
    assert!(seen.iter().all(|(_, via)| via.starts_with("SIP/2.0/TLS ")), "fsroute's Via names TLS: {seen:?}");
    // One connection per shard that sent, each with its handshake, reused by every call.
    let connected = tcp_total(&proxy, &["connected"]);
    assert!((1..=2).contains(&connected), "{}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["tls_handshakes"]), connected, "{}", proxy.status()["shards"]);
    assert_eq!(tcp_total(&proxy, &["tls_handshake_failed"]), 0);
}

#[test]
fn a_tls_backend_whose_certificate_the_ca_did_not_sign_is_failed_over_and_counted() {
    let _g = serial();
    let pki = Pki::new();
    let good = TlsUas::start(&pki.leaf("fs1.example.net"));
    // Signed by another CA: fsroute must not send a call to it.
    let impostor = TlsUas::start(&Pki::new().leaf("fs2.example.net"));
    let dests = [format!("sip:{};transport=tls", impostor.addr), format!("sips:{}", good.addr)];
    let proxy = Proxy::start(&tls_destination_config(&dests, &pki));
    let started = std::time::Instant::now();
    let run = Sipp::uac(proxy.sip, None, 10, 10, &[], Duration::from_secs(30));
    assert!(run.all_calls_succeeded(), "{}\n{}", run.explain(), proxy.log());
    assert!(impostor.seen().is_empty(), "no request reached the impostor: {:?}", impostor.seen());
    assert_eq!(good.seen().iter().filter(|(m, _)| m == "INVITE").count(), 10);
    // The refused handshake fails the attempt over at once, not after the 5 s no-answer timer.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(tcp_total(&proxy, &["tls_handshake_failed"]) >= 1, "{}", proxy.status()["shards"]);
    assert!(tcp_total(&proxy, &["closed", "tls"]) >= 1, "{}", proxy.status()["shards"]);
}

#[test]
fn a_tls_box_is_probed_over_tls_and_one_whose_certificate_the_ca_did_not_sign_leaves() {
    let _g = serial();
    let pki = Pki::new();
    let good = TlsUas::start(&pki.leaf("fs1.example.net"));
    let impostor = TlsUas::start(&Pki::new().leaf("fs2.example.net"));
    let config = tls_destination_config(&[format!("sips:{}", good.addr), format!("sips:{}", impostor.addr)], &pki).replace(
        "[control]\n",
        "[control]\nprobe_interval = \"200ms\"\nprobe_failure_threshold = 3\nprobe_success_threshold = 2\n",
    );
    let proxy = Proxy::start(&config);
    let state = |a: SocketAddr| {
        let st = proxy.status();
        let d = st["dispatcher"][0]["destinations"].as_array().unwrap().iter().find(|d| d["address"] == a.to_string()).cloned();
        d.map(|d| d["state"].as_str().unwrap_or_default().to_string()).unwrap_or_default()
    };
    assert!(wait_for(Duration::from_secs(5), || state(impostor.addr) == "probing"), "{}", proxy.status());
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(state(good.addr), "active", "{}", proxy.status());
    let seen = good.seen();
    assert!(seen.iter().filter(|(m, _)| m == "OPTIONS").count() >= 3, "{seen:?}");
    assert!(seen.iter().all(|(_, via)| via.starts_with("SIP/2.0/TLS ")), "{seen:?}");
    assert!(impostor.seen().is_empty(), "nothing readable reached the impostor: {:?}", impostor.seen());
}

/// fsroute's resident set, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap()
}

/// Memory per idle connection (docs/TCP.md, "Memory per connection"): opens `FSROUTE_IDLE_CONNS`
/// (500) idle TCP connections, then as many idle TLS connections with their handshakes done, and
/// prints fsroute's VmRSS growth per connection for each. A measurement, not a spec:
/// `cargo test --release --test tls_e2e -- --ignored --nocapture memory_per_idle`.
#[test]
#[ignore]
fn memory_per_idle_tcp_and_tls_connection() {
    let _g = serial();
    let n: usize = std::env::var("FSROUTE_IDLE_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let b = free_udp_port();
    let pki = Pki::new();
    pki.install(&pki.leaf("fsroute-1"));
    let (tcp, tls) = (free_tcp_addr(), free_tcp_addr());
    let config = tls_config(1, &[b], tls, &pki, "", &format!("tcp_connections_per_source = {}", 2 * n + 10))
        .replace(&format!("\"tls:{tls}\""), &format!("\"tcp:{tcp}\", \"tls:{tls}\""));
    let proxy = Proxy::start(&config);
    let pid = proxy_pid(&proxy);
    // Warm up both paths once (allocator arenas, rustls' first session).
    drop(TlsCaller::connect(tls, pki.client(None)).unwrap());
    drop(TcpStream::connect(tcp).unwrap());
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(pid);
    let held: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(tcp).unwrap()).collect();
    assert!(wait_for(Duration::from_secs(10), || tcp_total(&proxy, &["connections"]) == n as u64));
    std::thread::sleep(Duration::from_millis(500));
    let with_tcp = rss_kb(pid);
    let client = pki.client(None);
    let held_tls: Vec<TlsCaller> = (0..n).map(|_| TlsCaller::connect(tls, client.clone()).unwrap()).collect();
    assert!(wait_for(Duration::from_secs(10), || tcp_total(&proxy, &["tls_handshakes"]) == n as u64 + 1));
    std::thread::sleep(Duration::from_millis(500));
    let with_tls = rss_kb(pid);
    let per_tcp = (with_tcp - before) as f64 / n as f64;
    let per_tls = (with_tls - with_tcp) as f64 / n as f64;
    println!(
        "idle connections: {n}; VmRSS {before} kB -> {with_tcp} kB with TCP -> {with_tls} kB with TLS as well; \
         {per_tcp:.1} kB per idle TCP connection, {per_tls:.1} kB per idle TLS connection ({:.1} kB more than TCP)",
        per_tls - per_tcp
    );
    drop((held, held_tls));
}

fn proxy_pid(proxy: &Proxy) -> u32 {
    proxy.child.id()
}
