//! Group-relative advantages (GRPO, SPEC §4): within a group of attempts at one task,
//! `(r − mean) / (std + ε)`. A group whose rewards are all equal has no learning signal: its
//! advantages are exactly 0 (never NaN, never a rounding residue), and it is reported as *flat*
//! so the caller can leave it out of the step (DAPO's dynamic sampling, TRL's zero-std share).

use std::collections::BTreeMap;

/// How advantages are scaled after the group mean is subtracted (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scale {
    Group,
    Batch,
    None,
}

impl std::str::FromStr for Scale {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "group" => Ok(Self::Group),
            "batch" => Ok(Self::Batch),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "unknown advantage scale {s:?} (group, batch, none)"
            )),
        }
    }
}

pub(crate) const EPS: f64 = 1e-4;

/// Relative spread below which a group's rewards count as all equal.
pub(crate) const FLAT_TOLERANCE: f64 = 1e-9;

/// Whether `xs` are all equal, decided from the spread `max − min` (relative to the magnitude of
/// the largest value, at least 1), never from a float comparison of a computed std: eight
/// rewards of 5/12 have a computed std of about 1e-16, not 0. An empty group is flat.
pub(crate) fn is_flat(xs: &[f64]) -> bool {
    if xs.is_empty() {
        return true;
    }
    let (lo, hi) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    hi - lo <= FLAT_TOLERANCE * lo.abs().max(hi.abs()).max(1.0)
}

/// Advantages of a batch and which rows sit in a flat group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Advantages {
    /// One per reward; exactly 0 for every row of a flat group.
    pub values: Vec<f64>,
    /// One per reward: the row's group is flat (no learning signal).
    pub flat: Vec<bool>,
}

/// Advantages for `rewards`, grouped by `groups[i]` (any key; groups need not be contiguous),
/// with the flat groups marked.
pub fn advantages<K: Ord>(rewards: &[f64], groups: &[K], scale: Scale) -> Advantages {
    assert_eq!(rewards.len(), groups.len(), "one group key per reward");
    let mut members: BTreeMap<&K, Vec<f64>> = BTreeMap::new();
    for (r, g) in rewards.iter().zip(groups) {
        members.entry(g).or_default().push(*r);
    }
    let stats: BTreeMap<&K, (f64, f64, bool)> = members
        .iter()
        .map(|(k, v)| {
            let (mean, std) = mean_std(v);
            (*k, (mean, std, is_flat(v)))
        })
        .collect();
    let batch_std = mean_std(rewards).1;
    let mut values = Vec::with_capacity(rewards.len());
    let mut flat = Vec::with_capacity(rewards.len());
    for (&r, g) in rewards.iter().zip(groups) {
        let (mean, group_std, is_flat) = stats[g];
        flat.push(is_flat);
        if is_flat {
            values.push(0.0);
            continue;
        }
        let centred = r - mean;
        let a = match scale {
            Scale::Group => centred / (group_std + EPS),
            Scale::Batch => centred / (batch_std + EPS),
            Scale::None => centred,
        };
        values.push(if a.is_finite() { a } else { 0.0 });
    }
    Advantages { values, flat }
}

/// Mean and population standard deviation.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advantages' values alone.
    fn group_advantages<K: Ord>(rewards: &[f64], groups: &[K], scale: Scale) -> Vec<f64> {
        advantages(rewards, groups, scale).values
    }

    #[test]
    fn hand_computed_group_advantages() {
        let a = group_advantages(&[1.0, 0.0, 1.0, 0.0], &["t", "t", "t", "t"], Scale::Group);
        // mean 0.5, std 0.5 → ±0.5 / 0.5001
        for (x, sign) in a.iter().zip([1.0, -1.0, 1.0, -1.0]) {
            assert!((x - sign * 0.5 / 0.5001).abs() < 1e-9, "{a:?}");
        }
    }

    #[test]
    fn equal_rewards_and_singletons_give_zero_not_nan() {
        let a = group_advantages(&[0.7, 0.7, 0.2], &[1, 1, 2], Scale::Group);
        assert_eq!(a, vec![0.0, 0.0, 0.0]);
        assert!(group_advantages::<u8>(&[], &[], Scale::Batch).is_empty());
    }

    /// Eight rewards of 5/12 (a policy reward of 0 plus a format bonus of 5/12, say): the float
    /// mean is not exactly 5/12, so `r − mean` is about ±1e-16 and the old std test let
    /// ±5e-13 advantages through. Decided from max − min, the group is flat and exactly 0 under
    /// every scale.
    #[test]
    fn eight_rewards_of_five_twelfths_are_exactly_zero_under_every_scale() {
        let r = 5.0 / 12.0;
        let rewards = vec![r; 8];
        let mean = rewards.iter().sum::<f64>() / 8.0;
        assert_ne!(
            mean, r,
            "the float mean is not exactly 5/12 (what made ±5e-13)"
        );
        let groups = vec!["t"; 8];
        for scale in [Scale::Group, Scale::Batch, Scale::None] {
            let a = advantages(&rewards, &groups, scale);
            assert!(
                a.values.iter().all(|x| x.to_bits() == 0),
                "{scale:?}: {a:?}"
            );
            assert!(a.flat.iter().all(|f| *f));
        }
        // In a batch with a group that has a signal, the flat group stays exactly 0 too.
        let mut mixed = rewards.clone();
        mixed.extend([0.0, 1.0]);
        let mut keys = groups.clone();
        keys.extend(["u", "u"]);
        let a = advantages(&mixed, &keys, Scale::Batch);
        assert!(a.values[..8].iter().all(|x| x.to_bits() == 0), "{a:?}");
        assert!(a.values[8] < 0.0 && a.values[9] > 0.0);
        assert_eq!(a.flat, [vec![true; 8], vec![false; 2]].concat());
    }

    #[test]
    fn flatness_is_relative_to_the_magnitude_and_never_hides_a_real_spread() {
        assert!(is_flat(&[]));
        assert!(is_flat(&[3.0]));
        assert!(is_flat(&[1e6, 1e6 + 1e-4]));
        assert!(!is_flat(&[1e6, 1e6 + 1.0]));
        assert!(!is_flat(&[0.0, 1e-6]));
        assert!(is_flat(&[0.1 + 0.2, 0.3]));
    }

    #[test]
    fn groups_are_independent_and_unscaled_mode_only_centres() {
        let a = group_advantages(&[1.0, 3.0, 10.0, 10.0], &[0, 0, 1, 1], Scale::None);
        assert_eq!(a, vec![-1.0, 1.0, 0.0, 0.0]);
    }
}
