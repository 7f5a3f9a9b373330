//! HEP capture on a shard: the bounded ring of HEP packets waiting for the capture socket, and
//! that socket. A shard records a copy of every datagram it received and sent once its batch has
//! left (`shard.rs`), then flushes the ring with `sendmmsg` on a socket of its own, never the SIP
//! socket, and never waits on it: EAGAIN leaves the rest for the next flush, a full ring drops the
//! new copy, a refused send drops that packet, and each drop is counted (`capture_dropped`). So
//! the collector can be slow, dead or unreachable without a forward ever waiting for it.
//! docs/CAPTURE.md has the whole story; `hep.rs` the encoding.
//!
//! The ring is sans-IO ([`CaptureRing::flush`] takes the send function), so its bounds and
//! accounting are tested without sockets; [`CaptureSocket`] is the thin shell.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::batch::{Fate, Outgoing, SendQueue, SendScratch};
use crate::conn::Transport;
use crate::hep::{self, HepMeta};
use crate::table::CaptureSettings;

/// Capacity each preallocated HEP buffer starts with: a SIP datagram within an Ethernet MTU plus
/// the HEP chunks. A larger message grows its buffer once; the buffer keeps that capacity.
pub const SLOT: usize = 2048;

/// What one flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flush {
    /// Packets the kernel took.
    pub sent: u64,
    /// Packets the kernel refused for good (the collector unreachable, ...): dropped.
    pub failed: u64,
}

/// A bounded queue of encoded HEP packets over a fixed set of buffers: a packet takes a free
/// buffer or is not recorded; a sent packet gives its buffer back. Memory is `queue` buffers,
/// whatever the collector does.
pub struct CaptureRing {
    settings: CaptureSettings,
    waiting: SendQueue,
    free: Vec<Vec<u8>>,
}

impl CaptureRing {
    /// Preallocates `settings.queue` buffers.
    pub fn new(settings: CaptureSettings) -> CaptureRing {
        let n = settings.queue.max(1);
        CaptureRing {
            settings,
            waiting: SendQueue::with_limit(n),
            free: (0..n).map(|_| Vec::with_capacity(SLOT)).collect(),
        }
    }

    pub fn settings(&self) -> &CaptureSettings {
        &self.settings
    }

    /// Packets waiting for the socket.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Encodes a copy of `payload` as a HEP packet and queues it; false (the caller counts a
    /// drop) when every buffer is in use or the datagram cannot be encapsulated.
    pub fn record(&mut self, src: SocketAddr, dst: SocketAddr, time: hep::WallTime, transport: Transport, payload: &[u8]) -> bool {
        let Some(mut buf) = self.free.pop() else { return false };
        let meta = HepMeta { src, dst, time, capture_id: self.settings.capture_id, transport };
        if hep::encode(&meta, payload, &mut buf).is_err() {
            self.free.push(buf);
            return false;
        }
        // The free list bounds the queue below its own limit, so this never gives the buffer back.
        if let Err(o) = self.waiting.push(Outgoing { to: self.settings.collector, socket: 0, buf }) {
            self.free.push(o.buf);
            return false;
        }
        true
    }

    /// Sends what waits, in runs of at most `BATCH`, until done or `send` reports EAGAIN (the
    /// rest stays for the next flush).
    pub fn flush(&mut self, mut send: impl FnMut(&[Outgoing]) -> io::Result<usize>) -> Flush {
        let mut f = Flush::default();
        let free = &mut self.free;
        // Blocked or not, what is left waits for the next flush: nothing to tell the caller.
        let _ = self.waiting.flush(
            |_, run| send(run),
            |o, fate| {
                match fate {
                    Fate::Sent => f.sent += 1,
                    Fate::Refused => f.failed += 1,
                }
                free.push(o.buf);
            },
        );
        f
    }

    /// Empties the ring (capture turned off or moved); how many packets it held, now dropped.
    pub fn discard(&mut self) -> u64 {
        let mut n = 0;
        for o in self.waiting.drain() {
            self.free.push(o.buf);
            n += 1;
        }
        n
    }
}

/// A shard's socket towards the collector: non-blocking, connected (so an ICMP unreachable from
/// a dead collector comes back as a refused send, counted, instead of silence) and with a send
/// buffer of its own; it never shares the SIP sockets' buffers or their EAGAIN.
pub struct CaptureSocket {
    fd: OwnedFd,
    collector: SocketAddr,
    scratch: SendScratch,
}

/// Send buffer asked for the capture socket: room for a few batches of captures while the
/// collector's host is slow to drain (the kernel caps it at `net.core.wmem_max`).
const SEND_BUFFER: usize = 1 << 20;

