//! Protobuf's wire format, written from the encoding guide, for tests and fuzz seeds that build
//! ONNX bytes by hand (independent of the reader they check).

/// A base-128 varint, least significant group first.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Field `number` as a varint (wire type 0).
pub fn varint_field(number: u64, v: u64) -> Vec<u8> {
    let mut out = varint(number << 3);
    out.extend(varint(v));
    out
}

/// Field `number` as length-delimited bytes (wire type 2): strings, messages, packed arrays.
pub fn len_field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = varint(number << 3 | 2);
    out.extend(varint(payload.len() as u64));
    out.extend(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_guide_examples() {
        // 150 is 96 01; 300 is ac 02; field 1 = 150 is 08 96 01; field 2 = "testing" is 12 07 ...
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(150), [0x96, 0x01]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint_field(1, 150), [0x08, 0x96, 0x01]);
        let mut want = vec![0x12, 0x07];
        want.extend(b"testing");
        assert_eq!(len_field(2, b"testing"), want);
    }
}
