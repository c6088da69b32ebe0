/* CUDA twins of ops/util.c: fill, the NCHW flatten permutation, the flip average. */
#include "ops/kernels.cuh"

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

/* __fmul_rn/__fadd_rn: no FMA contraction (nvcc contracts by default), so the result is
 * the CPU's bit for bit */
__global__ static void normalise_u8_k(float *out, const uint8_t *in, int64_t n, float s0, float s1,
                                      float s2, float o0, float o1, float o2) {
    GLAE_FOR(i, n) {
        const int c = (int)(i % 3);
        const float sc = c == 0 ? s0 : c == 1 ? s1 : s2, off = c == 0 ? o0 : c == 1 ? o1 : o2;
        out[i] = __fadd_rn(__fmul_rn((float)in[i], sc), off);
    }
}

extern "C" int glae_normalise_u8_cuda(glae_ctx *ctx, float *out, const uint8_t *in, int64_t n,
                                      int norm) {
    GLAE_STREAM(ctx, "normalise_u8_cuda", st);
    if (n < 0 || n % 3)
        return glae_fail(GLAE_ERR_VALUE, "normalise_u8_cuda: %lld values is not a whole number of RGB pixels",
                         (long long)n);
    float sc[3], off[3];
    GLAE_TRY(glae_norm_coeffs(norm, sc, off));
    if (n == 0) return GLAE_OK;
    normalise_u8_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(out, in, n, sc[0], sc[1], sc[2], off[0],
                                                         off[1], off[2]);
    GLAE_LAUNCHED();
    return GLAE_OK;
}
