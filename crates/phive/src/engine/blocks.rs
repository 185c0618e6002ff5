//! Which KV blocks are free, how many sequences hold each one, and which hold a cached prefix.
//!
//! Blocks are reference-counted so that sequences can share them: the `n > 1` choices of a
//! request share the blocks of the prompt they prefilled once, and requests whose prompts start
//! the same way share the blocks of that prefix. A sequence about to write into a block it
//! shares gets a private copy first (copy-on-write); the copy itself is done by the model runner
//! on the KV pool, this module only hands out the block ids.
//!
//! The prefix cache lives here too: a full block can be registered under the content hash of
//! everything up to its end ([`super::prefix`]). When its last holder lets go, a registered
//! block is not freed but kept, least recently released first in line for eviction, so a later
//! request with the same prefix finds it. Kept blocks count as free: [`BlockAllocator::allocate`]
//! takes a free block if there is one and evicts the oldest kept one otherwise, so the cache
//! never costs a preemption or a refusal.

use std::collections::{BTreeMap, HashMap};

use super::prefix::BlockHash;

/// Free list, reference counts and prefix-cache index of a pool of `capacity` blocks.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    refs: Vec<u32>,
    /// Whether full blocks are kept for reuse.
    caching: bool,
    /// The hash each registered block was computed for.
    hash_of: Vec<Option<BlockHash>>,
    /// The block registered under each hash.
    by_hash: HashMap<BlockHash, u32>,
    /// Registered blocks nobody holds, by release time (oldest first in line for eviction).
    kept: BTreeMap<u64, u32>,
    /// When each kept block was released (its key in `kept`).
    released_at: Vec<u64>,
    clock: u64,
    /// One past the highest block ever handed out: the blocks below have been written to.
    touched: usize,
}

