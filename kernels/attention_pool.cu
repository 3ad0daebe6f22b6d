// AlphaNet's attention-guided pooling and unpooling (semantics: the attention spec shared with
// models/alphanet.py), each fused into one pass that computes in float32:
//   attention_pool2d:   w = sigmoid(a); softmax of w over each 2x2 window; out = sum(w_soft * x)
//   attention_unpool2d: out = sigmoid(a) * nearest_upsample_x2(y)
// a is N x 1 x H x W and is broadcast over the channels; H and W are even.
//
// The attention weights depend on (n, position) only, so each thread computes them once and
// applies them to a chunk of `channel_chunk` channels: the sigmoid/softmax cost is divided by
// the chunk while every channel's loads and stores stay coalesced across the warp.
// Grid: x covers the output columns, y the output rows (strided),
//       z the (sample, channel chunk) pairs (strided).
#include "common.cuh"

template <typename T>
__device__ void attention_pool2d(const T* __restrict__ x, const T* __restrict__ a, T* __restrict__ out, long long n,
                                 long long channels, long long height, long long width, long long channel_chunk) {
    const long long out_h = height / 2, out_w = width / 2;
    const long long j = global_x();
    if (j >= out_w) return;
    const long long chunks = (channels + channel_chunk - 1) / channel_chunk;
    for (long long job = blockIdx.z; job < n * chunks; job += gridDim.z) {
        const long long sample = job / chunks;
        const long long first = (job - sample * chunks) * channel_chunk;
        const long long last = min_ll(first + channel_chunk, channels);
        const T* a_plane = a + sample * height * width;
        for (long long i = blockIdx.y; i < out_h; i += gridDim.y) {
            const long long top = (2 * i) * width + 2 * j;
            const long long bottom = top + width;
            const float s00 = sigmoidf(load_float(a_plane, top));
            const float s01 = sigmoidf(load_float(a_plane, top + 1));
            const float s10 = sigmoidf(load_float(a_plane, bottom));
            const float s11 = sigmoidf(load_float(a_plane, bottom + 1));
            const float peak = fmaxf(fmaxf(s00, s01), fmaxf(s10, s11));
            float w00 = expf(s00 - peak), w01 = expf(s01 - peak);
            float w10 = expf(s10 - peak), w11 = expf(s11 - peak);
            const float scale = reciprocal(((w00 + w01) + w10) + w11);
            w00 *= scale;
            w01 *= scale;
            w10 *= scale;
            w11 *= scale;
            const T* source = x + (sample * channels + first) * height * width + top;
            T* target = out + (sample * channels + first) * out_h * out_w + i * out_w + j;
            for (long long c = first; c < last; ++c) {
                const float pooled = w00 * load_float(source, 0) + w01 * load_float(source, 1) +
                                     w10 * load_float(source, width) + w11 * load_float(source, width + 1);
                store_float(target, 0, pooled);
                source += height * width;
                target += out_h * out_w;
            }
        }
    }
}

template <typename T>
__device__ void attention_unpool2d(const T* __restrict__ y, const T* __restrict__ a, T* __restrict__ out, long long n,
                                   long long channels, long long height, long long width, long long channel_chunk) {
    const long long in_h = height / 2, in_w = width / 2;
    const long long col = global_x();
    if (col >= width) return;
    const long long chunks = (channels + channel_chunk - 1) / channel_chunk;
    for (long long job = blockIdx.z; job < n * chunks; job += gridDim.z) {
        const long long sample = job / chunks;
        const long long first = (job - sample * chunks) * channel_chunk;
        const long long last = min_ll(first + channel_chunk, channels);
        for (long long row = blockIdx.y; row < height; row += gridDim.y) {
            const float gate = sigmoidf(load_float(a, (sample * height + row) * width + col));
            const T* source = y + ((sample * channels + first) * in_h + row / 2) * in_w + col / 2;
            T* target = out + ((sample * channels + first) * height + row) * width + col;
            for (long long c = first; c < last; ++c) {
                store_float(target, 0, gate * load_float(source, 0));
                source += in_h * in_w;
                target += height * width;
            }
        }
    }
}

extern "C" __global__ void attention_pool2d_f32(const float* x, const float* a, float* out, long long n,
                                                long long channels, long long height, long long width,
                                                long long channel_chunk) {
    attention_pool2d<float>(x, a, out, n, channels, height, width, channel_chunk);
}

extern "C" __global__ void attention_pool2d_f16(const mt_half* x, const mt_half* a, mt_half* out, long long n,
                                                long long channels, long long height, long long width,
                                                long long channel_chunk) {
    attention_pool2d<mt_half>(x, a, out, n, channels, height, width, channel_chunk);
}

extern "C" __global__ void attention_unpool2d_f32(const float* y, const float* a, float* out, long long n,
                                                  long long channels, long long height, long long width,
                                                  long long channel_chunk) {
    attention_unpool2d<float>(y, a, out, n, channels, height, width, channel_chunk);
}

extern "C" __global__ void attention_unpool2d_f16(const mt_half* y, const mt_half* a, mt_half* out, long long n,
                                                  long long channels, long long height, long long width,
                                                  long long channel_chunk) {
    attention_unpool2d<mt_half>(y, a, out, n, channels, height, width, channel_chunk);
}
