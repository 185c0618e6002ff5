// CUDA's built-ins for a kernel compiled as plain C++: every thread of a block is a CPU thread,
// `__syncthreads` a barrier of the block, `__shfl_xor_sync` an exchange through memory between
// two barriers of the warp, and `__shared__` arrays static (blocks run one after another).
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define PHIVE_EMULATED
#define PHIVE_INFINITY INFINITY
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local Dim3 threadIdx, blockIdx;

inline std::barrier<>* block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline float exchange[32][32];

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    exchange[warp][lane] = v;
    warp_barriers[warp]->arrive_and_wait();
    const float other = exchange[warp][lane ^ mask];
    warp_barriers[warp]->arrive_and_wait();
    return other;
}

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline unsigned short phive_emulated_f16(float x) {
    _Float16 h = (_Float16)x;
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}

// Runs `kernel(args...)` on a grid of `grid` blocks of `threads` threads (a multiple of 32).
template <class Kernel, class... Args>
void launch(Kernel kernel, Dim3 grid, unsigned threads, Args... args) {
    for (unsigned by = 0; by < grid.y; by++) {
        for (unsigned bx = 0; bx < grid.x; bx++) {
            std::barrier<> block(threads);
            block_barrier = &block;
            warp_barriers.clear();
            for (unsigned w = 0; w < threads / 32; w++) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
            std::vector<std::thread> pool;
            for (unsigned t = 0; t < threads; t++) {
                pool.emplace_back([=] {
                    threadIdx = Dim3{t, 0, 0};
                    blockIdx = Dim3{bx, by, 0};
                    kernel(args...);
                });
            }
            for (auto& t : pool) t.join();
        }
    }
}
