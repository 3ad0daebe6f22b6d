// Tile preprocessing in one pass: crop B tiles of T x T from an H x W x 3 uint8 RGB image at
// given (top, left) offsets, reflecting at the image's borders (NumPy mode="reflect": the edge
// pixel is not repeated, reflection continues periodically for tiles far outside), and write
// ((pixel / 255) - mean[c]) / std[c] as B x 3 x T x T float32 or float16.
//
// The normalisation of a uint8 value has only 256 results per channel: the launcher computes
// them once in float32 (exactly the reference's arithmetic) into `table` (3 x 256), so the
// kernel is a gather plus a store instead of two IEEE divisions per value.
// Grid: x covers tile columns, y tile rows (strided), z tiles (strided).
#include "common.cuh"

__device__ __forceinline__ long long reflect_index(long long i, long long size) {
    if (i >= 0 && i < size) return i;  // the common case: inside the image
    if (size == 1) return 0;
    const long long period = 2 * (size - 1);
    long long m = i % period;
    if (m < 0) m += period;
    return m < size ? m : period - m;
}

template <typename OutT>
__device__ void preprocess_tiles(const unsigned char* __restrict__ image, const int* __restrict__ offsets,
                                 const float* __restrict__ table, OutT* __restrict__ out, long long batch,
                                 long long tile, long long height, long long width) {
    const long long tx = global_x();
    if (tx >= tile) return;
    const long long plane = tile * tile;
    for (long long b = blockIdx.z; b < batch; b += gridDim.z) {
        const long long x = reflect_index((long long)offsets[2 * b + 1] + tx, width);
        for (long long ty = blockIdx.y; ty < tile; ty += gridDim.y) {
            const long long y = reflect_index((long long)offsets[2 * b] + ty, height);
            const unsigned char* pixel = image + (y * width + x) * 3;
            const long long base = b * 3 * plane + ty * tile + tx;
            store_float(out, base, table[pixel[0]]);
            store_float(out, base + plane, table[256 + pixel[1]]);
            store_float(out, base + 2 * plane, table[512 + pixel[2]]);
        }
    }
}

extern "C" __global__ void preprocess_tiles_f32(const unsigned char* image, const int* offsets, const float* table,
                                                float* out, long long batch, long long tile, long long height,
                                                long long width) {
    preprocess_tiles<float>(image, offsets, table, out, batch, tile, height, width);
}

extern "C" __global__ void preprocess_tiles_f16(const unsigned char* image, const int* offsets, const float* table,
                                                mt_half* out, long long batch, long long tile, long long height,
                                                long long width) {
    preprocess_tiles<mt_half>(image, offsets, table, out, batch, tile, height, width);
}
