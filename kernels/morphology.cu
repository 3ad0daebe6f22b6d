// Grey erosion / dilation with a square (2r+1) x (2r+1) window, as two separable passes (a row
// pass then a column pass) of min or max filters. Samples outside the image are ignored, which
// equals scipy.ndimage.grey_erosion / grey_dilation with mode="nearest" (the replicated edge
// value is always inside the clipped window). Works on planes: a 2D mask is one plane, an
// N x C x H x W mask is N*C planes. Cost is O(r) per pixel and pass; trimap radii are small.
// Grid: x covers columns, y rows (strided), z planes (strided).
#include "common.cuh"

template <typename T>
__device__ void morphology_pass(const T* __restrict__ in, T* __restrict__ out, long long planes, long long height,
                                long long width, long long radius, int vertical, int take_max) {
    const long long col = global_x();
    if (col >= width) return;
    for (long long plane = blockIdx.z; plane < planes; plane += gridDim.z) {
        const T* src = in + plane * height * width;
        for (long long row = blockIdx.y; row < height; row += gridDim.y) {
            const long long centre = vertical ? row : col;
            const long long extent = vertical ? height : width;
            const long long step = vertical ? width : 1;
            const long long first = max_ll(centre - radius, 0), last = min_ll(centre + radius, extent - 1);
            const T* sample = src + (vertical ? col : row * width) + first * step;
            T best = *sample;
            for (long long k = first + 1; k <= last; ++k) {
                sample += step;
                const T v = *sample;
                best = take_max ? (v > best ? v : best) : (v < best ? v : best);
            }
            out[plane * height * width + row * width + col] = best;
        }
    }
}

extern "C" __global__ void morphology_pass_f32(const float* in, float* out, long long planes, long long height,
                                               long long width, long long radius, int vertical, int take_max) {
    morphology_pass<float>(in, out, planes, height, width, radius, vertical, take_max);
}

extern "C" __global__ void morphology_pass_u8(const unsigned char* in, unsigned char* out, long long planes,
                                              long long height, long long width, long long radius, int vertical,
                                              int take_max) {
    morphology_pass<unsigned char>(in, out, planes, height, width, radius, vertical, take_max);
}
