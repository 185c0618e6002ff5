//! Decoder tests: cached and batched decoding against full prefills, LongRoPE's switch,
//! adapters per call and per row, checkpoint layouts.

use super::*;
use crate::nn::rotary::LongRopeScaling;
use crate::nn::test_util::{max_abs_diff, random_vb, random_vb_missing};

fn cfg(kv_heads: usize) -> Phi3DecoderConfig {
    Phi3DecoderConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: kv_heads,
        rms_norm_eps: 1e-5,
        rope: RotaryConfig {
            head_dim: 8,
            partial_rotary_factor: 1.0,
            theta: 10000.0,
            max_position_embeddings: 64,
            long_rope: Some(LongRopeScaling {
                short_factor: vec![1.0, 1.1, 1.2, 1.3],
                long_factor: vec![2.0, 3.0, 4.0, 5.0],
                original_max_position_embeddings: 16,
            }),
        },
        sliding_window: None,
        tie_word_embeddings: false,
        hidden_act: Activation::Silu,
    }
}

#[test]
fn cached_decoding_matches_full_prefill() {
    for kv in [4, 2] {
        let d = Phi3Decoder::new(&cfg(kv), &random_vb(0.2)).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 7 % 50) as u32).collect();
        let embeds = d.embed_tokens(&ids).unwrap().unsqueeze(0).unwrap();
        let mut c1 = d.new_cache();
        let full = d.forward(&embeds, &mut c1).unwrap();
        assert_eq!(c1.len(), 12);
        let mut c2 = d.new_cache();
        let mut parts = vec![d.forward(&embeds.narrow(1, 0, 5).unwrap(), &mut c2).unwrap()];
        for i in 5..12 {
            parts.push(d.forward(&embeds.narrow(1, i, 1).unwrap(), &mut c2).unwrap());
        }
        let stepped = Tensor::cat(&parts, 1).unwrap();
        assert!(max_abs_diff(&full, &stepped) < 1e-4, "kv heads {kv}");
        let logits = d.logits(&full, &[0, 11]).unwrap();
        assert_eq!(logits.dims(), &[2, 50]);
    }
}

#[test]
fn long_factors_switch_per_call() {
    // original_max 16: a 16-token prefill is short, the 17th token runs with long factors
    // and the cached keys keep their short rotation (so it differs from a 17-token prefill,
    // which is long throughout).
    let d = Phi3Decoder::new(&cfg(4), &random_vb(0.2)).unwrap();
    let ids: Vec<u32> = (0..17).map(|i| (i * 3 % 50) as u32).collect();
    let embeds = d.embed_tokens(&ids).unwrap().unsqueeze(0).unwrap();
    let mut c = d.new_cache();
    d.forward(&embeds.narrow(1, 0, 16).unwrap(), &mut c).unwrap();
    assert!(!d.rotary().uses_long(0, 16));
    assert!(d.rotary().uses_long(16, 1));
    let last = d.forward(&embeds.narrow(1, 16, 1).unwrap(), &mut c).unwrap();
    let full = d.forward(&embeds, &mut d.new_cache()).unwrap().narrow(1, 16, 1).unwrap();
    assert!(max_abs_diff(&last, &full) > 1e-4);
}

