// Decode attention straight from the paged KV pool, for the CUDA device: one thread block per
// (query head, sequence), each warp walking every WARPS-th visible position of its sequence with
// an online softmax (running maximum, running sum, running weighted sum of the values), the
// warps' partial results merged at the end. Keys and values are read in place through the
// sequence's slot list, so no gathered copy of the cache is made. Sums are f32 whatever the
// storage types.
//
// Compiled at run time by NVRTC (`nn::cuda_attention`); the tests compile it as C++ too, with the
// CUDA built-ins emulated on CPU threads (`tests/cuda_emulation/`), and compare it with a plain
// attention. No CUDA headers are needed: the half-precision conversions are written out.

#ifndef PHIVE_EMULATED
#define PHIVE_INFINITY __int_as_float(0x7f800000)
#endif

#define WARPS 4
#define LANES 32
// Head dimensions up to LANES * MAX_PER_LANE (256).
#define MAX_PER_LANE 8

typedef unsigned short half_bits;

__device__ __forceinline__ float from_f32(const float* p, long i) { return p[i]; }

__device__ __forceinline__ float from_bf16(const half_bits* p, long i) {
    return __uint_as_float(((unsigned)p[i]) << 16);
}

__device__ __forceinline__ float from_f16(const half_bits* p, long i) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i]));
    return f;
#else
    unsigned h = p[i], sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        // Zero or subnormal: man · 2^-24, exact in f32.
        float f = (float)man * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    return __uint_as_float(sign | ((exp + 112) << 23) | (man << 13));
#endif
}

__device__ __forceinline__ void to_f32(float* p, long i, float x) { p[i] = x; }

__device__ __forceinline__ void to_bf16(half_bits* p, long i, float x) {
    unsigned bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        p[i] = (half_bits)((bits >> 16) | 0x40u);  // a quiet NaN
        return;
    }
    // Round to nearest, ties to even.
    p[i] = (half_bits)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ void to_f16(half_bits* p, long i, float x) {
#ifdef __CUDA_ARCH__
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    p[i] = h;
#else
    p[i] = phive_emulated_f16(x);
#endif
}

// q [rows, heads, d] (scaled here), pools [slots, kv_heads * d], slots [rows, longest] (the pool
// row of each position), spans [rows, 2] (the first visible position and one past the last),
// out [rows, heads, d]. Grid (heads, rows), WARPS * LANES threads.
#define PAGED_DECODE(NAME, QT, LOAD_Q, STORE_Q, KVT, LOAD_KV)                                      \
    extern "C" __global__ void NAME(const QT* q, const KVT* keys, const KVT* values,               \
                                    const unsigned* slots, const unsigned* spans, QT* out,         \
                                    int heads, int kv_heads, int d, int longest, float scale) {    \
        const int head = blockIdx.x, row = blockIdx.y;                                             \
        const int warp = threadIdx.x / LANES, lane = threadIdx.x % LANES;                          \
        const int kv_head = head / (heads / kv_heads);                                             \
        const long width = (long)kv_heads * d;                                                     \
        const long q_at = ((long)row * heads + head) * d;                                          \
        float qv[MAX_PER_LANE], acc[MAX_PER_LANE];                                                 \
        for (int i = 0; i < MAX_PER_LANE; i++) {                                                   \
            const int c = lane + LANES * i;                                                        \
            qv[i] = c < d ? LOAD_Q(q, q_at + c) * scale : 0.0f;                                    \
            acc[i] = 0.0f;                                                                         \
        }                                                                                          \
        float best = -PHIVE_INFINITY, total = 0.0f;                                                \
        const unsigned end = spans[2 * row + 1];                                                   \
        for (unsigned j = spans[2 * row] + warp; j < end; j += WARPS) {                            \
            const long at = (long)slots[(long)row * longest + j] * width + (long)kv_head * d;      \
            float s = 0.0f;                                                                        \
            for (int i = 0; i < MAX_PER_LANE; i++) {                                               \
                const int c = lane + LANES * i;                                                    \
                if (c < d) s += qv[i] * LOAD_KV(keys, at + c);                                     \
            }                                                                                      \
            for (int o = LANES / 2; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);        \
            const float next = fmaxf(best, s);                                                     \
            const float keep = expf(best - next), weight = expf(s - next);                         \
            total = total * keep + weight;                                                         \
            for (int i = 0; i < MAX_PER_LANE; i++) {                                               \
                const int c = lane + LANES * i;                                                    \
                if (c < d) acc[i] = acc[i] * keep + weight * LOAD_KV(values, at + c);              \
            }                                                                                      \
            best = next;                                                                           \
        }                                                                                          \
        __shared__ float bests[WARPS], totals[WARPS], sums[WARPS][LANES * MAX_PER_LANE];           \
        if (lane == 0) {                                                                           \
            bests[warp] = best;                                                                    \
            totals[warp] = total;                                                                  \
        }                                                                                          \
        for (int i = 0; i < MAX_PER_LANE; i++) sums[warp][lane + LANES * i] = acc[i];              \
        __syncthreads();                                                                           \
        if (warp != 0) return;                                                                     \
        float top = -PHIVE_INFINITY;                                                               \
        for (int w = 0; w < WARPS; w++) top = fmaxf(top, bests[w]);                                \
        float denominator = 0.0f, merged[MAX_PER_LANE];                                            \
        for (int i = 0; i < MAX_PER_LANE; i++) merged[i] = 0.0f;                                   \
        for (int w = 0; w < WARPS; w++) {                                                          \
            /* A warp that saw no position has best = -inf and adds nothing. */                    \
            const float f = totals[w] > 0.0f ? expf(bests[w] - top) : 0.0f;                       \
            denominator += totals[w] * f;                                                          \
            for (int i = 0; i < MAX_PER_LANE; i++) merged[i] += sums[w][lane + LANES * i] * f;     \
        }                                                                                          \
        for (int i = 0; i < MAX_PER_LANE; i++) {                                                   \
            const int c = lane + LANES * i;                                                        \
            if (c < d) STORE_Q(out, q_at + c, merged[i] / denominator);                            \
        }                                                                                          \
    }

PAGED_DECODE(paged_decode_f32_f32, float, from_f32, to_f32, float, from_f32)
PAGED_DECODE(paged_decode_f32_f16, float, from_f32, to_f32, half_bits, from_f16)
PAGED_DECODE(paged_decode_bf16_f32, half_bits, from_bf16, to_bf16, float, from_f32)
PAGED_DECODE(paged_decode_bf16_f16, half_bits, from_bf16, to_bf16, half_bits, from_f16)
PAGED_DECODE(paged_decode_f16_f32, half_bits, from_f16, to_f16, float, from_f32)
PAGED_DECODE(paged_decode_f16_f16, half_bits, from_f16, to_f16, half_bits, from_f16)
