/* The AM-softmax (CosFace) loss, the readable reference (amsoftmax.h has the formulas).
 * The cosines are one product X W^T (glae_sgemm) scaled by the inverse norms of the rows
 * of X and W, so no normalised copy of the (k, d) class weights is made; the backward is
 * two more products with one (n, k) matrix of scaled gradients. */
#include "ops/amsoftmax.h"
#include "ops/check.h"

#include <math.h>
#include <string.h>

#include "core/blas.h"

/* F.normalize's floor on the norm */
#define NORM_EPS 1e-12

/* below this many (rows * columns) elements a thread team costs more than it saves */
#define AMS_PAR_WORK 32768

static int check_labels(const char *fn, const int32_t *labels, int64_t n, int k) {
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= k)
            return glae_fail(GLAE_ERR_VALUE, "%s: labels[%lld] = %d is outside [0, %d) (%d classes)",
                             fn, (long long)i, (int)labels[i], k, k);
    return GLAE_OK;
}

/* inv[r] = 1 / max(||a_r||, 1e-12) for the rows of a (rows, d) */
static void inv_norms(float *inv, const float *a, int64_t rows, int d) {
#pragma omp parallel for schedule(static) if (rows * (int64_t)d > AMS_PAR_WORK)
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0.0;
        for (int j = 0; j < d; j++) ss += (double)a[r * d + j] * a[r * d + j];
        const double nrm = sqrt(ss);
        inv[r] = (float)(1.0 / (nrm > NORM_EPS ? nrm : NORM_EPS));
    }
}

int glae_amsoftmax_forward(glae_ctx *ctx, float *loss, float *prob, float *cos, const float *x,
                           const int32_t *labels, const float *w, int64_t n, int d, int k,
                           float s, float m) {
    const char *fn = "amsoftmax_forward";
    GLAE_TRY(glae_check_amsoftmax(fn, n, d, k, s, m, 1));
    GLAE_TRY(check_labels(fn, labels, n, k));
    if (n == 0) return GLAE_OK;
    float *rx = glae_ctx_scratch(ctx, (size_t)n + (size_t)k); /* 1/|x_i|, then 1/|w_j| */
    if (!rx) return GLAE_ERR_MEMORY;
    float *rw = rx + n;
    inv_norms(rx, x, n, d);
    inv_norms(rw, w, k, d);
    /* cos (n, k) = X W^T, then c_ij = (x_i . w_j) / (|x_i| |w_j|) */
    glae_sgemm(0, 1, (int)n, k, d, 1.0f, x, d, w, d, 0.0f, cos, k);
#pragma omp parallel for schedule(static) if (n * (int64_t)k > AMS_PAR_WORK)
    for (int64_t i = 0; i < n; i++) {
        float *c = cos + i * k, *p = prob + i * k;
        const int y = labels[i];
        for (int j = 0; j < k; j++) c[j] = c[j] * rx[i] * rw[j];
        /* z_j = s (c_j - m [j == y]); softmax with the largest z subtracted */
        double zmax = -INFINITY;
        for (int j = 0; j < k; j++) {
            const double z = (double)s * ((double)c[j] - (j == y ? (double)m : 0.0));
            if (z > zmax) zmax = z;
        }
        double se = 0.0;
        for (int j = 0; j < k; j++) {
            const double e = exp((double)s * ((double)c[j] - (j == y ? (double)m : 0.0)) - zmax);
            p[j] = (float)e;
            se += e;
        }
        const double inv = 1.0 / se;
        for (int j = 0; j < k; j++) p[j] = (float)(p[j] * inv);
        /* -log p_y = log sum_j exp(z_j - zmax) - (z_y - zmax) */
        const double zy = (double)s * ((double)c[y] - (double)m);
        loss[i] = (float)(log(se) - (zy - zmax));
    }
    return GLAE_OK;
}

int glae_amsoftmax_backward(glae_ctx *ctx, float *dx, float *dw, const float *dloss,
                            const float *prob, const float *cos, const float *x,
                            const int32_t *labels, const float *w, int64_t n, int d, int k,
                            float s) {
    const char *fn = "amsoftmax_backward";
    GLAE_TRY(glae_check_amsoftmax(fn, n, d, k, s, 0.0f, 0));
    GLAE_TRY(check_labels(fn, labels, n, k));
    if (n == 0 || (!dx && !dw)) return GLAE_OK;
    /* scratch: 1/|x| (n), 1/|w| (k), t (n), u (k), H (n, k) */
    const size_t need = 2 * ((size_t)n + (size_t)k) + (size_t)n * (size_t)k;
    float *rx = glae_ctx_scratch(ctx, need);
    if (!rx) return GLAE_ERR_MEMORY;
    float *rw = rx + n, *t = rw + k, *u = t + n, *H = u + k;
    inv_norms(rx, x, n, d);
    inv_norms(rw, w, k, d);
    /* g_ij = dloss_i s (p_ij - [j == y_i]) = dL / dc_ij;
     * H_ij = g_ij / (|x_i| |w_j|);  t_i = sum_j g_ij c_ij */
#pragma omp parallel for schedule(static) if (n * (int64_t)k > AMS_PAR_WORK)
    for (int64_t i = 0; i < n; i++) {
        const float *p = prob + i * k, *c = cos + i * k;
        const double a = (double)dloss[i] * s;
        double ti = 0.0;
        for (int j = 0; j < k; j++) {
            const double g = a * ((double)p[j] - (j == labels[i] ? 1.0 : 0.0));
            H[i * k + j] = (float)(g * rx[i] * rw[j]);
            ti += g * c[j];
        }
        t[i] = (float)ti;
    }
    if (dx) {
        /* dx_i = sum_j H_ij w_j - t_i x_i / |x_i|^2 */
        glae_sgemm(0, 0, (int)n, d, k, 1.0f, H, k, w, d, 0.0f, dx, d);
#pragma omp parallel for schedule(static) if (n * (int64_t)d > AMS_PAR_WORK)
        for (int64_t i = 0; i < n; i++) {
            const double c = (double)t[i] * rx[i] * rx[i];
            for (int j = 0; j < d; j++) dx[i * d + j] = (float)(dx[i * d + j] - c * x[i * d + j]);
        }
    }
    if (dw) {
        /* u_j = sum_i g_ij c_ij, with g_ij = H_ij |x_i| |w_j| */
#pragma omp parallel for schedule(static) if (n * (int64_t)k > AMS_PAR_WORK)
        for (int j = 0; j < k; j++) {
            double uj = 0.0;
            for (int64_t i = 0; i < n; i++) {
                const double a = (double)dloss[i] * s;
                const double g = a * ((double)prob[i * k + j] - (j == labels[i] ? 1.0 : 0.0));
                uj += g * cos[i * k + j];
            }
            u[j] = (float)uj;
        }
        /* dw_j += sum_i H_ij x_i - u_j w_j / |w_j|^2: the correction first, into the
         * accumulator, then the product added on top (beta = 1) */
#pragma omp parallel for schedule(static) if ((int64_t)k * d > AMS_PAR_WORK)
        for (int j = 0; j < k; j++) {
            const double c = (double)u[j] * rw[j] * rw[j];
            for (int q = 0; q < d; q++)
                dw[(int64_t)j * d + q] = (float)(dw[(int64_t)j * d + q] - c * w[(int64_t)j * d + q]);
        }
        glae_sgemm(1, 0, k, d, (int)n, 1.0f, H, k, x, d, 1.0f, dw, d);
    }
    return GLAE_OK;
}
