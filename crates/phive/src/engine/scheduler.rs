//! Which sequences run in the next step, and with how many tokens each.
//!
//! Every step: admit waiting sequences first-come-first-served while the running limit and the
//! free KV blocks allow (a sequence gets the blocks for everything it has to prefill when it is
//! admitted); give every decoding sequence its one token, taking a new block when it crosses a
//! block boundary (or a private copy of a block it shares) and preempting the newest running
//! sequence when the pool is full; then share what is left of the token budget between the
//! sequences still prefilling, shortest first: a prompt that fits runs whole, a longer one in
//! chunks of half the budget, so a long prompt never freezes the others' streaming and a short
//! prompt that arrives behind it starts at once (a step that completes a prompt leaves the
//! longer ones for the next step, so the newcomer's first token waits only for the rest of the
//! step under way and its own prefill). A prompt prefilling alone (nothing decoding, nothing
//! waiting) takes larger chunks, up to the solo chunk, which multiply faster; such a step is
//! interruptible: the engine abandons it, uncounted, when a request arrives, so the newcomer
//! waits for at most a layer's largest part (its gate and up projections) of it.
//!
//! With the prefix cache on, a sequence admitted takes the cached blocks of its longest cached
//! prefix (always leaving at least its last token to compute, whose logits it needs) and
//! prefills only the rest; a sequence whose next block is being computed right now by a running
//! sequence waits for it to land instead of computing it a second time, so concurrent requests
//! with one system prompt prefill it once. After every step the blocks that filled up are
//! registered in the cache.

use std::collections::VecDeque;

use super::blocks::BlockAllocator;
use super::prefix::{BlockHash, PrefixHasher};
use super::sequence::Sequence;

/// Limits of one step.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerLimits {
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens fed to the model in one step (decode tokens plus prefill chunks).
    pub max_batched_tokens: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Most tokens of a prompt prefilling alone per step (interruptible steps); at most
    /// `max_batched_tokens` turns solo chunks off.
    pub solo_chunk: usize,
}

/// One scheduled row: `len` tokens of `running[index]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledRow {
    /// Index into [`Scheduler::running`].
    pub index: usize,
    /// Tokens to feed.
    pub len: usize,
}

/// What a step runs.
#[derive(Debug, Default)]
pub struct StepPlan {
    /// Rows in batch order.
    pub rows: Vec<ScheduledRow>,
    /// `(source, destination)` blocks to copy before the forward pass (copy-on-write).
    pub copies: Vec<(u32, u32)>,
    /// Sequences this step started for the first time (they no longer count as queued).
    pub started: usize,
    /// Whether the step is one solo chunk beyond the token budget, to be abandoned when a
    /// request arrives.
    pub interruptible: bool,
}

/// Waiting and running sequences and the KV blocks they hold.
pub struct Scheduler {
    limits: SchedulerLimits,
    blocks: BlockAllocator,
    /// Sequences not running, in arrival order (preempted ones back in their place).
    pub waiting: VecDeque<Sequence>,
    /// Running sequences, in arrival order (the last is the newest).
    pub running: Vec<Sequence>,
    /// Sequences preempted since start.
    pub preemptions: u64,
    /// Prompt tokens of started requests, and how many of them came from the prefix cache.
    pub prefix_queried_tokens: u64,
    /// See `prefix_queried_tokens`.
    pub prefix_hit_tokens: u64,
    /// Hashes blocks for the prefix cache; `None` when it is off.
    hasher: Option<PrefixHasher>,
}

impl Scheduler {
    /// A scheduler over a pool of `num_blocks` blocks, caching prefixes when given a hasher.
    pub fn new(limits: SchedulerLimits, num_blocks: usize, hasher: Option<PrefixHasher>) -> Self {
        Self {
            limits,
            blocks: BlockAllocator::new(num_blocks, hasher.is_some()),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            prefix_queried_tokens: 0,
            prefix_hit_tokens: 0,
            hasher,
        }
    }

    /// Blocks free (cached ones nobody holds included), in the pool, and in the prefix cache.
    pub fn block_usage(&self) -> (usize, usize, usize) {
        (self.blocks.num_free(), self.blocks.capacity(), self.blocks.num_cached())
    }

