//! Lower-case hex, both ways: stored key names (`storage`) and webhook
//! signatures (`webhook`).

pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `text`; `None` unless it is an even number of hex digits
/// (checked before slicing: a multi-byte character must not split).
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(super::encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(super::decode("00abff"), Some(vec![0, 0xab, 0xff]));
        for bad in ["abc", "zz", "é0", "0é"] {
            assert_eq!(super::decode(bad), None, "{bad}");
        }
    }
}
