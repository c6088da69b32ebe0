/* CUDA twins of ops/util.c: fill, the NCHW flatten permutation, the flip average. */
#include "kernels.cuh"

__global__ static void fill_k(float *out, float v, int64_t n) {
    GLAE_FOR(i, n) out[i] = v;
}

extern "C" int glae_fill_cuda(glae_ctx *ctx, float *out, float value, int64_t n) {
    GLAE_STREAM(ctx, "fill_cuda", st);
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "fill_cuda: negative size %lld", (long long)n);
    if (n == 0) return GLAE_OK;
    fill_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(out, value, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* one thread per element, indexed by the NCHW (destination of the forward) position:
 * to_nchw gathers from NHWC, from_nchw scatters back; both write every element once */
__global__ static void flatten_k(float *dst, const float *src, int64_t total, int64_t p, int c,
                                 int to_nchw) {
    GLAE_FOR(t, total) {
        const int64_t q = t % p, k = (t / p) % c, i = t / (p * c);
        const int64_t nhwc = (i * p + q) * c + k;
        if (to_nchw) dst[t] = src[nhwc];
        else dst[nhwc] = src[t];
    }
}

static int flatten_launch(glae_ctx *ctx, const char *fn, float *dst, const float *src, int n,
                          int64_t p, int c, int to_nchw) {
    GLAE_STREAM(ctx, fn, st);
    if (n < 0 || p < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (%d, %lld, %d)", fn, n, (long long)p, c);
    const int64_t total = (int64_t)n * p * c;
    if (total == 0) return GLAE_OK;
    flatten_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(dst, src, total, p, c, to_nchw);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_flatten_nchw_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n,
                                              int64_t p, int c) {
    return flatten_launch(ctx, "flatten_nchw_forward_cuda", out, in, n, p, c, 1);
}

extern "C" int glae_flatten_nchw_backward_cuda(glae_ctx *ctx, float *din, const float *dout, int n,
                                               int64_t p, int c) {
    return flatten_launch(ctx, "flatten_nchw_backward_cuda", din, dout, n, p, c, 0);
}

__global__ static void avg2_k(float *out, const float *a, const float *b, int64_t n) {
    GLAE_FOR(i, n) out[i] = 0.5f * (a[i] + b[i]);
}

extern "C" int glae_avg2_forward_cuda(glae_ctx *ctx, float *out, const float *a, const float *b,
                                      int64_t n) {
    GLAE_STREAM(ctx, "avg2_forward_cuda", st);
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "avg2_forward_cuda: negative size %lld", (long long)n);
    if (n == 0) return GLAE_OK;
    avg2_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(out, a, b, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}
