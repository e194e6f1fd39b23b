//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Each backend walks its own permutation of the table (offset and skip from
//! two hashes of its identity) and claims the next free slot on its turn.
//! Weights decide how often a backend gets a turn. Because every backend's
//! preferences depend only on its own identity, removing one backend mostly
//! re-assigns only the slots it held, so established-looking flows on other
//! backends keep their place.

use xxhash_rust::xxh3::xxh3_64_with_seed;

const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;
const EMPTY: u32 = u32::MAX;

/// One backend as Maglev sees it: a stable identity and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stable identity, e.g. "203.0.113.11:80". Same identity, same preferences.
    pub key: String,
    pub weight: u32,
}

/// Whether `n` is prime (the table size must be, for the permutations to
/// visit every slot).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("table size {0} is not a prime")]
    NotPrime(u32),
    #[error("no backend has a weight above zero")]
    NoWeight,
}

/// Build a table of `size` slots; each slot holds an index into `backends`.
/// The result does not depend on the order of `backends`.
pub fn table(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    // Claim turns in a canonical order so the caller's ordering is irrelevant.
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    if order.is_empty() {
        return Err(MaglevError::NoWeight);
    }
    order.sort_by(|&a, &b| backends[a].key.cmp(&backends[b].key));

    let m = size as u64;
    let perm: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let key = backends[i].key.as_bytes();
            let offset = xxh3_64_with_seed(key, OFFSET_SEED) % m;
            let skip = xxh3_64_with_seed(key, SKIP_SEED) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = order
        .iter()
        .map(|&i| backends[i].weight as u64)
        .max()
        .unwrap_or(1);
    let mut next = vec![0u64; order.len()];
    let mut credit = vec![0u64; order.len()];
    let mut slots = vec![EMPTY; size as usize];
    let mut filled = 0u64;
    loop {
        for (turn, &i) in order.iter().enumerate() {
            credit[turn] += backends[i].weight as u64;
            if credit[turn] < max_weight {
                continue;
            }
            credit[turn] -= max_weight;
            let (offset, skip) = perm[turn];
            // The permutation visits every slot (size is prime), so a free
            // one is found while any remain.
            loop {
                let c = ((offset + next[turn] * skip) % m) as usize;
                next[turn] += 1;
                if slots[c] == EMPTY {
                    slots[c] = i as u32;
                    break;
                }
            }
            filled += 1;
            if filled == m {
                return Ok(slots);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = lb_common::RING_SIZE;

    fn backends(n: usize) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                key: format!("203.0.113.{}:80", i + 1),
                weight: 1,
            })
            .collect()
    }

    fn counts(t: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &s in t {
            c[s as usize] += 1;
        }
        c
    }

    #[test]
    fn table_size_is_a_prime_of_at_least_65537() {
        assert!(is_prime(M) && M >= 65537);
        assert_eq!(
            table(&backends(2), 65536),
            Err(MaglevError::NotPrime(65536))
        );
    }

    #[test]
    fn deterministic_and_independent_of_input_order() {
        let a = backends(5);
        let mut b = a.clone();
        b.reverse();
        let ta = table(&a, M).unwrap();
        let tb = table(&b, M).unwrap();
        assert_eq!(ta, table(&a, M).unwrap());
        // Same backend identity in every slot, whatever the input order.
        for (x, y) in ta.iter().zip(&tb) {
            assert_eq!(a[*x as usize].key, b[*y as usize].key);
        }
    }

    #[test]
    fn every_slot_filled() {
        for n in [1, 2, 3, 10, 100] {
            let t = table(&backends(n), M).unwrap();
            assert_eq!(t.len(), M as usize);
            assert!(t.iter().all(|&s| (s as usize) < n), "n={n}");
        }
    }

    #[test]
    fn equal_weights_balance_within_one_percent() {
        for n in [2, 3, 7, 10, 64] {
            let c = counts(&table(&backends(n), M).unwrap(), n);
            let ideal = M as f64 / n as f64;
            for x in c {
                assert!(
                    (x as f64 - ideal).abs() / ideal < 0.01,
                    "n={n} count={x} ideal={ideal}"
                );
            }
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let mut b = backends(3);
        b[0].weight = 1;
        b[1].weight = 2;
        b[2].weight = 5;
        let c = counts(&table(&b, M).unwrap(), 3);
        let total: u32 = b.iter().map(|x| x.weight).sum();
        for (i, x) in c.iter().enumerate() {
            let ideal = M as f64 * b[i].weight as f64 / total as f64;
            assert!(
                (*x as f64 - ideal).abs() / ideal < 0.01,
                "backend {i}: {x} vs {ideal}"
            );
        }
    }

    #[test]
    fn zero_weight_backends_get_no_slot() {
        let mut b = backends(3);
        b[1].weight = 0;
        let c = counts(&table(&b, M).unwrap(), 3);
        assert_eq!(c[1], 0);
        b.iter_mut().for_each(|x| x.weight = 0);
        assert_eq!(table(&b, M), Err(MaglevError::NoWeight));
    }

    #[test]
    fn removing_one_backend_moves_little_else() {
        let n = 10;
        let all = backends(n);
        let before = table(&all, M).unwrap();
        let removed = 3usize;
        let rest: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, b)| b.clone())
            .collect();
        let after = table(&rest, M).unwrap();
        let key_before = |s: usize| &all[before[s] as usize].key;
        let key_after = |s: usize| &rest[after[s] as usize].key;
        let mut moved_from_survivors = 0;
        for (s, owner) in before.iter().enumerate() {
            if *owner as usize != removed && key_before(s) != key_after(s) {
                moved_from_survivors += 1;
            }
        }
        // Every slot of the removed backend must move; of the rest, only a
        // small fraction may (the paper reports a few percent at worst).
        let share = moved_from_survivors as f64 / M as f64;
        assert!(
            share < 0.03,
            "{:.2}% of slots moved between surviving backends",
            share * 100.0
        );
        // And the removed backend's slots are spread over the survivors.
        let c = counts(&after, n - 1);
        assert!(c.iter().all(|&x| x > 0));
    }
}