    /// How many blocks from block 0 sequences have held ([`BlockAllocator::touched`]).
    pub fn blocks_touched(&self) -> usize {
        self.blocks.touched()
    }

    /// Queues a new sequence.
    pub fn add(&mut self, mut sequence: Sequence) {
        if let Some(hasher) = self.hasher {
            let mut hashes = std::mem::take(&mut sequence.block_hashes);
            hasher.extend(&mut hashes, &sequence.content(), sequence.tokens.len());
            sequence.block_hashes = hashes;
        }
        let at = self.waiting.partition_point(|s| key(s) < key(&sequence));
        self.waiting.insert(at, sequence);
    }

    /// Adds forks of a running sequence, sharing its blocks.
    pub fn add_running(&mut self, sequence: Sequence) {
        self.blocks.share(&sequence.blocks);
        self.insert_running(sequence);
    }

    /// Removes `running[index]` and frees its blocks (cached ones stay in the cache).
    pub fn finish(&mut self, index: usize) -> Sequence {
        let sequence = self.running.remove(index);
        self.blocks.release(&sequence.blocks);
        sequence
    }

    /// Registers in the prefix cache every block that the last step filled.
    pub fn register_computed(&mut self) {
        let Some(hasher) = self.hasher else { return };
        let bs = self.limits.block_size;
        for sequence in &mut self.running {
            let mut hashes = std::mem::take(&mut sequence.block_hashes);
            hasher.extend(&mut hashes, &sequence.content(), sequence.computed);
            let full = (sequence.computed / bs).min(hashes.len());
            for (&block, &hash) in
                sequence.blocks[sequence.registered..full].iter().zip(&hashes[sequence.registered..])
            {
                self.blocks.register(block, hash);
            }
            sequence.registered = sequence.registered.max(full);
            sequence.block_hashes = hashes;
        }
    }

