//! FreeSWITCH's percent-encoding (`switch_url_encode`) for `text/event-plain` and
//! `text/event-xml` values, and the lenient decoder a client needs (docs/ESL.md §3.2, §6.6).

/// Bytes FreeSWITCH escapes besides controls and non-ASCII (docs/ESL.md §3.2).
const RESERVED: &[u8] = b"\r\n #%&+:;<=>?@[\\]^`{|}\"";
const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

fn needs_escape(b: u8) -> bool {
    !(0x20..=0x7E).contains(&b) || RESERVED.contains(&b)
}

/// Appends `value` encoded as FreeSWITCH does to `out`.
///
/// A `%` already followed by two *uppercase* hex digits is copied as is: FreeSWITCH does
/// not double-encode, which is why decoding a plain value is lossy for literal `%XX`.
pub fn encode_into(value: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'%'
            && value.len() >= i + 3
            && is_upper_hex(value[i + 1])
            && is_upper_hex(value[i + 2])
        {
            out.push(b'%');
        } else if needs_escape(b) {
            out.push(b'%');
            out.push(UPPER_HEX[usize::from(b >> 4)]);
            out.push(UPPER_HEX[usize::from(b & 0x0F)]);
        } else {
            out.push(b);
        }
        i += 1;
    }
}

/// `value` encoded as FreeSWITCH does.
pub fn encode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    encode_into(value, &mut out);
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` (either case). A `%` not followed by two hex digits stays literal, and
/// `+` stays `+`: this is percent-decoding, not form decoding. The result may be any bytes.
pub fn decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            if let (Some(h), Some(l)) = (hex_val(value[i + 1]), hex_val(value[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_freeswitch_reserved_set_with_uppercase_hex() {
        assert_eq!(encode(b"a b:c+d"), b"a%20b%3Ac%2Bd");
        assert_eq!(encode(b"::1"), b"%3A%3A1");
        assert_eq!(encode(b"\x7f\xc3\xa9\t"), b"%7F%C3%A9%09");
        assert_eq!(encode(b"#%&;<=>?@[\\]^`{|}\"\r\n"),
            b"%23%25%26%3B%3C%3D%3E%3F%40%5B%5C%5D%5E%60%7B%7C%7D%22%0D%0A".as_slice());
    }

    #[test]
    fn leaves_unreserved_punctuation_literal() {
        assert_eq!(encode(b",/()-._~!$'*"), b",/()-._~!$'*");
    }

    #[test]
    fn does_not_double_encode_percent_followed_by_uppercase_hex() {
        assert_eq!(encode(b"50%2B"), b"50%2B");
        assert_eq!(encode(b"50%2b"), b"50%252b");
        assert_eq!(encode(b"50%"), b"50%25");
        assert_eq!(encode(b"%A"), b"%25A");
    }

    #[test]
    fn decodes_either_case_and_keeps_plus_and_malformed_percent() {
        assert_eq!(decode(b"a%20b%3a%3A"), b"a b::");
        assert_eq!(decode(b"1+1"), b"1+1");
        assert_eq!(decode(b"100%"), b"100%");
        assert_eq!(decode(b"%4"), b"%4");
        assert_eq!(decode(b"%zz%4g"), b"%zz%4g");
        assert_eq!(decode(b"%C3%A9"), "é".as_bytes());
    }

    #[test]
    fn decode_inverts_encode_for_values_without_literal_percent_hex() {
        let v = b"Fri, 14 Mar 2025 09:26:40 GMT +x %";
        assert_eq!(decode(&encode(v)), v);
    }
}
