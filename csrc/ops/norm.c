/* Batch norm 2d on NHWC activations viewed as (rows = N*H*W, C), PyTorch semantics:
 *   training: mean, biased var over the rows; y = (x - mean) / sqrt(var + eps) * gamma + beta;
 *             running = (1 - momentum) * running + momentum * batch, running_var fed with
 *             the UNBIASED variance var * rows / (rows - 1);
 *   eval:     running statistics instead of the batch ones.
 * Statistics are reduced in double over fixed row blocks whose partial sums are added in a
 * fixed order, so the result does not depend on the thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/check.h"
#include "ops/ops.h"

#define BN_BLOCK 512 /* rows per partial sum */

static int64_t nblocks_of(int64_t rows) { return (rows + BN_BLOCK - 1) / BN_BLOCK; }

/* acc[c] = sum_rows f(row, c) with f selected by `what`:
 *   0: x,  1: (x - mean)^2,  2: dy,  3: dy * (x - mean)
 * part: nblocks * c doubles of scratch. */
static void reduce_cols(double *acc, double *part, const float *x, const float *dy,
                        const double *mean, int64_t rows, int c, int what) {
    const int64_t nb = nblocks_of(rows);
#pragma omp parallel for schedule(static) if (rows * c > 32768)
    for (int64_t b = 0; b < nb; b++) {
        double *p = part + b * c;
        for (int j = 0; j < c; j++) p[j] = 0.0;
        const int64_t r1 = (b + 1) * BN_BLOCK < rows ? (b + 1) * BN_BLOCK : rows;
        for (int64_t r = b * BN_BLOCK; r < r1; r++) {
            const float *xr = x ? x + r * c : NULL;
            const float *dr = dy ? dy + r * c : NULL;
            switch (what) {
            case 0: for (int j = 0; j < c; j++) p[j] += xr[j]; break;
            case 1:
                for (int j = 0; j < c; j++) {
                    double d = xr[j] - mean[j];
                    p[j] += d * d;
                }
                break;
            case 2: for (int j = 0; j < c; j++) p[j] += dr[j]; break;
            default: for (int j = 0; j < c; j++) p[j] += dr[j] * (xr[j] - mean[j]); break;
            }
        }
    }
    for (int j = 0; j < c; j++) acc[j] = 0.0;
    for (int64_t b = 0; b < nb; b++)
        for (int j = 0; j < c; j++) acc[j] += part[b * c + j];
}

int glae_batchnorm_forward(glae_ctx *ctx, float *out, float *save_mean, float *save_invstd,
                           const float *in, const float *gamma, const float *beta,
                           float *running_mean, float *running_var, int64_t rows, int c,
                           float momentum, float eps, int training) {
    (void)ctx;
    GLAE_TRY(glae_check_batchnorm("batchnorm_forward", rows, c, momentum, eps, training,
                                  running_mean, running_var));
    if (c == 0) return GLAE_OK;

    double *mean = malloc(sizeof(double) * (size_t)c * 3);
    double *part = training ? malloc(sizeof(double) * (size_t)c * (size_t)nblocks_of(rows)) : NULL;
    if (!mean || (training && !part)) {
        free(mean);
        free(part);
        return glae_fail(GLAE_ERR_MEMORY, "batchnorm_forward: out of memory");
    }
    double *var = mean + c, *scale = mean + 2 * c;

    if (training) {
        reduce_cols(mean, part, in, NULL, NULL, rows, c, 0);
        for (int j = 0; j < c; j++) mean[j] /= (double)rows;
        /* two passes: the centred sum of squares does not cancel like E[x^2] - E[x]^2 */
        reduce_cols(var, part, in, NULL, mean, rows, c, 1);
        for (int j = 0; j < c; j++) {
            double biased = var[j] / (double)rows;
            if (running_mean)
                running_mean[j] = (float)((1.0 - momentum) * running_mean[j] + momentum * mean[j]);
            if (running_var) {
                double unbiased = var[j] / (double)(rows - 1);
                running_var[j] = (float)((1.0 - momentum) * running_var[j] + momentum * unbiased);
            }
            var[j] = biased;
        }
    } else {
        for (int j = 0; j < c; j++) {
            mean[j] = running_mean[j];
            var[j] = running_var[j];
        }
    }
    for (int j = 0; j < c; j++) {
        double invstd = 1.0 / sqrt(var[j] + (double)eps);
        save_mean[j] = (float)mean[j];
        save_invstd[j] = (float)invstd;
        scale[j] = (gamma ? gamma[j] : 1.0) * invstd;
    }
    /* y = (x - mean) * scale + beta: centring first keeps the float rounding relative to
     * the spread of x, not to its mean */
    float *fm = malloc(sizeof(float) * 3 * (size_t)c);
    if (!fm) {
        free(mean);
        free(part);
        return glae_fail(GLAE_ERR_MEMORY, "batchnorm_forward: out of memory");
    }
    float *fs = fm + c, *fb = fm + 2 * c;
    for (int j = 0; j < c; j++) {
        fm[j] = (float)mean[j];
        fs[j] = (float)scale[j];
        fb[j] = beta ? beta[j] : 0.0f;
    }
#pragma omp parallel for schedule(static) if (rows * c > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = in + r * c;
        float *yr = out + r * c;
        for (int j = 0; j < c; j++) yr[j] = (xr[j] - fm[j]) * fs[j] + fb[j];
    }
    free(fm);
    free(mean);
    free(part);
    return GLAE_OK;
}

