//! Options shared by `phive run` and `phive chat`: which model to load and how to sample.

use clap::{Args, ValueEnum};
use phive::engine::{GenerationParams, SamplingParams};
use phive::pipeline::{LoadOptions, Pipeline};

use crate::preprocess_args::{self, PreprocessArgs};

/// Precisions `--dtype` accepts.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// f32 on the CPU, bf16 on a GPU.
    Auto,
    /// 32-bit floats (the reference's numerics).
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

impl From<Dtype> for phive::ModelDType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::Auto => phive::ModelDType::Auto,
            Dtype::F32 => phive::ModelDType::F32,
            Dtype::Bf16 => phive::ModelDType::BF16,
            Dtype::F16 => phive::ModelDType::F16,
        }
    }
}

/// Which checkpoint to load, and whether to quantize it.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Model: a local checkpoint folder or a Hugging Face id (e.g. microsoft/Phi-3.5-vision-instruct).
    #[arg(short, long)]
    model: String,
    /// Hub revision (branch, tag or commit) when MODEL is a Hub id.
    #[arg(long)]
    revision: Option<String>,
    /// Quantize the language model's linear layers in situ while loading (case-insensitive):
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, F16, BF16. Q4K and Q6K have
    /// the fastest CPU kernels; lm_head gets the next higher type.
    #[arg(long, value_name = "TYPE")]
    isq: Option<phive::quant::IsqType>,
    /// With --isq, quantize the vision (and audio) encoders' projections too.
    #[arg(long, requires = "isq")]
    isq_encoders: bool,
    /// Where to run: cpu, or cuda[:N] for NVIDIA GPU N (needs a build made by
    /// scripts/build-cuda.sh).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: phive::DeviceChoice,
    /// Precision of the language model: auto is f32 on the CPU and bf16 on a GPU; the vision
    /// and audio encoders stay f32.
    #[arg(long, value_enum, default_value = "auto")]
    dtype: Dtype,
    #[command(flatten)]
    preprocess: PreprocessArgs,
}

impl LoadArgs {
    /// Loads the model, reporting progress and the load summary on stderr.
    pub fn load(&self) -> anyhow::Result<Pipeline> {
        eprintln!("loading {} ...", self.model);
        let pipeline = Pipeline::load(&LoadOptions {
            model: self.model.clone(),
            revision: self.revision.clone(),
            isq: self.isq,
            isq_encoders: self.isq_encoders,
            device: self.device,
            dtype: self.dtype.into(),
            preprocess: self.preprocess.options(),
        })?;
        eprintln!(
            "loaded {} ({}, {}) on {} in {}, in {:.2}s, {:.1} MB of weights",
            pipeline.source(),
            pipeline.architecture().name(),
            preprocess_args::summary(&pipeline),
            pipeline.device_summary(),
            pipeline.dtype_name(),
            pipeline.load_time().as_secs_f64(),
            pipeline.weight_bytes() as f64 / 1e6
        );
        if pipeline.load_report().isq.is_some() {
            eprintln!("{}", pipeline.load_report());
        }
        Ok(pipeline)
    }
}

/// How answers are generated.
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate (default: up to the context length).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling probability mass.
    #[arg(long)]
    top_p: Option<f64>,
    /// Sample only among the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Drop tokens less likely than MIN_P times the most likely one.
    #[arg(long)]
    min_p: Option<f64>,
    /// OpenAI frequency penalty (-2..2).
    #[arg(long)]
    frequency_penalty: Option<f32>,
    /// OpenAI presence penalty (-2..2).
    #[arg(long)]
    presence_penalty: Option<f32>,
    /// Multiplicative repetition penalty (1.0 is off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Random seed: the same seed gives the same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop generating at this string (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
}

impl SamplingArgs {
    /// The engine's generation parameters.
    pub fn params(&self) -> GenerationParams {
        GenerationParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                min_p: self.min_p,
                frequency_penalty: self.frequency_penalty,
                presence_penalty: self.presence_penalty,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
                ..Default::default()
            },
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ..Default::default()
        }
    }
}
