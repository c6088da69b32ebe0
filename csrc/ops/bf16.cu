/* CUDA twins of the mixed-precision layers of bf16.c (ops.h): bf16 activations, float32
 * parameters, float32 math (double for the batch-norm sums), one rounding per output.
 * The conv twins live in conv.cu (cuDNN) and the max-pool ones in pool.cu (the float
 * kernels instantiated for __nv_bfloat16).
 *
 * Batch norm + residual + ReLU is one fused op here (what cuDNN's fused BN-add-ReLU
 * does for NHWC): the forward reads x (and the residual) once for the sums and once for
 * the output, the backward reads dout, out, x twice and writes din and the residual's
 * gradient in the same pass. */
#include "ops/kernels.cuh"
#include "ops/check.h" /* after kernels.cuh: its C headers are already extern "C" there */

typedef __nv_bfloat16 bf;

__device__ __forceinline__ float ld(const bf *p, int64_t i) { return __bfloat162float(p[i]); }

/* Eight channels per thread (C % 8 == 0, 16-byte aligned tensors: every ResNet layer):
 * one 128-bit load per tensor and one channel index per eight elements. */
typedef union {
    uint4 u;
    bf h[8];
} bf8;


/* ---- conversions, add ---------------------------------------------------------------- */

__global__ static void add16_k(bf *out, const bf *a, const bf *b, int64_t n) {
    GLAE_FOR(i, n) out[i] = __float2bfloat16_rn(ld(a, i) + ld(b, i));
}

__global__ static void add16v_k(bf8 *out, const bf8 *a, const bf8 *b, int64_t n8) {
    GLAE_FOR(i, n8) {
        const bf8 x = a[i], y = b[i];
        bf8 o;
#pragma unroll
        for (int t = 0; t < 8; t++)
            o.h[t] = __float2bfloat16_rn(__bfloat162float(x.h[t]) + __bfloat162float(y.h[t]));
        out[i] = o;
    }
}

extern "C" int glae_add_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *a,
                                          const glae_bf16 *b, int64_t n) {
    GLAE_STREAM(ctx, "add_forward_bf16_cuda", st);
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "add_forward_bf16_cuda: negative size %lld", (long long)n);
    if (n == 0) return GLAE_OK;
    if (n % 8 == 0 && glae_aligned16(out) && glae_aligned16(a) && glae_aligned16(b))
        add16v_k<<<glae_grid(n / 8), GLAE_BLOCK, 0, st>>>((bf8 *)out, (const bf8 *)a, (const bf8 *)b, n / 8);
    else
        add16_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>((bf *)out, (const bf *)a, (const bf *)b, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* ---- column sums of bf16 tensors -----------------------------------------------------
 * what 0: q0 = x, q1 = x^2 (forward statistics);
 * what 1: g = relu ? dy [out > 0] : dy; q0 = g, q1 = g (x - mean) (backward).
 * One channel per thread: kernels.cuh's column reduction (GLAE_COL_*_BF16). */

/* The same sums, eight channels per thread (one 128-bit load per tensor and row): blocks
 * of tpr threads along the channels (8 tpr channels) times `lanes` rows, summed over the
 * lanes in a fixed order through shared memory. Same `part` layout. */
__global__ static void colsum16v_k(double *part, const bf8 *x, const bf8 *dy, const bf8 *out,
                                   const float *mean, int64_t rows, int c, int64_t chunk,
                                   int what) {
    extern __shared__ double sh[]; /* [2][lanes][8 tpr] */
    const int c8 = c / 8, w = blockDim.x * 8;
    const int v = blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.y * chunk;
    const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
    double a[8], b[8], m[8];
#pragma unroll
    for (int t = 0; t < 8; t++) a[t] = b[t] = m[t] = 0.0;
    if (v < c8) {
        if (what)
#pragma unroll
            for (int t = 0; t < 8; t++) m[t] = mean[v * 8 + t];
        for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
            const int64_t i = r * c8 + v;
            const bf8 xv = x[i];
            if (what == 0) {
#pragma unroll
                for (int t = 0; t < 8; t++) {
                    const double q = __bfloat162float(xv.h[t]);
                    a[t] += q;
                    b[t] += q * q;
                }
            } else {
                const bf8 d = dy[i];
                bf8 o;
                if (out) o = out[i];
#pragma unroll
                for (int t = 0; t < 8; t++) {
                    const double g = (out && !(__bfloat162float(o.h[t]) > 0.0f))
                                         ? 0.0 : (double)__bfloat162float(d.h[t]);
                    a[t] += g;
                    b[t] += g * ((double)__bfloat162float(xv.h[t]) - m[t]);
                }
            }
        }
    }
    double *s0 = sh, *s1 = sh + (size_t)blockDim.y * w;
#pragma unroll
    for (int t = 0; t < 8; t++) {
        s0[threadIdx.y * w + threadIdx.x * 8 + t] = a[t];
        s1[threadIdx.y * w + threadIdx.x * 8 + t] = b[t];
    }
    __syncthreads();
    if (threadIdx.y == 0 && v < c8) {
        for (int t = 0; t < 8; t++) {
            double sa = 0.0, sb = 0.0;
            for (int y = 0; y < (int)blockDim.y; y++) {
                sa += s0[y * w + threadIdx.x * 8 + t];
                sb += s1[y * w + threadIdx.x * 8 + t];
            }
            double *p = part + ((int64_t)blockIdx.y * c + v * 8 + t) * 2;
            p[0] = sa;
            p[1] = sb;
        }
    }
}

