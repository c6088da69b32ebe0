/* The CUDA twin of act.c: element-wise ReLU, add, horizontal flip. Same signatures with
 * `_cuda`, same semantics (the CPU file is the definition). */
#include "ops/kernels.cuh"

#define CHECK_N(n, fn)                                                                       \
    do {                                                                                     \
        if ((n) < 0) return glae_fail(GLAE_ERR_VALUE, fn ": negative size %lld", (long long)(n)); \
    } while (0)

/* ---- element-wise ------------------------------------------------------------------ */

__global__ static void relu_fwd_k(float *out, const float *in, int64_t n) {
    GLAE_FOR(i, n) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}
__global__ static void relu_bwd_k(float *din, const float *dout, const float *out, int64_t n) {
    GLAE_FOR(i, n) din[i] = out[i] > 0.0f ? dout[i] : 0.0f;
}
__global__ static void add_k(float *out, const float *a, const float *b, int64_t n) {
    GLAE_FOR(i, n) out[i] = a[i] + b[i];
}

extern "C" int glae_relu_forward_cuda(glae_ctx *ctx, float *out, const float *in, int64_t n) {
    GLAE_STREAM(ctx, "relu_forward_cuda", st);
    CHECK_N(n, "relu_forward_cuda");
    if (n == 0) return GLAE_OK;
    relu_fwd_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(out, in, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_relu_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                       const float *out, int64_t n) {
    GLAE_STREAM(ctx, "relu_backward_cuda", st);
    CHECK_N(n, "relu_backward_cuda");
    if (n == 0) return GLAE_OK;
    relu_bwd_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(din, dout, out, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_add_forward_cuda(glae_ctx *ctx, float *out, const float *a, const float *b,
                                     int64_t n) {
    GLAE_STREAM(ctx, "add_forward_cuda", st);
    CHECK_N(n, "add_forward_cuda");
    if (n == 0) return GLAE_OK;
    add_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(out, a, b, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_add_backward_cuda(glae_ctx *ctx, float *da, float *db, const float *dout,
                                      int64_t n) {
    GLAE_STREAM(ctx, "add_backward_cuda", st);
    CHECK_N(n, "add_backward_cuda");
    const size_t bytes = (size_t)n * sizeof(float);
    if (n == 0) return GLAE_OK;
    if (da && da != dout) GLAE_CUDA_CHECK(cudaMemcpyAsync(da, dout, bytes, cudaMemcpyDeviceToDevice, st));
    if (db && db != dout) GLAE_CUDA_CHECK(cudaMemcpyAsync(db, dout, bytes, cudaMemcpyDeviceToDevice, st));
    return GLAE_OK;
}

__global__ static void hflip_k(float *out, const float *in, int64_t total, int w, int c) {
    GLAE_FOR(i, total) {
        const int ch = (int)(i % c);
        const int64_t pix = i / c;
        const int x = (int)(pix % w);
        const int64_t row = pix / w;
        out[i] = in[(row * w + (w - 1 - x)) * c + ch];
    }
}

extern "C" int glae_hflip_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n, int h,
                                       int w, int c) {
    GLAE_STREAM(ctx, "hflip_cuda", st);
    if (n < 0 || h < 0 || w < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "hflip_cuda: negative size (%d, %d, %d, %d)", n, h, w, c);
    if (out == in) return glae_fail(GLAE_ERR_VALUE, "hflip_cuda: out must not alias in");
    const int64_t total = (int64_t)n * h * w * c;
    if (total == 0) return GLAE_OK;
    hflip_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, in, total, w, c);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* ---- SiLU, sigmoid, channel scale (act.c) ------------------------------------------------ */

__global__ static void silu_fwd_k(float *out, const float *in, int64_t n) {
    GLAE_FOR(i, n) out[i] = in[i] / (1.0f + expf(-in[i]));
}
__global__ static void silu_bwd_k(float *din, const float *dout, const float *in, int64_t n) {
    GLAE_FOR(i, n) {
        const float sg = 1.0f / (1.0f + expf(-in[i]));
        din[i] = dout[i] * (sg * (1.0f + in[i] * (1.0f - sg)));
    }
}
__global__ static void sigmoid_fwd_k(float *out, const float *in, int64_t n) {
    GLAE_FOR(i, n) out[i] = 1.0f / (1.0f + expf(-in[i]));
}
__global__ static void sigmoid_bwd_k(float *din, const float *dout, const float *out, int64_t n) {
    GLAE_FOR(i, n) din[i] = dout[i] * (out[i] * (1.0f - out[i]));
}

extern "C" int glae_silu_forward_cuda(glae_ctx *ctx, float *out, const float *in, int64_t n) {
    GLAE_STREAM(ctx, "silu_forward_cuda", st);
    CHECK_N(n, "silu_forward_cuda");
    if (n == 0) return GLAE_OK;
    silu_fwd_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(out, in, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_silu_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                       const float *in, int64_t n) {
    GLAE_STREAM(ctx, "silu_backward_cuda", st);
    CHECK_N(n, "silu_backward_cuda");
    if (n == 0) return GLAE_OK;
    silu_bwd_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(din, dout, in, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_sigmoid_forward_cuda(glae_ctx *ctx, float *out, const float *in, int64_t n) {
    GLAE_STREAM(ctx, "sigmoid_forward_cuda", st);
    CHECK_N(n, "sigmoid_forward_cuda");
    if (n == 0) return GLAE_OK;
    sigmoid_fwd_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(out, in, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_sigmoid_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                          const float *out, int64_t n) {
    GLAE_STREAM(ctx, "sigmoid_backward_cuda", st);
    CHECK_N(n, "sigmoid_backward_cuda");
    if (n == 0) return GLAE_OK;
    sigmoid_bwd_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(din, dout, out, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

__global__ static void chscale_fwd_k(float *out, const float *in, const float *scale,
                                     int64_t hw, int c, int64_t total) {
    GLAE_FOR(i, total) {
        const int64_t img = i / (hw * c);
        out[i] = in[i] * scale[img * c + i % c];
    }
}

/* dscale[img, j]: one warp per (image, channel), lanes over the positions, the lane sums
 * added in the butterfly's fixed order */
__global__ static void chscale_ds_k(float *dscale, const float *dout, const float *in, int n,
                                    int64_t hw, int c) {
    GLAE_FOR_ROWS(r, (int64_t)n * c) {
        const int64_t img = r / c;
        const int j = (int)(r % c);
        const float *g = dout + img * hw * c, *x = in + img * hw * c;
        double acc = 0.0;
        for (int64_t p = threadIdx.x; p < hw; p += 32) acc += (double)g[p * c + j] * x[p * c + j];
        acc = glae_warp_sum(acc);
        if (threadIdx.x == 0) dscale[r] = (float)acc;
    }
}

extern "C" int glae_channel_scale_forward_cuda(glae_ctx *ctx, float *out, const float *in,
                                               const float *scale, int n, int64_t hw, int c) {
    GLAE_STREAM(ctx, "channel_scale_forward_cuda", st);
    if (n < 0 || hw < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "channel_scale_forward_cuda: negative size");
    const int64_t total = (int64_t)n * hw * c;
    if (total == 0) return GLAE_OK;
    chscale_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, in, scale, hw, c, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_channel_scale_backward_cuda(glae_ctx *ctx, float *din, float *dscale,
                                                const float *dout, const float *in,
                                                const float *scale, int n, int64_t hw, int c) {
    GLAE_STREAM(ctx, "channel_scale_backward_cuda", st);
    if (n < 0 || hw < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "channel_scale_backward_cuda: negative size");
    const int64_t total = (int64_t)n * hw * c;
    if (din && total > 0) {
        chscale_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(din, dout, scale, hw, c, total);
        GLAE_LAUNCHED();
    }
    if (dscale && (int64_t)n * c > 0) {
        chscale_ds_k<<<glae_warp_grid((int64_t)n * c), dim3(32, 8), 0, st>>>(dscale, dout, in, n, hw, c);
        GLAE_LAUNCHED();
    }
    return GLAE_OK;
}
