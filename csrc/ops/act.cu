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
