//! Thin, safe wrappers over the few Linux calls the harness needs and std does not offer:
//! `recvmmsg`/`sendmmsg` batches (so the generator and the built-in UAS pay one syscall per
//! batch instead of one per datagram and can offer far more load than the proxy under test),
//! `poll` on several sockets, big socket buffers, and per-process CPU time from `/proc`
//! (utime + stime, so a busy-polling proxy is charged for its spinning).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Largest datagram we expect (SIP over UDP stays under the path MTU in practice; 4 KiB leaves room).
pub const MAX_DGRAM: usize = 4096;

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)), u16::from_be(s.sin_port))
}

/// Loopback is IPv4 here by rule; anything else is a harness bug.
pub fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(v) => v,
        SocketAddr::V6(_) => panic!("fsroute-bench only uses IPv4 loopback, got {a}"),
    }
}

/// A UDP socket on 127.0.0.1 with large buffers: at tens of thousands of datagrams per
/// second a default 208 KiB buffer overflows during a scheduler hiccup and the loss
/// would be charged to the proxy under test.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    set_buffers(s.as_raw_fd(), 4 << 20);
    Ok(s)
}

pub fn set_buffers(fd: RawFd, bytes: i32) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt with a valid fd and a pointer to a live i32 of the stated size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &bytes as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}

/// A batch of receive slots for `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<[u8; MAX_DGRAM]>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside point only into the batch's own heap buffers.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(n: usize) -> RecvBatch {
        let zero_addr = to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        RecvBatch {
            bufs: vec![[0u8; MAX_DGRAM]; n],
            addrs: vec![zero_addr; n],
            iovs: (0..n).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
            hdrs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    /// Non-blocking: returns how many datagrams arrived (0 when none is waiting).
    pub fn recv(&mut self, fd: RawFd) -> usize {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: MAX_DGRAM };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let r = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if r < 0 {
            0
        } else {
            r as usize
        }
    }

    pub fn get(&self, i: usize) -> (&[u8], SocketAddrV4) {
        let len = (self.hdrs[i].msg_len as usize).min(MAX_DGRAM);
        (&self.bufs[i][..len], from_sockaddr(&self.addrs[i]))
    }
}

/// Datagrams queued for one `sendmmsg`; bytes live contiguously to avoid an allocation per message.
#[derive(Default)]
pub struct SendQueue {
    data: Vec<u8>,
    entries: Vec<(usize, usize, SocketAddrV4)>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: pointers are rebuilt from owned buffers on every flush.
unsafe impl Send for SendQueue {}

impl SendQueue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends one datagram; the closure writes its bytes.
    pub fn push_with(&mut self, to: SocketAddrV4, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.data.len();
        write(&mut self.data);
        self.entries.push((start, self.data.len() - start, to));
    }

    pub fn push(&mut self, to: SocketAddrV4, bytes: &[u8]) {
        self.push_with(to, |d| d.extend_from_slice(bytes));
    }

    /// Sends everything queued on `fd` (blocking socket: a full send buffer waits rather
    /// than drops, so the generator never loses its own datagrams). Returns datagrams sent.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let n = self.entries.len();
        if n == 0 {
            return 0;
        }
        self.addrs.clear();
        self.iovs.clear();
        self.hdrs.clear();
        for &(_, _, to) in &self.entries {
            self.addrs.push(to_sockaddr(to));
        }
        for &(off, len, _) in &self.entries {
            self.iovs.push(libc::iovec { iov_base: self.data[off..].as_ptr() as *mut libc::c_void, iov_len: len });
        }
        for i in 0..n {
            // SAFETY: zeroed mmsghdr is valid; fields set below point into self's vectors,
            // which are not resized until the sendmmsg calls finish.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let mut sent = 0usize;
        let mut failures = 0;
        while sent < n {
            let chunk = (n - sent).min(1024);
            // SAFETY: hdrs[sent..sent+chunk] are valid headers built above.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[sent..].as_mut_ptr(), chunk as libc::c_uint, 0) };
            if r <= 0 {
                // ECONNREFUSED from an earlier ICMP, or EINTR: skip one datagram rather than spin.
                failures += 1;
                sent += 1;
                if failures > 64 {
                    break;
                }
                continue;
            }
            sent += r as usize;
        }
        self.entries.clear();
        self.data.clear();
        n
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes; returns the readable flags.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32, out: &mut Vec<bool>) {
    poll_readable_ns(fds, u64::from(timeout_ms.max(0) as u32) * 1_000_000, out);
}

/// Like [`poll_readable`] with a nanosecond timeout (ppoll): the generator sleeps until its
/// next call is due instead of spinning, which on a 2-core machine would steal the CPU the
/// system under test needs.
pub fn poll_readable_ns(fds: &[RawFd], timeout_ns: u64, out: &mut Vec<bool>) {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ts = libc::timespec { tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t, tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long };
    // SAFETY: p is a valid array of pollfd of the given length; ts outlives the call.
    let r = unsafe { libc::ppoll(p.as_mut_ptr(), p.len() as libc::nfds_t, &ts, std::ptr::null()) };
    out.clear();
    out.extend(p.iter().map(|x| r > 0 && x.revents & (libc::POLLIN | libc::POLLERR) != 0));
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of one process (all its threads) in seconds, from /proc/PID/stat.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the fields are numbered from 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

fn parent_pid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of a process and all its descendants that are alive now (Kamailio forks
/// its workers; fsroute and the relay are one process with threads).
pub fn tree_cpu_secs(root: u32) -> f64 {
    tree_pids(root).iter().filter_map(|&p| process_cpu_secs(p)).sum()
}

/// `root` and its descendants (Kamailio forks its workers).
pub fn tree_pids(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        let all: Vec<u32> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        let mut changed = true;
        while changed {
            changed = false;
            for &p in &all {
                if !pids.contains(&p) && parent_pid(p).is_some_and(|pp| pids.contains(&pp)) {
                    pids.push(p);
                    changed = true;
                }
            }
        }
    }
    pids
}

/// System calls a process tree makes while it runs, counted by `perf stat -e
/// raw_syscalls:sys_enter` attached to every process of the tree (all their threads). The
/// tracepoint adds a little to each syscall, so it is counted in a step of its own, never in a
/// step whose CPU is measured. None where perf or the tracepoint is unavailable.
pub struct SyscallCounter {
    perf: std::process::Child,
    out: std::path::PathBuf,
}

impl SyscallCounter {
    pub fn start(root: u32, out: std::path::PathBuf) -> Option<SyscallCounter> {
        let pids = tree_pids(root).iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let perf = std::process::Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", &pids, "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // perf counts from when it has attached; give it that before the load starts.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(SyscallCounter { perf, out })
    }

    /// Stops counting (SIGINT, as perf expects) and reads the total.
    pub fn finish(mut self) -> Option<u64> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.perf.id() as i32, libc::SIGINT);
        }
        self.perf.wait().ok()?;
        let text = std::fs::read_to_string(&self.out).ok()?;
        text.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.trim().parse().ok())
    }
}

/// CPU seconds used by this process so far (the generator's own cost, reported for context).
pub fn self_cpu_secs() -> f64 {
    process_cpu_secs(std::process::id()).unwrap_or(0.0)
}

/// A free UDP port on loopback (bind to 0, read, release). Racy in theory; fine on a bench box.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(0)
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(0)
}