/* the vector form's block: tpr threads along the channels, lanes rows (256 threads) */
static void vec_block(int c, int *tpr, int *lanes) {
    const int c8 = c / 8;
    *tpr = c8 < 32 ? c8 : 32;
    *lanes = 256 / *tpr;
}

/* row chunks of the vector form: about 1024 blocks, at least 4 rows per lane */
static int vec_chunks(int64_t rows, int c, int64_t *chunk) {
    int tpr, lanes;
    vec_block(c, &tpr, &lanes);
    const int64_t tiles = (c / 8 + tpr - 1) / tpr;
    int64_t nch = (1024 + tiles - 1) / tiles;
    const int64_t most = (rows + 4 * lanes - 1) / (4 * lanes);
    if (nch > most) nch = most;
    if (nch < 1) nch = 1;
    if (nch > 65535) nch = 65535;
    *chunk = (rows + nch - 1) / nch;
    if (*chunk < 1) *chunk = 1;
    return (int)((rows + *chunk - 1) / *chunk);
}

/* bytes of `part` for (rows, c) in the form colsum16 will use */
static size_t colsum16_bytes(int64_t rows, int c, int vec) {
    int64_t chunk;
    const int nch = vec ? vec_chunks(rows, c, &chunk) : glae_col_chunks(rows, c, &chunk);
    return (size_t)nch * (size_t)c * 2 * sizeof(double);
}

static int colsum16(cudaStream_t st, double *part, int *nchunks, const bf *x, const bf *dy,
                    const bf *out, const float *mean, int64_t rows, int c, int what, int vec) {
    if (vec) {
        int64_t chunk;
        int tpr, lanes;
        vec_block(c, &tpr, &lanes);
        const int nch = vec_chunks(rows, c, &chunk);
        *nchunks = nch;
        dim3 grid((unsigned)((c / 8 + tpr - 1) / tpr), (unsigned)nch), block(tpr, lanes);
        const size_t shared = (size_t)2 * lanes * tpr * 8 * sizeof(double);
        colsum16v_k<<<grid, block, shared, st>>>(part, (const bf8 *)x, (const bf8 *)dy,
                                                 (const bf8 *)out, mean, rows, c, chunk, what);
        GLAE_LAUNCHED();
        return GLAE_OK;
    }
    return glae_colsum_masked(st, part, nchunks, x, dy, out, mean, rows, c,
                              what ? GLAE_COL_DY_DYX_BF16 : GLAE_COL_X_X2_BF16);
}

/* ---- fused batch norm + residual + ReLU ------------------------------------------------ */

