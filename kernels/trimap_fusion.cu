// Trimap fusion in one pass: bilinear upsampling of the low-resolution 3-class trimap
// (N x 3 x h x w; PyTorch F.interpolate(mode="bilinear", align_corners=False) semantics),
// optionally a softmax over the classes (when the trimap holds logits), then the model's fusion
// formula (models/fusion.py) with the full-resolution raw alpha, optionally clamped to [0, 1].
// The output may be a band of rows: rows [row_start, row_start + height) of an image of
// full_height rows (the upsampling's coordinates are those of the whole image), so a pipeline
// can fuse rows as its stitching releases them. Class order: background, unknown, foreground.
// Kinds: the codes of mattrt/fusion_kinds.py (0 unknown_blend, 1 aim_soft, 2 argmax_trimap). Products that are added use mul_rn (no
// fused multiply-add), so the result equals NumPy's and torch's CPU float32 arithmetic bit for
// bit; the softmax (logits only) uses the hardware exp (fast_exp; about 1e-6 relative).
// Grid: x covers columns, y rows (strided), z samples (strided).
#include "common.cuh"

// Source taps of one output coordinate, as PyTorch computes them for align_corners=False:
// src = scale * (dst + 0.5) - 0.5 clamped at 0, the lower tap clamped to the last input, its
// weight clamped to [0, 1]. PyTorch's builds contract that expression into one fused
// multiply-add (measured on its CPU kernel), so it is an explicit fmaf here too.
struct LinearTaps {
    long long lo, hi;
    float w_lo, w_hi;
};

__device__ __forceinline__ LinearTaps linear_taps(long long dst, long long in_size, float scale) {
    float src = fmaf(scale, (float)dst + 0.5f, -0.5f);
    if (src < 0.0f) src = 0.0f;
    LinearTaps taps;
    taps.lo = min_ll((long long)floorf(src), in_size - 1);
    taps.hi = taps.lo + (taps.lo < in_size - 1 ? 1 : 0);
    float lambda = src - (float)taps.lo;
    lambda = fminf(fmaxf(lambda, 0.0f), 1.0f);
    taps.w_hi = lambda;
    taps.w_lo = 1.0f - lambda;
    return taps;
}

template <typename TrimapT, typename DetailT>
__device__ void trimap_fusion(const TrimapT* __restrict__ trimap, const DetailT* __restrict__ detail,
                              DetailT* __restrict__ out, long long n, long long low_h, long long low_w,
                              long long height, long long width, long long row_start, long long full_height,
                              int kind, int logits, int clamp) {
    const long long col = global_x();
    if (col >= width) return;
    const float scale_y = (float)low_h / (float)full_height;
    const float scale_x = (float)low_w / (float)width;
    const LinearTaps tx = linear_taps(col, low_w, scale_x);
    const long long class_stride = low_h * low_w;
    for (long long sample = blockIdx.z; sample < n; sample += gridDim.z) {
        const TrimapT* low = trimap + sample * 3 * class_stride;
        for (long long row = blockIdx.y; row < height; row += gridDim.y) {
            const LinearTaps ty = linear_taps(row_start + row, low_h, scale_y);
            // offsets inside one sample's trimap fit in 32 bits (the launcher checks 3*h*w < 2^31)
            const int upper = (int)(ty.lo * low_w), lower = (int)(ty.hi * low_w);
            const int left = (int)tx.lo, right = (int)tx.hi;
            float p[3];
            for (int k = 0; k < 3; ++k) {
                const TrimapT* channel = low + k * (int)class_stride;
                const float top = mul_rn(tx.w_lo, load_float(channel, upper + left)) +
                                  mul_rn(tx.w_hi, load_float(channel, upper + right));
                const float bottom = mul_rn(tx.w_lo, load_float(channel, lower + left)) +
                                     mul_rn(tx.w_hi, load_float(channel, lower + right));
                p[k] = mul_rn(ty.w_lo, top) + mul_rn(ty.w_hi, bottom);
            }
            if (logits) {
                const float peak = fmaxf(fmaxf(p[0], p[1]), p[2]);
                const float e0 = fast_exp(p[0] - peak), e1 = fast_exp(p[1] - peak), e2 = fast_exp(p[2] - peak);
                const float scale = reciprocal((e0 + e1) + e2);
                p[0] = e0 * scale;
                p[1] = e1 * scale;
                p[2] = e2 * scale;
            }
            const float background = p[0], unknown = p[1], foreground = p[2];
            const long long pixel = (sample * height + row) * width + col;
            const float raw = load_float(detail, pixel);
            float alpha;
            if (kind == 0) {
                alpha = foreground + mul_rn(unknown, raw);
            } else if (kind == 1) {
                const float total = fmaxf((background + unknown) + foreground, 1e-6f);
                const float unified = (mul_rn(0.5f, unknown) + foreground) / total;
                const float confidence = 2.0f * fabsf(unified - 0.5f);
                alpha = mul_rn(1.0f - confidence, raw) + mul_rn(confidence, unified);
            } else {
                // argmax over (background, unknown, foreground), ties to the lower class index
                const bool is_unknown = unknown > background && unknown >= foreground;
                const bool is_foreground = foreground > background && foreground > unknown;
                alpha = is_foreground ? 1.0f : (is_unknown ? fminf(fmaxf(raw, 0.0f), 1.0f) : 0.0f);
            }
            if (clamp) alpha = fminf(fmaxf(alpha, 0.0f), 1.0f);
            store_float(out, pixel, alpha);
        }
    }
}

extern "C" __global__ void trimap_fusion_t32_d32(const float* trimap, const float* detail, float* out, long long n,
                                                 long long low_h, long long low_w, long long height, long long width,
                                                 long long row_start, long long full_height, int kind,
                                                 int logits, int clamp) {
    trimap_fusion<float, float>(trimap, detail, out, n, low_h, low_w, height, width, row_start,
        full_height, kind, logits, clamp);
}

extern "C" __global__ void trimap_fusion_t32_d16(const float* trimap, const mt_half* detail, mt_half* out, long long n,
                                                 long long low_h, long long low_w, long long height, long long width,
                                                 long long row_start, long long full_height, int kind,
                                                 int logits, int clamp) {
    trimap_fusion<float, mt_half>(trimap, detail, out, n, low_h, low_w, height, width, row_start,
        full_height, kind, logits, clamp);
}

extern "C" __global__ void trimap_fusion_t16_d32(const mt_half* trimap, const float* detail, float* out, long long n,
                                                 long long low_h, long long low_w, long long height, long long width,
                                                 long long row_start, long long full_height, int kind,
                                                 int logits, int clamp) {
    trimap_fusion<mt_half, float>(trimap, detail, out, n, low_h, low_w, height, width, row_start,
        full_height, kind, logits, clamp);
}

extern "C" __global__ void trimap_fusion_t16_d16(const mt_half* trimap, const mt_half* detail, mt_half* out, long long n,
                                                 long long low_h, long long low_w, long long height, long long width,
                                                 long long row_start, long long full_height, int kind,
                                                 int logits, int clamp) {
    trimap_fusion<mt_half, mt_half>(trimap, detail, out, n, low_h, low_w, height, width, row_start,
        full_height, kind, logits, clamp);
}
