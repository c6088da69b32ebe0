/* The CUDA twin of norm.c: batch norm. Same signatures with `_cuda`, same semantics (the
 * CPU file is the definition). */
#include "ops/kernels.cuh"
#include "ops/check.h" /* after kernels.cuh: its C headers are already extern "C" there */

/* ---- batch norm ------------------------------------------------------------------------
 * One pass for the statistics: sum x and sum x^2 in double (exact products, a 53-bit
 * mantissa leaves ample room for the cancellation in E[x^2] - E[x]^2 at activation
 * scales), then one per-channel kernel for mean / invstd / running statistics. */

__global__ static void bn_apply_k(float *out, const float *in, const float *mean,
                                  const float *invstd, const float *gamma, const float *beta,
                                  int64_t total, int c) {
    GLAE_FOR(i, total) {
        const int j = (int)(i % c);
        const float scale = gamma ? (float)((double)gamma[j] * invstd[j]) : invstd[j];
        out[i] = (in[i] - mean[j]) * scale + (beta ? beta[j] : 0.0f);
    }
}

/* four channels per thread (C % 4 == 0, 16-byte aligned: the backbone's layers): one
 * 128-bit load and store, one channel index per four elements */
__global__ static void bn_apply4_k(float4 *out, const float4 *in, const float *mean,
                                   const float *invstd, const float *gamma, const float *beta,
                                   int64_t total4, int c) {
    GLAE_FOR(v, total4) {
        const int j = (int)((v * 4) % c);
        const float4 x = in[v];
        float r[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int t = 0; t < 4; t++) {
            const float scale = gamma ? (float)((double)gamma[j + t] * invstd[j + t]) : invstd[j + t];
            r[t] = (r[t] - mean[j + t]) * scale + (beta ? beta[j + t] : 0.0f);
        }
        out[v] = make_float4(r[0], r[1], r[2], r[3]);
    }
}

extern "C" int glae_batchnorm_forward_cuda(glae_ctx *ctx, float *out, float *save_mean,
                                           float *save_invstd, const float *in,
                                           const float *gamma, const float *beta,
                                           float *running_mean, float *running_var, int64_t rows,
                                           int c, float momentum, float eps, int training) {
    const char *fn = "batchnorm_forward_cuda";
    GLAE_STREAM(ctx, fn, st);
    GLAE_TRY(glae_check_batchnorm(fn, rows, c, momentum, eps, training, running_mean, running_var));
    if (c == 0) return GLAE_OK;
    double *part = NULL;
    int nch = 0;
    if (training) {
        GLAE_TRY(glae_cuda_workspace(ctx, glae_col_bytes(rows, c), (void **)&part));
        GLAE_TRY(glae_colsum(st, part, &nch, in, NULL, NULL, rows, c, GLAE_COL_X_X2));
    }
    GLAE_TRY(glae_bn_stats(st, save_mean, save_invstd, running_mean, running_var, part, nch, c,
                           rows, momentum, eps));
    const int64_t total = rows * c;
    if (total == 0) return GLAE_OK;
    if (c % 4 == 0 && glae_aligned16(out) && glae_aligned16(in))
        bn_apply4_k<<<glae_grid(total / 4), GLAE_BLOCK, 0, st>>>(
            (float4 *)out, (const float4 *)in, save_mean, save_invstd, gamma, beta, total / 4, c);
    else
        bn_apply_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, in, save_mean, save_invstd, gamma,
                                                            beta, total, c);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

__global__ static void bn_bwd_apply_k(float *din, const float *dout, const float *in,
                                      const float *mean, const float *coef, int64_t total, int c) {
    GLAE_FOR(i, total) {
        const int j = (int)(i % c);
        din[i] = dout[i] * coef[3 * j] + ((in[i] - mean[j]) * coef[3 * j + 1] + coef[3 * j + 2]);
    }
}

__global__ static void bn_bwd_apply4_k(float4 *din, const float4 *dout, const float4 *in,
                                       const float *mean, const float *coef, int64_t total4,
                                       int c) {
    GLAE_FOR(v, total4) {
        const int j = (int)((v * 4) % c);
        const float4 d4 = dout[v], x4 = in[v];
        const float d[4] = {d4.x, d4.y, d4.z, d4.w}, x[4] = {x4.x, x4.y, x4.z, x4.w};
        float r[4];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            const int k = j + t;
            r[t] = d[t] * coef[3 * k] + ((x[t] - mean[k]) * coef[3 * k + 1] + coef[3 * k + 2]);
        }
        din[v] = make_float4(r[0], r[1], r[2], r[3]);
    }
}

