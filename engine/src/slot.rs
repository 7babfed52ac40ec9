//! Redis Cluster's hash slots: which of the 16,384 slots a key belongs to, as every cluster node computes it
//! (CRC16/XMODEM of the key, or of its `{hash tag}`, modulo 16,384).

/// How many slots a Redis Cluster has.
pub(crate) const SLOTS: usize = 16_384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0) tables for eight bytes at a time ("slicing-by-8"):
/// `CRC16_TABLES[0]` is the byte-at-a-time table, and `CRC16_TABLES[k][b]` is the CRC of byte `b` followed by `k`
/// zero bytes. The CRC is linear, so eight bytes fold into the CRC with one lookup each and no dependency between
/// them: about half the instructions of a byte at a time (callgrind), on the path of every request in a cluster.
const CRC16_TABLES: [[u16; 256]; 8] = {
    let mut tables = [[0u16; 256]; 8];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut byte = 0;
        while byte < 256 {
            let previous = tables[k - 1][byte];
            tables[k][byte] = (previous << 8) ^ tables[0][(previous >> 8) as usize];
            byte += 1;
        }
        k += 1;
    }
    tables
};

/// `crc` carried over `bytes`, a byte at a time.
fn crc16_bytes(crc: u16, bytes: &[u8]) -> u16 {
    bytes.iter().fold(crc, |crc, &b| (crc << 8) ^ CRC16_TABLES[0][usize::from((crc >> 8) as u8 ^ b)])
}

/// `crc` carried over eight bytes.
fn crc16_word(crc: u16, word: [u8; 8]) -> u16 {
    let t = &CRC16_TABLES;
    let [hi, lo] = crc.to_be_bytes();
    t[7][usize::from(hi ^ word[0])]
        ^ t[6][usize::from(lo ^ word[1])]
        ^ t[5][usize::from(word[2])]
        ^ t[4][usize::from(word[3])]
        ^ t[3][usize::from(word[4])]
        ^ t[2][usize::from(word[5])]
        ^ t[1][usize::from(word[6])]
        ^ t[0][usize::from(word[7])]
}

/// The CRC16 of `data`.
fn crc16(data: &[u8]) -> u16 {
    let mut words = data.chunks_exact(8);
    let crc = words.by_ref().fold(0, |crc, word| crc16_word(crc, word.try_into().unwrap_or_default()));
    crc16_bytes(crc, words.remainder())
}

/// Whether any of the eight bytes of `word` is `{` (the classic zero-byte test, on the word xor-ed with `{`s).
fn has_open_brace(word: [u8; 8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let x = u64::from_ne_bytes(word) ^ u64::from_ne_bytes([b'{'; 8]);
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// The part of `key` that is hashed: the text between the first `{` and the next `}` when it is not empty, else
/// the whole key (so `{user1}.a` and `{user1}.b` share a slot, and `{}x` hashes whole).
fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = memchr::memchr(b'{', key) else { return key };
    match memchr::memchr(b'}', &key[open + 1..]) {
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

/// The slot of `key`. Most keys have no `{`: they are hashed in the same pass that looks for one.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let mask = SLOTS as u16 - 1;
    let mut crc = 0;
    let mut words = key.chunks_exact(8);
    for word in words.by_ref() {
        let word: [u8; 8] = word.try_into().unwrap_or_default();
        if has_open_brace(word) {
            return crc16(hashed_part(key)) & mask;
        }
        crc = crc16_word(crc, word);
    }
    let rest = words.remainder();
    if rest.contains(&b'{') {
        return crc16(hashed_part(key)) & mask;
    }
    crc16_bytes(crc, rest) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The check value of CRC-16/XMODEM, and the one Redis's cluster spec gives.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_agree_with_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn hash_tags_hash_what_is_between_the_first_braces() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{}foo"), crc16(b"{}foo") & 16383);
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") & 16383);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar"), crc16(b"foo{bar") & 16383);
        // A brace after the last whole eight bytes, in the first eight, and after two whole eights.
        assert_eq!(key_slot(b"0123456789{tag}"), key_slot(b"tag"));
        assert_eq!(key_slot(b"0123{tag}456789abcdef"), key_slot(b"tag"));
        assert_eq!(key_slot(b"0123456789abcdef{tag}"), key_slot(b"tag"));
    }

    /// The CRC a bit at a time, from the polynomial: what the tables must agree with.
    fn crc16_bitwise(data: &[u8]) -> u16 {
        let mut crc = 0u16;
        for &byte in data {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            }
        }
        crc
    }

    proptest::proptest! {
        #[test]
        fn eight_bytes_at_a_time_agree_with_a_bit_at_a_time(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(crc16(&data), crc16_bitwise(&data));
        }

        #[test]
        fn the_slot_agrees_with_the_hashed_part_hashed_alone(
            key in proptest::collection::vec(proptest::sample::select(b"ab{}".to_vec()), 0..40),
        ) {
            proptest::prop_assert_eq!(key_slot(&key), crc16_bitwise(hashed_part(&key)) & 16383);
        }
    }
}
