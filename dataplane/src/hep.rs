//! HEP version 3 (the Homer Encapsulation Protocol, also called EEP), the encoder only: one
//! captured SIP message (a datagram, or one framed off a TCP/TLS stream, decrypted), its addresses, ports, wall-clock time and fsroute's capture agent id,
//! written as one HEP packet into a buffer the caller owns, ready for a UDP socket towards a
//! collector (Homer's heplify-server, `sngrep -L udp:...`). Sans-IO: no socket, no clock, no
//! allocation once the buffer has room. The wire format is HEP3 as sipcapture documents it
//! (github.com/sipcapture/HEP, `docs/HEP3_Network_Protocol_Specification_REV_37.pdf`); the
//! chunks fsroute writes and why are in docs/CAPTURE.md.
//!
//! A packet is the 4 bytes `HEP3`, a 16-bit total length (header included), then chunks, each a
//! 16-bit vendor id (0 = the generic chunks), a 16-bit type, a 16-bit length (its own 6-byte
//! header included) and the value; all big-endian. fsroute writes the generic chunks a collector
//! needs to file a SIP message, in the order heplify-server's own encoder writes them.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest HEP packet: its length field has 16 bits.
pub const MAX_PACKET: usize = u16::MAX as usize;

/// Generic (vendor 0) chunk types of HEP3.
mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTOCOL: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const TIME_SECONDS: u16 = 0x0009;
    pub const TIME_MICROS: u16 = 0x000a;
    pub const PROTOCOL_TYPE: u16 = 0x000b;
    pub const CAPTURE_ID: u16 = 0x000c;
    pub const PAYLOAD: u16 = 0x000f;
}

/// Values of the chunks above: address families as the spec numbers them (Linux's AF_INET and
/// AF_INET6), IP protocol 17 (UDP) or 6 (TCP, for TLS too: the payload is the decrypted
/// message, as collectors expect it), HEP protocol type 1 (SIP).
const FAMILY_V4: u8 = 2;
const FAMILY_V6: u8 = 10;
const PROTO_UDP: u8 = 17;
const PROTO_TCP: u8 = 6;
const TYPE_SIP: u8 = 1;

/// Chunk header: vendor, type, length.
const CHUNK_HEADER: usize = 6;

/// Bytes of a packet besides the payload: the 6-byte packet header and every chunk but the
/// payload's value, for 4-byte (IPv4) or 16-byte (IPv6) addresses.
const fn overhead(addr_len: usize) -> usize {
    6 + (CHUNK_HEADER + 1) * 3 // family, protocol, protocol type
        + (CHUNK_HEADER + addr_len) * 2
        + (CHUNK_HEADER + 2) * 2 // ports
        + (CHUNK_HEADER + 4) * 3 // seconds, microseconds, capture id
        + CHUNK_HEADER // the payload chunk's header
}

/// The largest payload any packet can carry (an IPv6 one).
pub const MAX_PAYLOAD: usize = MAX_PACKET - overhead(16);

/// What a HEP packet says about the datagram it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HepMeta {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// When the datagram was received or sent: Unix seconds and the microseconds past them.
    pub time: WallTime,
    /// The capture agent id (`[capture] capture_id`), Homer's "node".
    pub capture_id: u32,
    /// What the message travelled on: the IP protocol chunk says UDP or TCP.
    pub transport: crate::conn::Transport,
}

/// A wall-clock instant as HEP carries it: seconds since the Unix epoch (32 bits, so until 2106)
/// and microseconds within that second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallTime {
    pub seconds: u32,
    pub micros: u32,
}

impl WallTime {
    /// A clock before 1970 reads as the epoch, one past 2106 as its last second.
    pub fn from_system(t: SystemTime) -> WallTime {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        WallTime { seconds: u32::try_from(d.as_secs()).unwrap_or(u32::MAX), micros: d.subsec_micros() }
    }

    pub fn now() -> WallTime {
        WallTime::from_system(SystemTime::now())
    }
}

/// A payload too large for the 16-bit length of a HEP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {len}-byte datagram does not fit a HEP packet ({max} bytes of payload at most)")]
pub struct TooLarge {
    pub len: usize,
    pub max: usize,
}