impl BlockAllocator {
    /// All `capacity` blocks free; `caching` keeps full blocks for prefix reuse.
    pub fn new(capacity: usize, caching: bool) -> Self {
        Self {
            // Hand out low ids first (pop from the end), so a lightly used pool touches little memory.
            free: (0..capacity as u32).rev().collect(),
            refs: vec![0; capacity],
            caching,
            hash_of: vec![None; capacity],
            by_hash: HashMap::new(),
            kept: BTreeMap::new(),
            released_at: vec![0; capacity],
            clock: 0,
            touched: 0,
        }
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    /// Blocks no sequence holds (free, or kept for the prefix cache and evictable).
    pub fn num_free(&self) -> usize {
        self.free.len() + self.kept.len()
    }

    /// How many blocks, from block 0, sequences have held: the free list hands out fresh
    /// blocks in ascending order, so the next ones start here.
    pub fn touched(&self) -> usize {
        self.touched
    }

    /// Blocks registered in the prefix cache, held or kept.
    pub fn num_cached(&self) -> usize {
        self.by_hash.len()
    }

    /// A block, now held once: a free one, else the least recently released cached block
    /// (dropped from the cache); `None` when every block is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = match self.free.pop() {
            Some(block) => block,
            None => {
                let (_, block) = self.kept.pop_first()?;
                if let Some(hash) = self.hash_of[block as usize].take() {
                    self.by_hash.remove(&hash);
                }
                block
            }
        };
        self.refs[block as usize] = 1;
        self.touched = self.touched.max(block as usize + 1);
        Some(block)
    }

    /// One more holder for each of `blocks` (a forked sequence shares them, or a new sequence
    /// takes them from the prefix cache).
    pub fn share(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if self.refs[b as usize] == 0 {
                let taken = self.kept.remove(&self.released_at[b as usize]);
                debug_assert_eq!(taken, Some(b), "sharing a free block");
            }
            self.refs[b as usize] += 1;
        }
    }

    /// Drops one holder of each of `blocks`; a block nobody holds any more becomes free, or is
    /// kept if it is registered. A sequence's blocks are released last to first, so that the end
    /// of a prefix is evicted before its start.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let r = &mut self.refs[b as usize];
            debug_assert!(*r > 0, "releasing a free block");
            *r = r.saturating_sub(1);
            if *r == 0 {
                if self.hash_of[b as usize].is_some() {
                    self.clock += 1;
                    self.released_at[b as usize] = self.clock;
                    self.kept.insert(self.clock, b);
                } else {
                    self.free.push(b);
                }
            }
        }
    }

    /// Whether more than one sequence holds `block`.
    pub fn is_shared(&self, block: u32) -> bool {
        self.refs[block as usize] > 1
    }

    /// Whether `block` is kept in the cache with no holder (taking it uses up a free block).
    pub fn is_kept(&self, block: u32) -> bool {
        self.refs[block as usize] == 0
    }

    /// Registers the full, computed `block` under `hash`, unless caching is off, the block is
    /// already registered, or another block holds the same content.
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        if !self.caching || self.hash_of[block as usize].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        self.hash_of[block as usize] = Some(hash);
        self.by_hash.insert(hash, block);
    }

    /// The cached blocks of the longest prefix of `hashes` (not yet held: see [`Self::share`]).
    pub fn lookup(&self, hashes: &[BlockHash]) -> Vec<u32> {
        hashes.iter().map_while(|h| self.by_hash.get(h).copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_blocks_are_freed_by_their_last_holder() {
        let mut a = BlockAllocator::new(3, false);
        let (x, y) = (a.allocate().unwrap(), a.allocate().unwrap());
        assert_eq!((x, y), (0, 1));
        a.share(&[x, y]);
        assert!(a.is_shared(x));
        a.release(&[x, y]);
        assert_eq!(a.num_free(), 1);
        assert!(!a.is_shared(x));
        a.release(&[x]);
        assert_eq!(a.num_free(), 2);
        assert!(a.allocate().is_some() && a.allocate().is_some());
        assert_eq!(a.allocate(), None);
        assert_eq!(a.capacity(), 3);
    }

    #[test]
    fn released_blocks_are_handed_out_again_before_fresh_ones() {
        let mut a = BlockAllocator::new(4, false);
        let (x, _) = (a.allocate().unwrap(), a.allocate().unwrap());
        assert_eq!(a.touched(), 2);
        a.release(&[x]);
        assert_eq!(a.allocate(), Some(x));
        assert_eq!(a.touched(), 2, "a reused block touches nothing new");
        assert_eq!(a.allocate(), Some(2), "fresh blocks come in ascending order");
        assert_eq!(a.touched(), 3);
    }

    #[test]
    fn registered_blocks_are_kept_found_again_and_evicted_oldest_first() {
        let mut a = BlockAllocator::new(3, true);
        let blocks: Vec<u32> = (0..3).map(|_| a.allocate().unwrap()).collect();
        for (&b, h) in blocks.iter().zip([10, 11, 12]) {
            a.register(b, h);
        }
        // Released last to first: block 2 is the oldest kept, then 1, then 0.
        a.release(&blocks);
        assert_eq!((a.num_free(), a.num_cached()), (3, 3));
        assert_eq!(a.lookup(&[10, 11, 12, 13]), blocks);
        assert_eq!(a.lookup(&[11, 12]), vec![blocks[1], blocks[2]]);
        assert!(a.lookup(&[99, 10]).is_empty());

        // Taking a kept block uses up a free one; allocating evicts the oldest kept.
        a.share(&blocks[..1]);
        assert!(!a.is_kept(blocks[0]) && a.is_kept(blocks[1]));
        assert_eq!(a.num_free(), 2);
        assert_eq!(a.allocate(), Some(blocks[2]));
        assert_eq!(a.lookup(&[10, 11, 12]), blocks[..2].to_vec());
        assert_eq!(a.num_cached(), 2);
        assert_eq!(a.allocate(), Some(blocks[1]));
        assert_eq!(a.allocate(), None, "a held cached block is never evicted");
        assert_eq!(a.lookup(&[10]), vec![blocks[0]]);
    }

    #[test]
    fn one_block_per_hash_and_nothing_kept_when_caching_is_off() {
        let mut a = BlockAllocator::new(2, true);
        let (x, y) = (a.allocate().unwrap(), a.allocate().unwrap());
        a.register(x, 7);
        a.register(y, 7);
        assert_eq!(a.lookup(&[7]), vec![x]);
        a.release(&[y]);
        assert_eq!((a.num_free(), a.num_cached()), (1, 1));

        let mut off = BlockAllocator::new(1, false);
        let b = off.allocate().unwrap();
        off.register(b, 7);
        off.release(&[b]);
        assert!(off.lookup(&[7]).is_empty() && off.num_cached() == 0);
    }
}