extern "C" int glae_batchnorm_backward_cuda(glae_ctx *ctx, float *din, float *dgamma,
                                            float *dbeta, const float *dout, const float *in,
                                            const float *save_mean, const float *save_invstd,
                                            const float *gamma, int64_t rows, int c, int training) {
    const char *fn = "batchnorm_backward_cuda";
    GLAE_STREAM(ctx, fn, st);
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (rows %lld, c %d)", fn, (long long)rows, c);
    if (c == 0 || rows == 0 || (!din && !dgamma && !dbeta)) return GLAE_OK;
    const size_t pbytes = glae_align256(glae_col_bytes(rows, c));
    char *ws;
    GLAE_TRY(glae_cuda_workspace(ctx, pbytes + (size_t)c * 3 * sizeof(float), (void **)&ws));
    double *part = (double *)ws;
    float *coef = (float *)(ws + pbytes);
    int nch;
    GLAE_TRY(glae_colsum(st, part, &nch, in, dout, save_mean, rows, c, GLAE_COL_DY_DYX));
    glae_bn_bwd_coef_k<<<(c + 255) / 256, 256, 0, st>>>(coef, dgamma, dbeta, part, nch, c, rows,
                                                   save_invstd, gamma, training);
    GLAE_LAUNCHED();
    if (din) {
        if (c % 4 == 0 && glae_aligned16(din) && glae_aligned16(dout) && glae_aligned16(in))
            bn_bwd_apply4_k<<<glae_grid(rows * c / 4), GLAE_BLOCK, 0, st>>>(
                (float4 *)din, (const float4 *)dout, (const float4 *)in, save_mean, coef,
                rows * c / 4, c);
        else
            bn_bwd_apply_k<<<glae_grid(rows * c), GLAE_BLOCK, 0, st>>>(din, dout, in, save_mean,
                                                                       coef, rows * c, c);
        GLAE_LAUNCHED();
    }
    return GLAE_OK;
}

/* ---- ghost batch norm: the plain twin on each group of rows (norm.c) ------------------- */

extern "C" int glae_batchnorm_ghost_forward_cuda(glae_ctx *ctx, float *out, float *save_mean,
                                                 float *save_invstd, const float *in,
                                                 const float *gamma, const float *beta,
                                                 float *running_mean, float *running_var,
                                                 int64_t rows, int c, int64_t group_rows,
                                                 float momentum, float eps, int training) {
    const char *fn = "batchnorm_ghost_forward_cuda";
    GLAE_TRY(glae_check_batchnorm(fn, rows, c, momentum, eps, training, running_mean, running_var));
    GLAE_TRY(glae_check_ghost(fn, rows, group_rows, training));
    for (int64_t r0 = 0, g = 0; r0 < rows; r0 += group_rows, g++) {
        const int64_t m = rows - r0 < group_rows ? rows - r0 : group_rows;
        const int feed = g == 0 || !training;
        GLAE_TRY(glae_batchnorm_forward_cuda(ctx, out + r0 * c, save_mean + g * c,
                                             save_invstd + g * c, in + r0 * c, gamma, beta,
                                             feed ? running_mean : NULL, feed ? running_var : NULL,
                                             m, c, momentum, eps, training));
    }
    return GLAE_OK;
}

extern "C" int glae_batchnorm_ghost_backward_cuda(glae_ctx *ctx, float *din, float *dgamma,
                                                  float *dbeta, const float *dout,
                                                  const float *in, const float *save_mean,
                                                  const float *save_invstd, const float *gamma,
                                                  int64_t rows, int c, int64_t group_rows,
                                                  int training) {
    const char *fn = "batchnorm_ghost_backward_cuda";
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (rows %lld, c %d)", fn, (long long)rows, c);
    GLAE_TRY(glae_check_ghost(fn, rows, group_rows, 0));
    for (int64_t r0 = 0, g = 0; r0 < rows; r0 += group_rows, g++) {
        const int64_t m = rows - r0 < group_rows ? rows - r0 : group_rows;
        GLAE_TRY(glae_batchnorm_backward_cuda(ctx, din ? din + r0 * c : NULL, dgamma, dbeta,
                                              dout + r0 * c, in + r0 * c, save_mean + g * c,
                                              save_invstd + g * c, gamma, m, c, training));
    }
    return GLAE_OK;
}
