//! ISQ benchmark: load time, peak RSS while loading, resident size, prefill and decode speed,
//! and quality against f32 (top-1 agreement and mean KL on teacher-forced continuations).
//!
//! ```sh
//! cargo run --release -p phive --example isq_bench -- --model DIR --isq f32 --write-reference /tmp/ref.safetensors
//! cargo run --release -p phive --example isq_bench -- --model DIR --isq q4k --reference /tmp/ref.safetensors
//! ```
//! Run each type in its own process: the peak RSS is the process's `VmHWM`. `--kv-dtype f16`
//! stores the KV cache in f16, in the speed runs and in the quality pass (write the reference
//! with the default f32).

#[path = "common/flags.rs"]
mod flags;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use flags::Flags;
use phive::bench::percentile;
use phive::checkpoint::Checkpoint;
use phive::models::phi3v::{Phi3V, Phi3VConfig};
use phive::nn::kv_cache::{KvCache, KvDtype, KvGeometry};
use phive::nn::linear::LoadVb;
use phive::quant::{memory_stats, IsqType, LoadContext, TensorRole};

/// What `--help` prints.
const USAGE: &str =
    "usage: isq_bench --model DIR [--isq f32|TYPE] [--reference FILE | --write-reference FILE] \
     [--prefill-tokens N] [--decode-tokens N] [--kv-dtype f32|f16]";

const PROMPTS: &[&str] = &[
    "Describe a sunset over the ocean in two sentences.",
    "Write a short poem about a lighthouse keeper who has never seen the sea in daylight.",
    "Explain, step by step, how a bicycle stays upright while it is moving, and why it falls when it stops.",
    "List three differences between a violin and a viola, then say which one you would learn first.",
];
const CONTINUATION: usize = 16;

struct Args {
    model: PathBuf,
    isq: Option<IsqType>,
    reference: Option<PathBuf>,
    write_reference: Option<PathBuf>,
    prefill: usize,
    decode: usize,
    kv_dtype: KvDtype,
}

fn parse_args() -> Result<Args> {
    let mut flags = Flags::new(USAGE);
    let mut a = Args {
        model: PathBuf::new(),
        isq: None,
        reference: None,
        write_reference: None,
        prefill: 512,
        decode: 32,
        kv_dtype: KvDtype::F32,
    };
    while let Some(flag) = flags.next_flag() {
        let mut value = || flags.value(&flag);
        match flag.as_str() {
            "--model" => a.model = value()?.into(),
            "--isq" => {
                let v = value()?;
                a.isq = if v.eq_ignore_ascii_case("f32") { None } else { Some(v.parse()?) };
            }
            "--reference" => a.reference = Some(value()?.into()),
            "--write-reference" => a.write_reference = Some(value()?.into()),
            "--prefill-tokens" => a.prefill = value()?.parse()?,
            "--decode-tokens" => a.decode = value()?.parse()?,
            "--kv-dtype" => a.kv_dtype = value()?.parse()?,
            other => return Err(flags.error(format!("unknown flag {other}"))),
        }
    }
    if a.model.as_os_str().is_empty() {
        return Err(flags.error("--model DIR is required"));
    }
    Ok(a)
}

