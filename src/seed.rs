//! Seeds and stable hashes. Every random choice in asl derives from the run seed through these,
//! never from `HashMap` order or the clock, so the same inputs and seed give the same bytes.

use sha2::{Digest, Sha256};

/// A 64-bit hash of a sequence of strings that is the same on every machine and every run.
pub fn stable_u64(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
}

/// The seed of one consumer (a stage, a row, an attempt) derived from a parent seed.
pub fn derive_seed(parent: u64, label: &str) -> u64 {
    stable_u64(&[&parent.to_string(), label])
}

/// Assigns `key` to train / dev / test in proportions 80 / 10 / 10 by its hash, so everything
/// sharing a key (an article, a multi-hop question) lands in one split.
pub fn split_for(key: &str) -> &'static str {
    match stable_u64(&["split", key]) % 10 {
        0 => "dev",
        1 => "test",
        _ => "train",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_separate_parts() {
        assert_eq!(stable_u64(&["a", "bc"]), stable_u64(&["a", "bc"]));
        assert_ne!(stable_u64(&["a", "bc"]), stable_u64(&["ab", "c"]));
        assert_ne!(derive_seed(1, "corpus"), derive_seed(2, "corpus"));
    }

    #[test]
    fn splits_are_roughly_80_10_10() {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..10_000 {
            *counts.entry(split_for(&i.to_string())).or_insert(0) += 1;
        }
        assert!((7600..8400).contains(&counts["train"]), "{counts:?}");
        assert!((800..1200).contains(&counts["dev"]), "{counts:?}");
        assert!((800..1200).contains(&counts["test"]), "{counts:?}");
    }
}
