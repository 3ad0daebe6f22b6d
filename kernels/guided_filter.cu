// Per-pixel parts of the full-resolution alpha refinement (runtime/refine.py): the uncertain
// band's seeds and He et al.'s colour guided filter (ECCV 2010 / TPAMI 2013), written into the
// band only. kernels/guided_filter.py holds the NumPy references, which compute the same IEEE
// operations in the same order, so the kernels equal them bit for bit:
//
// refine_band_seed: seed = (low < alpha < high) or (alpha >= 0.5 and a 4-neighbour < 0.5), where a
//   neighbour outside the array counts as >= 0.5 (the 0.5 contour's inner side). The band is the
//   seed dilated by the band radius (morphology.cu's separable max filter).
// guided_products: the 13 planes whose window means the filter needs, from the guide I (H x W x 3,
//   centred: I - 0.5) and the input p: I0, I1, I2, p, I0 p, I1 p, I2 p, I0 I0, I0 I1, I0 I2,
//   I1 I1, I1 I2, I2 I2.
// box_sum_rows / box_mean_cols: a (2r + 1)^2 box filter as two separable running sums (one
//   thread per row, then one per column; no shared memory, so the host emulation runs them).
//   Each thread keeps two prefix sums in double, `lead` (up to x + r) and `lag` (up to x - r - 1),
//   advanced by the same sequential additions as NumPy's cumsum in float64, and writes
//   float(lead - lag): the row pass the plain sums, the column pass the mean over the window's
//   in-array part (float(sum) / float(count)). Windows are clipped at the array's edges.
// guided_coefficients: per pixel, the symmetric 3 x 3 covariance of the guide plus eps I, its
//   inverse by cofactors, a = inverse x cov(I, p) and b = mean(p) - a . mean(I), in float32.
// guided_output: q = mean(a) . I + mean(b) at the pixels of an output window of the region,
//   clamped to [0, 1], written where band is set; alpha is copied elsewhere.
// Products use mul_rn (no fused multiply-add), as the other kernels of this folder.
#include "common.cuh"

extern "C" __global__ void refine_band_seed(const float* alpha, unsigned char* seed, long long height, long long width,
                                            float low, float high) {
    const long long x = global_x();
    if (x >= width) return;
    for (long long y = blockIdx.y; y < height; y += gridDim.y) {
        const long long i = y * width + x;
        const float a = alpha[i];
        bool on = a > low && a < high;
        if (!on && a >= 0.5f) {
            const bool up = y > 0 && alpha[i - width] < 0.5f;
            const bool down = y + 1 < height && alpha[i + width] < 0.5f;
            const bool left = x > 0 && alpha[i - 1] < 0.5f;
            const bool right = x + 1 < width && alpha[i + 1] < 0.5f;
            on = up || down || left || right;
        }
        seed[i] = on ? 1 : 0;
    }
}

extern "C" __global__ void guided_products(const float* guide, const float* p, float* planes, long long height,
                                           long long width) {
    const long long x = global_x();
    if (x >= width) return;
    const long long plane = height * width;
    for (long long y = blockIdx.y; y < height; y += gridDim.y) {
        const long long i = y * width + x;
        const float i0 = guide[3 * i] - 0.5f, i1 = guide[3 * i + 1] - 0.5f, i2 = guide[3 * i + 2] - 0.5f;
        const float v = p[i];
        planes[i] = i0;
        planes[plane + i] = i1;
        planes[2 * plane + i] = i2;
        planes[3 * plane + i] = v;
        planes[4 * plane + i] = mul_rn(i0, v);
        planes[5 * plane + i] = mul_rn(i1, v);
        planes[6 * plane + i] = mul_rn(i2, v);
        planes[7 * plane + i] = mul_rn(i0, i0);
        planes[8 * plane + i] = mul_rn(i0, i1);
        planes[9 * plane + i] = mul_rn(i0, i2);
        planes[10 * plane + i] = mul_rn(i1, i1);
        planes[11 * plane + i] = mul_rn(i1, i2);
        planes[12 * plane + i] = mul_rn(i2, i2);
    }
}

// Window sums along one line of n values spaced `step` apart: for every x, the sum over
// [x - r, x + r] clipped to [0, n) as float(lead - lag). With `mean`, that float is divided by
// float(window length) * other_count (the window's extent across the line).
__device__ __forceinline__ void window_line(const float* in, float* out, long long n, long long step, long long radius,
                                            bool mean, float other_count) {
    double lead = 0.0, lag = 0.0;
    const long long first = min_ll(radius, n - 1);
    for (long long k = 0; k <= first; ++k) lead += (double)in[k * step];
    for (long long x = 0; x < n; ++x) {
        if (x > 0 && x + radius < n) lead += (double)in[(x + radius) * step];
        if (x - radius - 1 >= 0) lag += (double)in[(x - radius - 1) * step];
        const float sum = (float)(lead - lag);
        if (mean) {
            const float count = (float)(min_ll(x + radius, n - 1) - max_ll(x - radius, 0) + 1);
            out[x * step] = sum / (count * other_count);
        } else {
            out[x * step] = sum;
        }
    }
}

