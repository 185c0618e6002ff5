// Runs the CUDA decode attention (`src/nn/paged_decode.cu`) on emulated CUDA threads and compares
// every output with a plain attention in double precision over the same stored numbers: grouped
// and ungrouped heads, head sizes below, at and above one warp's width, sequences of 1 to 70
// positions scattered over the pool, a sliding window, and each storage type. Padding slots
// point far outside the pool, so reading one fails. Exits non-zero on any mismatch.
#include <algorithm>
#include <cstdio>
#include <random>

#include "emulate.hpp"
#include "paged_decode.cu"

using Bits = unsigned short;

static float bf16_value(Bits b) { return __uint_as_float(((unsigned)b) << 16); }
static Bits bf16_bits(float x) { return (Bits)(__float_as_uint(x) >> 16); }  // exact for the inputs below
static float f16_value(Bits b) { return from_f16(&b, 0); }

struct Case {
    int heads, kv_heads, d;
    std::vector<int> firsts, ends;  // visible positions [first, end) of each row
};

// Numbers stored as `T`, with their exact values as float.
template <class T>
struct Stored {
    std::vector<T> bits;
    std::vector<float> values;
};

template <class T>
static Stored<T> make(size_t n, std::mt19937& rng, int kind) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    Stored<T> s;
    for (size_t i = 0; i < n; i++) {
        float x = u(rng);
        if constexpr (sizeof(T) == 4) {
            s.bits.push_back(x);
            s.values.push_back(x);
        } else if (kind == 1) {  // bf16
            Bits b = bf16_bits(x);
            s.bits.push_back(b);
            s.values.push_back(bf16_value(b));
        } else {  // f16
            Bits b = phive_emulated_f16(x);
            s.bits.push_back(b);
            s.values.push_back(f16_value(b));
        }
    }
    return s;
}

template <class QT, class KT, class Kernel>
static int check(const char* name, Kernel kernel, int q_kind, int kv_kind, const Case& c, std::mt19937& rng) {
    const int rows = (int)c.ends.size();
    int longest = 0;
    for (int e : c.ends) longest = std::max(longest, e);
    const long width = (long)c.kv_heads * c.d;
    const int pool_rows = rows * longest + 7;
    auto q = make<QT>((size_t)rows * c.heads * c.d, rng, q_kind);
    auto keys = make<KT>((size_t)pool_rows * width, rng, kv_kind);
    auto values = make<KT>((size_t)pool_rows * width, rng, kv_kind);
    // Each row's positions in shuffled pool rows; padding points outside the pool.
    std::vector<unsigned> order(pool_rows);
    for (int i = 0; i < pool_rows; i++) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<unsigned> slots((size_t)rows * longest, 0x7fffffffu), spans;
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < c.ends[r]; j++) slots[(size_t)r * longest + j] = order[(size_t)r * longest + j];
        spans.push_back(c.firsts[r]);
        spans.push_back(c.ends[r]);
    }
    const float scale = 1.0f / std::sqrt((float)c.d);
    std::vector<QT> out((size_t)rows * c.heads * c.d);
    launch(kernel, Dim3{(unsigned)c.heads, (unsigned)rows, 1}, WARPS * LANES, q.bits.data(), keys.bits.data(),
           values.bits.data(), slots.data(), spans.data(), out.data(), c.heads, c.kv_heads, c.d, longest, scale);
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        for (int h = 0; h < c.heads; h++) {
            const int kvh = h / (c.heads / c.kv_heads);
            const size_t q_at = ((size_t)r * c.heads + h) * c.d;
            std::vector<double> scores;
            double top = -INFINITY;
            for (int j = c.firsts[r]; j < c.ends[r]; j++) {
                const size_t at = (size_t)slots[(size_t)r * longest + j] * width + (size_t)kvh * c.d;
                double s = 0;
                for (int i = 0; i < c.d; i++) s += (double)(q.values[q_at + i] * scale) * keys.values[at + i];
                scores.push_back(s);
                top = std::max(top, s);
            }
            double total = 0;
            for (double& s : scores) total += (s = std::exp(s - top));
            for (int i = 0; i < c.d; i++) {
                double want = 0;
                for (int j = c.firsts[r]; j < c.ends[r]; j++) {
                    const size_t at = (size_t)slots[(size_t)r * longest + j] * width + (size_t)kvh * c.d;
                    want += scores[j - c.firsts[r]] / total * values.values[at + i];
                }
                double got;
                if constexpr (sizeof(QT) == 4) got = out[q_at + i];
                else got = q_kind == 1 ? bf16_value(out[q_at + i]) : f16_value(out[q_at + i]);
                worst = std::max(worst, std::fabs(got - want));
            }
        }
    }
    // f32 outputs: summation order only; half outputs: one rounding of a value below 1.
    const double tolerance = sizeof(QT) == 4 ? 2e-6 : (q_kind == 1 ? 4e-3 : 5e-4);
    const bool ok = worst <= tolerance;
    std::printf("%s heads %d/%d d %d rows %d: max error %.3g %s\n", name, c.heads, c.kv_heads, c.d, rows, worst,
                ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

int main() {
    std::mt19937 rng(7);
    const std::vector<Case> cases = {
        {4, 4, 96, {0, 0, 0, 0}, {1, 5, 33, 70}},   // Phi-3.5: no grouping, 96 = three lanes each
        {8, 2, 128, {0, 20, 0}, {17, 64, 2}},       // Phi-4: grouped heads; row 1 in a sliding window
        {6, 3, 40, {0, 3}, {9, 4}},                 // a head narrower than two lanes' worth
    };
    int failures = 0;
    for (const Case& c : cases) {
        failures += check<float, float>("f32 q, f32 kv", paged_decode_f32_f32, 0, 0, c, rng);
        failures += check<float, Bits>("f32 q, f16 kv", paged_decode_f32_f16, 0, 2, c, rng);
        failures += check<Bits, float>("bf16 q, f32 kv", paged_decode_bf16_f32, 1, 0, c, rng);
        failures += check<Bits, Bits>("bf16 q, f16 kv", paged_decode_bf16_f16, 1, 2, c, rng);
        failures += check<Bits, float>("f16 q, f32 kv", paged_decode_f16_f32, 2, 0, c, rng);
        failures += check<Bits, Bits>("f16 q, f16 kv", paged_decode_f16_f16, 2, 2, c, rng);
    }
    std::printf("%d failures\n", failures);
    return failures == 0 ? 0 : 1;
}
