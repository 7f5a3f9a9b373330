//! Batched datagram I/O for the shards: `recvmmsg` into preallocated slots, and one send queue per
//! shard drained with `sendmmsg`. glommio's own `UdpSocket` receives and sends one buffer per
//! call, allocates a buffer per receive, and its io_uring fallback for a send that met EAGAIN
//! (`Reactor::rushed_sendmsg` in glommio 0.9) builds an iovec of length 1, so a full send buffer
//! would put a 1-byte datagram on the wire and report success. fsroute therefore never sends
//! through glommio: every datagram leaves through [`SendQueue`], which keeps the order the router
//! produced them in, keeps what EAGAIN refused, and counts it.
//!
//! The queue is sans-IO ([`SendQueue::flush`] takes the send function), so its ordering and
//! back-pressure behaviour are tested without sockets; [`RecvBatch`] and [`SendScratch`] are the
//! thin `libc` shells around the two system calls.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Datagrams per system call, both ways.
pub const BATCH: usize = 32;

/// The largest UDP payload (IPv6 jumbograms aside): a receive slot holds any datagram whole.
pub const MAX_DATAGRAM: usize = 65_535;

/// Datagrams a shard keeps queued while the kernel refuses more (EAGAIN); past it new ones are
/// dropped and counted as send errors, so a stuck socket costs bounded memory.
pub const QUEUE_LIMIT: usize = 8192;

/// A datagram waiting to leave, and the socket (listener) it leaves from.
#[derive(Debug)]
pub struct Outgoing {
    pub to: SocketAddr,
    pub socket: usize,
    pub buf: Vec<u8>,
}

/// How a flush ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued has left (or failed and was counted).
    All,
    /// The kernel refused with EAGAIN: the rest stays queued, in order, for the next flush.
    Blocked,
}

/// What became of a datagram a flush took off the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The kernel took it.
    Sent,
    /// The kernel refused it for good (not EAGAIN): dropped.
    Refused,
}

/// Every datagram a shard sends, in the order it was routed: a call's messages never overtake
/// each other, whichever task (socket, hand-off, timer) produced them.
#[derive(Debug)]
pub struct SendQueue {
    queue: VecDeque<Outgoing>,
    limit: usize,
    /// Flushes that met EAGAIN.
    pub blocked: u64,
}

impl Default for SendQueue {
    /// A shard's queue: [`QUEUE_LIMIT`] datagrams, its room grown on demand.
    fn default() -> Self {
        SendQueue { queue: VecDeque::new(), limit: QUEUE_LIMIT, blocked: 0 }
    }
}

impl SendQueue {
    /// A queue that holds at most `limit` datagrams, its room allocated now.
    pub fn with_limit(limit: usize) -> SendQueue {
        SendQueue { queue: VecDeque::with_capacity(limit), limit, blocked: 0 }
    }

    /// Takes everything queued, in order, unsent.
    pub fn drain(&mut self) -> impl Iterator<Item = Outgoing> + '_ {
        self.queue.drain(..)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a datagram; gives it back when the queue is at its limit ([`QUEUE_LIMIT`] by default).
    pub fn push(&mut self, o: Outgoing) -> Result<(), Outgoing> {
        if self.queue.len() >= self.limit {
            return Err(o);
        }
        self.queue.push_back(o);
        Ok(())
    }

    /// Sends from the front, a run of datagrams for one socket per call of `send` (at most
    /// [`BATCH`]), which returns how many of the run left. `done` gets each datagram taken off
    /// the queue with its [`Fate`]: it left, or the kernel refused it for good. Stops at EAGAIN.
    pub fn flush(
        &mut self,
        mut send: impl FnMut(usize, &[Outgoing]) -> io::Result<usize>,
        mut done: impl FnMut(Outgoing, Fate),
    ) -> Flushed {
        while !self.queue.is_empty() {
            let run = {
                let all = self.queue.make_contiguous();
                let socket = all[0].socket;
                let n = all.iter().take(BATCH).take_while(|o| o.socket == socket).count();
                send(socket, &all[..n])
            };
            match run {
                Ok(n) if n > 0 => {
                    for o in self.queue.drain(..n.min(self.queue.len())) {
                        done(o, Fate::Sent);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked += 1;
                    return Flushed::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // sendmmsg reports an error only when the first datagram of the run failed (and
                // never sends none without one): that one is counted and dropped, the rest go on.
                Ok(_) | Err(_) => {
                    if let Some(o) = self.queue.pop_front() {
                        done(o, Fate::Refused);
                    }
                }
            }
        }
        Flushed::All
    }
}

/// Points one message header at its address and its single buffer, no control data.
fn point(h: &mut libc::mmsghdr, name: *mut libc::c_void, namelen: libc::socklen_t, iov: &mut libc::iovec) {
    h.msg_hdr.msg_name = name;
    h.msg_hdr.msg_namelen = namelen;
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = 1;
    h.msg_hdr.msg_control = std::ptr::null_mut();
    h.msg_hdr.msg_controllen = 0;
    h.msg_hdr.msg_flags = 0;
    h.msg_len = 0;
}

/// Preallocated headers for one `sendmmsg` call.
pub struct SendScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<SockAddr>,
}

impl Default for SendScratch {
    fn default() -> Self {
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        SendScratch {
            // SAFETY: mmsghdr and iovec are plain C structs for which all-zero is a valid value.
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH],
            addrs: vec![unspecified; BATCH],
        }
    }
}