// Row pass: one thread per (plane, row); out holds the row sums.
extern "C" __global__ void box_sum_rows(const float* in, float* out, long long planes, long long height,
                                        long long width, long long radius) {
    const long long row = global_x();
    if (row >= height) return;
    for (long long plane = blockIdx.z; plane < planes; plane += gridDim.z) {
        const long long base = plane * height * width + row * width;
        window_line(in + base, out + base, width, 1, radius, false, 1.0f);
    }
}

// Column pass over the row sums: one thread per (plane, column); out holds the window means
// float(sum) / (float(rows in the window) * float(columns in the window)).
extern "C" __global__ void box_mean_cols(const float* in, float* out, long long planes, long long height,
                                         long long width, long long radius) {
    const long long col = global_x();
    if (col >= width) return;
    const float columns = (float)(min_ll(col + radius, width - 1) - max_ll(col - radius, 0) + 1);
    for (long long plane = blockIdx.z; plane < planes; plane += gridDim.z) {
        const long long base = plane * height * width + col;
        window_line(in + base, out + base, height, width, radius, true, columns);
    }
}

extern "C" __global__ void guided_coefficients(const float* means, float* coefficients, long long height,
                                               long long width, float eps) {
    const long long x = global_x();
    if (x >= width) return;
    const long long plane = height * width;
    for (long long y = blockIdx.y; y < height; y += gridDim.y) {
        const long long i = y * width + x;
        const float m0 = means[i], m1 = means[plane + i], m2 = means[2 * plane + i], mp = means[3 * plane + i];
        const float c0 = means[4 * plane + i] - mul_rn(m0, mp);
        const float c1 = means[5 * plane + i] - mul_rn(m1, mp);
        const float c2 = means[6 * plane + i] - mul_rn(m2, mp);
        const float a00 = (means[7 * plane + i] - mul_rn(m0, m0)) + eps;
        const float a01 = means[8 * plane + i] - mul_rn(m0, m1);
        const float a02 = means[9 * plane + i] - mul_rn(m0, m2);
        const float a11 = (means[10 * plane + i] - mul_rn(m1, m1)) + eps;
        const float a12 = means[11 * plane + i] - mul_rn(m1, m2);
        const float a22 = (means[12 * plane + i] - mul_rn(m2, m2)) + eps;
        // cofactors of the symmetric matrix; inverse = cofactors / det
        const float k00 = mul_rn(a11, a22) - mul_rn(a12, a12);
        const float k01 = mul_rn(a02, a12) - mul_rn(a01, a22);
        const float k02 = mul_rn(a01, a12) - mul_rn(a02, a11);
        const float k11 = mul_rn(a00, a22) - mul_rn(a02, a02);
        const float k12 = mul_rn(a01, a02) - mul_rn(a00, a12);
        const float k22 = mul_rn(a00, a11) - mul_rn(a01, a01);
        const float det = (mul_rn(a00, k00) + mul_rn(a01, k01)) + mul_rn(a02, k02);
        const float e0 = (mul_rn(k00, c0) + mul_rn(k01, c1)) + mul_rn(k02, c2);
        const float e1 = (mul_rn(k01, c0) + mul_rn(k11, c1)) + mul_rn(k12, c2);
        const float e2 = (mul_rn(k02, c0) + mul_rn(k12, c1)) + mul_rn(k22, c2);
        const float a0 = e0 / det, a1 = e1 / det, a2 = e2 / det;
        coefficients[i] = a0;
        coefficients[plane + i] = a1;
        coefficients[2 * plane + i] = a2;
        coefficients[3 * plane + i] = ((mp - mul_rn(a0, m0)) - mul_rn(a1, m1)) - mul_rn(a2, m2);
    }
}

// out (out_height x out_width) covers region pixels [top, top + out_height) x [left, left + out_width);
// alpha and band have out's shape, coefficient_means (4 planes) and guide (x 3) the region's.
extern "C" __global__ void guided_output(const float* coefficient_means, const float* guide, const float* alpha,
                                         const unsigned char* band, float* out, long long height, long long width,
                                         long long top, long long left, long long out_height, long long out_width) {
    const long long x = global_x();
    if (x >= out_width) return;
    const long long plane = height * width;
    for (long long y = blockIdx.y; y < out_height; y += gridDim.y) {
        const long long o = y * out_width + x;
        if (!band[o]) {
            out[o] = alpha[o];
            continue;
        }
        const long long i = (top + y) * width + (left + x);
        const float i0 = guide[3 * i] - 0.5f, i1 = guide[3 * i + 1] - 0.5f, i2 = guide[3 * i + 2] - 0.5f;
        const float q = ((mul_rn(coefficient_means[i], i0) + mul_rn(coefficient_means[plane + i], i1)) +
                         mul_rn(coefficient_means[2 * plane + i], i2)) + coefficient_means[3 * plane + i];
        out[o] = fminf(fmaxf(q, 0.0f), 1.0f);
    }
}
