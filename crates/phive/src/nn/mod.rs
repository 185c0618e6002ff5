//! Layers shared by the Phi models: the [`linear::Linear`] projection (the one place weight
//! matmuls happen), norms, activations, rotary embeddings (LongRoPE, partial rotary), attention
//! over the paged KV cache (prefill chunks and decode steps), the towers' bidirectional
//! attention, and the Phi-3 decoder stack.

pub mod activation;
pub mod attention;
#[cfg(feature = "cuda")]
mod cuda_attention;
pub mod encoder_attention;
pub mod kv_cache;
pub mod kv_tensors;
mod kv_warmer;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod paged_attention;
pub mod phi3_decoder;
pub mod prefill_attention;
pub mod rotary;
pub mod tensor_attention;

#[cfg(test)]
pub(crate) mod test_util;
