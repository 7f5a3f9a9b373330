//! OpenSIPS compatibility: `ds_get_hash`, the hash keys OpenSIPS extracts from Call-ID and URIs, and its
//! cumulative-weight pick. With `hash = "opensips"` fsroute must send a call to the same destination an
//! OpenSIPS `dispatcher` would, so everything here reproduces OpenSIPS bit for bit (docs/OPENSIPS.md §1.3),
//! quirks included.

use crate::sip::is_lws;

/// One key's contribution to `ds_get_hash`. OpenSIPS walks the key as `char`, which is signed on the
/// platforms it ships for, so bytes >= 0x80 are sign-extended before the shifts (the `"é-callid"` vector
/// pins this down).
#[inline]
fn absorb(mut h: u32, key: &[u8]) -> u32 {
    #[inline(always)]
    fn sc(b: u8) -> u32 {
        b as i8 as i32 as u32
    }
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let v = (sc(c[0]) << 24)
            .wrapping_add(sc(c[1]) << 16)
            .wrapping_add(sc(c[2]) << 8)
            .wrapping_add(sc(c[3]));
        h = h.wrapping_add(v ^ (v >> 3));
    }
    let mut v: u32 = 0;
    for &b in chunks.remainder() {
        v = (v << 8).wrapping_add(sc(b));
    }
    // OpenSIPS folds the tail even when it is empty; with v == 0 that adds 0, but keep the shape.
    h.wrapping_add(v ^ (v >> 3))
}

/// OpenSIPS `ds_get_hash(k1, k2)`, bit for bit: signed-char bytes, 32-bit wrapping arithmetic, and
/// never 0 (OpenSIPS reserves 0 for "no hash", so a real 0 becomes 1).
pub fn opensips_hash(k1: &[u8], k2: &[u8]) -> u32 {
    let h = absorb(absorb(0, k1), k2);
    let h = h
        .wrapping_add(h >> 11)
        .wrapping_add((h >> 13).wrapping_add(h >> 23));
    if h == 0 {
        1
    } else {
        h
    }
}


/// Strips the characters OpenSIPS's `trim()` strips (space, tab, CR, LF) from both ends. OpenSIPS trims
/// the Call-ID body before `ds_hash_callid` hashes it, so a folded or padded Call-ID must hash the same
/// as a tight one.
pub fn trim_callid(callid: &[u8]) -> &[u8] {
    let start = callid
        .iter()
        .position(|&b| !is_lws(b))
        .unwrap_or(callid.len());
    let end = callid
        .iter()
        .rposition(|&b| !is_lws(b))
        .map_or(start, |i| i + 1);
    &callid[start..end]
}

#[inline]
fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

const SIP_PORT: u32 = 5060;
const SIPS_PORT: u32 = 5061;

