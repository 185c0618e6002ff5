//! Bidirectional multi-head attention for the vision towers, on the projections' own layout.
//!
//! A CLIP layer over five crops has 80 (crop, head) pairs whose 577×577 score matrices together
//! take 106 MB. Built as tensors, that is a fresh allocation (page faults), a softmax pass and
//! two transposing copies per layer. On the CPU, each pair is instead one task
//! (`kernels::attend`): it reads its head's columns where the projections left them, keeps its
//! scores in its thread's reused buffers, and writes straight into the heads' columns of the
//! output.

use candle_core::Tensor;
use rayon::prelude::*;

use super::attention::{attention, AttnMask};
use crate::kernels::attend::attend_head;
use crate::kernels::gemm::SharedOut;
use crate::{Error, Result};

/// `softmax(q kᵀ · scale) v` per head, with every key visible. `q` is `[n, t, c]`, `k` and `v`
/// are `[n, s, c]`, the `heads` heads side by side in the last dimension (as a linear
/// projection lays them out); returns `[n, t, c]` in the same layout.
pub fn encoder_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (n, t, c) = q.dims3()?;
    let (kn, s, kc) = k.dims3()?;
    if kn != n || kc != c || v.dims3()? != (n, s, c) || heads == 0 || !c.is_multiple_of(heads) {
        return Err(Error::from(candle_core::Error::Msg(format!(
            "encoder attention: q {:?}, k {:?}, v {:?} with {heads} heads are inconsistent",
            q.shape(),
            k.shape(),
            v.shape()
        ))));
    }
    let d = c / heads;
    if q.device().is_cpu() && q.dtype() == candle_core::DType::F32 && t > 0 && s > 0 {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let out =
            with_slices(&q, &k, &v, |q, k, v| per_head(q, k, v, Shape { n, t, s, heads, d }, scale as f32))?;
        return Ok(Tensor::from_vec(out, (n, t, c), q.device())?);
    }
    // Other devices: split the heads out and use the general kernel.
    let split = |x: &Tensor, len: usize| -> Result<Tensor> {
        Ok(x.reshape((n, len, heads, d))?.transpose(1, 2)?.contiguous()?)
    };
    let o = attention(&split(q, t)?, &split(k, s)?, &split(v, s)?, scale, AttnMask::None)?;
    Ok(o.transpose(1, 2)?.reshape((n, t, c))?)
}

#[derive(Clone, Copy)]
struct Shape {
    n: usize,
    t: usize,
    s: usize,
    heads: usize,
    d: usize,
}

/// The CPU values of three contiguous f32 tensors, borrowed.
fn with_slices<R>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    f: impl FnOnce(&[f32], &[f32], &[f32]) -> R,
) -> Result<R> {
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let slice = |s: &candle_core::Storage, l: &candle_core::Layout, len: usize| -> Result<*const [f32]> {
        match s {
            candle_core::Storage::Cpu(cpu) => {
                let all = cpu.as_slice::<f32>()?;
                Ok(&all[l.start_offset()..l.start_offset() + len] as *const [f32])
            }
            _ => Err(Error::from(candle_core::Error::Msg("encoder attention: CPU tensors only".into()))),
        }
    };
    let (q_ptr, k_ptr, v_ptr) =
        (slice(&qs, ql, q.elem_count())?, slice(&ks, kl, k.elem_count())?, slice(&vs, vl, v.elem_count())?);
    // SAFETY: the storage guards above stay alive until `f` returns.
    Ok(f(unsafe { &*q_ptr }, unsafe { &*k_ptr }, unsafe { &*v_ptr }))
}

/// The output rows `[n, t, heads·d]`, one task per (item, head).
fn per_head(q: &[f32], k: &[f32], v: &[f32], sh: Shape, scale: f32) -> Vec<f32> {
    let Shape { n, t, s, heads, d } = sh;
    let c = heads * d;
    let mut out = vec![0f32; n * t * c];
    let out_at = SharedOut::new(&mut out);
    (0..n * heads).into_par_iter().for_each(|task| {
        let (item, head) = (task / heads, task % heads);
        let (qb, kb) = (item * t * c + head * d, item * s * c + head * d);
        // SAFETY: rows of `c` floats, `d` columns from `head·d`, inside each item's slice; each
        // task writes only its own head's columns of `out`.
        unsafe {
            attend_head(
                (t, s, d),
                (q[qb..].as_ptr(), c),
                (k[kb..].as_ptr(), c),
                (v[kb..].as_ptr(), c),
                scale,
                |_| 0..s,
                (out_at.at(qb), c),
            )
        };
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{max_abs_diff, random_tensor};

    /// The fused CPU path equals the general kernel on split heads, with fewer keys than
    /// queries (SigLIP drops padded patches as keys) and an odd head width.
    #[test]
    fn matches_the_general_kernel() {
        let (n, t, s, heads, d) = (2, 13, 9, 3, 7);
        let c = heads * d;
        let q = random_tensor("q", &(n, t, c).into(), 1.0).unwrap();
        let k = random_tensor("k", &(n, s, c).into(), 1.0).unwrap();
        let v = random_tensor("v", &(n, s, c).into(), 1.0).unwrap();
        let scale = (d as f64).powf(-0.5);
        let got = encoder_attention(&q, &k, &v, heads, scale).unwrap();
        let split = |x: &Tensor, len: usize| {
            x.reshape((n, len, heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        let want = attention(&split(&q, t), &split(&k, s), &split(&v, s), scale, AttnMask::None)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((n, t, c))
            .unwrap();
        assert_eq!(got.dims(), &[n, t, c]);
        assert!(max_abs_diff(&got, &want) < 1e-5, "{}", max_abs_diff(&got, &want));
        assert!(encoder_attention(&q, &k, &v, 4, scale).is_err(), "21 features do not split into 4 heads");
    }
}
