// Seam-free stitching of tiled alpha predictions.
//
// stitch_accumulate: acc += sum_b window_b * tile_b and weight_sum += sum_b window_b over the
// image pixels each tile covers (tiles are clipped at the image's edges). The windows come as a
// stack of K distinct T x T windows plus one index per tile (a tiling plan has at most 9 kinds:
// corner, edge and inner tiles taper on different sides; one shared window is K = 1 with every
// index 0). It is a gather, not a scatter: one thread per image column of the launch region
// (the tiles' bounding box, clipped) walks its rows and, for each pixel, the tiles covering it
// in batch order, so overlapping tiles are summed in a fixed order (the NumPy reference's) and
// the result is bit-identical run to run: no atomics. A thread first collects the tiles that
// cross its column into a 64-bit mask (the launcher passes at most 64 tiles per launch), so each
// pixel only visits the few tiles that can cover it.
//
// stitch_finalize: alpha = clamp(acc / weight_sum, 0, 1) written as uint8 (alpha * 255 rounded
// to the nearest integer, ties to even: rintf, mattrt.imageio.quantise's rule), uint16 (of
// alpha * 65535) or float32; stitch_finalize_ratio_f32 writes the
// unclamped ratio (a raw alpha that fusion reads before clamping). A pixel whose weight is not
// > 0 gets 0, and the smallest flat index of such pixels is recorded in *first_uncovered
// (atomicMin) for the launcher, which raises or accepts zeros as asked.
#include "common.cuh"

template <typename TileT>
__device__ void stitch_accumulate(float* __restrict__ acc, float* __restrict__ weight_sum,
                                  const TileT* __restrict__ tiles, const float* __restrict__ windows,
                                  const int* __restrict__ window_index, const int* __restrict__ offsets,
                                  long long batch, long long tile,
                                  long long height, long long width, long long region_top,
                                  long long region_left, long long region_h, long long region_w) {
    const long long gx = global_x();
    if (gx >= region_w) return;
    const long long x = region_left + gx;
    unsigned long long crossing = 0;  // bit b: tile b spans column x (batch <= 64)
    for (int b = 0; b < (int)batch; ++b) {
        const long long tx = x - offsets[2 * b + 1];
        if (tx >= 0 && tx < tile) crossing |= 1ull << b;
    }
    if (crossing == 0) return;
    const long long tile_area = tile * tile;
    for (long long gy = blockIdx.y; gy < region_h; gy += gridDim.y) {
        const long long y = region_top + gy;
        const long long pixel = y * width + x;
        float value = 0.0f, weight = 0.0f;
        bool covered = false;
        for (unsigned long long pending = crossing; pending != 0; pending &= pending - 1) {
            const int b = lowest_set_bit(pending);  // ascending: batch order
            const long long ty = y - offsets[2 * b];
            if (ty < 0 || ty >= tile) continue;
            if (!covered) {
                value = acc[pixel];
                weight = weight_sum[pixel];
                covered = true;
            }
            const long long at = ty * tile + (x - offsets[2 * b + 1]);
            const float w = windows[(long long)window_index[b] * tile_area + at];
            value += mul_rn(load_float(tiles, b * tile_area + at), w);
            weight += w;
        }
        if (covered) {
            acc[pixel] = value;
            weight_sum[pixel] = weight;
        }
    }
}

extern "C" __global__ void stitch_accumulate_f32(float* acc, float* weight_sum, const float* tiles,
                                                 const float* windows, const int* window_index,
                                                 const int* offsets, long long batch,
                                                 long long tile, long long height, long long width,
                                                 long long region_top, long long region_left, long long region_h,
                                                 long long region_w) {
    stitch_accumulate<float>(acc, weight_sum, tiles, windows, window_index, offsets, batch, tile, height, width, region_top,
                             region_left, region_h, region_w);
}

extern "C" __global__ void stitch_accumulate_f16(float* acc, float* weight_sum, const mt_half* tiles,
                                                 const float* windows, const int* window_index,
                                                 const int* offsets, long long batch,
                                                 long long tile, long long height, long long width,
                                                 long long region_top, long long region_left, long long region_h,
                                                 long long region_w) {
    stitch_accumulate<mt_half>(acc, weight_sum, tiles, windows, window_index, offsets, batch, tile, height, width, region_top,
                               region_left, region_h, region_w);
}

// The quantised value of alpha in [0, 1] for each output type.
__device__ __forceinline__ void store_alpha(unsigned char* out, long long i, float alpha) {
    out[i] = (unsigned char)rintf(mul_rn(alpha, 255.0f));
}
__device__ __forceinline__ void store_alpha(unsigned short* out, long long i, float alpha) {
    out[i] = (unsigned short)rintf(mul_rn(alpha, 65535.0f));
}
__device__ __forceinline__ void store_alpha(float* out, long long i, float alpha) { out[i] = alpha; }

template <typename OutT>
__device__ void stitch_finalize(const float* __restrict__ acc, const float* __restrict__ weight_sum,
                                OutT* __restrict__ out, unsigned long long* __restrict__ first_uncovered,
                                long long height, long long width) {
    const long long x = global_x();
    if (x >= width) return;
    for (long long y = blockIdx.y; y < height; y += gridDim.y) {
        const long long pixel = y * width + x;
        const float weight = weight_sum[pixel];
        float alpha = 0.0f;
        if (weight > 0.0f) {
            alpha = fminf(fmaxf(acc[pixel] / weight, 0.0f), 1.0f);
        } else {
            atomicMin(first_uncovered, (unsigned long long)pixel);
        }
        store_alpha(out, pixel, alpha);
    }
}

extern "C" __global__ void stitch_finalize_u8(const float* acc, const float* weight_sum, unsigned char* out,
                                              unsigned long long* first_uncovered, long long height, long long width) {
    stitch_finalize<unsigned char>(acc, weight_sum, out, first_uncovered, height, width);
}

extern "C" __global__ void stitch_finalize_u16(const float* acc, const float* weight_sum, unsigned short* out,
                                               unsigned long long* first_uncovered, long long height, long long width) {
    stitch_finalize<unsigned short>(acc, weight_sum, out, first_uncovered, height, width);
}

extern "C" __global__ void stitch_finalize_f32(const float* acc, const float* weight_sum, float* out,
                                               unsigned long long* first_uncovered, long long height, long long width) {
    stitch_finalize<float>(acc, weight_sum, out, first_uncovered, height, width);
}

// The unclamped ratio acc / weight_sum (0 where uncovered): the stitched raw alpha that fusion
// clamps only after combining it with the trimap.
extern "C" __global__ void stitch_finalize_ratio_f32(const float* acc, const float* weight_sum, float* out,
                                                     unsigned long long* first_uncovered, long long height,
                                                     long long width) {
    const long long x = global_x();
    if (x >= width) return;
    for (long long y = blockIdx.y; y < height; y += gridDim.y) {
        const long long pixel = y * width + x;
        const float weight = weight_sum[pixel];
        if (weight > 0.0f) {
            out[pixel] = acc[pixel] / weight;
        } else {
            out[pixel] = 0.0f;
            atomicMin(first_uncovered, (unsigned long long)pixel);
        }
    }
}