/// A batch mixing a decode step, a fresh prefill under an adapter and a later prefill chunk
/// gives every row what its sequence gives alone.
#[test]
fn batched_rows_equal_each_sequence_alone() {
    let specs = [LoraSpec::new("vision", r"layers.*(qkv_proj|down_proj)", 16.0, 4).unwrap()];
    let d = Phi3Decoder::new_with_adapters(&cfg(2), &random_vb(0.2), &specs).unwrap();
    let ids = |n: usize, m: usize| -> Vec<u32> { (0..n).map(|i| (i * m % 50) as u32).collect() };
    let (a, b, c) = (ids(8, 3), ids(5, 7), ids(9, 11));
    let embed = |ids: &[u32]| d.embed_tokens(ids).unwrap();
    // Alone: two calls each, as the batches below split them.
    let alone = |ids: &[u32], split: usize, adapter: Option<&str>| {
        let e = embed(ids).unsqueeze(0).unwrap();
        let mut cache = d.new_cache();
        d.forward_with_adapter(&e.narrow(1, 0, split).unwrap(), &mut cache, adapter).unwrap();
        let rest = e.narrow(1, split, ids.len() - split).unwrap();
        d.forward_with_adapter(&rest, &mut cache, adapter).unwrap().squeeze(0).unwrap()
    };
    let mut pool = KvPool::new(d.kv_geometry(4), 16);
    let (ta, tb, tc) = ([0u32, 1], [2u32, 3], [5u32, 9, 10]);
    let row =
        |len, position, prompt_len, blocks, adapter| BatchRow { len, position, prompt_len, blocks, adapter };
    let first = Tensor::cat(&[embed(&a[..7]), embed(&c[..6])], 0).unwrap();
    d.forward_batch(&first, &[row(7, 0, 7, &ta, None), row(6, 0, 6, &tc, None)], &mut pool).unwrap();
    let second = Tensor::cat(&[embed(&a[7..]), embed(&b), embed(&c[6..])], 0).unwrap();
    let rows = [row(1, 7, 8, &ta, None), row(5, 0, 5, &tb, Some("vision")), row(3, 6, 9, &tc, None)];
    let got = d.forward_batch(&second, &rows, &mut pool).unwrap();
    let e = embed(&b).unsqueeze(0).unwrap();
    let b_full = d.forward_with_adapter(&e, &mut d.new_cache(), Some("vision")).unwrap().squeeze(0).unwrap();
    assert!(max_abs_diff(&got.narrow(0, 0, 1).unwrap(), &alone(&a, 7, None)) < 1e-5);
    assert!(max_abs_diff(&got.narrow(0, 1, 5).unwrap(), &b_full) < 1e-5);
    assert!(max_abs_diff(&got.narrow(0, 6, 3).unwrap(), &alone(&c, 6, None)) < 1e-5);
    // The vision rows really ran under the adapter.
    let plain = d.forward(&e, &mut d.new_cache()).unwrap().squeeze(0).unwrap();
    assert!(max_abs_diff(&got.narrow(0, 1, 5).unwrap(), &plain) > 1e-3);
}

/// A pass abandoned part way (at each of its stopping points in turn) returns nothing, and
/// running the same rows again gives exactly what an uninterrupted pass gives: the keys and
/// values it left behind are overwritten before anything reads them.
#[test]
fn an_abandoned_pass_leaves_nothing_a_rerun_reads() {
    let d = Phi3Decoder::new(&cfg(2), &random_vb(0.2)).unwrap();
    let ids: Vec<u32> = (0..11).map(|i| (i * 5 % 50) as u32).collect();
    let (head, tail) = (d.embed_tokens(&ids[..6]).unwrap(), d.embed_tokens(&ids[6..]).unwrap());
    let blocks = [3u32, 0, 2];
    let row = |len, position| BatchRow { len, position, prompt_len: 11, blocks: &blocks, adapter: None };
    let prefilled = || {
        let mut pool = KvPool::new(d.kv_geometry(4), 4);
        d.forward_batch(&head, &[row(6, 0)], &mut pool).unwrap();
        pool
    };
    let want = d.forward_batch(&tail, &[row(5, 6)], &mut prefilled()).unwrap();
    // Two layers, three stopping points each.
    for stop_at in 0..6 {
        let mut pool = prefilled();
        let checks = std::cell::Cell::new(0);
        let stop = || {
            checks.set(checks.get() + 1);
            checks.get() > stop_at
        };
        let abandoned = d.forward_batch_unless(&tail, &[row(5, 6)], &mut pool, &stop).unwrap();
        assert!(abandoned.is_none(), "stopped at check {stop_at}");
        assert_eq!(checks.get(), stop_at + 1);
        let got = d.forward_batch(&tail, &[row(5, 6)], &mut pool).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "stopped at check {stop_at}");
    }
}

