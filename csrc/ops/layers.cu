/* CUDA twins of the CPU layers in act.c, norm.c, pool.c, linear.c, shuffle.c, softmax.c
 * and prelu.c: same signatures with `_cuda`, same semantics (the CPU file is the
 * definition). Reductions accumulate in double like the CPU ones; sums are added in a
 * fixed order, so results do not depend on scheduling. */
#include <cublas_v2.h>

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
    GLAE_TRY(glae_bn_check(fn, rows, c, momentum, eps, training, running_mean, running_var));
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

/* ---- pooling ------------------------------------------------------------------------- */

static int pool_check(const glae_pool_shape *s, const char *fn) {
    glae_pool_shape t;
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    GLAE_TRY(glae_pool_shape_init(&t, s->n, s->h, s->w, s->c, s->k, s->stride, s->pad, s->ceil_mode));
    if (t.oh != s->oh || t.ow != s->ow)
        return glae_fail(GLAE_ERR_VALUE, "%s: shape not initialised by glae_pool_shape_init", fn);
    return GLAE_OK;
}

/* one thread per output element (n, oy, ox, c): consecutive threads read consecutive c */
template <typename T>
__global__ static void maxpool_fwd_k(T *out, int32_t *argmax, const T *in, glae_pool_shape s,
                                     int64_t total) {
    GLAE_FOR(i, total) {
        const int ch = (int)(i % s.c);
        int64_t t = i / s.c;
        const int ox = (int)(t % s.ow);
        t /= s.ow;
        const int oy = (int)(t % s.oh);
        const int64_t n = t / s.oh;
        int y0 = oy * s.stride - s.pad, y1 = y0 + s.k, x0 = ox * s.stride - s.pad, x1 = x0 + s.k;
        y0 = y0 < 0 ? 0 : y0;
        y1 = y1 > s.h ? s.h : y1;
        x0 = x0 < 0 ? 0 : x0;
        x1 = x1 > s.w ? s.w : x1;
        const T *img = in + n * s.h * s.w * s.c + ch;
        float best = -INFINITY;
        int32_t arg = y0 * s.w + x0; /* padding is -inf: the first real element */
        for (int y = y0; y < y1; y++)
            for (int x = x0; x < x1; x++) {
                const float v = (float)img[((int64_t)y * s.w + x) * s.c];
                if (v > best || isnan(v)) { /* first of tied maxima; NaN wins (PyTorch) */
                    best = v;
                    arg = y * s.w + x;
                }
            }
        out[i] = (T)best; /* exact for bf16: best is one of the inputs */
        argmax[i] = arg;
    }
}

/* gather form of the backward (no atomics, fixed order): each input element sums dout
 * over the windows that contain it and chose it */
template <typename T>
__global__ static void maxpool_bwd_k(T *din, const T *dout, const int32_t *argmax,
                                     glae_pool_shape s, int64_t total) {
    GLAE_FOR(i, total) {
        const int ch = (int)(i % s.c);
        int64_t t = i / s.c;
        const int x = (int)(t % s.w);
        t /= s.w;
        const int y = (int)(t % s.h);
        const int64_t n = t / s.h;
        const int32_t me = y * s.w + x;
        /* windows oy with oy*stride - pad <= y < oy*stride - pad + k */
        int oy0 = y + s.pad - s.k + 1;
        oy0 = oy0 <= 0 ? 0 : (oy0 + s.stride - 1) / s.stride;
        int oy1 = (y + s.pad) / s.stride;
        oy1 = oy1 >= s.oh ? s.oh - 1 : oy1;
        int ox0 = x + s.pad - s.k + 1;
        ox0 = ox0 <= 0 ? 0 : (ox0 + s.stride - 1) / s.stride;
        int ox1 = (x + s.pad) / s.stride;
        ox1 = ox1 >= s.ow ? s.ow - 1 : ox1;
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++) {
                const int64_t o = ((n * s.oh + oy) * s.ow + ox) * s.c + ch;
                if (argmax[o] == me) acc += (float)dout[o];
            }
        din[i] = (T)acc;
    }
}

