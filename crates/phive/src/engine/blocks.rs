//! Which KV blocks are free, and how many sequences hold each one.
//!
//! Blocks are reference-counted so that sequences can share them: the `n > 1` choices of a
//! request share the blocks of the prompt they prefilled once. A sequence about to write into a
//! block it shares gets a private copy first (copy-on-write); the copy itself is done by the
//! model runner on the KV pool, this module only hands out the block ids.

/// Free list and reference counts of a pool of `capacity` blocks.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    refs: Vec<u32>,
}

impl BlockAllocator {
    /// All `capacity` blocks free.
    pub fn new(capacity: usize) -> Self {
        // Hand out low ids first (pop from the end), so a lightly used pool touches little memory.
        Self { free: (0..capacity as u32).rev().collect(), refs: vec![0; capacity] }
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    /// Blocks no sequence holds.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// A free block, now held once; `None` when the pool is full.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = self.free.pop()?;
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// One more holder for each of `blocks` (a forked sequence shares them).
    pub fn share(&mut self, blocks: &[u32]) {
        for &b in blocks {
            debug_assert!(self.refs[b as usize] > 0, "sharing a free block");
            self.refs[b as usize] += 1;
        }
    }

    /// Drops one holder of each of `blocks`; blocks nobody holds any more become free.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            debug_assert!(*r > 0, "releasing a free block");
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.free.push(b);
            }
        }
    }

    /// Whether more than one sequence holds `block`.
    pub fn is_shared(&self, block: u32) -> bool {
        self.refs[block as usize] > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_blocks_are_freed_by_their_last_holder() {
        let mut a = BlockAllocator::new(3);
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
}
