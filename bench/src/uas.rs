//! A light built-in UAS for the pure-throughput scenarios: stateless auto-answerer on one
//! thread with `recvmmsg`/`sendmmsg`. INVITE gets 180 and 200 back to back (the pair most
//! likely to be reordered by a proxy that spreads one call over cores), BYE gets 200, ACK
//! is absorbed. Every response carries `X-Seq`, a per-UAS counter in send order, so the UAC
//! can tell a reordering proxy from a reordering network. The to-tag is derived from the
//! Call-ID, so a retransmitted INVITE gets the same answer without any per-call state.
//!
//! Why not the FreeSWITCH emulator here: it is a test tool (one std thread, a mutex and a
//! scan of every call per datagram) and saturates far below the proxy; the `throughput`
//! scenario measures the proxy, not the backends. `fs-aware` uses the emulator, whose
//! capacity model is the point there.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::sipmsg;
use crate::sys::{self, RecvBatch, SendQueue};

#[derive(Default)]
pub struct UasCounters {
    pub invites: AtomicU64,
    pub acks: AtomicU64,
    pub byes: AtomicU64,
    pub other: AtomicU64,
}

pub struct FastUas {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub counters: Arc<UasCounters>,
    thread: Option<JoinHandle<()>>,
}

impl FastUas {
    pub fn start() -> std::io::Result<FastUas> {
        let sock = sys::bind_udp("127.0.0.1:0".parse().unwrap())?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(UasCounters::default());
        let (s, c) = (Arc::clone(&stop), Arc::clone(&counters));
        let thread = std::thread::Builder::new().name("bench-uas".into()).spawn(move || serve(sock, addr, &s, &c))?;
        Ok(FastUas { addr, stop, counters, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for FastUas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn to_tag(call_id: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call_id.hash(&mut h);
    h.finish()
}

const SDP: &[u8] = b"v=0\r\no=uas 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

fn serve(sock: UdpSocket, addr: SocketAddr, stop: &AtomicBool, c: &UasCounters) {
    let fd = sock.as_raw_fd();
    let mut batch = RecvBatch::new(64);
    let mut q = SendQueue::default();
    let mut seq: u64 = 0;
    let mut readable = Vec::new();
    let contact = format!("Contact: <sip:uas@{addr}>\r\n");
    let mut extra = Vec::with_capacity(128);
    while !stop.load(Ordering::Relaxed) {
        let n = batch.recv(fd);
        if n == 0 {
            sys::poll_readable(&[fd], 20, &mut readable);
            continue;
        }
        for i in 0..n {
            let (data, src) = batch.get(i);
            let Some(m) = sipmsg::parse(data) else { continue };
            if m.status != 0 {
                continue;
            }
            let tag = format!("{:x}", to_tag(m.call_id));
            let mut respond = |q: &mut SendQueue, status: u16, reason: &str, rr: bool, body: Option<(&str, &[u8])>| {
                seq += 1;
                extra.clear();
                let _ = write!(extra, "{contact}X-Seq: {seq}\r\n");
                q.push_with(src, |out| sipmsg::write_response(out, data, status, reason, Some(tag.as_bytes()), rr, &extra, body));
            };
            match m.method {
                b"INVITE" => {
                    c.invites.fetch_add(1, Ordering::Relaxed);
                    respond(&mut q, 180, "Ringing", true, None);
                    respond(&mut q, 200, "OK", true, Some(("application/sdp", SDP)));
                }
                b"ACK" => {
                    c.acks.fetch_add(1, Ordering::Relaxed);
                }
                b"BYE" => {
                    c.byes.fetch_add(1, Ordering::Relaxed);
                    respond(&mut q, 200, "OK", false, None);
                }
                _ => {
                    c.other.fetch_add(1, Ordering::Relaxed);
                    respond(&mut q, 200, "OK", false, None);
                }
            }
        }
        q.flush(fd);
    }
}
