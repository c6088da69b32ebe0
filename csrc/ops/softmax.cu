/* The CUDA twin of softmax.c: softmax and log-softmax. Same signatures with `_cuda`, same
 * semantics (the CPU file is the definition). */
#include "ops/kernels.cuh"

/* ---- softmax / log-softmax: one warp per row, exp and sums in double ------------------- */

/* the row maximum like softmax.c's row_max: NaN wins */
__device__ static float row_max(const float *x, int k) {
    float m = -INFINITY;
    int nan = 0;
    for (int j = threadIdx.x; j < k; j += 32) {
        nan |= isnan(x[j]);
        m = fmaxf(m, x[j]);
    }
    m = glae_warp_max(m);
    return __any_sync(0xffffffffu, nan) ? NAN : m;
}

__global__ static void softmax_fwd_k(float *out, const float *in, int64_t rows, int k, int logsm) {
    GLAE_FOR_ROWS(r, rows) {
        const float *x = in + r * k;
        float *y = out + r * k;
        const float m = row_max(x, k);
        const float shift = isinf(m) && m < 0 ? 0.0f : m; /* all -inf row: NaN like PyTorch */
        double s = 0.0;
        if (logsm) {
            for (int j = threadIdx.x; j < k; j += 32) s += exp((double)x[j] - shift);
            const double lse = shift + log(glae_warp_sum(s));
            for (int j = threadIdx.x; j < k; j += 32) y[j] = (float)((double)x[j] - lse);
        } else {
            for (int j = threadIdx.x; j < k; j += 32) {
                const float e = (float)exp((double)(x[j] - shift));
                y[j] = e;
                s += e;
            }
            const double inv = 1.0 / glae_warp_sum(s);
            for (int j = threadIdx.x; j < k; j += 32) y[j] = (float)(y[j] * inv);
        }
    }
}

__global__ static void softmax_bwd_k(float *din, const float *dout, const float *out, int64_t rows,
                                     int k, int logsm) {
    GLAE_FOR_ROWS(r, rows) {
        const float *g = dout + r * k, *y = out + r * k;
        float *d = din + r * k;
        double s = 0.0;
        for (int j = threadIdx.x; j < k; j += 32) s += logsm ? (double)g[j] : (double)g[j] * y[j];
        s = glae_warp_sum(s);
        for (int j = threadIdx.x; j < k; j += 32)
            d[j] = logsm ? (float)(g[j] - exp((double)y[j]) * s) : (float)(y[j] * (g[j] - s));
    }
}

static int softmax_launch(glae_ctx *ctx, const char *fn, float *a, const float *b, const float *cc,
                          int64_t rows, int k, int logsm, int bwd) {
    GLAE_STREAM(ctx, fn, st);
    if (rows < 0 || k < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (rows %lld, k %d)", fn, (long long)rows, k);
    if (rows == 0 || k == 0) return GLAE_OK;
    dim3 block(32, 8);
    if (bwd) softmax_bwd_k<<<glae_warp_grid(rows), block, 0, st>>>(a, b, cc, rows, k, logsm);
    else softmax_fwd_k<<<glae_warp_grid(rows), block, 0, st>>>(a, b, rows, k, logsm);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_softmax_forward_cuda(glae_ctx *ctx, float *out, const float *in, int64_t rows,
                                         int k) {
    return softmax_launch(ctx, "softmax_forward_cuda", out, in, NULL, rows, k, 0, 0);
}
extern "C" int glae_softmax_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                          const float *out, int64_t rows, int k) {
    return softmax_launch(ctx, "softmax_backward_cuda", din, dout, out, rows, k, 0, 1);
}
extern "C" int glae_log_softmax_forward_cuda(glae_ctx *ctx, float *out, const float *in,
                                             int64_t rows, int k) {
    return softmax_launch(ctx, "log_softmax_forward_cuda", out, in, NULL, rows, k, 1, 0);
}
extern "C" int glae_log_softmax_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                              const float *out, int64_t rows, int k) {
    return softmax_launch(ctx, "log_softmax_backward_cuda", din, dout, out, rows, k, 1, 1);
}
