//! UDP sockets for the shards, built with socket2 (glommio 0.9 only wraps an existing fd): one
//! socket per shard and listener in one SO_REUSEPORT group, large kernel buffers, and optionally a
//! classic BPF program that spreads datagrams per packet instead of per flow.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// How datagrams are spread over the shards' sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ingress {
    /// Kernel REUSEPORT hashing by 4-tuple, then a hand-off to the Call-ID's owner shard: work
    /// spreads even from one peer and each call's messages keep their order.
    #[default]
    Flow,
    /// A random socket per datagram (classic BPF): even load with no hand-off, but two messages
    /// of one call can be processed on two cores at once and leave out of order.
    Random,
}

impl Ingress {
    pub fn from_name(s: &str) -> Option<Ingress> {
        match s {
            "flow" => Some(Ingress::Flow),
            "random" => Some(Ingress::Random),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Ingress::Flow => "flow",
            Ingress::Random => "random",
        }
    }
}

/// Kernel buffer size asked for each socket; the kernel caps it at net.core.rmem_max/wmem_max
/// (tuning/sysctl.d/90-fsroute.conf raises those).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// The CPUs this process may run on (its affinity mask), in ascending order: shards are pinned to
/// these, so `taskset`/systemd `CPUAffinity=` choose the cores.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Binds `count` sockets to `addr` in one REUSEPORT group.
pub fn bind_group(addr: SocketAddr, count: usize, ingress: Ingress) -> io::Result<Vec<OwnedFd>> {
    // SO_REUSEPORT lets any process of the same user join a group and silently take a share of
    // the traffic: a second fsroute started by mistake (or one still draining) would. A plain
    // bind first makes "address in use" an error at startup instead.
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            probe.set_only_v6(true)?;
        }
        probe.bind(&addr.into())?;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        // Best effort: a smaller buffer is a tuning problem, not a reason to refuse to start.
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        if out.is_empty() {
            // The kernel silently caps the request at rmem_max/wmem_max (and reports double).
            let (rcv, snd) = (s.recv_buffer_size().unwrap_or(0), s.send_buffer_size().unwrap_or(0));
            if rcv < SOCKET_BUFFER || snd < SOCKET_BUFFER {
                tracing::warn!(%addr, rcvbuf = rcv, sndbuf = snd, wanted = SOCKET_BUFFER, "socket buffers capped by the kernel; see tuning/sysctl.d/90-fsroute.conf");
            } else {
                tracing::debug!(%addr, rcvbuf = rcv, sndbuf = snd, "socket buffers");
            }
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        out.push(OwnedFd::from(s));
    }
    if ingress == Ingress::Random && count > 1 {
        attach_random_cbpf(&out[0], count as u32)?;
    }
    Ok(out)
}

/// Binds `count` listening TCP sockets to `addr` in one REUSEPORT group, one per shard: the
/// kernel spreads new connections over them by 4-tuple, and each connection then lives on the
/// shard whose listener took it (docs/TCP.md). Port 0 is resolved on the first socket and the
/// others join its port. As for UDP, a plain bind first makes a port another process holds an
/// error at startup rather than a silent share of its connections.
pub fn bind_tcp_group(addr: SocketAddr, count: usize) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            probe.set_only_v6(true)?;
        }
        probe.bind(&addr.into())?;
    }
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_port(true)?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        if addr.port() == 0 {
            addr = s.local_addr()?.as_socket().ok_or_else(|| io::Error::other("listener without an IP address"))?;
        }
        s.listen(1024)?;
        out.push(OwnedFd::from(s));
    }
    Ok((addr, out))
}

/// `SO_ATTACH_REUSEPORT_CBPF`: load the kernel's per-packet random word, `A %= n`, return A: the
/// index of the socket in the group that gets the datagram.
fn attach_random_cbpf(fd: &OwnedFd, n: u32) -> io::Result<()> {
    const SKF_AD_OFF: u32 = 0xffff_f000; // -0x1000
    const SKF_AD_RANDOM: u32 = 56;
    let mut prog = [
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: SKF_AD_OFF.wrapping_add(SKF_AD_RANDOM) },
        libc::sock_filter { code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16, jt: 0, jf: 0, k: n },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_A) as u16, jt: 0, jf: 0, k: 0 },
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: fprog points at a live, correctly sized filter array for the duration of the call;
    // the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::FromRawFd;
    use std::os::fd::IntoRawFd;
    use std::time::Duration;

    fn group_shares(ingress: Ingress) -> [usize; 2] {
        let fds = bind_group("127.0.0.1:0".parse().unwrap(), 1, ingress).unwrap();
        // Port 0 picks a port for the first socket; bind the second to the same one.
        let first = unsafe { UdpSocket::from_raw_fd(fds.into_iter().next().unwrap().into_raw_fd()) };
        let addr = first.local_addr().unwrap();
        drop(first);
        let socks: Vec<UdpSocket> = bind_group(addr, 2, ingress)
            .unwrap()
            .into_iter()
            .map(|fd| unsafe { UdpSocket::from_raw_fd(fd.into_raw_fd()) })
            .collect();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            peer.send_to(b"x", addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut shares = [0; 2];
        let mut buf = [0u8; 16];
        for (i, s) in socks.iter().enumerate() {
            while s.recv_from(&mut buf).is_ok() {
                shares[i] += 1;
            }
        }
        shares
    }

    #[test]
    fn a_tcp_group_shares_one_port_and_refuses_a_held_one() {
        let (addr, fds) = bind_tcp_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(fds.len(), 2);
        std::net::TcpStream::connect(addr).expect("the group accepts connections");
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_tcp_group(held.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_port_another_process_holds_is_refused() {
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = bind_group(held.local_addr().unwrap(), 2, Ingress::Flow).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn one_peer_lands_on_one_socket_with_flow_ingress() {
        let s = group_shares(Ingress::Flow);
        assert_eq!(s[0] + s[1], 200);
        assert!(s[0] == 200 || s[1] == 200, "{s:?}");
    }

    #[test]
    fn random_ingress_spreads_one_peer_over_both_sockets() {
        let s = group_shares(Ingress::Random);
        assert_eq!(s[0] + s[1], 200);
        assert!(s[0] > 50 && s[1] > 50, "{s:?}");
    }
}

/// Every address of this host's interfaces (getifaddrs), for recognising a request addressed to
/// fsroute through a wildcard listener. Errors are the OS's.
pub fn host_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we own until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let ip = match family {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(std::net::IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(std::net::IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            };
            if let Some(ip) = ip.filter(|ip| !out.contains(ip)) {
                out.push(ip);
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the head getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn host_addresses_include_loopback() {
        let ips = super::host_addresses().unwrap();
        assert!(ips.contains(&std::net::IpAddr::from([127, 0, 0, 1])), "{ips:?}");
    }
}
