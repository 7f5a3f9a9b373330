//! The bare UDP relay: the syscall floor a SIP proxy is measured against. One `recvfrom` and
//! one `sendto` per datagram, no parsing, like fsroute's per-datagram socket calls (so the
//! ratio compares the work above the syscalls, not batching). It maps flows, not calls: each
//! client address gets its own upstream socket to one backend (round-robin over backends by
//! first sight), and whatever comes back on that socket goes to that client. Threads share
//! the listen port with SO_REUSEPORT, so like plain REUSEPORT one peer lands on one thread.
//!
//! It runs as `fsroute-bench relay ...` in its own process so /proc charges its CPU to it alone.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};

use crate::sys;

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    // SAFETY: plain socket/setsockopt/bind on a fresh fd we own; converted to UdpSocket at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = UdpSocket::from_raw_fd(fd);
        let one: i32 = 1;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, (&one as *const i32).cast(), 4);
        let SocketAddr::V4(a) = addr else { return Err(std::io::Error::other("IPv4 only")) };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
            sin_zero: [0; 8],
        };
        if libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        sys::set_buffers(fd, 4 << 20);
        Ok(sock)
    }
}

/// Runs the relay until the process is killed.
pub fn run(listen: SocketAddr, backends: Vec<SocketAddr>, threads: usize) -> std::io::Result<()> {
    assert!(!backends.is_empty(), "relay needs a backend");
    let socks: Vec<UdpSocket> = (0..threads.max(1)).map(|_| reuseport_socket(listen)).collect::<Result<_, _>>()?;
    println!("relay ready listen={listen}");
    let handles: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(t, s)| {
            let backends = backends.clone();
            std::thread::spawn(move || serve(s, backends, t))
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn serve(listen: UdpSocket, backends: Vec<SocketAddr>, thread: usize) {
    listen.set_nonblocking(true).ok();
    let mut ups: Vec<(UdpSocket, SocketAddr, SocketAddr)> = Vec::new(); // (socket, client, backend)
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut fds: Vec<i32> = vec![listen.as_raw_fd()];
    let mut readable = Vec::new();
    let mut next_backend = thread;
    loop {
        sys::poll_readable(&fds, 100, &mut readable);
        for (i, ready) in readable.clone().into_iter().enumerate() {
            if !ready {
                continue;
            }
            if i == 0 {
                while let Ok((n, src)) = listen.recv_from(&mut buf) {
                    let u = match by_client.get(&src) {
                        Some(&u) => u,
                        None => {
                            let Ok(s) = sys::bind_udp("127.0.0.1:0".parse().unwrap()) else { continue };
                            s.set_nonblocking(true).ok();
                            fds.push(s.as_raw_fd());
                            let b = backends[next_backend % backends.len()];
                            next_backend += 1;
                            ups.push((s, src, b));
                            by_client.insert(src, ups.len() - 1);
                            ups.len() - 1
                        }
                    };
                    let _ = ups[u].0.send_to(&buf[..n], ups[u].2);
                }
            } else {
                let (s, client, _) = &ups[i - 1];
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    let _ = listen.send_to(&buf[..n], *client);
                }
            }
        }
    }
}