impl CaptureSocket {
    pub fn open(collector: SocketAddr) -> io::Result<CaptureSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(collector), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_nonblocking(true)?;
        let _ = s.set_send_buffer_size(SEND_BUFFER);
        s.connect(&collector.into())?;
        Ok(CaptureSocket { fd: s.into(), collector, scratch: SendScratch::default() })
    }

    pub fn collector(&self) -> SocketAddr {
        self.collector
    }

    /// Flushes `ring` on this socket without waiting.
    pub fn flush(&mut self, ring: &mut CaptureRing) -> Flush {
        let fd = self.fd.as_raw_fd();
        let scratch = &mut self.scratch;
        ring.flush(|run| scratch.send(fd, run))
    }
}

/// Whether a received datagram is worth a capture: not a CRLF keepalive (RFC 5626 §4.4.1), which
/// is no SIP message and which a collector would only count as a parse error.
#[inline]
pub fn worth_capturing(data: &[u8]) -> bool {
    !(data.len() <= 4 && data.iter().all(|b| matches!(b, b'\r' | b'\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(queue: usize) -> CaptureSettings {
        CaptureSettings { collector: "127.0.0.1:9060".parse().unwrap(), capture_id: 7, queue }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:5070".parse().unwrap()
    }

    fn me() -> SocketAddr {
        "127.0.0.1:5060".parse().unwrap()
    }

    const MSG: &[u8] = b"OPTIONS sip:x SIP/2.0\r\n\r\n";

    #[test]
    fn a_full_ring_refuses_the_next_copy_and_a_flush_frees_its_buffers() {
        let mut ring = CaptureRing::new(settings(3));
        let t = hep::WallTime::default();
        assert!((0..3).all(|_| ring.record(peer(), me(), t, Transport::Udp, MSG)));
        assert!(!ring.record(peer(), me(), t, Transport::Udp, MSG), "three buffers, three packets");
        let mut wire = Vec::new();
        let f = ring.flush(|run| {
            wire.extend(run.iter().map(|o| (o.to, o.buf.len())));
            Ok(run.len())
        });
        assert_eq!(f, Flush { sent: 3, failed: 0 });
        assert_eq!(wire.len(), 3);
        assert!(wire.iter().all(|(to, _)| *to == settings(3).collector));
        assert!(ring.record(peer(), me(), t, Transport::Udp, MSG), "the buffers came back");
    }

    #[test]
    fn eagain_keeps_the_rest_for_the_next_flush_and_a_refused_packet_is_dropped_and_counted() {
        let mut ring = CaptureRing::new(settings(8));
        let t = hep::WallTime::default();
        for _ in 0..5 {
            assert!(ring.record(peer(), me(), t, Transport::Udp, MSG));
        }
        let mut calls = 0;
        let f = ring.flush(|run| {
            calls += 1;
            match calls {
                1 => Ok(2),
                2 => Err(io::Error::from_raw_os_error(libc::ECONNREFUSED)),
                _ => Err(io::Error::from(io::ErrorKind::WouldBlock)),
            }
            .map(|n: usize| n.min(run.len()))
        });
        assert_eq!(f, Flush { sent: 2, failed: 1 });
        assert_eq!(ring.len(), 2, "left for the next flush");
        assert_eq!(ring.flush(|run| Ok(run.len())), Flush { sent: 2, failed: 0 });
        assert!(ring.is_empty());
    }

    #[test]
    fn a_datagram_too_large_for_hep_is_refused_without_losing_its_buffer() {
        let mut ring = CaptureRing::new(settings(1));
        let t = hep::WallTime::default();
        assert!(!ring.record(peer(), me(), t, Transport::Udp, &vec![b'x'; 65_535]));
        assert!(ring.record(peer(), me(), t, Transport::Udp, MSG));
    }

    #[test]
    fn the_packets_carry_the_capture_id_and_both_addresses() {
        let mut ring = CaptureRing::new(settings(1));
        assert!(ring.record(peer(), me(), hep::WallTime { seconds: 1, micros: 2 }, Transport::Udp, MSG));
        let mut got = Vec::new();
        ring.flush(|run| {
            got = run[0].buf.clone();
            Ok(1)
        });
        let mut want = Vec::new();
        hep::encode(&HepMeta { src: peer(), dst: me(), time: hep::WallTime { seconds: 1, micros: 2 }, capture_id: 7, transport: Transport::Udp }, MSG, &mut want).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn discarding_counts_what_was_waiting_and_keeps_every_buffer() {
        let mut ring = CaptureRing::new(settings(4));
        let t = hep::WallTime::default();
        for _ in 0..4 {
            ring.record(peer(), me(), t, Transport::Udp, MSG);
        }
        assert_eq!(ring.discard(), 4);
        assert!((0..4).all(|_| ring.record(peer(), me(), t, Transport::Udp, MSG)));
    }

    #[test]
    fn crlf_keepalives_are_not_captured() {
        assert!(!worth_capturing(b"\r\n\r\n"));
        assert!(!worth_capturing(b"\r\n"));
        assert!(worth_capturing(MSG));
        assert!(worth_capturing(b"x"));
    }
}
