//! Independent oracles for what the reference model must not take from the
//! code under test: the flow and source hashes, the Maglev table, the
//! smooth weighted round-robin ring and the firewall's lists. Each is
//! written here from its specification (the algorithm as the README and
//! the daemon's doc comments state it, the Maglev paper, nginx's smooth
//! weighted round robin) in its own way, sharing no code with `lb-common`
//! or the planner; the fuzz test compares the planner's rings with these
//! and the model schedules with them, so a change on either side shows.

use std::net::Ipv4Addr;

use xdplb::config::{Config, ServiceConfig};

/// The specification's hash constants: MurmurHash3's 32-bit finaliser
/// (multipliers 0x85ebca6b and 0xc2b2ae35, shifts 16, 13, 16) and the
/// golden-ratio seed 0x9e3779b9.
const M1: u32 = 0x85eb_ca6b;
const M2: u32 = 0xc2b2_ae35;
const SEED: u32 = 0x9e37_79b9;

/// MurmurHash3's finaliser, written as its three xor-shift steps and two
/// multiplications.
pub fn avalanche(x: u32) -> u32 {
    let steps: [(u32, Option<u32>); 3] = [(16, Some(M1)), (13, Some(M2)), (16, None)];
    steps.iter().fold(x, |h, (shift, mul)| {
        let h = h ^ (h >> shift);
        mul.map_or(h, |m| h.wrapping_mul(m))
    })
}

/// The flow hash of a client's 5-tuple (addresses and ports as they sit on
/// the wire, read as native-endian words): the finaliser chained over
/// seed ^ protocol, source, destination, then both ports in one word
/// (source port's wire bytes high, destination port's low).
pub fn flow_hash(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let word = |b: [u8; 4]| u32::from_ne_bytes(b);
    let port = |p: u16| u16::from_ne_bytes(p.to_be_bytes()) as u32;
    let ports = (port(sport) << 16) | port(dport);
    [word(src), word(dst), ports]
        .into_iter()
        .fold(avalanche(SEED ^ proto as u32), |h, w| avalanche(h ^ w))
}

/// The source hash of a client address: the finaliser twice over the
/// address xor the seed rotated by 16 bits.
pub fn source_hash(src: [u8; 4]) -> u32 {
    avalanche(avalanche(SEED.rotate_left(16) ^ u32::from_ne_bytes(src)))
}

/// least_conn's second candidate's starting point: the finaliser over the
/// flow hash xor the seed.
pub fn second_hash(flow_hash: u32) -> u32 {
    avalanche(flow_hash ^ SEED)
}

/// Maglev (Eisenbud et al., NSDI 2016, "populate" with weights): every
/// backend with weight has a permutation of the `m` slots (offset and skip
/// from its identity "address:port" hashed with xxh3 under two seeds);
/// backends take turns in the order of their identities, each turn adding
/// its weight to a credit and claiming one slot, its next free preferred
/// one, whenever the credit reaches the largest weight. Returns, per slot,
/// the index into `backends`.
pub fn maglev(backends: &[(String, u32)], m: u32) -> Vec<u32> {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    let mut players: Vec<(usize, u64, u64, u64)> = backends
        .iter()
        .enumerate()
        .filter(|(_, (_, w))| *w > 0)
        .map(|(i, (key, w))| {
            let offset = xxh3_64_with_seed(key.as_bytes(), 0x6d61_676c_6576_0001) % m as u64;
            let skip =
                xxh3_64_with_seed(key.as_bytes(), 0x6d61_676c_6576_0002) % (m as u64 - 1) + 1;
            (i, offset, skip, *w as u64)
        })
        .collect();
    players.sort_by(|a, b| backends[a.0].0.cmp(&backends[b.0].0));
    let top = players
        .iter()
        .map(|p| p.3)
        .max()
        .expect("a backend with weight");
    let mut table: Vec<Option<u32>> = vec![None; m as usize];
    let mut tried = vec![0u64; players.len()];
    let mut credit = vec![0u64; players.len()];
    let mut left = m as usize;
    'fill: loop {
        for (turn, &(index, offset, skip, weight)) in players.iter().enumerate() {
            credit[turn] += weight;
            if credit[turn] < top {
                continue;
            }
            credit[turn] -= top;
            let slot = loop {
                let s = ((offset + tried[turn] * skip) % m as u64) as usize;
                tried[turn] += 1;
                if table[s].is_none() {
                    break s;
                }
            };
            table[slot] = Some(index as u32);
            left -= 1;
            if left == 0 {
                break 'fill;
            }
        }
    }
    table.into_iter().map(|s| s.unwrap()).collect()
}