/// OpenSIPS `get_uri_hash_keys()`: `(user, host[:port])`, where the `:port` is kept only when the URI
/// has a port and it differs from the scheme's default (5060 for `sip:`, 5061 for `sips:`), so
/// `sip:a@h` and `sip:a@h:5060` hash alike. Both keys borrow from `uri`.
///
/// Accepts a bare URI or a name-addr (`"Alice" <sip:alice@h>;tag=1`: the part inside `<>` is used).
/// The user is the userinfo up to any `:password`. IPv6 hosts keep their brackets (`[::1]:5070`), as
/// OpenSIPS's parser stores them. A `tel:` URI yields `(number, "")`. Input that is not a URI at all is
/// read as a scheme-less SIP URI; the result is still deterministic, which is all a hash key needs.
pub fn opensips_uri_keys(uri: &[u8]) -> (&[u8], &[u8]) {
    let mut s = uri;
    if let Some(lt) = memchr::memchr(b'<', s) {
        s = &s[lt + 1..];
        if let Some(gt) = memchr::memchr(b'>', s) {
            s = &s[..gt];
        }
    }
    let s = trim_callid(s);

    let (rest, default_port) = if let Some(r) = strip_prefix_ci(s, b"sips:") {
        (r, SIPS_PORT)
    } else if let Some(r) = strip_prefix_ci(s, b"sip:") {
        (r, SIP_PORT)
    } else if let Some(r) = strip_prefix_ci(s, b"tel:") {
        let end = memchr::memchr(b';', r).unwrap_or(r.len());
        return (&r[..end], &r[..0]);
    } else {
        (s, SIP_PORT)
    };

    // RFC 3261 allows no unescaped '@' in host, params or headers, so the first one ends the userinfo.
    let (user, hostport) = match memchr::memchr(b'@', rest) {
        Some(at) => {
            let userinfo = &rest[..at];
            let user_end = memchr::memchr(b':', userinfo).unwrap_or(userinfo.len());
            (&userinfo[..user_end], &rest[at + 1..])
        }
        None => (&rest[..0], rest),
    };

    let host_end = if hostport.first() == Some(&b'[') {
        memchr::memchr(b']', hostport).map_or_else(|| end_of_host(hostport), |i| i + 1)
    } else {
        end_of_host(hostport)
    };
    let host = &hostport[..host_end];

    let after = &hostport[host_end..];
    if after.first() != Some(&b':') {
        return (user, host);
    }
    let digits = &after[1..];
    let port_len = digits
        .iter()
        .position(|&b| matches!(b, b';' | b'?' | b' ' | b'\t' | b',' | b'\r' | b'\n'))
        .unwrap_or(digits.len());
    if port_len == 0 {
        return (user, host);
    }
    let port = &digits[..port_len];
    // A non-numeric or out-of-range port cannot equal the default, so it stays in the key.
    let port_no = if port.iter().all(u8::is_ascii_digit) {
        port.iter().try_fold(0u32, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
    } else {
        None
    };
    if port_no == Some(default_port) {
        (user, host)
    } else {
        (user, &hostport[..host_end + 1 + port_len])
    }
}

#[inline]
fn end_of_host(s: &[u8]) -> usize {
    s.iter()
        .position(|&b| matches!(b, b':' | b';' | b'?' | b' ' | b'\t' | b',' | b'\r' | b'\n'))
        .unwrap_or(s.len())
}

/// The index `i` that OpenSIPS's linear scan "first `i` with `x < running[i]`" finds. `running` is
/// non-decreasing, so a binary search finds the same entry (zero-weight entries share their
/// predecessor's running weight and can never be first).
#[inline]
pub(crate) fn first_above(running: &[u64], x: u64) -> usize {
    running.partition_point(|&r| r <= x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds_get_hash_matches_the_opensips_c_vectors() {
        assert_eq!(
            opensips_hash(b"a84b4c76e66710@pc33.atlanta.com", b""),
            2175018094
        );
        assert_eq!(opensips_hash(b"abc", b""), 7167810);
        assert_eq!(opensips_hash(b"1234", b""), 924651761);
        assert_eq!(opensips_hash(b"12345", b""), 924651812);
        assert_eq!(
            opensips_hash(b"3848276298220188511@atlanta.example.com", b""),
            3416024093
        );
        assert_eq!(opensips_hash(b"alice", b"atlanta.com"), 1053853112);
        assert_eq!(opensips_hash(b"bob", b"biloxi.com:5070"), 1220057865);
    }

    #[test]
    fn ds_get_hash_sign_extends_non_ascii_bytes_like_c_char() {
        assert_eq!(opensips_hash("é-callid".as_bytes(), b""), 1212757335);
        // An unsigned-char implementation would differ; make sure the vector actually exercises that.
        let unsigned = {
            let mut h: u32 = 0;
            for key in ["é-callid".as_bytes(), b""] {
                let mut chunks = key.chunks_exact(4);
                for c in &mut chunks {
                    let v = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                    h = h.wrapping_add(v ^ (v >> 3));
                }
                let v = chunks
                    .remainder()
                    .iter()
                    .fold(0u32, |v, &b| (v << 8) + u32::from(b));
                h = h.wrapping_add(v ^ (v >> 3));
            }
            h.wrapping_add(h >> 11).wrapping_add((h >> 13) + (h >> 23))
        };
        assert_ne!(unsigned, 1212757335);
    }

    #[test]
    fn ds_get_hash_of_empty_keys_is_one_not_zero() {
        assert_eq!(opensips_hash(b"", b""), 1);
    }

    #[test]
    fn ds_get_hash_key_split_matters() {
        // Keys are folded separately (each with its own tail), so moving bytes between them changes the hash.
        assert_ne!(
            opensips_hash(b"alice", b"atlanta.com"),
            opensips_hash(b"aliceatlanta.com", b"")
        );
    }

    #[test]
    fn uri_keys_of_from_uri_vector_hash_to_the_opensips_value() {
        let (u, h) = opensips_uri_keys(b"sip:alice@atlanta.com");
        assert_eq!((u, h), (&b"alice"[..], &b"atlanta.com"[..]));
        assert_eq!(opensips_hash(u, h), 1053853112);
    }

    #[test]
    fn uri_keys_keep_a_non_default_port() {
        let (u, h) = opensips_uri_keys(b"sip:bob@biloxi.com:5070;transport=udp");
        assert_eq!((u, h), (&b"bob"[..], &b"biloxi.com:5070"[..]));
        assert_eq!(opensips_hash(u, h), 1220057865);
    }

    #[test]
    fn uri_keys_drop_the_scheme_default_port() {
        assert_eq!(
            opensips_uri_keys(b"sip:bob@biloxi.com:5060").1,
            b"biloxi.com"
        );
        assert_eq!(
            opensips_uri_keys(b"sips:bob@biloxi.com:5061").1,
            b"biloxi.com"
        );
        assert_eq!(
            opensips_uri_keys(b"sip:bob@biloxi.com:05060").1,
            b"biloxi.com"
        );
        // 5061 is only the default for sips:, and 5060 is not the default for sips:.
        assert_eq!(
            opensips_uri_keys(b"sip:bob@biloxi.com:5061").1,
            b"biloxi.com:5061"
        );
        assert_eq!(
            opensips_uri_keys(b"sips:bob@biloxi.com:5060").1,
            b"biloxi.com:5060"
        );
    }

    #[test]
    fn uri_keys_without_user_part_have_an_empty_user() {
        assert_eq!(
            opensips_uri_keys(b"sip:10.0.0.1:5080;lr"),
            (&b""[..], &b"10.0.0.1:5080"[..])
        );
        assert_eq!(
            opensips_uri_keys(b"sip:proxy.example.com"),
            (&b""[..], &b"proxy.example.com"[..])
        );
    }

    #[test]
    fn uri_keys_handle_ipv6_references() {
        assert_eq!(
            opensips_uri_keys(b"sip:alice@[::1]:5070;transport=tcp"),
            (&b"alice"[..], &b"[::1]:5070"[..])
        );
        assert_eq!(
            opensips_uri_keys(b"sip:[2001:db8::1]"),
            (&b""[..], &b"[2001:db8::1]"[..])
        );
        assert_eq!(
            opensips_uri_keys(b"sip:[2001:db8::1]:5060"),
            (&b""[..], &b"[2001:db8::1]"[..])
        );
    }

    #[test]
    fn uri_keys_ignore_password_params_headers_and_name_addr_wrapping() {
        assert_eq!(
            opensips_uri_keys(b"sip:alice:secret@atlanta.com:5070"),
            (&b"alice"[..], &b"atlanta.com:5070"[..])
        );
        assert_eq!(
            opensips_uri_keys(b"sip:alice@atlanta.com?subject=x"),
            (&b"alice"[..], &b"atlanta.com"[..])
        );
        assert_eq!(
            opensips_uri_keys(b"\"Alice\" <SIP:alice@atlanta.com:5070>;tag=1928301774"),
            (&b"alice"[..], &b"atlanta.com:5070"[..])
        );
        assert_eq!(
            opensips_uri_keys(b"  sip:alice@atlanta.com \r\n"),
            (&b"alice"[..], &b"atlanta.com"[..])
        );
    }

    #[test]
    fn uri_keys_of_tel_uri_are_the_number_and_no_host() {
        assert_eq!(
            opensips_uri_keys(b"tel:+15551234567;phone-context=x"),
            (&b"+15551234567"[..], &b""[..])
        );
    }

    #[test]
    fn callid_trimming_strips_whitespace_and_line_ends_only() {
        assert_eq!(
            trim_callid(b" \t a84b4c76e66710@pc33.atlanta.com\r\n"),
            b"a84b4c76e66710@pc33.atlanta.com"
        );
        assert_eq!(trim_callid(b"a b"), b"a b");
        assert_eq!(trim_callid(b" \r\n\t "), b"");
        assert_eq!(trim_callid(b""), b"");
        assert_eq!(
            opensips_hash(trim_callid(b"  a84b4c76e66710@pc33.atlanta.com  "), b""),
            2175018094
        );
    }

    #[test]
    fn first_above_agrees_with_the_linear_scan() {
        let running = [0u64, 3, 3, 7, 7, 7, 10];
        for x in 0..10 {
            let linear = running.iter().position(|&r| x < r).unwrap();
            assert_eq!(first_above(&running, x), linear, "x={x}");
        }
    }

    proptest::proptest! {
        #[test]
        fn uri_keys_never_panic_and_borrow_from_the_input(uri in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let (u, h) = opensips_uri_keys(&uri);
            let range = uri.as_ptr_range();
            for k in [u, h] {
                let r = k.as_ptr_range();
                proptest::prop_assert!(k.is_empty() || (r.start >= range.start && r.end <= range.end));
            }
        }

        #[test]
        fn uri_keys_of_structured_uris_roundtrip(
            user in "[a-z0-9+]{0,8}",
            host in "[a-z]{1,8}(\\.[a-z]{1,5}){0,2}",
            port in proptest::option::of(1u16..),
            sips in proptest::bool::ANY,
        ) {
            let scheme = if sips { "sips" } else { "sip" };
            let at = if user.is_empty() { String::new() } else { format!("{user}@") };
            let p = port.map(|p| format!(":{p}")).unwrap_or_default();
            let uri = format!("{scheme}:{at}{host}{p};transport=udp");
            let (u, h) = opensips_uri_keys(uri.as_bytes());
            proptest::prop_assert_eq!(u, user.as_bytes());
            let default = if sips { 5061 } else { 5060 };
            let want = match port { Some(p) if u32::from(p) != default => format!("{host}:{p}"), _ => host.clone() };
            proptest::prop_assert_eq!(h, want.as_bytes());
        }
    }
}