/// The GPU's code path (a pool of device tensors, attention in tensor operations), run on the
/// CPU, gives what the CPU's kernels give: prefill chunks, decode rows of different lengths
/// together, a sliding window, grouped KV heads, f16 storage, and a block copied for a fork.
#[test]
fn a_pool_of_device_tensors_gives_the_kernels_results() {
    for (kv_heads, window, dtype) in
        [(4, None, KvDtype::F32), (2, Some(5), KvDtype::F32), (2, None, KvDtype::F16)]
    {
        let d =
            Phi3Decoder::new(&Phi3DecoderConfig { sliding_window: window, ..cfg(kv_heads) }, &random_vb(0.2))
                .unwrap();
        let geometry = d.kv_geometry(4).with_dtype(dtype);
        let mut host = KvPool::new(geometry, 16);
        let mut tensors = KvPool::on_device(geometry, 16, &Device::Cpu).unwrap();
        assert!(host.tensors().is_none() && tensors.tensors().is_some());
        let embed = |n: usize, m: usize| -> Tensor {
            let ids: Vec<u32> = (0..n).map(|i| (i * m % 50) as u32).collect();
            d.embed_tokens(&ids).unwrap()
        };
        let (ta, tb, tc, fork) = ([0u32, 1, 4], [2u32, 3], [5u32, 9, 10], [7u32, 1, 4]);
        let row = |len, position, blocks| BatchRow {
            len,
            position,
            prompt_len: position + len,
            blocks,
            adapter: None,
        };
        let steps: Vec<(Tensor, Vec<BatchRow>)> = vec![
            (
                Tensor::cat(&[embed(7, 3), embed(6, 11)], 0).unwrap(),
                vec![row(7, 0, &ta[..]), row(6, 0, &tc[..])],
            ),
            (embed(9, 7), vec![row(1, 7, &ta[..]), row(5, 0, &tb[..]), row(3, 6, &tc[..])]),
            (embed(3, 5), vec![row(1, 8, &ta[..]), row(1, 5, &tb[..]), row(1, 9, &tc[..])]),
            (
                Tensor::cat(&[embed(1, 13), embed(1, 13)], 0).unwrap(),
                vec![row(1, 9, &ta[..]), row(1, 9, &fork[..])],
            ),
        ];
        for (i, (embeds, rows)) in steps.iter().enumerate() {
            if i == 3 {
                host.copy_block(0, 7).unwrap();
                tensors.copy_block(0, 7).unwrap();
            }
            let want = d.forward_batch(embeds, rows, &mut host).unwrap();
            let got = d.forward_batch(embeds, rows, &mut tensors).unwrap();
            // Both round the stored keys to the same halves; sums over them in another order
            // differ a little more than over f32 keys.
            let tolerance = if dtype == KvDtype::F16 { 5e-5 } else { 1e-5 };
            let diff = max_abs_diff(&want, &got);
            assert!(diff < tolerance, "kv heads {kv_heads}, window {window:?}, {dtype}, step {i}: {diff}");
            if i == 3 {
                // The fork sees its parent's keys through the copied block.
                assert_eq!(max_abs_diff(&got.narrow(0, 0, 1).unwrap(), &got.narrow(0, 1, 1).unwrap()), 0.0);
            }
        }
    }
}

#[test]
fn rows_outside_the_pool_are_errors_on_either_memory() {
    let d = Phi3Decoder::new(&cfg(2), &random_vb(0.2)).unwrap();
    let geometry = d.kv_geometry(4);
    let e = d.embed_tokens(&[1, 2, 3, 4, 5]).unwrap();
    for mut pool in [KvPool::new(geometry, 4), KvPool::on_device(geometry, 4, &Device::Cpu).unwrap()] {
        let row = |blocks| BatchRow { len: 5, position: 0, prompt_len: 5, blocks, adapter: None };
        assert!(d.forward_batch(&e, &[row(&[0u32][..])], &mut pool).is_err(), "too few blocks");
        assert!(d.forward_batch(&e, &[row(&[0u32, 9][..])], &mut pool).is_err(), "a block past the pool");
        assert!(d.forward_batch(&e, &[row(&[0u32, 3][..])], &mut pool).is_ok());
    }
}

#[test]
fn missing_tensor_is_a_named_error() {
    let vb = random_vb_missing(0.2, &["model.layers.1.mlp.down_proj.weight"]);
    let e = Phi3Decoder::new(&cfg(4), &vb).unwrap_err();
    assert!(matches!(e, crate::Error::Tensor(_)));
    assert!(e.to_string().contains("model.layers.1.mlp.down_proj.weight"), "{e}");
}