/// Smooth weighted round robin (nginx): weights divided by their greatest
/// common divisor (scaled down if they sum past `max_len`), then for each
/// slot every backend's current value grows by its weight and the largest
/// (the first among equals) takes the slot and gives back the total.
pub fn smooth_round_robin(weights: &[u32], max_len: u64) -> Vec<u32> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = weights.iter().map(|w| *w as u64).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let mut w: Vec<u64> = weights.iter().map(|x| *x as u64 / g).collect();
    let sum: u64 = w.iter().sum();
    if sum > max_len {
        let positive = w.iter().filter(|x| **x > 0).count() as u64;
        let budget = max_len.saturating_sub(positive).max(1);
        w.iter_mut()
            .filter(|x| **x > 0)
            .for_each(|x| *x = (*x * budget / sum).max(1));
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    (0..total)
        .map(|_| {
            for (c, x) in current.iter_mut().zip(&w) {
                *c += *x as i64;
            }
            let best = (0..w.len())
                .filter(|i| w[*i] > 0)
                .fold(None, |b: Option<usize>, i| match b {
                    Some(b) if current[b] >= current[i] => Some(b),
                    _ => Some(i),
                })
                .unwrap();
            current[best] -= total;
            best as u32
        })
        .collect()
}

/// A service's ring as the specification builds it, in backend *indices*
/// of `s.backends`: only backends with weight that are neither down nor
/// held (`out`) get slots; Maglev and source_hash index a Maglev table of
/// `m` slots, round robin and least_conn a smooth weighted ring.
pub fn ring(s: &ServiceConfig, out: impl Fn(Ipv4Addr, u16) -> bool, m: u32) -> Vec<u32> {
    use xdplb::config::SchedulerKind;
    let live: Vec<usize> = (0..s.backends.len())
        .filter(|i| {
            let b = &s.backends[*i];
            b.weight > 0 && !out(b.address, b.port)
        })
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let slots = match s.scheduler {
        SchedulerKind::Maglev | SchedulerKind::SourceHash => {
            let keys: Vec<(String, u32)> = live
                .iter()
                .map(|i| {
                    let b = &s.backends[*i];
                    (format!("{}:{}", b.address, b.port), b.weight)
                })
                .collect();
            maglev(&keys, m)
        }
        SchedulerKind::RoundRobin | SchedulerKind::LeastConn => {
            let w: Vec<u32> = live.iter().map(|i| s.backends[*i].weight).collect();
            smooth_round_robin(&w, m as u64)
        }
    };
    slots.into_iter().map(|i| live[i as usize] as u32).collect()
}

/// The firewall's verdict for `src` as the config states it: the global
/// deny list (`service` None: any covering prefix denies, but never a
/// configured backend's address), or a service's
/// lists (the longest covering prefix decides; deny wins a tie). `None`:
/// no entry covers it.
pub fn acl(config: &Config, service: Option<&ServiceConfig>, src: [u8; 4]) -> Option<u8> {
    let a = Ipv4Addr::from(src);
    let Some(s) = service else {
        // A configured backend is never globally denied (its replies and
        // checks' answers get through).
        let backend = config
            .services
            .iter()
            .any(|s| s.backends.iter().any(|b| b.address == a));
        return (!backend && config.firewall.deny.iter().any(|p| p.0.contains(&a)))
            .then_some(lb_common::ACL_DENY);
    };
    let allow = s.allow.iter().map(|p| (p.0, lb_common::ACL_ALLOW));
    let deny = s.deny.iter().map(|p| (p.0, lb_common::ACL_DENY));
    allow
        .chain(deny)
        .filter(|(net, _)| net.contains(&a))
        .max_by_key(|(net, action)| (net.prefix_len(), *action == lb_common::ACL_DENY))
        .map(|(_, action)| action)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers, computed by hand from the finaliser's definition for
    /// one input (and the code under test agrees, checked in the fuzz
    /// test's every scheduling decision).
    #[test]
    fn the_finaliser_is_murmur3s() {
        // fmix32(0) = 0; fmix32(1) from MurmurHash3's reference code.
        assert_eq!(avalanche(0), 0);
        assert_eq!(avalanche(1), 0x514e_28b7);
    }

    #[test]
    fn smooth_round_robin_interleaves() {
        assert_eq!(smooth_round_robin(&[5, 1, 1], 100), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_round_robin(&[2, 2], 100), [0, 1]);
        assert_eq!(smooth_round_robin(&[0, 3], 100), [1]);
    }

    #[test]
    fn maglev_fills_every_slot_by_weight() {
        let t = maglev(&[("a:1".into(), 1), ("b:1".into(), 3)], 65537);
        let b = t.iter().filter(|i| **i == 1).count() as f64 / t.len() as f64;
        assert!((0.74..0.76).contains(&b), "{b}");
    }
}