__global__ static void bn_act_apply_k(bf *out, const bf *in, const bf *res, const float *mean,
                                      const float *invstd, const float *gamma, const float *beta,
                                      int64_t total, int c, int relu) {
    GLAE_FOR(i, total) {
        const int j = (int)(i % c);
        const float scale = gamma ? (float)((double)gamma[j] * invstd[j]) : invstd[j];
        float v = (ld(in, i) - mean[j]) * scale + (beta ? beta[j] : 0.0f);
        if (res) v += ld(res, i);
        if (relu && v <= 0.0f) v = 0.0f;
        out[i] = __float2bfloat16_rn(v);
    }
}

__global__ static void bn_act_apply8_k(bf8 *out, const bf8 *in, const bf8 *res, const float *mean,
                                       const float *invstd, const float *gamma, const float *beta,
                                       int64_t total8, int c, int relu) {
    GLAE_FOR(v, total8) {
        const int j0 = (int)((v * 8) % c);
        const bf8 x = in[v];
        bf8 r, o;
        if (res) r = res[v];
#pragma unroll
        for (int t = 0; t < 8; t++) {
            const int j = j0 + t;
            const float scale = gamma ? (float)((double)gamma[j] * invstd[j]) : invstd[j];
            float y = (__bfloat162float(x.h[t]) - mean[j]) * scale + (beta ? beta[j] : 0.0f);
            if (res) y += __bfloat162float(r.h[t]);
            if (relu && y <= 0.0f) y = 0.0f;
            o.h[t] = __float2bfloat16_rn(y);
        }
        out[v] = o;
    }
}

