// Host emulation of the small part of CUDA C that the kernels in this folder use, so that the
// same .cu source compiles with g++ into a shared library (kernels/emulate.py).
//
// The grid is run sequentially: one thread after another, block after block. That is a valid
// schedule only for kernels whose threads are independent, which is why __shared__,
// __syncthreads and warp intrinsics are deliberately left undefined here: a kernel using them
// fails to compile for the emulation instead of giving a plausible wrong answer. Atomics are
// plain read-modify-writes (exact under a sequential schedule).
#ifndef MATTRT_HOST_EMULATION_H
#define MATTRT_HOST_EMULATION_H
#define MATTRT_HOST_EMULATION 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct mt_uint3 {
    unsigned int x, y, z;
};
static mt_uint3 threadIdx, blockIdx, blockDim, gridDim;

static inline float mt_host_half_to_float(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, sizeof h);
    return static_cast<float>(h);
}
static inline unsigned short mt_host_float_to_half(float f) {
    _Float16 h = static_cast<_Float16>(f);  // round to nearest even, as cvt.rn.f16.f32
    unsigned short bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
}

static inline int atomicMax(int* address, int value) {
    int old = *address;
    if (value > old) *address = value;
    return old;
}
static inline int atomicMin(int* address, int value) {
    int old = *address;
    if (value < old) *address = value;
    return old;
}
static inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
    unsigned long long old = *address;
    if (value < old) *address = value;
    return old;
}

// Runs kernel over the grid; args[i] points at the i-th argument's value (as for cuLaunchKernel).
template <typename... Args, std::size_t... I>
static void mt_call_with(void (*kernel)(Args...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(args[I])...);
}

template <typename... Args>
static void mt_run_grid(void (*kernel)(Args...), const unsigned int* grid, const unsigned int* block, void** args) {
    gridDim = mt_uint3{grid[0], grid[1], grid[2]};
    blockDim = mt_uint3{block[0], block[1], block[2]};
    for (unsigned int bz = 0; bz < grid[2]; ++bz)
        for (unsigned int by = 0; by < grid[1]; ++by)
            for (unsigned int bx = 0; bx < grid[0]; ++bx) {
                blockIdx = mt_uint3{bx, by, bz};
                for (unsigned int tz = 0; tz < block[2]; ++tz)
                    for (unsigned int ty = 0; ty < block[1]; ++ty)
                        for (unsigned int tx = 0; tx < block[0]; ++tx) {
                            threadIdx = mt_uint3{tx, ty, tz};
                            mt_call_with(kernel, args, std::index_sequence_for<Args...>{});
                        }
            }
}

#endif  // MATTRT_HOST_EMULATION_H