fn forward_logits(
    model: &Phi3V,
    ids: &[u32],
    cache: &mut phive::nn::kv_cache::KvCache,
    rows: &[usize],
) -> Result<Tensor> {
    let embeds = model.embed(ids, &[])?;
    let hidden = model.forward(&embeds, cache)?;
    Ok(model.logits(&hidden, rows)?)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
        .0 as u32
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|&x| x as f64 - lse).collect()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let before = memory_stats();
    let started = Instant::now();
    let ck = Checkpoint::open(&args.model.to_string_lossy(), None)?;
    let cfg = Phi3VConfig::from_json(&ck.config)?;
    let index = ck.weights.tensor_index().unwrap_or_default();
    let largest_f32 = index.values().map(|e| e.shape.iter().product::<usize>() * 4).max().unwrap_or(0) as u64;
    let (vb, ctx) = LoadContext::open(&ck.weights, args.isq, false, &candle_core::Device::Cpu)?;
    let model = Phi3V::new(&cfg, LoadVb::new(vb, &ctx))?;
    let report = ctx.finish();
    let load_s = started.elapsed().as_secs_f64();
    let after_load = memory_stats();
    eprintln!("{report}");

    // What the loaded model should occupy: quantized linears as stored, the rest in f32.
    let quantized_names: usize = report.quantized_tensors;
    let rest_f32: u64 = index
        .iter()
        .filter(|(n, _)| {
            let role = n.strip_suffix(".weight").map(TensorRole::of);
            args.isq.is_none() || !matches!(role, Some(TensorRole::LmLinear | TensorRole::LmHead))
        })
        .map(|(_, e)| e.shape.iter().product::<usize>() as u64 * 4)
        .sum();
    let model_bytes = report.quantized_bytes + rest_f32;

    // Prefill: one prompt of `prefill` tokens (deterministic ids in the text vocabulary).
    let ids: Vec<u32> = (0..args.prefill).map(|i| (1000 + (i * 7919) % 30000) as u32).collect();
    let geometry = model.decoder().kv_geometry(KvGeometry::DEFAULT_BLOCK_SIZE).with_dtype(args.kv_dtype);
    let mut cache = KvCache::new(geometry);
    let t = Instant::now();
    let logits = forward_logits(&model, &ids, &mut cache, &[ids.len() - 1])?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next = argmax(&logits.flatten_all()?.to_vec1::<f32>()?);
    // Decode: median step time over `decode` greedy steps after the prompt.
    let mut steps = Vec::with_capacity(args.decode);
    for _ in 0..args.decode {
        let t = Instant::now();
        let l = forward_logits(&model, &[next], &mut cache, &[0])?;
        next = argmax(&l.flatten_all()?.to_vec1::<f32>()?);
        steps.push(t.elapsed().as_secs_f64());
    }
    let decode_s = percentile(&mut steps, 0.5);
    let after_run = memory_stats();

    // Quality: teacher-forced logits over prompt + f32 greedy continuation.
    let tokenizer = &ck.tokenizer.tokenizer;
    let mut reference: HashMap<String, Tensor> = HashMap::new();
    if let Some(path) = &args.reference {
        reference = candle_core::safetensors::load(path, &Device::Cpu)?;
    }
    let (mut agree, mut total, mut kl_sum, mut err2, mut ref2) = (0usize, 0usize, 0f64, 0f64, 0f64);
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (p, text) in PROMPTS.iter().enumerate() {
        let enc = tokenizer.encode(*text, true).map_err(|e| anyhow::anyhow!("{e}"))?;
        let prompt: Vec<u32> = enc.get_ids().to_vec();
        let continuation: Vec<u32> = match reference.get(&format!("tokens.{p}")) {
            Some(t) => t.to_vec1::<u32>()?,
            None => {
                let mut c = model.new_cache();
                let mut tok = argmax(
                    &forward_logits(&model, &prompt, &mut c, &[prompt.len() - 1])?
                        .flatten_all()?
                        .to_vec1()?,
                );
                let mut gen = vec![tok];
                while gen.len() < CONTINUATION {
                    tok = argmax(&forward_logits(&model, &[tok], &mut c, &[0])?.flatten_all()?.to_vec1()?);
                    gen.push(tok);
                }
                gen
            }
        };
        let mut seq = prompt.clone();
        seq.extend(&continuation);
        let rows: Vec<usize> = (prompt.len() - 1..seq.len() - 1).collect();
        let logits = forward_logits(&model, &seq, &mut KvCache::new(geometry), &rows)?;
        if let Some(r) = reference.get(&format!("logits.{p}")) {
            let (a, b) = (r.to_vec2::<f32>()?, logits.to_vec2::<f32>()?);
            for (ra, rb) in a.iter().zip(&b) {
                total += 1;
                agree += usize::from(argmax(ra) == argmax(rb));
                let (la, lb) = (log_softmax(ra), log_softmax(rb));
                kl_sum += la.iter().zip(&lb).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
                err2 += ra.iter().zip(rb).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>();
                ref2 += ra.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
            }
        }
        out.insert(format!("tokens.{p}"), Tensor::new(continuation.as_slice(), &Device::Cpu)?);
        out.insert(format!("logits.{p}"), logits.to_dtype(DType::F32)?);
    }
    if let Some(path) = &args.write_reference {
        candle_core::safetensors::save(&out, path)?;
    }

    const MB: f64 = 1e6;
    let quality = if total > 0 {
        format!(
            "{:.1}% ({agree}/{total}) | {:.4} | {:.2}%",
            100.0 * agree as f64 / total as f64,
            kl_sum / total as f64,
            100.0 * (err2 / ref2.max(f64::MIN_POSITIVE)).sqrt()
        )
    } else {
        "reference | 0 | 0".to_string()
    };
    let name = args.isq.map_or("F32".to_string(), |t| t.to_string());
    let bound = 1.2 * (model_bytes + largest_f32) as f64;
    println!(
        "| {name} | {load_s:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {quality} |",
        after_load.peak_rss as f64 / MB,
        after_load.rss as f64 / MB,
        after_run.rss as f64 / MB,
        model_bytes as f64 / MB,
        args.prefill as f64 / prefill_s,
        1.0 / decode_s,
    );
    eprintln!(
        "{name}: baseline RSS {:.0} MB; load peak {:.0} MB (RssAnon after load {:.0} MB, RssFile {:.0} MB); \
         model {:.0} MB ({quantized_names} quantized linears {:.0} MB + f32 rest {:.0} MB), largest tensor in f32 {:.0} MB; \
         1.2 x (model + largest) = {:.0} MB -> peak {} that bound",
        before.rss as f64 / MB,
        after_load.peak_rss as f64 / MB,
        after_load.rss_anon as f64 / MB,
        after_load.rss_file as f64 / MB,
        model_bytes as f64 / MB,
        report.quantized_bytes as f64 / MB,
        rest_f32 as f64 / MB,
        largest_f32 as f64 / MB,
        bound / MB,
        if (after_load.peak_rss as f64) <= bound { "within" } else { "ABOVE" },
    );
    Ok(())
}