    /// Removes every sequence (waiting or running) for which `cancelled` holds, freeing blocks.
    pub fn remove_where(&mut self, mut cancelled: impl FnMut(&Sequence) -> bool) -> Vec<Sequence> {
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if cancelled(&self.running[i]) {
                removed.push(self.finish(i));
            } else {
                i += 1;
            }
        }
        let (gone, kept): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|s| cancelled(s));
        self.waiting = kept.into();
        removed.extend(gone);
        removed
    }

    /// Whether anything is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Plans the next step.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan { started: self.admit(), ..Default::default() };
        let mut budget = self.limits.max_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if self.running[i].remaining() != 1 {
                i += 1;
                continue;
            }
            match self.grow_for_decode(i, &mut plan.copies) {
                Grown::Yes => {
                    plan.rows.push(ScheduledRow { index: i, len: 1 });
                    budget -= 1;
                    i += 1;
                }
                Grown::PreemptedSelf => {}
            }
        }
        let mut prefilling: Vec<usize> =
            (0..self.running.len()).filter(|&i| self.running[i].remaining() > 1).collect();
        prefilling.sort_by_key(|&i| (self.running[i].remaining(), key(&self.running[i])));
        // A prompt that fits the budget runs whole; a longer one advances in chunks of at most
        // half the budget, so the step that a newcomer has to wait out stays short.
        let chunk = (self.limits.max_batched_tokens / 2).max(1);
        if let ([index], true, true) = (&prefilling[..], plan.rows.is_empty(), self.waiting.is_empty()) {
            let len = self.running[*index].remaining().min(self.limits.solo_chunk);
            if len > budget {
                plan.rows.push(ScheduledRow { index: *index, len });
                plan.interruptible = true;
                return plan;
            }
        }
        let mut completes = false;
        for index in prefilling {
            let remaining = self.running[index].remaining();
            // A step that finishes some prompt (its first token) carries no chunk of a longer
            // one: that step's length is then the short prompt's own, not the long prompt's.
            if budget == 0 || (completes && remaining > budget) {
                break;
            }
            let len = if remaining <= budget { remaining } else { budget.min(chunk) };
            completes |= len == remaining;
            plan.rows.push(ScheduledRow { index, len });
            budget -= len;
        }
        plan
    }

    /// Admits waiting sequences in arrival order while the limits and free blocks allow,
    /// keeping back the blocks this step's decodes may need, each with the cached blocks of its
    /// longest cached prefix (one whose next block a running sequence is computing waits for
    /// it); returns how many of them start for the first time (the others were preempted).
    fn admit(&mut self) -> usize {
        let mut started = 0;
        let bs = self.limits.block_size;
        let decode_needs = self.running.iter().filter(|s| s.remaining() == 1 && s.computed % bs == 0).count();
        let mut i = 0;
        while i < self.waiting.len() && self.running.len() < self.limits.max_num_seqs {
            let next = &self.waiting[i];
            // The block holding the last token is always computed: its logits are needed.
            let usable = &next.block_hashes[..next.block_hashes.len().min((next.tokens.len() - 1) / bs)];
            let hits = self.blocks.lookup(usable);
            if usable.get(hits.len()).is_some_and(|&hash| self.is_being_computed(hash)) {
                i += 1;
                continue;
            }
            let need = next.tokens.len().div_ceil(bs) - hits.len();
            let taken_from_cache = hits.iter().filter(|&&b| self.blocks.is_kept(b)).count();
            if self.blocks.num_free() < need + decode_needs + taken_from_cache {
                break;
            }
            let mut sequence = self.waiting.remove(i).expect("index in range");
            self.blocks.share(&hits);
            sequence.computed = hits.len() * bs;
            sequence.registered = hits.len();
            sequence.blocks = hits;
            sequence.blocks.extend((0..need).map(|_| self.blocks.allocate().expect("checked free")));
            if !sequence.generation.is_scheduled() {
                started += 1;
                self.prefix_queried_tokens += sequence.prompt_len() as u64;
                self.prefix_hit_tokens += sequence.computed as u64;
            }
            sequence.generation.mark_scheduled(sequence.computed);
            self.insert_running(sequence);
        }
        started
    }

    /// Whether a running sequence holds the block of `hash` and has yet to compute it.
    fn is_being_computed(&self, hash: BlockHash) -> bool {
        self.running.iter().any(|s| s.block_hashes.get(s.registered..).is_some_and(|h| h.contains(&hash)))
    }

    /// Puts `sequence` among the running ones in arrival order.
    fn insert_running(&mut self, sequence: Sequence) {
        let at = self.running.partition_point(|s| key(s) < key(&sequence));
        self.running.insert(at, sequence);
    }

    /// Makes `running[i]`'s next position writable: a new block at a block boundary, a private
    /// copy of a shared block. Preempts the newest sequences while the pool is full, `i` itself
    /// when it is the newest.
    fn grow_for_decode(&mut self, i: usize, copies: &mut Vec<(u32, u32)>) -> Grown {
        let bs = self.limits.block_size;
        loop {
            let seq = &self.running[i];
            let slot = seq.computed / bs;
            let shared = seq.blocks.get(slot).filter(|&&b| self.blocks.is_shared(b)).copied();
            let needed = slot >= seq.blocks.len() || shared.is_some();
            if !needed {
                return Grown::Yes;
            }
            if let Some(block) = self.blocks.allocate() {
                let seq = &mut self.running[i];
                match shared {
                    Some(old) => {
                        copies.push((old, block));
                        seq.blocks[slot] = block;
                        self.blocks.release(&[old]);
                    }
                    None => seq.blocks.push(block),
                }
                return Grown::Yes;
            }
            let victim = self.running.len() - 1;
            self.preempt(victim);
            if victim == i {
                return Grown::PreemptedSelf;
            }
        }
    }

    /// Frees `running[index]`'s blocks and puts it back in the waiting queue, to be recomputed.
    fn preempt(&mut self, index: usize) {
        let mut sequence = self.finish(index);
        sequence.blocks.clear();
        sequence.computed = 0;
        sequence.registered = 0;
        self.preemptions += 1;
        self.add(sequence);
    }
}

enum Grown {
    Yes,
    PreemptedSelf,
}

/// Arrival order of a sequence (choices of one request in choice order).
fn key(s: &Sequence) -> (u64, usize) {
    (s.id, s.choice)
}
