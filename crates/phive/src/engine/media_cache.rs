//! Encoder outputs kept across requests: a new question about the same picture (or clip)
//! skips the vision (or audio) tower, even when the text before it changed.
//!
//! Keys are content hashes of what the encoder consumes ([`LoadedModel::media_key`]), so the
//! same picture sent as a URL and as base64 hits, and a changed pixel misses. Entries are
//! evicted least recently used when the byte budget (`--media-cache-mem`) is exceeded; an
//! item larger than the whole budget is not kept.
//!
//! [`LoadedModel::media_key`]: crate::models::LoadedModel::media_key

use std::collections::HashMap;

use candle_core::Tensor;

use crate::models::MediaKey;

struct Entry {
    features: Tensor,
    bytes: u64,
    last_used: u64,
}

/// The cache and its counters.
pub struct MediaCache {
    budget: u64,
    used: u64,
    clock: u64,
    entries: HashMap<MediaKey, Entry>,
    /// Lookups answered from the cache since start.
    pub hits: u64,
    /// Lookups that had to run the encoder since start.
    pub misses: u64,
}

impl MediaCache {
    /// An empty cache of `budget` bytes (0 turns it off).
    pub fn new(budget: u64) -> Self {
        Self { budget, used: 0, clock: 0, entries: HashMap::new(), hits: 0, misses: 0 }
    }

    /// The features stored under `key`, counting a hit or a miss.
    pub fn get(&mut self, key: &MediaKey) -> Option<Tensor> {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.last_used = self.clock;
                self.hits += 1;
                Some(entry.features.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Keeps `features` under `key`, evicting the least recently used entries to make room.
    pub fn insert(&mut self, key: MediaKey, features: Tensor) {
        let bytes = (features.elem_count() * features.dtype().size_in_bytes()) as u64;
        if bytes > self.budget || self.entries.contains_key(&key) {
            return;
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k) else {
                break;
            };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.used -= evicted.bytes;
            }
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.insert(key, Entry { features, bytes, last_used: self.clock });
    }

    /// Bytes of features held.
    pub fn bytes(&self) -> u64 {
        self.used
    }

    /// Items held.
    pub fn items(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn features(rows: usize) -> Tensor {
        Tensor::zeros((rows, 4), candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn evicts_least_recently_used_within_the_budget() {
        let mut cache = MediaCache::new(3 * 64); // three items of 4 rows x 4 floats
        let key = |b: u8| [b; 32];
        for k in 0..3 {
            cache.insert(key(k), features(4));
        }
        assert_eq!((cache.items(), cache.bytes()), (3, 192));
        assert!(cache.get(&key(0)).is_some()); // 0 is now the most recent
        cache.insert(key(3), features(4)); // evicts 1, the least recently used
        assert!(cache.get(&key(1)).is_none());
        assert!(cache.get(&key(0)).is_some() && cache.get(&key(3)).is_some());
        assert_eq!((cache.hits, cache.misses), (3, 1));
        // Larger than the whole budget: not kept, nothing evicted.
        cache.insert(key(9), features(100));
        assert!(cache.get(&key(9)).is_none());
        assert_eq!(cache.items(), 3);
        // A zero budget keeps nothing.
        let mut off = MediaCache::new(0);
        off.insert(key(1), features(1));
        assert_eq!(off.items(), 0);
    }
}
