/* Label-distribution losses of LAE / GLAE: the Gaussian target, and the fused
 * softmax + KL + L1-of-the-expectation loss with its gradient. See docs/losses.md. */
#include "ops/loss.h"
#include "ops/check.h"

#include <math.h>
#include <stdlib.h>

/* Rows are independent; below this many (rows * K) elements a thread team costs more
 * than it saves. The local branch of PA (N * 49 rows of 101) is well above it. */
#define LOSS_PAR_WORK 32768

/* The targets are per sample (rows / group of them): a serial pass over them is cheap
 * and keeps error reporting out of the parallel loops. */
static int check_targets(const char *fn, const float *z, const float *y, int64_t n, int k) {
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(y[i]))
            return glae_fail(GLAE_ERR_VALUE, "%s: y[%lld] is not finite", fn, (long long)i);
        for (int j = 0; j < k; j++) {
            float v = z[i * k + j];
            if (!(v >= 0.0f) || !isfinite(v))
                return glae_fail(GLAE_ERR_VALUE,
                                 "%s: z[%lld, %d] = %g; label distributions must be finite and >= 0",
                                 fn, (long long)i, j, (double)v);
        }
    }
    return GLAE_OK;
}

/* LAE 2.1 / GLAE eq. 1: z_k = exp(-(k - y)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma).
 * (GLAE prints sqrt(2 pi sigma); LAE's sqrt(2 pi) sigma is the Gaussian density and is
 * what we use. With normalize the constant cancels anyway.) */
int glae_label_distribution(glae_ctx *ctx, float *z, const float *y, const float *sigma,
                            float sigma0, int64_t n, int k, int normalize) {
    (void)ctx; /* the CPU needs no handle; the signature is the twins' */
    const char *fn = "label_distribution";
    GLAE_TRY(glae_check_label_distribution(fn, n, k, sigma, sigma0));
    for (int64_t i = 0; i < n; i++) {
        float s = sigma ? sigma[i] : sigma0;
        if (!(s > 0.0f) || !isfinite(s)) {
            if (sigma)
                return glae_fail(GLAE_ERR_VALUE, "%s: sigma must be finite and > 0, got sigma[%lld] = %g",
                                 fn, (long long)i, (double)s);
            return glae_fail(GLAE_ERR_VALUE, "%s: sigma must be finite and > 0, got %g", fn, (double)s);
        }
        if (!isfinite(y[i]) || y[i] < 0.0f || y[i] > (float)(k - 1))
            return glae_fail(GLAE_ERR_VALUE, "%s: age y[%lld] = %g is outside [0, %d]", fn,
                             (long long)i, (double)y[i], k - 1);
    }
    const double inv_sqrt_2pi = 0.39894228040143267794;
#pragma omp parallel for schedule(static) if (n * (int64_t)k > LOSS_PAR_WORK)
    for (int64_t i = 0; i < n; i++) {
        const double s = sigma ? sigma[i] : sigma0, yi = y[i];
        const double inv2s2 = 1.0 / (2.0 * s * s);
        float *zi = z + i * k;
        if (normalize) {
            /* Shift the exponent by its largest value (the class nearest y) so the sum is
             * >= 1 and never underflows, however small sigma is. */
            double near = floor(yi + 0.5);
            if (near > k - 1) near = k - 1;
            const double dmin = (near - yi) * (near - yi);
            double sum = 0.0;
            for (int j = 0; j < k; j++) sum += exp(-((j - yi) * (j - yi) - dmin) * inv2s2);
            const double inv = 1.0 / sum;
            for (int j = 0; j < k; j++)
                zi[j] = (float)(exp(-((j - yi) * (j - yi) - dmin) * inv2s2) * inv);
        } else {
            const double c = inv_sqrt_2pi / s;
            for (int j = 0; j < k; j++) zi[j] = (float)(c * exp(-(j - yi) * (j - yi) * inv2s2));
        }
    }
    return GLAE_OK;
}

/* Derivative of |e| at e: sign(e), 0 at exactly 0 (PyTorch's convention for abs). */
static inline double sgn(double e) { return (e > 0.0) - (e < 0.0); }

