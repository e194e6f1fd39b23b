//! Incremental Internet checksum updates (RFC 1624, eqn. 3).
//!
//! One's-complement sums do not depend on byte order, so callers pass the
//! fields exactly as they sit in the packet (read with `from_ne_bytes`) and
//! write the result back the same way.

#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// New checksum after a 32-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32
        + (!(old as u16)) as u32
        + (!((old >> 16) as u16)) as u32
        + (new & 0xffff)
        + (new >> 16);
    !fold(sum)
}

/// One's-complement sum of 16-bit words (as read from the packet), folded.
/// A header whose checksum field is right sums to 0xffff.
#[inline(always)]
pub fn sum_words<const N: usize>(words: &[u16; N]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < N {
        sum += words[i] as u32;
        i += 1;
    }
    fold(sum)
}

/// Whether a 20-byte IPv4 header's checksum is right.
#[inline(always)]
pub fn ipv4_header_ok(words: &[u16; 10]) -> bool {
    sum_words(words) == 0xffff
}

/// UDP variant: a zero checksum means "none" and stays zero; a computed zero
/// is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn udp_fixup(old_check: u16, new_check: u16) -> u16 {
    if old_check == 0 {
        0
    } else if new_check == 0 {
        0xffff
    } else {
        new_check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full checksum over 16-bit words, as the receiver computes it.
    fn full(words: &[u16]) -> u16 {
        let mut sum: u32 = 0;
        for w in words {
            sum += *w as u32;
        }
        !fold(sum)
    }

    #[test]
    fn incremental_matches_full_recompute() {
        // Pseudo-random header-like words; change word pairs and compare.
        let mut words: [u16; 10] = [
            0x4500, 0x0073, 0x0000, 0x4000, 0x4011, 0x0000, 0xc0a8, 0x0001, 0xc0a8, 0x00c7,
        ];
        let mut x: u32 = 12345;
        for _ in 0..10_000 {
            words[5] = 0;
            let check = full(&words);
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let new32 = x;
            let old32 = ((words[8] as u32) << 16) | words[9] as u32;
            let inc = replace4(check, old32.swap_bytes().swap_bytes(), new32);
            words[8] = (new32 >> 16) as u16;
            words[9] = new32 as u16;
            words[5] = 0;
            assert_eq!(inc, full(&words), "replace4");

            words[5] = 0;
            let check = full(&words);
            let old16 = words[3];
            let new16 = (x >> 7) as u16;
            words[3] = new16;
            assert_eq!(replace2(check, old16, new16), full(&words), "replace2");
        }
    }

    #[test]
    fn ipv4_header_check() {
        // RFC 1071-style example header with a correct checksum (0xb861).
        let mut h: [u16; 10] = [
            0x4500, 0x0073, 0x0000, 0x4000, 0x4011, 0xb861, 0xc0a8, 0x0001, 0xc0a8, 0x00c7,
        ];
        assert!(ipv4_header_ok(&h));
        h[5] = 0xb862;
        assert!(!ipv4_header_ok(&h));
    }

    #[test]
    fn udp_zero_checksum_is_kept_and_zero_result_becomes_ffff() {
        assert_eq!(udp_fixup(0, 0x1234), 0);
        assert_eq!(udp_fixup(0x1111, 0), 0xffff);
        assert_eq!(udp_fixup(0x1111, 0x2222), 0x2222);
    }
}
