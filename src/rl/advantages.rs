//! Group-relative advantages (GRPO, SPEC §4): within a group of attempts at one task,
//! `(r − mean) / (std + ε)`; a group whose rewards are all equal has no learning signal and gets
//! zero advantages, never NaN.

use std::collections::BTreeMap;

/// How advantages are scaled after the group mean is subtracted (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
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

pub const EPS: f64 = 1e-4;

/// Advantages for `rewards`, grouped by `groups[i]` (any key; groups need not be contiguous).
pub fn group_advantages<K: Ord>(rewards: &[f64], groups: &[K], scale: Scale) -> Vec<f64> {
    assert_eq!(rewards.len(), groups.len(), "one group key per reward");
    let mut members: BTreeMap<&K, Vec<f64>> = BTreeMap::new();
    for (r, g) in rewards.iter().zip(groups) {
        members.entry(g).or_default().push(*r);
    }
    let stats: BTreeMap<&K, (f64, f64)> = members.iter().map(|(k, v)| (*k, mean_std(v))).collect();
    let batch_std = mean_std(rewards).1;
    rewards
        .iter()
        .zip(groups)
        .map(|(&r, g)| {
            let (mean, group_std) = stats[g];
            let centred = r - mean;
            let a = match scale {
                Scale::Group => centred / (group_std + EPS),
                Scale::Batch => centred / (batch_std + EPS),
                Scale::None => centred,
            };
            if a.is_finite() { a } else { 0.0 }
        })
        .collect()
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

    #[test]
    fn groups_are_independent_and_unscaled_mode_only_centres() {
        let a = group_advantages(&[1.0, 3.0, 10.0, 10.0], &[0, 0, 1, 1], Scale::None);
        assert_eq!(a, vec![-1.0, 1.0, 0.0, 0.0]);
    }
}
