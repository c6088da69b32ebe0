/* The CUDA twin of amsoftmax.c: the AM-softmax (CosFace) loss and its gradient. The same
 * steps as the reference: inverse row norms (one warp per row, sums in double), the cosines
 * as one cuBLAS product X W^T scaled in place, one warp per row for the margined softmax;
 * the backward's scaled gradient matrix H (n, k) and two more products. Labels are not
 * checked on the GPU (the binding checks them on the host): a label outside [0, k) gives a
 * NaN loss and no gradient for its row instead of a read out of bounds. */
#include <cublas_v2.h>

#include "ops/kernels.cuh"
#include "ops/check.h" /* after kernels.cuh: its C headers are already extern "C" there */

#define NORM_EPS 1e-12

/* float32 GEMMs like the heads' (linear.cu): tensor cores only in TF32 mode */
static cublasComputeType_t ams_compute(const glae_cuda_ctx *c) {
    return c->math == GLAE_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

/* column-major C (m x n) = op(A) op(B) + beta C */
static int ams_gemm(glae_cuda_ctx *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const float *a, int lda, const float *b, int ldb, float beta, float *cm,
                    int ldc) {
    const float alpha = 1.0f;
    GLAE_CUBLAS_CHECK(cublasGemmEx(c->cublas, ta, tb, m, n, k, &alpha, a, CUDA_R_32F, lda, b,
                                   CUDA_R_32F, ldb, &beta, cm, CUDA_R_32F, ldc, ams_compute(c),
                                   CUBLAS_GEMM_DEFAULT));
    return GLAE_OK;
}

/* inv[r] = 1 / max(||a_r||, 1e-12) */
__global__ static void inv_norms_k(float *inv, const float *a, int64_t rows, int d) {
    GLAE_FOR_ROWS(r, rows) {
        double ss = 0.0;
        for (int j = threadIdx.x; j < d; j += 32) ss += (double)a[r * d + j] * a[r * d + j];
        ss = glae_warp_sum(ss);
        if (threadIdx.x == 0) {
            const double nrm = sqrt(ss);
            inv[r] = (float)(1.0 / (nrm > NORM_EPS ? nrm : NORM_EPS));
        }
    }
}

static int inv_norms(cudaStream_t st, float *inv, const float *a, int64_t rows, int d) {
    if (rows == 0) return GLAE_OK;
    inv_norms_k<<<glae_warp_grid(rows), dim3(32, 8), 0, st>>>(inv, a, rows, d);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* per row: c_ij *= rx_i rw_j, the margined softmax into prob, the loss */
__global__ static void ams_fwd_k(float *loss, float *prob, float *cos, const int32_t *labels,
                                 const float *rx, const float *rw, int64_t n, int k, float s,
                                 float m) {
    GLAE_FOR_ROWS(i, n) {
        float *c = cos + i * k, *p = prob + i * k;
        const int y = labels[i];
        const bool ok = y >= 0 && y < k;
        double zmax = -INFINITY;
        for (int j = threadIdx.x; j < k; j += 32) {
            c[j] = c[j] * rx[i] * rw[j];
            const double z = (double)s * ((double)c[j] - (j == y ? (double)m : 0.0));
            zmax = z > zmax ? z : zmax;
        }
        /* the shift only has to be the same in every lane and near the largest z: the loss and
         * the probabilities below do not depend on its exact value */
        zmax = (double)glae_warp_max((float)zmax);
        double se = 0.0;
        for (int j = threadIdx.x; j < k; j += 32) {
            const double e = exp((double)s * ((double)c[j] - (j == y ? (double)m : 0.0)) - zmax);
            p[j] = (float)e;
            se += e;
        }
        se = glae_warp_sum(se);
        const double inv = 1.0 / se;
        for (int j = threadIdx.x; j < k; j += 32) p[j] = (float)(p[j] * inv); /* the lane's own */
        if (threadIdx.x == 0) {
            if (!ok) {
                loss[i] = NAN;
            } else {
                const double zy = (double)s * ((double)c[y] - (double)m);
                loss[i] = (float)(log(se) - (zy - zmax));
            }
        }
    }
}

extern "C" int glae_amsoftmax_forward_cuda(glae_ctx *ctx, float *loss, float *prob, float *cos,
                                           const float *x, const int32_t *labels, const float *w,
                                           int64_t n, int d, int k, float s, float m) {
    const char *fn = "amsoftmax_forward_cuda";
    glae_cuda_ctx *c = glae_cuda_of(ctx, fn);
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(glae_check_amsoftmax(fn, n, d, k, s, m, 1));
    if (n == 0) return GLAE_OK;
    cudaStream_t st = c->stream;
    float *rx;
    GLAE_TRY(glae_cuda_workspace(ctx, ((size_t)n + (size_t)k) * sizeof(float), (void **)&rx));
    float *rw = rx + n;
    GLAE_TRY(inv_norms(st, rx, x, n, d));
    GLAE_TRY(inv_norms(st, rw, w, k, d));
    /* row-major cos (n, k) = X W^T is column-major cos^T (k x n) = W (k x d) X^T */
    GLAE_TRY(ams_gemm(c, CUBLAS_OP_T, CUBLAS_OP_N, k, (int)n, d, w, d, x, d, 0.0f, cos, k));
    ams_fwd_k<<<glae_warp_grid(n), dim3(32, 8), 0, st>>>(loss, prob, cos, labels, rx, rw, n, k, s, m);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* g_ij = dloss_i s (p_ij - [j == y_i]); H_ij = g_ij rx_i rw_j; t_i = sum_j g_ij c_ij.
 * A row with a label outside [0, k) gets g = 0. */
__global__ static void ams_h_k(float *H, float *t, const float *dloss, const float *prob,
                               const float *cos, const int32_t *labels, const float *rx,
                               const float *rw, int64_t n, int k, float s) {
    GLAE_FOR_ROWS(i, n) {
        const int y = labels[i];
        const double a = (y >= 0 && y < k) ? (double)dloss[i] * s : 0.0;
        double ti = 0.0;
        for (int j = threadIdx.x; j < k; j += 32) {
            const double g = a * ((double)prob[i * k + j] - (j == y ? 1.0 : 0.0));
            H[i * k + j] = (float)(g * rx[i] * rw[j]);
            ti += g * cos[i * k + j];
        }
        ti = glae_warp_sum(ti);
        if (threadIdx.x == 0) t[i] = (float)ti;
    }
}

/* u_j = sum_i g_ij c_ij: one thread per class, rows in order (deterministic) */
__global__ static void ams_u_k(float *u, const float *dloss, const float *prob, const float *cos,
                               const int32_t *labels, int64_t n, int k, float s) {
    GLAE_FOR(j, (int64_t)k) {
        double uj = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const int y = labels[i];
            if (y < 0 || y >= k) continue;
            const double g = (double)dloss[i] * s * ((double)prob[i * k + j] - (j == y ? 1.0 : 0.0));
            uj += g * cos[i * k + j];
        }
        u[j] = (float)uj;
    }
}

/* a[r, q] -= coef[r] inv[r]^2 b[r, q] over (rows, d): the projections' radial part */
__global__ static void ams_radial_k(float *a, const float *coef, const float *inv, const float *b,
                                    int64_t rows, int d) {
    GLAE_FOR(e, rows * d) {
        const int64_t r = e / d;
        const double cr = (double)coef[r] * inv[r] * inv[r];
        a[e] = (float)(a[e] - cr * b[e]);
    }
}

extern "C" int glae_amsoftmax_backward_cuda(glae_ctx *ctx, float *dx, float *dw,
                                            const float *dloss, const float *prob,
                                            const float *cos, const float *x,
                                            const int32_t *labels, const float *w, int64_t n,
                                            int d, int k, float s) {
    const char *fn = "amsoftmax_backward_cuda";
    glae_cuda_ctx *c = glae_cuda_of(ctx, fn);
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(glae_check_amsoftmax(fn, n, d, k, s, 0.0f, 0));
    if (n == 0 || (!dx && !dw)) return GLAE_OK;
    cudaStream_t st = c->stream;
    /* rx (n), rw (k), t (n), u (k), H (n, k) */
    const size_t floats = 2 * ((size_t)n + (size_t)k) + (size_t)n * (size_t)k;
    float *rx;
    GLAE_TRY(glae_cuda_workspace(ctx, floats * sizeof(float), (void **)&rx));
    float *rw = rx + n, *t = rw + k, *u = t + n, *H = u + k;
    GLAE_TRY(inv_norms(st, rx, x, n, d));
    GLAE_TRY(inv_norms(st, rw, w, k, d));
    ams_h_k<<<glae_warp_grid(n), dim3(32, 8), 0, st>>>(H, t, dloss, prob, cos, labels, rx, rw, n,
                                                       k, s);
    GLAE_LAUNCHED();
    if (dx) {
        /* dx (n, d) = H W: column-major dx^T (d x n) = W^T (d x k) H^T (k x n) */
        GLAE_TRY(ams_gemm(c, CUBLAS_OP_N, CUBLAS_OP_N, d, (int)n, k, w, d, H, k, 0.0f, dx, d));
        ams_radial_k<<<glae_grid(n * d), GLAE_BLOCK, 0, st>>>(dx, t, rx, x, n, d);
        GLAE_LAUNCHED();
    }
    if (dw) {
        ams_u_k<<<glae_grid(k), GLAE_BLOCK, 0, st>>>(u, dloss, prob, cos, labels, n, k, s);
        GLAE_LAUNCHED();
        /* the correction into the accumulator first, then dw (k, d) += H^T X:
         * column-major dw^T (d x k) += X^T (d x n) H (n x k) */
        ams_radial_k<<<glae_grid((int64_t)k * d), GLAE_BLOCK, 0, st>>>(dw, u, rw, w, k, d);
        GLAE_LAUNCHED();
        GLAE_TRY(ams_gemm(c, CUBLAS_OP_N, CUBLAS_OP_T, d, k, (int)n, x, d, H, k, 1.0f, dw, d));
    }
    return GLAE_OK;
}
