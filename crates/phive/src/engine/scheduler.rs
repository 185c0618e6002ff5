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
//! step under way and its own prefill).

use std::collections::VecDeque;

use super::blocks::BlockAllocator;
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
}

impl Scheduler {
    /// A scheduler over a pool of `num_blocks` blocks.
    pub fn new(limits: SchedulerLimits, num_blocks: usize) -> Self {
        Self {
            limits,
            blocks: BlockAllocator::new(num_blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
        }
    }

    /// Blocks free and in the pool.
    pub fn block_usage(&self) -> (usize, usize) {
        (self.blocks.num_free(), self.blocks.capacity())
    }

    /// Queues a new sequence.
    pub fn add(&mut self, sequence: Sequence) {
        let at = self.waiting.partition_point(|s| key(s) < key(&sequence));
        self.waiting.insert(at, sequence);
    }

    /// Adds forks of a running sequence, sharing its blocks.
    pub fn add_running(&mut self, sequence: Sequence) {
        self.blocks.share(&sequence.blocks);
        self.insert_running(sequence);
    }

    /// Removes `running[index]` and frees its blocks.
    pub fn finish(&mut self, index: usize) -> Sequence {
        let sequence = self.running.remove(index);
        self.blocks.release(&sequence.blocks);
        sequence
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
    /// keeping back the blocks this step's decodes may need; returns how many of them start for
    /// the first time (the others were preempted).
    fn admit(&mut self) -> usize {
        let mut started = 0;
        let bs = self.limits.block_size;
        let decode_needs = self.running.iter().filter(|s| s.remaining() == 1 && s.computed % bs == 0).count();
        while let Some(next) = self.waiting.front() {
            let need = next.tokens.len().div_ceil(bs);
            if self.running.len() >= self.limits.max_num_seqs || self.blocks.num_free() < need + decode_needs
            {
                break;
            }
            let mut sequence = self.waiting.pop_front().expect("front exists");
            sequence.blocks = (0..need).map(|_| self.blocks.allocate().expect("checked free")).collect();
            started += usize::from(!sequence.generation.is_scheduled());
            sequence.generation.mark_scheduled();
            self.insert_running(sequence);
        }
        started
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