/// Both addresses in one family, as a packet's single family chunk requires: IPv4 when both are
/// IPv4 (or IPv4-mapped IPv6, as a dual-stack socket reports an IPv4 peer), otherwise IPv6 with
/// any IPv4 address mapped.
enum Addrs {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

fn v4_of(ip: IpAddr) -> Option<[u8; 4]> {
    match ip {
        IpAddr::V4(v4) => Some(v4.octets()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| v4.octets()),
    }
}

fn v6_of(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn addrs(src: IpAddr, dst: IpAddr) -> Addrs {
    match (v4_of(src), v4_of(dst)) {
        (Some(s), Some(d)) => Addrs::V4(s, d),
        _ => Addrs::V6(v6_of(src), v6_of(dst)),
    }
}

/// The packet length for `meta` and a `payload_len`-byte payload (None if it exceeds
/// [`MAX_PACKET`]).
pub fn encoded_len(meta: &HepMeta, payload_len: usize) -> Option<usize> {
    let addr_len = match addrs(meta.src.ip(), meta.dst.ip()) {
        Addrs::V4(..) => 4,
        Addrs::V6(..) => 16,
    };
    let len = overhead(addr_len) + payload_len;
    (len <= MAX_PACKET).then_some(len)
}

/// The chunks before the payload's value, assembled on the stack: two copies into the caller's
/// buffer per packet (this and the payload) instead of a capacity check per field.
struct Head {
    bytes: [u8; overhead(16)],
    len: usize,
}

impl Head {
    fn put(&mut self, kind: u16, value: &[u8]) {
        // The caller checked the packet length, so every chunk length fits 16 bits.
        let len = (CHUNK_HEADER + value.len()) as u16;
        let b = &mut self.bytes[self.len..self.len + CHUNK_HEADER + value.len()];
        b[..2].copy_from_slice(&[0, 0]);
        b[2..4].copy_from_slice(&kind.to_be_bytes());
        b[4..6].copy_from_slice(&len.to_be_bytes());
        b[6..].copy_from_slice(value);
        self.len += CHUNK_HEADER + value.len();
    }
}

/// Writes one HEP3 packet carrying `payload` into `out` (cleared first) and returns its length.
/// Allocates only when `out` has less capacity than the packet.
pub fn encode(meta: &HepMeta, payload: &[u8], out: &mut Vec<u8>) -> Result<usize, TooLarge> {
    let addrs = addrs(meta.src.ip(), meta.dst.ip());
    let max_payload = MAX_PACKET - overhead(if matches!(addrs, Addrs::V4(..)) { 4 } else { 16 });
    if payload.len() > max_payload {
        return Err(TooLarge { len: payload.len(), max: max_payload });
    }
    let total = MAX_PACKET - max_payload + payload.len();
    let proto = if meta.transport.is_stream() { PROTO_TCP } else { PROTO_UDP };
    let mut h = Head { bytes: [0; overhead(16)], len: 6 };
    h.bytes[..4].copy_from_slice(b"HEP3");
    h.bytes[4..6].copy_from_slice(&(total as u16).to_be_bytes());
    match addrs {
        Addrs::V4(s, d) => {
            h.put(chunk::IP_FAMILY, &[FAMILY_V4]);
            h.put(chunk::IP_PROTOCOL, &[proto]);
            h.put(chunk::IPV4_SRC, &s);
            h.put(chunk::IPV4_DST, &d);
        }
        Addrs::V6(s, d) => {
            h.put(chunk::IP_FAMILY, &[FAMILY_V6]);
            h.put(chunk::IP_PROTOCOL, &[proto]);
            h.put(chunk::IPV6_SRC, &s);
            h.put(chunk::IPV6_DST, &d);
        }
    }
    h.put(chunk::SRC_PORT, &meta.src.port().to_be_bytes());
    h.put(chunk::DST_PORT, &meta.dst.port().to_be_bytes());
    h.put(chunk::TIME_SECONDS, &meta.time.seconds.to_be_bytes());
    h.put(chunk::TIME_MICROS, &meta.time.micros.to_be_bytes());
    h.put(chunk::PROTOCOL_TYPE, &[TYPE_SIP]);
    h.put(chunk::CAPTURE_ID, &meta.capture_id.to_be_bytes());
    // The payload chunk's header; its value is the payload itself.
    let payload_len = ((CHUNK_HEADER + payload.len()) as u16).to_be_bytes();
    h.put(chunk::PAYLOAD, &[]);
    h.bytes[h.len - 2..h.len].copy_from_slice(&payload_len);
    out.clear();
    out.reserve(total);
    out.extend_from_slice(&h.bytes[..h.len]);
    out.extend_from_slice(payload);
    debug_assert_eq!(out.len(), total);
    Ok(total)
}

#[cfg(test)]
mod tests {
    //! The encoder checked against a decoder written from the spec's tables (literal chunk
    //! numbers, not the encoder's constants: `testing::decode_hep`) and against the chunk bytes
    //! of heplify-server's own test packet (`decoder/decoder_test.go`, `hepPacket`,
    //! github.com/sipcapture/heplify-server).

    use super::*;
    use crate::testing::decode_hep as decode;

    /// heplify-server's test packet up to its capture-id chunk (192.168.247.250:5060 to
    /// 192.168.245.250:5060, 1520606104.119540, capture id 0), total length still to be set.
    /// Its next chunk is an empty authentication key (0x000e), which fsroute does not send.
    const HEPLIFY_HEAD: [u8; 93] = [
        0x48, 0x45, 0x50, 0x33, 0x03, 0x0a, //
        0x00, 0x00, 0x00, 0x01, 0x00, 0x07, 0x02, //
        0x00, 0x00, 0x00, 0x02, 0x00, 0x07, 0x11, //
        0x00, 0x00, 0x00, 0x03, 0x00, 0x0a, 0xc0, 0xa8, 0xf7, 0xfa, //
        0x00, 0x00, 0x00, 0x04, 0x00, 0x0a, 0xc0, 0xa8, 0xf5, 0xfa, //
        0x00, 0x00, 0x00, 0x07, 0x00, 0x08, 0x13, 0xc4, //
        0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x13, 0xc4, //
        0x00, 0x00, 0x00, 0x09, 0x00, 0x0a, 0x5a, 0xa2, 0x9b, 0x98, //
        0x00, 0x00, 0x00, 0x0a, 0x00, 0x0a, 0x00, 0x01, 0xd2, 0xf4, //
        0x00, 0x00, 0x00, 0x0b, 0x00, 0x07, 0x01, //
        0x00, 0x00, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, //
    ];

    const OK_200: &[u8] = b"SIP/2.0 200 OK\r\nCall-ID: BC099884@6dfcffe8\r\nCSeq: 215834489 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    fn heplify_meta() -> HepMeta {
        HepMeta {
            src: "192.168.247.250:5060".parse().unwrap(),
            dst: "192.168.245.250:5060".parse().unwrap(),
            time: WallTime { seconds: 1_520_606_104, micros: 119_540 },
            capture_id: 0,
            transport: crate::conn::Transport::Udp,
        }
    }

    #[test]
    fn an_ipv4_packet_has_heplify_servers_chunk_bytes_then_the_payload() {
        let mut out = Vec::new();
        let n = encode(&heplify_meta(), OK_200, &mut out).unwrap();
        let total = HEPLIFY_HEAD.len() + 6 + OK_200.len();
        assert_eq!(n, total);
        let mut want = HEPLIFY_HEAD.to_vec();
        want[4..6].copy_from_slice(&(total as u16).to_be_bytes());
        want.extend_from_slice(&[0x00, 0x00, 0x00, 0x0f]);
        want.extend_from_slice(&((6 + OK_200.len()) as u16).to_be_bytes());
        want.extend_from_slice(OK_200);
        assert_eq!(out, want);
    }

    #[test]
    fn the_test_decoder_reads_heplify_servers_packet_with_its_auth_key_chunk() {
        // The decoder is checked on a packet fsroute did not write: heplify-server's, whose empty
        // 0x000e chunk a reader must step over.
        let mut p = HEPLIFY_HEAD.to_vec();
        p.extend_from_slice(&[0x00, 0x00, 0x00, 0x0e, 0x00, 0x06]);
        p.extend_from_slice(&[0x00, 0x00, 0x00, 0x0f]);
        p.extend_from_slice(&((6 + OK_200.len()) as u16).to_be_bytes());
        p.extend_from_slice(OK_200);
        let len = p.len() as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        let d = decode(&p).unwrap();
        assert_eq!(d.src_ip, Some("192.168.247.250".parse().unwrap()));
        assert_eq!((d.src_port, d.dst_port, d.seconds, d.micros), (Some(5060), Some(5060), Some(0x5aa2_9b98), Some(0x1_d2f4)));
        assert_eq!(d.payload.as_deref(), Some(OK_200));
    }

    #[test]
    fn every_field_a_collector_files_a_sip_message_by_decodes_back() {
        let meta = HepMeta {
            src: "10.1.2.3:5062".parse().unwrap(),
            dst: "127.0.0.1:5060".parse().unwrap(),
            time: WallTime { seconds: 1_764_685_534, micros: 999_999 },
            capture_id: 2001,
            transport: crate::conn::Transport::Udp,
        };
        let mut out = Vec::new();
        encode(&meta, OK_200, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!(d.family, Some(2));
        assert_eq!(d.protocol, Some(17));
        assert_eq!(d.src_ip, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(d.dst_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((d.src_port, d.dst_port), (Some(5062), Some(5060)));
        assert_eq!((d.seconds, d.micros), (Some(1_764_685_534), Some(999_999)));
        assert_eq!(d.proto_type, Some(1), "SIP");
        assert_eq!(d.capture_id, Some(2001));
        assert_eq!(d.payload.as_deref(), Some(OK_200));
        assert_eq!(d.order, [1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 15]);
    }

    #[test]
    fn a_message_off_a_tcp_or_tls_stream_is_filed_as_ip_protocol_tcp() {
        let mut out = Vec::new();
        for (transport, want) in [(crate::conn::Transport::Tcp, 6), (crate::conn::Transport::Tls, 6), (crate::conn::Transport::Udp, 17)] {
            encode(&HepMeta { transport, ..heplify_meta() }, OK_200, &mut out).unwrap();
            assert_eq!(decode(&out).unwrap().protocol, Some(want), "{transport:?}");
        }
    }

    #[test]
    fn ipv6_addresses_use_the_ipv6_chunks_and_a_mapped_ipv4_pair_stays_ipv4() {
        let mut out = Vec::new();
        let v6 = HepMeta {
            src: "[2001:db8::1]:5060".parse().unwrap(),
            dst: "[::1]:15060".parse().unwrap(),
            ..heplify_meta()
        };
        encode(&v6, OK_200, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!(d.family, Some(10));
        assert_eq!(d.src_ip, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(d.dst_ip, Some("::1".parse().unwrap()));
        assert_eq!(d.order, [1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 15]);
        assert_eq!(encoded_len(&v6, OK_200.len()), Some(out.len()));

        // A dual-stack listener sees an IPv4 peer as ::ffff:a.b.c.d.
        let mapped = HepMeta { src: "[::ffff:10.0.0.7]:5070".parse().unwrap(), ..heplify_meta() };
        encode(&mapped, OK_200, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!((d.family, d.src_ip), (Some(2), Some("10.0.0.7".parse().unwrap())));

        // An IPv4 address against a true IPv6 one: both as IPv6, the IPv4 one mapped.
        let mixed = HepMeta { dst: "[2001:db8::2]:5060".parse().unwrap(), ..heplify_meta() };
        encode(&mixed, OK_200, &mut out).unwrap();
        let d = decode(&out).unwrap();
        assert_eq!((d.family, d.src_ip), (Some(10), Some("::ffff:192.168.247.250".parse().unwrap())));
    }

    #[test]
    fn a_payload_past_the_16_bit_length_is_refused_and_the_largest_one_fits() {
        let meta = heplify_meta();
        let mut out = Vec::new();
        let max_v4 = MAX_PACKET - encoded_len(&meta, 0).unwrap();
        let big = vec![b'x'; max_v4];
        assert_eq!(encode(&meta, &big, &mut out), Ok(MAX_PACKET));
        assert_eq!(decode(&out).unwrap().payload.map(|p| p.len()), Some(max_v4));
        let too_big = vec![b'x'; max_v4 + 1];
        assert_eq!(encode(&meta, &too_big, &mut out), Err(TooLarge { len: max_v4 + 1, max: max_v4 }));
        assert_eq!(encoded_len(&meta, max_v4 + 1), None);
        assert!(MAX_PAYLOAD < max_v4, "IPv6 addresses take 24 more bytes");
    }

    #[test]
    fn encoding_into_a_buffer_with_room_does_not_reallocate_it() {
        let mut out = Vec::with_capacity(2048);
        let before = out.as_ptr();
        for _ in 0..3 {
            encode(&heplify_meta(), OK_200, &mut out).unwrap();
        }
        assert_eq!(out.as_ptr(), before);
    }

    #[test]
    fn wall_time_splits_seconds_and_microseconds() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_764_685_534_123_456);
        assert_eq!(WallTime::from_system(t), WallTime { seconds: 1_764_685_534, micros: 123_456 });
        assert_eq!(WallTime::from_system(UNIX_EPOCH - std::time::Duration::from_secs(1)), WallTime::default());
    }
}