int glae_ldl_loss_forward(glae_ctx *ctx, float *loss, float *prob, const float *logits,
                          const float *z, const float *y, int64_t rows, int group, int k, int mode,
                          float lambda, float mae) {
    (void)ctx;
    const char *fn = "ldl_loss_forward";
    GLAE_TRY(glae_check_ldl_loss(fn, rows, group, k, mode, lambda, mae));
    GLAE_TRY(check_targets(fn, z, y, rows / group, k));
    /* sum_k z_k log z_k per sample (0 log 0 = 0): shared by the group's rows, so the
     * row loop needs one exp per element and no log */
    const int64_t n = rows / group;
    double *zlogz = NULL;
    if (n > 0) {
        zlogz = malloc((size_t)n * sizeof *zlogz);
        if (!zlogz) return glae_fail(GLAE_ERR_MEMORY, "%s: cannot allocate %lld doubles", fn, (long long)n);
    }
    for (int64_t i = 0; i < n; i++) {
        double h = 0.0;
        for (int j = 0; j < k; j++)
            if (z[i * k + j] > 0.0f) h += z[i * k + j] * log((double)z[i * k + j]);
        zlogz[i] = h;
    }
#pragma omp parallel for schedule(static) if (rows * (int64_t)k > LOSS_PAR_WORK)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = logits + r * k;
        const float *zr = z + (r / group) * k;
        float *pr = prob + r * k;
        /* softmax with the max subtracted; log p_j = x_j - m - log(sum) */
        float m = x[0];
        for (int j = 1; j < k; j++) m = x[j] > m ? x[j] : m;
        double se = 0.0, zs = 0.0, zx = 0.0;
        for (int j = 0; j < k; j++) {
            const float e = expf(x[j] - m);
            pr[j] = e;
            se += e;
            zs += zr[j];
            zx += (double)zr[j] * ((double)x[j] - m);
        }
        const double lse = log(se), inv = 1.0 / se;
        /* GLAE eq. 3: y_hat = sum_k k p_k */
        double yhat = 0.0;
        for (int j = 0; j < k; j++) {
            const double p = pr[j] * inv;
            pr[j] = (float)p;
            yhat += j * p;
        }
        /* LAE eq. 1 / GLAE eq. 2: l_kl = sum_k z_k log z_k - sum_k z_k log p_k
         *                              = zlogz - (sum_k z_k (x_k - m) - S lse) */
        const double kl = zlogz[r / group] - (zx - zs * lse);
        /* LAE eq. 2 / GLAE eq. 4: l_er = |y - y_hat| */
        const double er = fabs((double)y[r / group] - yhat);
        double l = kl;
        if (mode == GLAE_LOSS_BASE) l += (double)lambda * er;            /* GLAE eq. 5, LAE eq. 3 */
        else if (mode == GLAE_LOSS_LAE_CLS) l += (er - mae) * (er - mae); /* LAE eq. 4 */
        loss[r] = (float)l;
    }
    free(zlogz);
    return GLAE_OK;
}

/* With S = sum_k z_k (1 when z is normalised) and p = softmax(x):
 *   d l_kl / d x_j  = S p_j - z_j
 *   d y_hat / d x_j = p_j (j - y_hat)
 *   d l_er / d y_hat = sign(y_hat - y)   (0 at the kink)
 *   BASE:    g_j = S p_j - z_j + lambda * sign(y_hat - y) * p_j (j - y_hat)
 *   LAE_CLS: g_j = S p_j - z_j + 2 (l_er - mae) sign(y_hat - y) * p_j (j - y_hat) */
int glae_ldl_loss_backward(glae_ctx *ctx, float *dlogits, const float *dloss, const float *prob,
                           const float *z, const float *y, int64_t rows, int group, int k, int mode,
                           float lambda, float mae) {
    (void)ctx;
    const char *fn = "ldl_loss_backward";
    GLAE_TRY(glae_check_ldl_loss(fn, rows, group, k, mode, lambda, mae));
    GLAE_TRY(check_targets(fn, z, y, rows / group, k));
#pragma omp parallel for schedule(static) if (rows * (int64_t)k > LOSS_PAR_WORK)
    for (int64_t r = 0; r < rows; r++) {
        const float *pr = prob + r * k;
        const float *zr = z + (r / group) * k;
        float *g = dlogits + r * k;
        const double d = dloss[r];
        double s = 0.0, yhat = 0.0;
        for (int j = 0; j < k; j++) {
            s += zr[j];
            yhat += j * (double)pr[j];
        }
        /* coefficient of p_j (j - y_hat) */
        double c = 0.0;
        if (mode != GLAE_LOSS_KL) {
            const double e = yhat - (double)y[r / group];
            if (mode == GLAE_LOSS_BASE) c = (double)lambda * sgn(e);
            else c = 2.0 * (fabs(e) - (double)mae) * sgn(e);
        }
        for (int j = 0; j < k; j++) {
            const double p = pr[j];
            g[j] = (float)(d * (s * p - zr[j] + c * p * (j - yhat)));
        }
    }
    return GLAE_OK;
}
