// max_unpool2d with PyTorch's semantics (NCHW; each index is a flat position in its own
// H_out x W_out output plane; zeros where nothing lands), deterministic when several inputs
// select the same output position (overlapping 3x3/stride-2 pools do that): the input that is
// last in row-major order wins, as in PyTorch's CPU kernel run on one thread.
//
// Two passes keep the threads independent:
//   1. winner: every input element does atomicMax(winner[plane][index], its position + 1);
//      an out-of-range index is never used as an address: it records the smallest flat input
//      position holding a bad index (atomicMin) for the launcher to report.
//   2. gather: every output element reads its winner and copies that input value (or 0).
// The winner buffer (int32, output-sized) must be zero on entry; 0 means "no input chose me".
#include "common.cuh"

template <typename Index>
__device__ void max_unpool_winner(const Index* __restrict__ indices, int* __restrict__ winner,
                                  unsigned long long* __restrict__ first_bad, long long planes,
                                  long long input_plane, long long output_plane) {
    const long long position = global_x();
    if (position >= input_plane) return;
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const long long flat = plane * input_plane + position;
        const long long target = (long long)indices[flat];
        if (target < 0 || target >= output_plane) {
            atomicMin(first_bad, (unsigned long long)flat);
        } else {
            atomicMax(winner + plane * output_plane + target, (int)(position + 1));
        }
    }
}

template <typename T>
__device__ void max_unpool_gather(const T* __restrict__ x, const int* __restrict__ winner, T* __restrict__ out,
                                  long long planes, long long input_plane, long long output_plane) {
    const long long position = global_x();
    if (position >= output_plane) return;
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const long long flat = plane * output_plane + position;
        const int chosen = winner[flat];
        if (chosen > 0) {
            out[flat] = x[plane * input_plane + (chosen - 1)];
        } else {
            out[flat] = T{};  // +0.0 in float32 and in binary16 (all bits zero)
        }
    }
}

extern "C" __global__ void max_unpool_winner_i64(const long long* indices, int* winner, unsigned long long* first_bad,
                                                 long long planes, long long input_plane, long long output_plane) {
    max_unpool_winner<long long>(indices, winner, first_bad, planes, input_plane, output_plane);
}

extern "C" __global__ void max_unpool_winner_i32(const int* indices, int* winner, unsigned long long* first_bad,
                                                 long long planes, long long input_plane, long long output_plane) {
    max_unpool_winner<int>(indices, winner, first_bad, planes, input_plane, output_plane);
}

extern "C" __global__ void max_unpool_gather_f32(const float* x, const int* winner, float* out, long long planes,
                                                 long long input_plane, long long output_plane) {
    max_unpool_gather<float>(x, winner, out, planes, input_plane, output_plane);
}

extern "C" __global__ void max_unpool_gather_f16(const mt_half* x, const int* winner, mt_half* out, long long planes,
                                                 long long input_plane, long long output_plane) {
    max_unpool_gather<mt_half>(x, winner, out, planes, input_plane, output_plane);
}
