//! Runs one planned step on the model: builds the packed batch (token and media embeddings,
//! per-row positions, block tables and adapters), runs one forward pass for all rows, and
//! returns the scores of every row that reached the end of its tokens: the logits, or only
//! their argmax for greedy rows (computed on the model's device).

use candle_core::{Tensor, D};

use super::generation::Scores;
use super::scheduler::{ScheduledRow, StepPlan};
use super::sequence::Sequence;
use crate::models::LoadedModel;
use crate::nn::kv_cache::KvPool;
use crate::nn::phi3_decoder::BatchRow;
use crate::{Error, Result};

/// What a step produced for its rows.
pub struct StepOutput {
    /// `(row, scores)` for the rows whose sequence has fed all its tokens: the next token is
    /// chosen from these.
    pub scores: Vec<(ScheduledRow, Scores)>,
    /// Rows that could not be built (their request's media failed to encode), with the error;
    /// the other rows ran without them.
    pub failed: Vec<(ScheduledRow, Error)>,
    /// Whether the pass gave up part way (`stop` held): no row advanced, nothing was scored.
    pub interrupted: bool,
}

/// Runs `plan` over `running`; advances each run row's `computed`. An interruptible plan's pass
/// is abandoned when `stop()` holds at one of a layer's stopping points (before its attention
/// and before each MLP projection).
pub fn run_step(
    model: &LoadedModel,
    pool: &mut KvPool,
    running: &mut [Sequence],
    plan: &StepPlan,
    stop: &dyn Fn() -> bool,
) -> Result<StepOutput> {
    for &(src, dst) in &plan.copies {
        pool.copy_block(src, dst)?;
    }
    let mut embeds = Vec::with_capacity(plan.rows.len());
    let mut rows = Vec::with_capacity(plan.rows.len());
    let mut failed = Vec::new();
    for &row in &plan.rows {
        match embed_row(model, &running[row.index], row.len) {
            Ok(e) => {
                embeds.push(e);
                rows.push(row);
            }
            Err(e) => failed.push((row, e)),
        }
    }
    if rows.is_empty() {
        return Ok(StepOutput { scores: Vec::new(), failed, interrupted: false });
    }
    let batch: Vec<BatchRow> = rows
        .iter()
        .map(|r| {
            let seq = &running[r.index];
            BatchRow {
                len: r.len,
                position: seq.computed,
                prompt_len: seq.prompt_len(),
                blocks: &seq.blocks,
                adapter: seq.request.adapter,
            }
        })
        .collect();
    let never = || false;
    let stop = if plan.interruptible { stop } else { &never };
    let Some(hidden) = model.forward_batch_unless(&Tensor::cat(&embeds, 0)?, &batch, pool, stop)? else {
        return Ok(StepOutput { scores: Vec::new(), failed, interrupted: true });
    };
    let mut last_rows = Vec::new();
    let mut sampled = Vec::new();
    let mut at = 0;
    for row in &rows {
        at += row.len;
        let seq = &mut running[row.index];
        seq.computed += row.len;
        if seq.remaining() == 0 {
            last_rows.push(at - 1);
            sampled.push(*row);
        }
    }
    let scores = if last_rows.is_empty() {
        Vec::new()
    } else {
        let logits = model.logits(&hidden, &last_rows)?;
        let argmax: Vec<bool> = sampled.iter().map(|r| running[r.index].generation.picks_argmax()).collect();
        sampled.into_iter().zip(scores(&logits, &argmax)?).collect()
    };
    Ok(StepOutput { scores, failed, interrupted: false })
}

/// Each row of `logits` (`[rows, vocab]`) as it leaves the device: only its argmax where
/// `argmax[row]`, else all of it.
fn scores(logits: &Tensor, argmax: &[bool]) -> Result<Vec<Scores>> {
    let pick = |want: bool| -> Result<Option<Tensor>> {
        let rows: Vec<u32> = (0..argmax.len() as u32).filter(|&r| argmax[r as usize] == want).collect();
        Ok(match rows.len() {
            0 => None,
            n if n == argmax.len() => Some(logits.clone()),
            n => Some(logits.index_select(&Tensor::from_vec(rows, n, logits.device())?, 0)?),
        })
    };
    let mut ids = match pick(true)? {
        Some(t) => t.argmax(D::Minus1)?.to_vec1::<u32>()?,
        None => Vec::new(),
    }
    .into_iter();
    let mut full = match pick(false)? {
        Some(t) => t.to_vec2::<f32>()?,
        None => Vec::new(),
    }
    .into_iter();
    argmax
        .iter()
        .map(|&a| match a {
            true => ids.next().map(Scores::Argmax),
            false => full.next().map(Scores::Logits),
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Internal("fewer scores than rows came back from the device".into()))
}

/// Embeddings `[len, hidden]` of the next `len` tokens of `seq`, with the features of the media
/// spans they cover (encoding a media item the first time a chunk reaches it).
fn embed_row(model: &LoadedModel, seq: &Sequence, len: usize) -> Result<Tensor> {
    let (start, end) = (seq.computed, seq.computed + len);
    let prepared = &seq.request.prepared;
    let mut media = Vec::new();
    for (i, span) in prepared.tokens.media.iter().enumerate() {
        let (lo, hi) = (span.start.max(start), (span.start + span.len).min(end));
        if lo < hi {
            let features = prepared.span_features(model, i)?;
            media.push((lo - start, features.narrow(0, lo - span.start, hi - lo)?));
        }
    }
    model.embed(&seq.tokens[start..end], &media)
}
