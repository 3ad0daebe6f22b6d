// Tile preprocessing in one pass: crop B tiles of T x T from an H x W x 3 RGB image at given
// (top, left) offsets, reflecting at the image's borders (NumPy mode="reflect": the edge pixel
// is not repeated, reflection continues periodically for tiles far outside), and write
// ((pixel / unit) - mean[c]) / std[c] as B x 3 x T x T float32 or float16, where unit is 255 for
// uint8, 65535 for uint16 and 1 for float32 images (already in [0, 1]).
//
// uint8: the normalisation has only 256 results per channel: the launcher computes them once in
// float32 (exactly the reference's arithmetic) into `table` (3 x 256), so the kernel is a gather
// plus a store instead of two IEEE divisions per value. uint16 and float32: `table` holds
// (mean[3], std[3], unit) and the kernel does the reference's two correctly rounded divisions.
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

__device__ __forceinline__ float normalise(const float* __restrict__ table, int channel, unsigned char v) {
    return table[256 * channel + v];
}
__device__ __forceinline__ float normalise(const float* __restrict__ table, int channel, unsigned short v) {
    return ((float)v / table[6] - table[channel]) / table[3 + channel];
}
__device__ __forceinline__ float normalise(const float* __restrict__ table, int channel, float v) {
    return (v / table[6] - table[channel]) / table[3 + channel];
}

template <typename InT, typename OutT>
__device__ void preprocess_tiles(const InT* __restrict__ image, const int* __restrict__ offsets,
                                 const float* __restrict__ table, OutT* __restrict__ out, long long batch,
                                 long long tile, long long height, long long width) {
    const long long tx = global_x();
    if (tx >= tile) return;
    const long long plane = tile * tile;
    for (long long b = blockIdx.z; b < batch; b += gridDim.z) {
        const long long x = reflect_index((long long)offsets[2 * b + 1] + tx, width);
        for (long long ty = blockIdx.y; ty < tile; ty += gridDim.y) {
            const long long y = reflect_index((long long)offsets[2 * b] + ty, height);
            const InT* pixel = image + (y * width + x) * 3;
            const long long base = b * 3 * plane + ty * tile + tx;
            store_float(out, base, normalise(table, 0, pixel[0]));
            store_float(out, base + plane, normalise(table, 1, pixel[1]));
            store_float(out, base + 2 * plane, normalise(table, 2, pixel[2]));
        }
    }
}

extern "C" __global__ void preprocess_tiles_u8_f32(const unsigned char* image, const int* offsets, const float* table,
                                                   float* out, long long batch, long long tile, long long height,
                                                   long long width) {
    preprocess_tiles<unsigned char, float>(image, offsets, table, out, batch, tile, height, width);
}

extern "C" __global__ void preprocess_tiles_u8_f16(const unsigned char* image, const int* offsets, const float* table,
                                                   mt_half* out, long long batch, long long tile, long long height,
                                                   long long width) {
    preprocess_tiles<unsigned char, mt_half>(image, offsets, table, out, batch, tile, height, width);
}

extern "C" __global__ void preprocess_tiles_u16_f32(const unsigned short* image, const int* offsets, const float* table,
                                                    float* out, long long batch, long long tile, long long height,
                                                    long long width) {
    preprocess_tiles<unsigned short, float>(image, offsets, table, out, batch, tile, height, width);
}

extern "C" __global__ void preprocess_tiles_u16_f16(const unsigned short* image, const int* offsets, const float* table,
                                                    mt_half* out, long long batch, long long tile, long long height,
                                                    long long width) {
    preprocess_tiles<unsigned short, mt_half>(image, offsets, table, out, batch, tile, height, width);
}

extern "C" __global__ void preprocess_tiles_f32_f32(const float* image, const int* offsets, const float* table,
                                                    float* out, long long batch, long long tile, long long height,
                                                    long long width) {
    preprocess_tiles<float, float>(image, offsets, table, out, batch, tile, height, width);
}

extern "C" __global__ void preprocess_tiles_f32_f16(const float* image, const int* offsets, const float* table,
                                                    mt_half* out, long long batch, long long tile, long long height,
                                                    long long width) {
    preprocess_tiles<float, mt_half>(image, offsets, table, out, batch, tile, height, width);
}
