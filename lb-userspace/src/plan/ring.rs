//! Weighted round robin as a ring of backend indices.
//!
//! The data path walks the ring one slot per new flow, so the ring itself
//! carries the weights. It is built with smooth weighted round robin (as
//! nginx does): heavy backends are interleaved with light ones instead of
//! getting their whole share in one burst.

/// Ring of indices into `weights`, at most `max_len` long. Zero weights get
/// no slot; weights are reduced by their gcd and, if their sum exceeds
/// `max_len`, scaled down (every positive weight keeps at least one slot).
pub fn weighted_round_robin(weights: &[u32], max_len: usize) -> Vec<u32> {
    let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let mut w: Vec<u64> = weights.iter().map(|&x| (x / g) as u64).collect();
    let positive = w.iter().filter(|&&x| x > 0).count() as u64;
    let total: u64 = w.iter().sum();
    if total > max_len as u64 {
        let budget = (max_len as u64).saturating_sub(positive).max(1);
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = (*x * budget / total).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut ring = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if w[i] > 0 && (w[best] == 0 || current[i] > current[best]) {
                best = i;
            }
        }
        current[best] -= total as i64;
        ring.push(best as u32);
    }
    ring
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(r: &[u32], i: u32) -> usize {
        r.iter().filter(|&&x| x == i).count()
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(weighted_round_robin(&[1, 1], 100), vec![0, 1]);
        assert_eq!(weighted_round_robin(&[3, 3, 3], 100), vec![0, 1, 2]);
    }

    #[test]
    fn weights_are_exact_shares_and_interleaved() {
        let r = weighted_round_robin(&[5, 1, 1], 100);
        assert_eq!(r.len(), 7);
        assert_eq!((count(&r, 0), count(&r, 1), count(&r, 2)), (5, 1, 1));
        // Smooth: the light backends are not both at the end.
        assert_eq!(r, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weight_is_skipped_and_all_zero_is_empty() {
        let r = weighted_round_robin(&[2, 0, 1], 100);
        assert_eq!(count(&r, 1), 0);
        assert_eq!(r.len(), 3);
        assert!(weighted_round_robin(&[0, 0], 100).is_empty());
    }

    #[test]
    fn large_sums_are_scaled_to_fit() {
        let weights: Vec<u32> = (0..1024).map(|i| 1 + (i % 1000)).collect();
        let r = weighted_round_robin(&weights, 65537);
        assert!(r.len() <= 65537);
        assert!((0..1024).all(|i| count(&r, i) >= 1));
    }
}
