//! The flow hash that indexes the Maglev table.
//!
//! Shared so the daemon and tests can predict which backend the data path
//! will pick. Inputs are the raw network-order fields; the output only has to
//! be well mixed and identical on both sides.

const SEED: u32 = 0x9e37_79b9;

/// MurmurHash3's 32-bit finaliser: full avalanche on one word.
#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a flow's 5-tuple (client side: src = client, dst = VIP).
#[inline(always)]
pub const fn flow_hash(src_be: u32, dst_be: u32, sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let ports = ((sport_be as u32) << 16) | dport_be as u32;
    let mut h = fmix32(SEED ^ proto as u32);
    h = fmix32(h ^ src_be);
    h = fmix32(h ^ dst_be);
    fmix32(h ^ ports)
}

/// Hash of a client address alone (`source_hash` scheduler): every
/// connection of one client lands on the same Maglev slot.
#[inline(always)]
pub const fn source_hash(src_be: u32) -> u32 {
    fmix32(fmix32(SEED.rotate_left(16) ^ src_be))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_hash_spreads_sequential_addresses() {
        let mut buckets = [0u32; 8];
        for a in 0..8000u32 {
            let addr = (0xc633_6400u32 + a).to_be(); // 198.51.100.0 onwards
            buckets[((source_hash(addr) % 65537) % 8) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "{buckets:?}");
        }
        assert_ne!(source_hash(1), source_hash(2));
    }

    #[test]
    fn spreads_sequential_ports_evenly() {
        // 65537 buckets mod 8: sequential client ports must not cluster.
        let mut buckets = [0u32; 8];
        for p in 0..8000u16 {
            let h = flow_hash(0x0a00_0001, 0x0a00_0002, p.to_be(), 80u16.to_be(), 6);
            buckets[((h % 65537) % 8) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn depends_on_every_field() {
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17));
    }
}
