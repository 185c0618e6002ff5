//! Paged decode attention alone: one decode query per sequence over a long KV cache in the
//! Phi-3.5 language model's geometry (32 heads of 96, blocks of 16 positions), every layer's
//! cache in one pool larger than the L3, as a decode step reads it. Reports the fastest step
//! over all layers and the KV bytes read per second.
//!
//! ```sh
//! cargo run --release -p phive --example attention_bench -- [--context 1024,2048] [--rows 1,8] [--kv-dtype f32,f16]
//! ```

#[path = "common/flags.rs"]
mod flags;

use std::time::Instant;

use anyhow::{Context, Result};
use flags::Flags;
use phive::nn::kv_cache::{KvDtype, KvGeometry, KvPool};
use phive::nn::paged_attention::{decode_attention, DecodeQuery, PagedLayer};

/// What `--help` prints.
const USAGE: &str = "usage: attention_bench [--context 1024,2048] [--rows 1,8] [--kv-dtype f32,f16]";

const LAYERS: usize = 32;
const HEADS: usize = 32;
const HEAD_DIM: usize = 96;
const STEPS: usize = 5;

fn list(v: &str) -> Result<Vec<usize>> {
    v.split(',').map(|x| x.trim().parse().with_context(|| format!("bad number {x:?}"))).collect()
}

fn main() -> Result<()> {
    let (mut contexts, mut rows) = (vec![1024, 2048], vec![1, 8]);
    let mut dtypes = vec![KvDtype::F32, KvDtype::F16];
    let mut flags = Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        let mut value = || flags.value(&flag);
        match flag.as_str() {
            "--context" => contexts = list(&value()?)?,
            "--rows" => rows = list(&value()?)?,
            "--kv-dtype" => dtypes = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            other => return Err(flags.error(format!("unknown flag {other}"))),
        }
    }
    println!("| KV dtype | sequences | context | step ms (32 layers) | KV GB/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (&dtype, &context) in dtypes.iter().flat_map(|d| contexts.iter().map(move |c| (d, c))) {
        let g = KvGeometry { num_layers: LAYERS, kv_heads: HEADS, head_dim: HEAD_DIM, block_size: 16, dtype };
        for &n in &rows {
            let per_seq = g.blocks_for(context);
            if n * per_seq * g.bytes_per_block() > 8 << 30 {
                println!("| {dtype} | {n} | {context} | skipped: over 8 GiB of KV | |");
                continue;
            }
            let mut pool = KvPool::new(g, n * per_seq);
            // Sequences take interleaved blocks, as they do when they grow side by side.
            let tables: Vec<Vec<u32>> =
                (0..n).map(|s| (0..per_seq).map(|b| (b * n + s) as u32).collect()).collect();
            let row: Vec<f32> =
                (0..context * HEADS * HEAD_DIM).map(|i| ((i * 7919) % 1000) as f32 / 1e3 - 0.5).collect();
            for layer in 0..LAYERS {
                for t in &tables {
                    pool.write(layer, t, 0, &row, &row)?;
                }
            }
            let queries: Vec<DecodeQuery> =
                tables.iter().map(|t| DecodeQuery { blocks: t, len: context }).collect();
            let q = vec![0.01f32; n * HEADS * HEAD_DIM];
            let scale = 1.0 / (HEAD_DIM as f32).sqrt();
            let mut best = f64::INFINITY;
            for _ in 0..STEPS {
                let t = Instant::now();
                for layer in 0..LAYERS {
                    std::hint::black_box(decode_attention(
                        &q,
                        &queries,
                        PagedLayer { pool: &pool, layer, heads: HEADS, scale, sliding_window: None },
                    )?);
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let bytes = (2 * LAYERS * n * context * HEADS * HEAD_DIM * dtype.size()) as f64;
            println!("| {dtype} | {n} | {context} | {:.2} | {:.1} |", best * 1e3, bytes / best / 1e9);
        }
    }
    Ok(())
}
