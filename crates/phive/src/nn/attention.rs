//! Scaled dot-product attention over a KV cache, with grouped-query heads and a causal mask.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::Result;

/// The key positions a query at `position` sees: every one up to its own, or with a sliding
/// window of `w` only the last `w` of those (Hugging Face's convention: keys with
/// `position - j < w`).
pub fn visible_keys(position: usize, sliding_window: Option<usize>) -> std::ops::Range<usize> {
    sliding_window.map_or(0, |w| (position + 1).saturating_sub(w))..position + 1
}

/// Which key positions each query may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnMask {
    /// Every query sees every key (vision encoders).
    None,
    /// Query `i` sits at absolute position `offset + i` and sees keys `j <= offset + i`; with a
    /// sliding window `w`, only keys with `offset + i - j < w` (Hugging Face's convention).
    Causal { offset: usize, sliding_window: Option<usize> },
}

/// Upper bound on the elements of one score block `[heads, rows, keys]`; long prefills are
/// processed in query-row chunks so memory stays bounded (about 64 MiB of f32 scores).
const MAX_SCORE_ELEMS: usize = 16 * 1024 * 1024;

/// Query rows per block in causal prefills.
const CAUSAL_CHUNK_ROWS: usize = 256;

/// Masked softmax over the last dim of contiguous scores `[..., rows, keys]` in one pass: row `r`
/// (query position `first_pos + r % rows`) keeps keys `j <= pos` (and `pos - j < window`); masked
/// entries become exactly 0, as with an additive `-inf` mask.
struct CausalSoftmax {
    first_pos: usize,
    rows: usize,
    window: Option<usize>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "phive-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else { candle_core::bail!("causal softmax: f32 only") };
        let Some((a, z)) = l.contiguous_offsets() else {
            candle_core::bail!("causal softmax: non-contiguous")
        };
        let x = &x[a..z];
        let keys = *l.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(keys).zip(x.par_chunks(keys)).enumerate().for_each(|(r, (o, row))| {
            let pos = self.first_pos + r % self.rows;
            let hi = pos.min(keys - 1);
            let lo = visible_keys(pos, self.window).start;
            if lo > hi {
                return;
            }
            let (src, dst) = (&row[lo..=hi], &mut o[lo..=hi]);
            let max = src.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0f32;
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v - max).exp();
                sum += *d;
            }
            for d in dst.iter_mut() {
                *d /= sum;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `softmax(q kᵀ · scale + mask) v`.
///
/// `q` is `[b, heads, s, d]`, `k` and `v` are `[b, kv_heads, len, d]` (any strides with
/// contiguous rows, e.g. views into a [`KvCache`](super::kv_cache::KvCache)), with
/// `heads = groups · kv_heads`; query head `h` uses kv head `h / groups`, exactly like Hugging
/// Face's `repeat_kv`, but without materialising the repeated keys: the `groups` query heads that
/// share a kv head are stacked along the row dimension of one matmul. Returns `[b, heads, s, d]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: AttnMask) -> Result<Tensor> {
    attention_chunked(q, k, v, scale, mask, MAX_SCORE_ELEMS)
}

fn attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: AttnMask,
    max_score_elems: usize,
) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (kb, kvh, len, kd) = k.dims4()?;
    if kb != b || kd != d || kvh == 0 || h % kvh != 0 || v.dims4()? != (b, kvh, len, d) {
        return Err(candle_core::Error::Msg(format!(
            "attention shapes q {:?} k {:?} v {:?} are inconsistent",
            q.shape(),
            k.shape(),
            v.shape()
        ))
        .into());
    }
    let g = h / kvh;
    if s == 0 || len == 0 {
        return Ok(Tensor::zeros((b, h, s, d), q.dtype(), q.device())?);
    }
    let q = (q.contiguous()? * scale)?.reshape((b, kvh, g, s, d))?;
    let kt = k.t()?;
    let causal = matches!(mask, AttnMask::Causal { .. });
    let mut rows_per_chunk = (max_score_elems / (b * h * len).max(1)).clamp(1, s.max(1));
    if causal && s > CAUSAL_CHUNK_ROWS {
        // Smaller row blocks let each block skip the keys after its last query (see below).
        rows_per_chunk = rows_per_chunk.min(CAUSAL_CHUNK_ROWS);
    }
    let fused = q.device().is_cpu() && q.dtype() == DType::F32;
    let mut outs = Vec::with_capacity(s.div_ceil(rows_per_chunk));
    let mut i0 = 0;
    while i0 < s {
        let cs = rows_per_chunk.min(s - i0);
        let qc = if cs == s { q.clone() } else { q.narrow(3, i0, cs)?.contiguous()? };
        let qc = qc.reshape((b, kvh, g * cs, d))?;
        // Keys after the block's last query position are masked for every row: skip them.
        let kl = match mask {
            AttnMask::Causal { offset, .. } => len.min(offset + i0 + cs),
            AttnMask::None => len,
        };
        let (kt, v) =
            if kl == len { (kt.clone(), v.clone()) } else { (kt.narrow(3, 0, kl)?, v.narrow(2, 0, kl)?) };
        let scores = qc.matmul(&kt)?.reshape((b, kvh, g, cs, kl))?;
        let probs = match mask {
            AttnMask::Causal { offset, sliding_window } if fused => {
                scores.apply_op1_no_bwd(&CausalSoftmax {
                    first_pos: offset + i0,
                    rows: cs,
                    window: sliding_window,
                })?
            }
            _ => {
                let scores = match mask_block(mask, i0, cs, kl, q.device())? {
                    Some(m) => scores.broadcast_add(&m)?,
                    None => scores,
                };
                candle_nn::ops::softmax_last_dim(&scores)?
            }
        };
        let out = probs.reshape((b, kvh, g * cs, kl))?.matmul(&v)?.reshape((b, h, cs, d))?;
        outs.push(out);
        i0 += cs;
    }
    if outs.len() == 1 {
        Ok(outs.pop().expect("one chunk"))
    } else {
        Ok(Tensor::cat(&outs, D::Minus2)?)
    }
}

