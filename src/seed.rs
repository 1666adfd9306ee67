//! Seeds and stable hashes. Every random choice in asl derives from the run seed through these,
//! never from `HashMap` order or the clock, so the same inputs and seed give the same bytes.

use sha2::{Digest, Sha256};

/// A 64-bit hash of a sequence of strings that is the same on every machine and every run.
pub(crate) fn stable_u64(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
}

/// The seed of one consumer (a stage, a row, an attempt) derived from a parent seed.
pub(crate) fn derive_seed(parent: u64, label: &str) -> u64 {
    stable_u64(&[&parent.to_string(), label])
}

/// A 64-bit FNV-1a hash of `bytes`: cheap, and the same everywhere. Ids and the corpus
/// fingerprint stored beside every index derive from it, so it must never change.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splits [`split_for`] assigns.
pub(crate) const SPLITS: [&str; 3] = ["train", "dev", "test"];

/// The one split assignment of labelled questions: `key` (an article, or a multi-hop question
/// whose sub-questions must stay together) goes to train / dev / test in proportions 80 / 10 /
/// 10 by its hash, so everything sharing a key lands in one split. The salt lets a future
/// scheme reshuffle without colliding with this one; changing it reshuffles every run's splits.
pub(crate) fn split_for(key: &str) -> &'static str {
    match fnv1a(format!("asl-qa-split-v1\u{0}{key}").as_bytes()) % 10 {
        8 => "dev",
        9 => "test",
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
    fn splits_are_roughly_80_10_10_and_pinned() {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..10_000 {
            *counts.entry(split_for(&format!("doc {i}"))).or_insert(0) += 1;
        }
        assert!((7_700..8_300).contains(&counts["train"]), "{counts:?}");
        assert!((800..1_200).contains(&counts["dev"]), "{counts:?}");
        assert!((800..1_200).contains(&counts["test"]), "{counts:?}");
        // Pinned (computed independently) so a change of the hash or the salt, which would
        // move questions between splits in every existing run, is noticed.
        let pinned: Vec<&str> = (5..=9).map(|i| split_for(&format!("doc {i}"))).collect();
        assert_eq!(pinned, ["train", "test", "dev", "test", "dev"]);
        assert_eq!(split_for("2001: A Space Odyssey"), "train");
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