impl SendScratch {
    /// One non-blocking `sendmmsg` of `run` (at most [`BATCH`]) on `fd`: how many left.
    pub fn send(&mut self, fd: RawFd, run: &[Outgoing]) -> io::Result<usize> {
        let n = run.len().min(BATCH);
        for (i, o) in run[..n].iter().enumerate() {
            self.addrs[i] = SockAddr::from(o.to);
            self.iovs[i] = libc::iovec { iov_base: o.buf.as_ptr() as *mut libc::c_void, iov_len: o.buf.len() };
        }
        for i in 0..n {
            let name = self.addrs[i].as_ptr() as *mut libc::c_void;
            point(&mut self.hdrs[i], name, self.addrs[i].len(), &mut self.iovs[i]);
        }
        // SAFETY: the first n headers point at live buffers and addresses owned by `run` and
        // `self` for the duration of the call; the kernel only reads them.
        let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// Preallocated slots for one `recvmmsg` call: [`BATCH`] datagrams of up to [`MAX_DATAGRAM`].
pub struct RecvBatch {
    data: Vec<u8>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    received: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            data: vec![0; BATCH * MAX_DATAGRAM],
            // SAFETY: plain C structs for which all-zero is a valid value.
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            received: 0,
        }
    }
}

impl RecvBatch {
    /// One non-blocking `recvmmsg` on `fd`: how many datagrams arrived (WouldBlock when none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received = 0;
        let base = self.data.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: slot i lies inside `data` (BATCH * MAX_DATAGRAM bytes).
            self.iovs[i] = libc::iovec { iov_base: unsafe { base.add(i * MAX_DATAGRAM) } as *mut libc::c_void, iov_len: MAX_DATAGRAM };
            let name = &mut self.addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
            point(&mut self.hdrs[i], name, std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t, &mut self.iovs[i]);
        }
        // SAFETY: every header points at a slot of `data` and an address slot of `addrs`, both
        // owned by `self` and alive for the call; no timeout is passed.
        let r = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = r as usize;
        Ok(self.received)
    }

    /// Datagram `i` of the last receive, with its source; None for a source that is not IP.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.received {
            return None;
        }
        let h = &self.hdrs[i];
        // SAFETY: the kernel wrote a socket address of msg_namelen bytes into addrs[i].
        let addr = unsafe { SockAddr::new(self.addrs[i], h.msg_hdr.msg_namelen) };
        let len = (h.msg_len as usize).min(MAX_DATAGRAM);
        let start = i * MAX_DATAGRAM;
        Some((addr.as_socket()?, &self.data[start..start + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(socket: usize, tag: u8) -> Outgoing {
        Outgoing { to: "127.0.0.1:5071".parse().unwrap(), socket, buf: vec![tag] }
    }

    #[test]
    fn a_send_that_meets_eagain_keeps_the_rest_in_order_and_counts_it() {
        let mut q = SendQueue::default();
        for tag in 0..5 {
            q.push(out(0, tag)).unwrap();
        }
        let mut wire = Vec::new();
        // The kernel takes two, then refuses.
        let mut calls = 0;
        let r = q.flush(
            |_, run| {
                calls += 1;
                if calls == 1 {
                    wire.extend(run[..2].iter().map(|o| o.buf[0]));
                    Ok(2)
                } else {
                    Err(io::Error::from(io::ErrorKind::WouldBlock))
                }
            },
            |_, fate| assert_eq!(fate, Fate::Sent, "nothing failed"),
        );
        assert_eq!((r, q.len(), q.blocked), (Flushed::Blocked, 3, 1));
        // Meanwhile the router queues a later message of the same call: it goes after the others.
        q.push(out(0, 5)).unwrap();
        let r = q.flush(
            |_, run| {
                wire.extend(run.iter().map(|o| o.buf[0]));
                Ok(run.len())
            },
            |_, fate| assert_eq!(fate, Fate::Sent, "nothing failed"),
        );
        assert_eq!(r, Flushed::All);
        assert_eq!(wire, [0, 1, 2, 3, 4, 5], "order kept across the EAGAIN");
    }

    #[test]
    fn each_run_goes_to_one_socket_and_a_refused_datagram_is_counted_and_skipped() {
        let mut q = SendQueue::default();
        for (socket, tag) in [(0, 0), (0, 1), (1, 2), (0, 3)] {
            q.push(out(socket, tag)).unwrap();
        }
        let mut runs = Vec::new();
        let mut failed = 0;
        let mut returned = 0;
        let r = q.flush(
            |socket, run| {
                runs.push((socket, run.iter().map(|o| o.buf[0]).collect::<Vec<_>>()));
                if run[0].buf[0] == 2 {
                    return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
                }
                Ok(run.len())
            },
            |o, fate| {
                returned += 1;
                if fate == Fate::Refused {
                    assert_eq!(o.buf, [2], "the refused one");
                    failed += 1;
                }
            },
        );
        assert_eq!(r, Flushed::All);
        assert_eq!(runs, [(0, vec![0, 1]), (1, vec![2]), (0, vec![3])]);
        assert_eq!((failed, returned), (1, 4), "every buffer comes back, the refused one counted");
    }

    #[test]
    fn a_stuck_socket_costs_bounded_memory() {
        let mut q = SendQueue::default();
        for _ in 0..QUEUE_LIMIT {
            q.push(out(0, 0)).unwrap();
        }
        assert!(q.push(out(0, 1)).is_err());
        assert_eq!(q.len(), QUEUE_LIMIT);
    }

    #[test]
    fn recvmmsg_and_sendmmsg_move_a_batch_over_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let run: Vec<Outgoing> = (0..3u8).map(|i| Outgoing { to, socket: 0, buf: vec![b'x', i] }).collect();
        use std::os::fd::AsRawFd;
        assert_eq!(SendScratch::default().send(a.as_raw_fd(), &run).unwrap(), 3);
        let mut batch = RecvBatch::default();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 3);
        for i in 0..3u8 {
            assert_eq!(batch.get(usize::from(i)), Some((a.local_addr().unwrap(), &[b'x', i][..])));
        }
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