extern "C" int glae_bn_act_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, float *save_mean,
                                             float *save_invstd, const glae_bf16 *in,
                                             const glae_bf16 *residual, const float *gamma,
                                             const float *beta, float *running_mean,
                                             float *running_var, int64_t rows, int c,
                                             float momentum, float eps, int training, int relu) {
    const char *fn = "bn_act_forward_bf16_cuda";
    GLAE_STREAM(ctx, fn, st);
    GLAE_TRY(glae_check_batchnorm(fn, rows, c, momentum, eps, training, running_mean, running_var));
    if (c == 0) return GLAE_OK;
    double *part = NULL;
    int nch = 0;
    if (training) {
        const int vec = c % 8 == 0 && glae_aligned16(in);
        GLAE_TRY(glae_cuda_workspace(ctx, colsum16_bytes(rows, c, vec), (void **)&part));
        GLAE_TRY(colsum16(st, part, &nch, (const bf *)in, NULL, NULL, NULL, rows, c, 0, vec));
    }
    GLAE_TRY(glae_bn_stats(st, save_mean, save_invstd, running_mean, running_var, part, nch, c,
                           rows, momentum, eps));
    const int64_t total = rows * c;
    if (total == 0) return GLAE_OK;
    if (c % 8 == 0 && glae_aligned16(out) && glae_aligned16(in) && (!residual || glae_aligned16(residual)))
        bn_act_apply8_k<<<glae_grid(total / 8), GLAE_BLOCK, 0, st>>>(
            (bf8 *)out, (const bf8 *)in, (const bf8 *)residual, save_mean, save_invstd, gamma,
            beta, total / 8, c, relu);
    else
        bn_act_apply_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(
            (bf *)out, (const bf *)in, (const bf *)residual, save_mean, save_invstd, gamma, beta,
            total, c, relu);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* din = g a + (x - mean) k1 + k2 with coef (a, k1, k2) from glae_bn_bwd_coef_k; dres = g.
 * dres may alias dout: each element is read before the same thread writes it. */
__global__ static void bn_act_bwd_apply_k(bf *din, bf *dres, const bf *dout, const bf *out,
                                          const bf *in, const float *mean, const float *coef,
                                          int64_t total, int c) {
    GLAE_FOR(i, total) {
        const int j = (int)(i % c);
        const float g = (out && !(ld(out, i) > 0.0f)) ? 0.0f : ld(dout, i);
        const float x = ld(in, i);
        if (din)
            din[i] = __float2bfloat16_rn(g * coef[3 * j] +
                                         ((x - mean[j]) * coef[3 * j + 1] + coef[3 * j + 2]));
        if (dres) dres[i] = __float2bfloat16_rn(g);
    }
}

__global__ static void bn_act_bwd_apply8_k(bf8 *din, bf8 *dres, const bf8 *dout, const bf8 *out,
                                           const bf8 *in, const float *mean, const float *coef,
                                           int64_t total8, int c) {
    GLAE_FOR(v, total8) {
        const int j0 = (int)((v * 8) % c);
        const bf8 d = dout[v], x = in[v];
        bf8 m, a, g8;
        if (out) m = out[v];
#pragma unroll
        for (int t = 0; t < 8; t++) {
            const int j = j0 + t;
            const float g = (out && !(__bfloat162float(m.h[t]) > 0.0f)) ? 0.0f : __bfloat162float(d.h[t]);
            a.h[t] = __float2bfloat16_rn(g * coef[3 * j] + ((__bfloat162float(x.h[t]) - mean[j]) *
                                                                coef[3 * j + 1] + coef[3 * j + 2]));
            g8.h[t] = __float2bfloat16_rn(g);
        }
        if (din) din[v] = a;
        if (dres) dres[v] = g8;
    }
}

extern "C" int glae_bn_act_backward_bf16_cuda(glae_ctx *ctx, glae_bf16 *din, glae_bf16 *dres,
                                              float *dgamma, float *dbeta,
                                              const glae_bf16 *dout, const glae_bf16 *out,
                                              const glae_bf16 *in, const float *save_mean,
                                              const float *save_invstd, const float *gamma,
                                              int64_t rows, int c, int training, int relu) {
    const char *fn = "bn_act_backward_bf16_cuda";
    GLAE_STREAM(ctx, fn, st);
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (rows %lld, c %d)", fn, (long long)rows, c);
    if (relu && !out) return glae_fail(GLAE_ERR_VALUE, "%s: relu needs the forward's output", fn);
    if (c == 0 || rows == 0 || (!din && !dres && !dgamma && !dbeta)) return GLAE_OK;
    const bf *mask = relu ? (const bf *)out : NULL;
    const int vec = c % 8 == 0 && glae_aligned16(in) && glae_aligned16(dout) && (!mask || glae_aligned16(mask));
    const size_t pbytes = glae_align256(colsum16_bytes(rows, c, vec));
    char *ws;
    GLAE_TRY(glae_cuda_workspace(ctx, pbytes + (size_t)c * 3 * sizeof(float), (void **)&ws));
    double *part = (double *)ws;
    float *coef = (float *)(ws + pbytes);
    int nch;
    GLAE_TRY(colsum16(st, part, &nch, (const bf *)in, (const bf *)dout, mask, save_mean, rows, c, 1,
                      vec));
    glae_bn_bwd_coef_k<<<(c + 255) / 256, 256, 0, st>>>(coef, dgamma, dbeta, part, nch, c, rows,
                                                        save_invstd, gamma, training);
    GLAE_LAUNCHED();
    if (din || dres) {
        const int vec = c % 8 == 0 && glae_aligned16(dout) && glae_aligned16(in) &&
                        (!mask || glae_aligned16(mask)) && (!din || glae_aligned16(din)) &&
                        (!dres || glae_aligned16(dres));
        if (vec)
            bn_act_bwd_apply8_k<<<glae_grid(rows * c / 8), GLAE_BLOCK, 0, st>>>(
                (bf8 *)din, (bf8 *)dres, (const bf8 *)dout, (const bf8 *)mask, (const bf8 *)in,
                save_mean, coef, rows * c / 8, c);
        else
            bn_act_bwd_apply_k<<<glae_grid(rows * c), GLAE_BLOCK, 0, st>>>(
                (bf *)din, (bf *)dres, (const bf *)dout, mask, (const bf *)in, save_mean, coef,
                rows * c, c);
        GLAE_LAUNCHED();
    }
    return GLAE_OK;
}
