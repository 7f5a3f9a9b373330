//! Shared helpers for the socket-level tests: start an emulator on loopback with short
//! intervals, a raw ESL client that reads frames with fsroute-esl's decoder, and a
//! bare UDP caller for the SIP side.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use fsroute_esl::{Decoder, Frame};
use fsroute_fsemu::sip::SipMessage;
use fsroute_fsemu::{Emulator, EmulatorConfig, EmulatorHandle};

pub fn emulator(tweak: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
    let mut cfg = EmulatorConfig {
        heartbeat: Duration::from_millis(200),
        answer_delay: Duration::from_millis(20),
        ..EmulatorConfig::default()
    };
    tweak(&mut cfg);
    Emulator::start(cfg).expect("emulator starts on loopback")
}

/// A bare TCP ESL client for byte-level assertions.
pub struct Raw {
    pub stream: TcpStream,
    decoder: Decoder,
}

impl Raw {
    pub fn connect(emu: &EmulatorHandle) -> Raw {
        let stream = TcpStream::connect(emu.esl_addr()).expect("connect to emulator");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Raw {
            stream,
            decoder: Decoder::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Exactly `n` bytes.
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).unwrap();
        buf
    }

    /// Everything until the server closes (fails after 5 s).
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.stream
            .read_to_end(&mut out)
            .expect("server closes the connection");
        out
    }

    /// The next frame, or `None` if none arrives within `timeout`.
    pub fn frame_within(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.decoder.next_frame().expect("well-formed stream") {
                return Some(f);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn frame(&mut self) -> Frame {
        self.frame_within(Duration::from_secs(5))
            .expect("a frame within 5 s")
    }

    /// Sends a command and returns the next non-event frame (its reply).
    pub fn command(&mut self, cmd: &str) -> Frame {
        self.send(format!("{cmd}\n\n").as_bytes());
        loop {
            let f = self.frame();
            if !f.content_type().unwrap_or("").starts_with("text/event") {
                return f;
            }
        }
    }

    /// Greeting plus successful `auth`.
    pub fn login(emu: &EmulatorHandle) -> Raw {
        let mut r = Raw::connect(emu);
        assert_eq!(r.frame().content_type(), Some("auth/request"));
        let reply = r.command("auth ClueCon");
        assert_eq!(reply.reply_text(), Some("+OK accepted"));
        r
    }
}

/// A caller on a plain UDP socket.
pub struct Uac {
    pub sock: UdpSocket,
    pub uas: SocketAddr,
}

impl Uac {
    pub fn new(emu: &EmulatorHandle) -> Uac {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        Uac {
            sock,
            uas: emu.sip_addr(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn send(&self, msg: &str) {
        self.sock.send_to(msg.as_bytes(), self.uas).unwrap();
    }

    pub fn recv_within(&self, timeout: Duration) -> Option<SipMessage> {
        recv(&self.sock, timeout)
    }

    pub fn recv(&self) -> SipMessage {
        self.recv_within(Duration::from_secs(3))
            .expect("a SIP message within 3 s")
    }

    pub fn invite(&self, call_id: &str, extra: &str) -> String {
        format!(
            "INVITE sip:100@{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=ft-{call_id}\r\nTo: <sip:100@{uas}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{me}>\r\n{extra}\
             Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n",
            uas = self.uas,
            me = self.addr()
        )
    }

    pub fn in_dialog(&self, method: &str, call_id: &str, to_tag: &str, cseq: u32) -> String {
        format!(
            "{method} sip:fsemu@{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{method}-{call_id}\r\n\
             From: <sip:caller@{me}>;tag=ft-{call_id}\r\nTo: <sip:100@{uas}>;tag={to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            uas = self.uas,
            me = self.addr()
        )
    }

    /// INVITE until 200; returns the 200.
    pub fn call(&self, call_id: &str) -> SipMessage {
        self.send(&self.invite(call_id, ""));
        loop {
            let m = self.recv();
            if m.status() == Some(200) {
                return m;
            }
        }
    }
}

pub fn recv(sock: &UdpSocket, timeout: Duration) -> Option<SipMessage> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 8192];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(SipMessage::parse(&buf[..n]).expect("the UAS sends well-formed SIP"))
}