#[test]
fn adapters_are_selected_per_call() {
    let vb = random_vb(0.2);
    let specs = [
        LoraSpec::new(
            "vision",
            r"layers.*((self_attn\.(qkv_proj|o_proj))|(mlp\.(gate_up|down)_proj))",
            16.0,
            4,
        )
        .unwrap(),
        LoraSpec::new("speech", r"layers\.1\.mlp\.down_proj", 8.0, 2).unwrap(),
    ];
    let plain = Phi3Decoder::new(&cfg(2), &vb).unwrap();
    let d = Phi3Decoder::new_with_adapters(&cfg(2), &vb, &specs).unwrap();
    assert_eq!(d.adapter_names(), ["vision", "speech"]);
    let ids: Vec<u32> = (0..6).map(|i| (i * 5 % 50) as u32).collect();
    let e = d.embed_tokens(&ids).unwrap().unsqueeze(0).unwrap();
    let base = plain.forward(&e, &mut plain.new_cache()).unwrap();
    let none = d.forward_with_adapter(&e, &mut d.new_cache(), None).unwrap();
    assert_eq!(max_abs_diff(&base, &none), 0.0);
    let vision = d.forward_with_adapter(&e, &mut d.new_cache(), Some("vision")).unwrap();
    let speech = d.forward_with_adapter(&e, &mut d.new_cache(), Some("speech")).unwrap();
    assert!(max_abs_diff(&vision, &none) > 1e-3);
    assert!(max_abs_diff(&speech, &none) > 1e-4);
    assert!(max_abs_diff(&speech, &vision) > 1e-3);
    // Cached decoding under an adapter matches its prefill.
    let mut c = d.new_cache();
    d.forward_with_adapter(&e.narrow(1, 0, 4).unwrap(), &mut c, Some("vision")).unwrap();
    let tail = d.forward_with_adapter(&e.narrow(1, 4, 2).unwrap(), &mut c, Some("vision")).unwrap();
    assert!(max_abs_diff(&tail, &vision.narrow(1, 4, 2).unwrap()) < 1e-4);
    let err = d.forward_with_adapter(&e, &mut d.new_cache(), Some("audio")).unwrap_err();
    assert!(matches!(err, crate::Error::InvalidRequest(_)), "{err}");
    // An adapter whose regex matches no projection is a config error.
    let bad = [LoraSpec::new("vision", r"vision_tower", 1.0, 1).unwrap()];
    let err = Phi3Decoder::new_with_adapters(&cfg(2), &vb, &bad).unwrap_err().to_string();
    assert!(err.contains("matches none"), "{err}");
}

#[test]
fn peft_layout_is_detected() {
    // Without plain `….weight` tensors the projections come from `….base_layer.weight`.
    let missing: Vec<String> = (0..2)
        .flat_map(|i| {
            ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]
                .map(|p| format!("model.layers.{i}.{p}.weight"))
        })
        .collect();
    let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
    let d = Phi3Decoder::new(&cfg(2), &random_vb_missing(0.2, &missing)).unwrap();
    let e = d.embed_tokens(&[1, 2, 3]).unwrap().unsqueeze(0).unwrap();
    assert_eq!(d.forward(&e, &mut d.new_cache()).unwrap().dims(), &[1, 3, 32]);
}

#[test]
fn rejects_out_of_vocab_ids() {
    let d = Phi3Decoder::new(&cfg(4), &random_vb(0.2)).unwrap();
    assert!(matches!(d.embed_tokens(&[1, 50]), Err(crate::Error::InvalidRequest(_))));
}

/// Timing of one full-size Phi-3.5 decoder layer (3072 hidden, 8192 intermediate, 32 heads)
/// plus the 32064-row lm_head: `cargo test -p phive --lib -- --ignored --nocapture full_size`.
#[test]
#[ignore]
fn full_size_layer_timing() {
    let mut c = cfg(32);
    c.vocab_size = 32064;
    c.hidden_size = 3072;
    c.intermediate_size = 8192;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 32;
    c.rope.head_dim = 96;
    c.rope.long_rope = None;
    let d = Phi3Decoder::new(&c, &random_vb(0.02)).unwrap();
    let ids: Vec<u32> = (0..512).map(|i| (i * 7 % 32064) as u32).collect();
    let mut cache = d.new_cache();
    let t = std::time::Instant::now();
    let h = d.forward(&d.embed_tokens(&ids).unwrap().unsqueeze(0).unwrap(), &mut cache).unwrap();
    eprintln!("prefill 512 tokens, 1 layer: {:?}", t.elapsed());
    d.logits(&h, &[511]).unwrap();
    let t = std::time::Instant::now();
    for i in 0..10u32 {
        let h = d.forward(&d.embed_tokens(&[i]).unwrap().unsqueeze(0).unwrap(), &mut cache).unwrap();
        d.logits(&h, &[0]).unwrap();
    }
    eprintln!("decode step, 1 layer + lm_head: {:?}", t.elapsed() / 10);
}
