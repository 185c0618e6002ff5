//! Measuring the engine's speed: what `phive bench` and the benchmark examples share.
//!
//! Every figure is taken over the [`Engine`](crate::engine::Engine), the way every front end
//! submits requests, so a benchmark measures what a user of `phive serve` gets. The pieces are
//! small and separate so that the CLI and the examples cannot drift apart:
//!
//! * [`trace`]: submit prompts together and record when each event arrived;
//! * [`stats`]: percentiles and the steady-state decode rate of a set of traces;
//! * [`prompt`]: text prompts of an exact token count, and a synthetic test picture;
//! * [`machine`]: the CPU (model, SIMD flags, threads) printed beside every figure;
//! * [`peak`]: short probes of this machine's memory bandwidth and matmul speed, the
//!   denominators of the "% of peak" figures;
//! * [`report`]: the JSON document `phive bench --json` writes (and `tools/bench_*.py` read).

pub mod machine;
pub mod peak;
pub mod prompt;
pub mod report;
pub mod stats;
pub mod trace;

pub use machine::CpuInfo;
pub use prompt::{picture, text_prompt};
pub use stats::{percentile, steady_decode_rate, Summary};
pub use trace::{follow, run_together, run_together_with, Arrival, Trace};