/// Additive mask `[rows, len]` (0 or -inf) for query rows `i0..i0+rows`, or `None` when no key
/// is masked.
fn mask_block(
    mask: AttnMask,
    i0: usize,
    rows: usize,
    len: usize,
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    let AttnMask::Causal { offset, sliding_window } = mask else {
        return Ok(None);
    };
    if len == 0 {
        return Ok(None);
    }
    let allowed = |i: usize, j: usize| visible_keys(offset + i, sliding_window).contains(&j);
    let any_masked = (i0..i0 + rows).any(|i| !allowed(i, 0) || !allowed(i, len - 1));
    if !any_masked {
        return Ok(None);
    }
    let mut m = Vec::with_capacity(rows * len);
    for i in i0..i0 + rows {
        m.extend((0..len).map(|j| if allowed(i, j) { 0f32 } else { f32::NEG_INFINITY }));
    }
    Ok(Some(Tensor::from_vec(m, (rows, len), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{max_abs_diff, random_tensor};
    use candle_core::Device;

    /// HF eager attention: repeat kv heads, scores / sqrt(d), additive triu(-inf) mask, softmax.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Tensor {
        let (_, h, s, d) = q.dims4().unwrap();
        let kvh = k.dim(1).unwrap();
        let rep = |t: &Tensor| {
            let ts: Vec<Tensor> = (0..h).map(|i| t.narrow(1, i / (h / kvh), 1).unwrap()).collect();
            Tensor::cat(&ts, 1).unwrap()
        };
        let (k, v) = (rep(k), rep(v));
        let len = k.dim(2).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let mask: Vec<f32> = (0..s)
            .flat_map(|i| (0..len).map(move |j| if j <= offset + i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (s, len), &Device::Cpu).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        p.matmul(&v).unwrap()
    }

    #[test]
    fn gqa_causal_matches_repeat_kv() {
        let (h, kvh, s, d, offset) = (6, 2, 5, 8, 3);
        let q = random_tensor("q", &(1, h, s, d).into(), 1.0).unwrap();
        let k = random_tensor("k", &(1, kvh, offset + s, d).into(), 1.0).unwrap();
        let v = random_tensor("v", &(1, kvh, offset + s, d).into(), 1.0).unwrap();
        let want = naive(&q, &k, &v, offset);
        let mask = AttnMask::Causal { offset, sliding_window: None };
        let got = attention(&q, &k, &v, 1.0 / (d as f64).sqrt(), mask).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5);
        // Chunked over query rows (as for long prefills) gives the same result.
        for max in [1, 7, 40] {
            let got = attention_chunked(&q, &k, &v, 1.0 / (d as f64).sqrt(), mask, max).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5, "chunk budget {max}");
        }
    }

    #[test]
    fn fused_causal_softmax_matches_additive_mask() {
        let (rows, keys) = (5, 9);
        let scores = random_tensor("scores", &(1, 2, 3, rows, keys).into(), 2.0).unwrap();
        for window in [None, Some(3)] {
            let mask = AttnMask::Causal { offset: 4, sliding_window: window };
            let m = mask_block(mask, 0, rows, keys, &Device::Cpu).unwrap().unwrap();
            let want = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&m).unwrap()).unwrap();
            let got = scores.apply_op1_no_bwd(&CausalSoftmax { first_pos: 4, rows, window }).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-6, "window {window:?}");
        }
    }

    #[test]
    fn sliding_window_masks_old_keys() {
        let m = mask_block(AttnMask::Causal { offset: 2, sliding_window: Some(2) }, 0, 2, 4, &Device::Cpu)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![vec![inf, 0.0, 0.0, inf], vec![inf, inf, 0.0, 0.0]]);
        // A single decode query over the whole cache needs no mask.
        assert!(mask_block(AttnMask::Causal { offset: 9, sliding_window: None }, 0, 1, 10, &Device::Cpu)
            .unwrap()
            .is_none());
    }
}