extern "C" int glae_maxpool2d_forward_cuda(glae_ctx *ctx, float *out, int32_t *argmax,
                                           const float *in, const glae_pool_shape *s) {
    GLAE_STREAM(ctx, "maxpool2d_forward_cuda", st);
    GLAE_TRY(pool_check(s, "maxpool2d_forward_cuda"));
    const int64_t total = (int64_t)s->n * s->oh * s->ow * s->c;
    if (total == 0) return GLAE_OK;
    maxpool_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, argmax, in, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_maxpool2d_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                            const int32_t *argmax, const glae_pool_shape *s) {
    GLAE_STREAM(ctx, "maxpool2d_backward_cuda", st);
    GLAE_TRY(pool_check(s, "maxpool2d_backward_cuda"));
    const int64_t total = (int64_t)s->n * s->h * s->w * s->c;
    if (total == 0) return GLAE_OK;
    maxpool_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(din, dout, argmax, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* bf16 activations (ops.h, mixed precision): the same kernels on __nv_bfloat16 */
extern "C" int glae_maxpool2d_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, int32_t *argmax,
                                                const glae_bf16 *in, const glae_pool_shape *s) {
    GLAE_STREAM(ctx, "maxpool2d_forward_bf16_cuda", st);
    GLAE_TRY(pool_check(s, "maxpool2d_forward_bf16_cuda"));
    const int64_t total = (int64_t)s->n * s->oh * s->ow * s->c;
    if (total == 0) return GLAE_OK;
    maxpool_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(
        (__nv_bfloat16 *)out, argmax, (const __nv_bfloat16 *)in, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_maxpool2d_backward_bf16_cuda(glae_ctx *ctx, glae_bf16 *din,
                                                 const glae_bf16 *dout, const int32_t *argmax,
                                                 const glae_pool_shape *s) {
    GLAE_STREAM(ctx, "maxpool2d_backward_bf16_cuda", st);
    GLAE_TRY(pool_check(s, "maxpool2d_backward_bf16_cuda"));
    const int64_t total = (int64_t)s->n * s->h * s->w * s->c;
    if (total == 0) return GLAE_OK;
    maxpool_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(
        (__nv_bfloat16 *)din, (const __nv_bfloat16 *)dout, argmax, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

__global__ static void avgpool_fwd_k(float *out, const float *in, int n, int hw, int c) {
    GLAE_FOR(i, (int64_t)n * c) {
        const int64_t img = i / c;
        const int j = (int)(i % c);
        const float *x = in + img * hw * c + j;
        double acc = 0.0;
        for (int p = 0; p < hw; p++) acc += x[(int64_t)p * c];
        out[i] = (float)(acc / hw);
    }
}
__global__ static void avgpool_bwd_k(float *din, const float *dout, int64_t total, int hw, int c,
                                     float fhw) {
    GLAE_FOR(i, total) {
        const int j = (int)(i % c);
        const int64_t img = i / ((int64_t)hw * c);
        din[i] = dout[img * c + j] / fhw; /* PyTorch divides */
    }
}

extern "C" int glae_avgpool_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n, int hw,
                                         int c) {
    GLAE_STREAM(ctx, "avgpool_forward_cuda", st);
    if (n < 0 || hw < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "avgpool_forward_cuda: negative size (%d, %d, %d)", n, hw, c);
    if (hw == 0 && (int64_t)n * c > 0)
        return glae_fail(GLAE_ERR_VALUE, "avgpool_forward_cuda: cannot average over zero positions");
    if ((int64_t)n * c == 0) return GLAE_OK;
    avgpool_fwd_k<<<glae_grid((int64_t)n * c), GLAE_BLOCK, 0, st>>>(out, in, n, hw, c);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_avgpool_backward_cuda(glae_ctx *ctx, float *din, const float *dout, int n,
                                          int hw, int c) {
    GLAE_STREAM(ctx, "avgpool_backward_cuda", st);
    if (n < 0 || hw < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "avgpool_backward_cuda: negative size (%d, %d, %d)", n, hw, c);
    const int64_t total = (int64_t)n * hw * c;
    if (total == 0) return GLAE_OK;
    avgpool_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(din, dout, total, hw, c, (float)hw);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* ---- linear (cuBLAS, row-major through the column-major transpose identity) ------------
 * A row-major (m x n) matrix is the column-major (n x m) one, so C = A B^T becomes
 * C^T = B A^T in cuBLAS terms: no copies, only swapped operands. */

/* The GEMMs are the heads', which run in float32 under bf16 mixed precision too
 * (docs/precision.md, like the CPU definition): only TF32 mode lets them use tensor cores. */
static cublasComputeType_t gemm_compute(const glae_cuda_ctx *c) {
    return c->math == GLAE_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

/* column-major C (m x n) = alpha op(A) op(B) + beta C, all float32 */
static int gemm(glae_cuda_ctx *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                const float *a, int lda, const float *b, int ldb, float beta, float *cm, int ldc) {
    const float alpha = 1.0f;
    GLAE_CUBLAS_CHECK(cublasGemmEx(c->cublas, ta, tb, m, n, k, &alpha, a, CUDA_R_32F, lda, b,
                                   CUDA_R_32F, ldb, &beta, cm, CUDA_R_32F, ldc, gemm_compute(c),
                                   CUBLAS_GEMM_DEFAULT));
    return GLAE_OK;
}

__global__ static void fill_rows_k(float *out, const float *bias, int64_t total, int c) {
    GLAE_FOR(i, total) out[i] = bias ? bias[i % c] : 0.0f;
}

static int linear_sizes(const char *fn, int n, int in_f, int out_f) {
    if (n < 0 || in_f < 0 || out_f < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (n %d, in %d, out %d)", fn, n, in_f, out_f);
    return GLAE_OK;
}

extern "C" int glae_linear_forward_cuda(glae_ctx *ctx, float *out, const float *in,
                                        const float *weight, const float *bias, int n, int in_f,
                                        int out_f) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "linear_forward_cuda");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(linear_sizes("linear_forward_cuda", n, in_f, out_f));
    if (n == 0 || out_f == 0) return GLAE_OK;
    const int64_t total = (int64_t)n * out_f;
    fill_rows_k<<<glae_grid(total), GLAE_BLOCK, 0, c->stream>>>(out, bias, total, out_f);
    GLAE_LAUNCHED();
    if (in_f == 0) return GLAE_OK;
    /* out^T (OUT x N) = W (OUT x IN) in^T (IN x N) + out^T */
    return gemm(c, CUBLAS_OP_T, CUBLAS_OP_N, out_f, n, in_f, weight, in_f, in, in_f, 1.0f, out, out_f);
}

extern "C" int glae_linear_backward_cuda(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                                         const float *dout, const float *in, const float *weight,
                                         int n, int in_f, int out_f) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "linear_backward_cuda");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(linear_sizes("linear_backward_cuda", n, in_f, out_f));
    if (din && n > 0 && in_f > 0) {
        if (out_f == 0)
            GLAE_CUDA_CHECK(cudaMemsetAsync(din, 0, sizeof(float) * (size_t)n * in_f, c->stream));
        else /* din^T (IN x N) = W^T (IN x OUT) dout^T (OUT x N) */
            GLAE_TRY(gemm(c, CUBLAS_OP_N, CUBLAS_OP_N, in_f, n, out_f, weight, in_f, dout, out_f,
                          0.0f, din, in_f));
    }
    if (dweight && n > 0 && in_f > 0 && out_f > 0) /* dW^T (IN x OUT) += in^T (IN x N) dout (N x OUT) */
        GLAE_TRY(gemm(c, CUBLAS_OP_N, CUBLAS_OP_T, in_f, out_f, n, in, in_f, dout, out_f, 1.0f,
                      dweight, in_f));
    if (dbias && n > 0 && out_f > 0) {
        double *part;
        int nch;
        GLAE_TRY(glae_cuda_workspace(ctx, glae_col_bytes(n, out_f), (void **)&part));
        GLAE_TRY(glae_colsum(c->stream, part, &nch, dout, NULL, NULL, n, out_f, GLAE_COL_SUM));
        glae_col_add_kernel<<<(out_f + 255) / 256, 256, 0, c->stream>>>(dbias, part, nch, out_f);
        GLAE_LAUNCHED();
    }
    return GLAE_OK;
}

/* ---- pixel shuffle (PyTorch order, NHWC storage; see shuffle.c) ------------------------ */

/* out (N, H r, W r, C) <- in (N, H, W, C r^2): one thread per output element */
__global__ static void shuffle_fwd_k(float *out, const float *in, int64_t total, int h, int w,
                                     int c, int r) {
    const int ow = w * r, oh = h * r, cin = c * r * r;
    GLAE_FOR(o, total) {
        const int k = (int)(o % c);
        int64_t t = o / c;
        const int X = (int)(t % ow);
        t /= ow;
        const int Y = (int)(t % oh);
        const int64_t n = t / oh;
        const int y = Y / r, i = Y % r, x = X / r, j = X % r;
        out[o] = in[((n * h + y) * w + x) * cin + (int64_t)k * r * r + i * r + j];
    }
}
/* din (N, H, W, C r^2) <- dout (N, H r, W r, C): one thread per input element */
__global__ static void shuffle_bwd_k(float *din, const float *dout, int64_t total, int h, int w,
                                     int c, int r) {
    const int ow = w * r, cin = c * r * r;
    GLAE_FOR(q, total) {
        const int ci = (int)(q % cin);
        int64_t t = q / cin;
        const int x = (int)(t % w);
        t /= w;
        const int y = (int)(t % h);
        const int64_t n = t / h;
        const int k = ci / (r * r), i = (ci / r) % r, j = ci % r;
        din[q] = dout[((n * h * r + (int64_t)y * r + i) * ow + (int64_t)x * r + j) * c + k];
    }
}

static int shuffle_sizes(const char *fn, int n, int h, int w, int c_in, int r) {
    if (n < 0 || h < 0 || w < 0 || c_in < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (%d, %d, %d, %d)", fn, n, h, w, c_in);
    if (r < 1) return glae_fail(GLAE_ERR_VALUE, "%s: upscale factor must be >= 1, got %d", fn, r);
    if (c_in % (r * r) != 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: channels %d not divisible by r*r = %d", fn, c_in, r * r);
    return GLAE_OK;
}

extern "C" int glae_pixel_shuffle_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n,
                                               int h, int w, int c_in, int r) {
    GLAE_STREAM(ctx, "pixel_shuffle_forward_cuda", st);
    GLAE_TRY(shuffle_sizes("pixel_shuffle_forward_cuda", n, h, w, c_in, r));
    const int64_t total = (int64_t)n * h * w * c_in;
    if (total == 0) return GLAE_OK;
    shuffle_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, in, total, h, w, c_in / (r * r), r);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_pixel_shuffle_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                                int n, int h, int w, int c_in, int r) {
    GLAE_STREAM(ctx, "pixel_shuffle_backward_cuda", st);
    GLAE_TRY(shuffle_sizes("pixel_shuffle_backward_cuda", n, h, w, c_in, r));
    const int64_t total = (int64_t)n * h * w * c_in;
    if (total == 0) return GLAE_OK;
    shuffle_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(din, dout, total, h, w, c_in / (r * r), r);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

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
