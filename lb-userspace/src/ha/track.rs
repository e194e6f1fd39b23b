//! Tracked interfaces and services → the priority a node advertises, or
//! FAULT (keepalived's track semantics), pure.

use crate::config::Track;

/// Whether each tracked thing is fine, in the config's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracked {
    pub interfaces: Vec<bool>,
    pub services: Vec<bool>,
}

/// (effective priority, fault): weight 0 and failing → FAULT; a positive
/// weight is added while fine; a negative one is added while failing. The
/// result stays within 1..=254.
pub fn effective(base: u8, tracks: (&[Track], &[Track]), state: &Tracked) -> (u8, bool) {
    let mut p = base as i32;
    let mut fault = false;
    let pairs = tracks
        .0
        .iter()
        .zip(&state.interfaces)
        .chain(tracks.1.iter().zip(&state.services));
    for (t, ok) in pairs {
        match (t.weight, ok) {
            (0, false) => fault = true,
            (w, true) if w > 0 => p += w,
            (w, false) if w < 0 => p += w,
            _ => {}
        }
    }
    (p.clamp(1, 254) as u8, fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(w: i32) -> Track {
        Track {
            name: "x".into(),
            weight: w,
        }
    }

    #[test]
    fn keepalived_semantics() {
        let ifs = [t(0), t(-30)];
        let svcs = [t(20)];
        let st = |a, b, c| Tracked {
            interfaces: vec![a, b],
            services: vec![c],
        };
        assert_eq!(
            effective(100, (&ifs, &svcs), &st(true, true, true)),
            (120, false)
        );
        assert_eq!(
            effective(100, (&ifs, &svcs), &st(true, false, true)),
            (90, false)
        );
        assert_eq!(
            effective(100, (&ifs, &svcs), &st(true, false, false)),
            (70, false)
        );
        assert!(effective(100, (&ifs, &svcs), &st(false, true, true)).1);
        assert_eq!(
            effective(250, (&ifs, &svcs), &st(true, true, true)),
            (254, false)
        );
        assert_eq!(
            effective(10, (&ifs, &svcs), &st(true, false, false)),
            (1, false)
        );
    }
}
