/* The CUDA twin of prelu.c: PReLU. Same signatures with `_cuda`, same semantics (the CPU
 * file is the definition). */
#include "ops/kernels.cuh"

/* ---- PReLU --------------------------------------------------------------------------- */

__global__ static void prelu_fwd_k(float *out, const float *in, const float *wt, int64_t total,
                                   int c) {
    GLAE_FOR(i, total) {
        const float x = in[i];
        out[i] = x > 0.0f ? x : wt[i % c] * x;
    }
}
__global__ static void prelu_bwd_k(float *din, const float *dout, const float *in,
                                   const float *wt, int64_t total, int c) {
    GLAE_FOR(i, total) din[i] = in[i] > 0.0f ? dout[i] : wt[i % c] * dout[i];
}

extern "C" int glae_prelu_forward_cuda(glae_ctx *ctx, float *out, const float *in,
                                       const float *weight, int64_t rows, int c) {
    GLAE_STREAM(ctx, "prelu_forward_cuda", st);
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "prelu_forward_cuda: negative size (rows %lld, c %d)",
                         (long long)rows, c);
    const int64_t total = rows * c;
    if (total == 0) return GLAE_OK;
    prelu_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, in, weight, total, c);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_prelu_backward_cuda(glae_ctx *ctx, float *din, float *dweight,
                                        const float *dout, const float *in, const float *weight,
                                        int64_t rows, int c) {
    GLAE_STREAM(ctx, "prelu_backward_cuda", st);
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "prelu_backward_cuda: negative size (rows %lld, c %d)",
                         (long long)rows, c);
    const int64_t total = rows * c;
    if (total == 0) return GLAE_OK;
    if (din) {
        prelu_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(din, dout, in, weight, total, c);
        GLAE_LAUNCHED();
    }
    if (dweight) {
        double *part;
        int nch;
        GLAE_TRY(glae_cuda_workspace(ctx, glae_col_bytes(rows, c), (void **)&part));
        GLAE_TRY(glae_colsum(st, part, &nch, in, dout, NULL, rows, c, GLAE_COL_PRELU));
        glae_col_add_kernel<<<(c + 255) / 256, 256, 0, st>>>(dweight, part, nch, c);
        GLAE_LAUNCHED();
    }
    return GLAE_OK;
}
