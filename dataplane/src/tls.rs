//! TLS on stream connections, sans-IO (docs/TCP.md, "TLS"): a TLS connection is a TCP connection
//! whose bytes pass through a rustls session before the framer and after the router. This module
//! owns that session ([`TlsSession`]: rustls's server side for a connection accepted on a `tls:`
//! listener, its client side for one opened to a TLS destination) and the configs the control
//! plane builds from `[tls]` and puts in the routing table ([`TlsContexts`]), so a SIGHUP that
//! re-reads the certificate reaches new connections while existing ones keep their session. The
//! shard shell moves the ciphertext between the socket and the session with its own non-blocking
//! `recv`/`send` (`shard.rs`); nothing here does I/O or takes a lock.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::conn::MAX_PENDING_OUTPUT;
use crate::framing::Framer;

/// The TLS configs of one routing table: what a `tls:` listener answers with (certificate, key,
/// client verification) and what TLS destinations are verified against. Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct TlsContexts {
    /// For connections accepted on `tls:` listeners; None without one.
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// For connections opened to TLS destinations; None without `[tls] ca`.
    pub client: Option<Arc<rustls::ClientConfig>>,
}

/// What one [`TlsSession::process`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// The handshake completed with these bytes (once per session).
    pub handshake_done: bool,
    /// The peer closed its side (close_notify, or EOF without one): end the connection.
    pub peer_closed: bool,
}

/// One connection's TLS state. The handshake's bytes, alerts and records wait in rustls until
/// [`TlsSession::write_tls`] hands them to the socket; what the socket does not take stays there,
/// bounded like a TCP connection's pending output ([`MAX_PENDING_OUTPUT`]).
#[derive(Debug)]
pub struct TlsSession {
    conn: rustls::Connection,
    handshaken: bool,
}

impl TlsSession {
    /// The server side, for a connection accepted on a `tls:` listener.
    pub fn server(config: &Arc<rustls::ServerConfig>) -> Result<TlsSession, rustls::Error> {
        let conn = rustls::ServerConnection::new(config.clone())?;
        Ok(TlsSession::with(rustls::Connection::Server(conn)))
    }

    /// The client side, for a connection to the TLS destination at `ip`: its certificate must
    /// carry that IP (an IP SAN), since destinations are written as IP literals.
    pub fn client(config: &Arc<rustls::ClientConfig>, ip: IpAddr) -> Result<TlsSession, rustls::Error> {
        let conn = rustls::ClientConnection::new(config.clone(), ServerName::IpAddress(ip.into()))?;
        Ok(TlsSession::with(rustls::Connection::Client(conn)))
    }

    fn with(mut conn: rustls::Connection) -> TlsSession {
        // Plaintext written before the handshake is done, and records the socket did not take,
        // are held to the bound a TCP connection's pending output has.
        conn.set_buffer_limit(Some(MAX_PENDING_OUTPUT));
        TlsSession { conn, handshaken: false }
    }

    /// Whether the handshake has completed.
    pub fn is_established(&self) -> bool {
        self.handshaken
    }

    /// Reads ciphertext from `rd` (the socket): Ok(0) at EOF. Call [`Self::process`] after each
    /// read that returned bytes.
    pub fn read_tls(&mut self, rd: &mut dyn Read) -> io::Result<usize> {
        self.conn.read_tls(rd)
    }

    /// Decrypts what [`Self::read_tls`] brought and moves the plaintext into `framer`. Err: a
    /// failed handshake, a bad record or an alert from the peer; rustls may have queued an alert
    /// to send ([`Self::wants_write`]) before the connection is closed.
    pub fn process(&mut self, framer: &mut Framer) -> Result<Processed, rustls::Error> {
        self.conn.process_new_packets()?;
        let mut p = Processed::default();
        if !self.handshaken && !self.conn.is_handshaking() {
            self.handshaken = true;
            p.handshake_done = true;
        }
        loop {
            let room = framer.spare();
            match self.conn.reader().read(room) {
                Ok(0) => {
                    framer.filled(0);
                    p.peer_closed = true;
                    break;
                }
                Ok(n) => framer.filled(n),
                Err(e) => {
                    framer.filled(0);
                    p.peer_closed = e.kind() != io::ErrorKind::WouldBlock;
                    break;
                }
            }
        }
        Ok(p)
    }

    /// Encrypts one message (buffered until the handshake is done); false when that would pass
    /// the output bound: the peer is not reading and the connection must be closed.
    pub fn write(&mut self, plaintext: &[u8]) -> bool {
        matches!(self.conn.writer().write(plaintext), Ok(n) if n == plaintext.len())
    }

    /// Whether records (handshake, alerts, data) wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Hands waiting records to `wr` (the socket) until it takes no more or none wait; Ok(true)
    /// when none wait any longer. A socket that is full is not an error: Ok(false).
    pub fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(wr) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The certificate chain the peer presented (a verified client certificate, or the server's).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::Frame;
    use std::io::Cursor;

    /// A server config with a self-signed certificate for 127.0.0.1 made now, and a client
    /// config that trusts it.
    fn pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let der = cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key_der)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Moves what `from` wants to send into `to`, as a socket pair would.
    fn pump(from: &mut TlsSession, to: &mut TlsSession, framer: &mut Framer) -> Processed {
        let mut wire = Vec::new();
        assert!(from.write_tls(&mut wire).unwrap());
        if wire.is_empty() {
            return Processed::default();
        }
        let mut rd = Cursor::new(wire);
        let mut p = Processed::default();
        while (rd.position() as usize) < rd.get_ref().len() {
            to.read_tls(&mut rd).unwrap();
            let q = to.process(framer).unwrap();
            p.handshake_done |= q.handshake_done;
            p.peer_closed |= q.peer_closed;
        }
        p
    }

    #[test]
    fn a_message_written_before_the_handshake_arrives_framed_once_it_is_done() {
        let (server_cfg, client_cfg) = pair();
        let mut server = TlsSession::server(&server_cfg).unwrap();
        let mut client = TlsSession::client(&client_cfg, "127.0.0.1".parse().unwrap()).unwrap();
        let (mut at_server, mut at_client) = (Framer::new(65_535), Framer::new(65_535));
        let msg = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        assert!(client.write(msg), "buffered until the handshake is done");
        let mut done = (false, false);
        for _ in 0..6 {
            done.0 |= pump(&mut client, &mut server, &mut at_server).handshake_done;
            done.1 |= pump(&mut server, &mut client, &mut at_client).handshake_done;
        }
        assert_eq!(done, (true, true));
        assert!(server.is_established() && client.is_established());
        assert_eq!(at_server.next_frame(), Ok(Some(Frame::Message(&msg[..]))));
    }

    #[test]
    fn garbage_instead_of_a_client_hello_is_an_error_with_an_alert_to_send() {
        let (server_cfg, _) = pair();
        let mut server = TlsSession::server(&server_cfg).unwrap();
        let mut framer = Framer::new(65_535);
        let mut rd = Cursor::new(b"INVITE sip:x SIP/2.0\r\n\r\n".to_vec());
        server.read_tls(&mut rd).unwrap();
        assert!(server.process(&mut framer).is_err());
        assert!(!server.is_established());
        assert!(server.wants_write(), "an alert tells the peer why");
    }

    #[test]
    fn output_past_the_bound_is_refused() {
        let (server_cfg, _) = pair();
        let mut server = TlsSession::server(&server_cfg).unwrap();
        assert!(server.write(&vec![0; MAX_PENDING_OUTPUT / 2]));
        assert!(!server.write(&vec![0; MAX_PENDING_OUTPUT]), "the peer is not reading");
    }
}