int glae_batchnorm_backward(glae_ctx *ctx, float *din, float *dgamma, float *dbeta,
                            const float *dout, const float *in, const float *save_mean,
                            const float *save_invstd, const float *gamma, int64_t rows, int c,
                            int training) {
    (void)ctx;
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "batchnorm_backward: negative size (rows %lld, c %d)",
                         (long long)rows, c);
    if (c == 0 || (!din && !dgamma && !dbeta)) return GLAE_OK;
    if (rows == 0) return GLAE_OK; /* nothing to write, sums are zero */

    double *mean = malloc(sizeof(double) * (size_t)c * 5);
    double *part = malloc(sizeof(double) * (size_t)c * (size_t)nblocks_of(rows));
    if (!mean || !part) {
        free(mean);
        free(part);
        return glae_fail(GLAE_ERR_MEMORY, "batchnorm_backward: out of memory");
    }
    double *sum_dy = mean + c, *sum_dyxc = mean + 2 * c, *k1 = mean + 3 * c, *k2 = mean + 4 * c;
    for (int j = 0; j < c; j++) mean[j] = save_mean[j];
    reduce_cols(sum_dy, part, NULL, dout, NULL, rows, c, 2);
    reduce_cols(sum_dyxc, part, in, dout, mean, rows, c, 3);
    /* sum(dy * xhat) = invstd * sum(dy * (x - mean)) */
    for (int j = 0; j < c; j++) {
        double inv = save_invstd[j];
        if (dgamma) dgamma[j] += (float)(sum_dyxc[j] * inv);
        if (dbeta) dbeta[j] += (float)sum_dy[j];
    }
    if (din) {
        /* training (through the batch statistics):
         *   dx = g*inv/M * (M*dy - sum(dy) - xhat * sum(dy*xhat))
         *      = dy * g*inv - g*inv/M * sum(dy) - (x - mean) * g*inv^3/M * sum(dy*(x-mean))
         * eval (statistics are constants): dx = dy * g*inv.
         * Written as dx = dy * a + (x - mean) * k1 + k2, with k1, k2 per channel. */
        float *fa = malloc(sizeof(float) * 4 * (size_t)c);
        if (!fa) {
            free(mean);
            free(part);
            return glae_fail(GLAE_ERR_MEMORY, "batchnorm_backward: out of memory");
        }
        float *fk1 = fa + c, *fk2 = fa + 2 * c, *fm = fa + 3 * c;
        for (int j = 0; j < c; j++) {
            double inv = save_invstd[j], g = gamma ? gamma[j] : 1.0;
            double a = g * inv;
            if (training) {
                k1[j] = -a * inv * inv * sum_dyxc[j] / (double)rows;
                k2[j] = -a * sum_dy[j] / (double)rows;
            } else {
                k1[j] = 0.0;
                k2[j] = 0.0;
            }
            fa[j] = (float)a;
            fk1[j] = (float)k1[j];
            fk2[j] = (float)k2[j];
            fm[j] = save_mean[j];
        }
#pragma omp parallel for schedule(static) if (rows * c > 32768)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = in + r * c, *dr = dout + r * c;
            float *gr = din + r * c;
            for (int j = 0; j < c; j++) gr[j] = dr[j] * fa[j] + ((xr[j] - fm[j]) * fk1[j] + fk2[j]);
        }
        free(fa);
    }
    free(mean);
    free(part);
    return GLAE_OK;
}

/* ---- ghost batch norm: the plain op on each group of rows ------------------------------ */

int glae_batchnorm_ghost_forward(glae_ctx *ctx, float *out, float *save_mean,
                                 float *save_invstd, const float *in, const float *gamma,
                                 const float *beta, float *running_mean, float *running_var,
                                 int64_t rows, int c, int64_t group_rows, float momentum,
                                 float eps, int training) {
    const char *fn = "batchnorm_ghost_forward";
    GLAE_TRY(glae_check_batchnorm(fn, rows, c, momentum, eps, training, running_mean, running_var));
    GLAE_TRY(glae_check_ghost(fn, rows, group_rows, training));
    for (int64_t r0 = 0, g = 0; r0 < rows; r0 += group_rows, g++) {
        const int64_t m = rows - r0 < group_rows ? rows - r0 : group_rows;
        /* group 0 alone feeds the running statistics (rank 0's, see ops.h); eval reads
         * them in every group */
        const int feed = g == 0 || !training;
        GLAE_TRY(glae_batchnorm_forward(ctx, out + r0 * c, save_mean + g * c, save_invstd + g * c,
                                        in + r0 * c, gamma, beta, feed ? running_mean : NULL,
                                        feed ? running_var : NULL, m, c, momentum, eps, training));
    }
    return GLAE_OK;
}

int glae_batchnorm_ghost_backward(glae_ctx *ctx, float *din, float *dgamma, float *dbeta,
                                  const float *dout, const float *in, const float *save_mean,
                                  const float *save_invstd, const float *gamma, int64_t rows,
                                  int c, int64_t group_rows, int training) {
    const char *fn = "batchnorm_ghost_backward";
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (rows %lld, c %d)", fn, (long long)rows, c);
    GLAE_TRY(glae_check_ghost(fn, rows, group_rows, 0));
    for (int64_t r0 = 0, g = 0; r0 < rows; r0 += group_rows, g++) {
        const int64_t m = rows - r0 < group_rows ? rows - r0 : group_rows;
        GLAE_TRY(glae_batchnorm_backward(ctx, din ? din + r0 * c : NULL, dgamma, dbeta,
                                         dout + r0 * c, in + r0 * c, save_mean + g * c,
                                         save_invstd + g * c, gamma, m, c, training));
    }
    return GLAE_OK;
}
