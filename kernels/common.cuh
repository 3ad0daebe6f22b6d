// Shared by every kernel source: the half type, loads/stores that widen to float, and helpers
// that behave identically when a source is compiled by NVRTC for a GPU and when it is compiled
// by g++ for the host emulation (kernels/emulate.py prepends host_emulation.h in that case).
//
// Rules every kernel in this folder follows so that the host emulation is exact:
// each thread is independent (no __shared__, no __syncthreads, no warp intrinsics), all
// cross-thread communication goes through atomics whose final result does not depend on the
// order of the threads (atomicMax / atomicMin / a flag), and multiplications whose rounding
// must match the NumPy reference use mul_rn (no fused multiply-add).
#ifndef MATTRT_KERNELS_COMMON_CUH
#define MATTRT_KERNELS_COMMON_CUH

// IEEE binary16 stored as its bits. CUDA's cuda_fp16.h is deliberately not used: NVRTC and
// CuPy do not agree on where that header lives, and two PTX instructions are all we need.
struct mt_half {
    unsigned short bits;
};

#if defined(__CUDACC__)
__device__ __forceinline__ float half_to_float(mt_half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
}
__device__ __forceinline__ mt_half float_to_half(float f) {
    mt_half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}
// A product rounded on its own (never contracted into an FMA with a following add), so that
// sums of products round exactly as NumPy's float32 arithmetic does.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
// 1 / v correctly rounded: cheaper than a full IEEE division when several values share it.
__device__ __forceinline__ float reciprocal(float v) { return __frcp_rn(v); }
// exp through the hardware exp2 unit: a few ulp (about 1e-6 relative for arguments in [-10, 0]);
// only for softmax arguments (<= 0), where that is far below the outputs' tolerance.
__device__ __forceinline__ float fast_exp(float v) { return __expf(v); }
__device__ __forceinline__ int lowest_set_bit(unsigned long long bits) { return __ffsll((long long)bits) - 1; }
#else
#ifndef MATTRT_HOST_EMULATION
#error "common.cuh outside NVRTC needs host_emulation.h first (see kernels/emulate.py)"
#endif
__device__ __forceinline__ float half_to_float(mt_half h) { return mt_host_half_to_float(h.bits); }
__device__ __forceinline__ mt_half float_to_half(float f) {
    mt_half h;
    h.bits = mt_host_float_to_half(f);
    return h;
}
__device__ __forceinline__ float mul_rn(float a, float b) { return a * b; }
__device__ __forceinline__ float reciprocal(float v) { return 1.0f / v; }
__device__ __forceinline__ float fast_exp(float v) { return expf(v); }  // the host has no fast variant
__device__ __forceinline__ int lowest_set_bit(unsigned long long bits) { return __builtin_ctzll(bits); }
#endif

__device__ __forceinline__ float load_float(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load_float(const mt_half* p, long long i) { return half_to_float(p[i]); }

__device__ __forceinline__ void store_float(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_float(mt_half* p, long long i, float v) { p[i] = float_to_half(v); }

__device__ __forceinline__ float sigmoidf(float v) { return reciprocal(1.0f + expf(-v)); }

__device__ __forceinline__ long long min_ll(long long a, long long b) { return a < b ? a : b; }
__device__ __forceinline__ long long max_ll(long long a, long long b) { return a > b ? a : b; }

// Global thread coordinates as 64-bit values (the products overflow 32 bits on big grids).
__device__ __forceinline__ long long global_x() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long stride_x() { return (long long)gridDim.x * blockDim.x; }

#endif  // MATTRT_KERNELS_COMMON_CUH
