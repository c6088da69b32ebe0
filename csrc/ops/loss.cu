/* CUDA twins of loss.c: the Gaussian label distribution and the fused softmax + KL +
 * L1-of-the-expectation loss (LAE eq. 1-4, GLAE eq. 1-5) with its gradient. One warp per
 * row, exp/log and sums in double like the CPU reference. Data values (finite ages,
 * z >= 0) are not checked on the GPU: NaN propagates to the loss instead. */
#include "ops/kernels.cuh"
#include "ops/check.h" /* after kernels.cuh: its C headers are already extern "C" there */

/* LAE 2.1 / GLAE eq. 1 (see loss.c for the normalised, shifted form) */
__global__ static void label_dist_k(float *z, const float *y, const float *sigma, float sigma0,
                                    int64_t n, int k, int normalize) {
    GLAE_FOR_ROWS(i, n) {
        const double s = sigma ? sigma[i] : sigma0, yi = y[i];
        const double inv2s2 = 1.0 / (2.0 * s * s);
        float *zi = z + i * k;
        if (normalize) {
            double near = floor(yi + 0.5);
            if (near > k - 1) near = k - 1;
            const double dmin = (near - yi) * (near - yi);
            double sum = 0.0;
            for (int j = threadIdx.x; j < k; j += 32) sum += exp(-((j - yi) * (j - yi) - dmin) * inv2s2);
            const double inv = 1.0 / glae_warp_sum(sum);
            for (int j = threadIdx.x; j < k; j += 32)
                zi[j] = (float)(exp(-((j - yi) * (j - yi) - dmin) * inv2s2) * inv);
        } else {
            const double c = 0.39894228040143267794 / s;
            for (int j = threadIdx.x; j < k; j += 32) zi[j] = (float)(c * exp(-(j - yi) * (j - yi) * inv2s2));
        }
    }
}

extern "C" int glae_label_distribution_cuda(glae_ctx *ctx, float *z, const float *y,
                                            const float *sigma, float sigma0, int64_t n, int k,
                                            int normalize) {
    const char *fn = "label_distribution_cuda";
    GLAE_STREAM(ctx, fn, st);
    GLAE_TRY(glae_check_label_distribution(fn, n, k, sigma, sigma0));
    if (n == 0) return GLAE_OK;
    label_dist_k<<<glae_warp_grid(n), dim3(32, 8), 0, st>>>(z, y, sigma, sigma0, n, k, normalize);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* sum_k z_k log z_k per sample (0 log 0 = 0) */
__global__ static void zlogz_k(double *out, const float *z, int64_t n, int k) {
    GLAE_FOR_ROWS(i, n) {
        double h = 0.0;
        for (int j = threadIdx.x; j < k; j += 32) {
            const float v = z[i * k + j];
            if (v > 0.0f) h += v * log((double)v);
        }
        h = glae_warp_sum(h);
        if (threadIdx.x == 0) out[i] = h;
    }
}

__global__ static void ldl_fwd_k(float *loss, float *prob, const float *logits, const float *z,
                                 const float *y, const double *zlogz, int64_t rows, int group,
                                 int k, int mode, float lambda, float mae) {
    GLAE_FOR_ROWS(r, rows) {
        const float *x = logits + r * k;
        const float *zr = z + (r / group) * k;
        float *pr = prob + r * k;
        float m = -INFINITY;
        for (int j = threadIdx.x; j < k; j += 32) m = fmaxf(m, x[j]);
        m = glae_warp_max(m);
        double se = 0.0, zs = 0.0, zx = 0.0;
        for (int j = threadIdx.x; j < k; j += 32) {
            const float e = (float)exp((double)(x[j] - m));
            pr[j] = e;
            se += e;
            zs += zr[j];
            zx += (double)zr[j] * ((double)x[j] - m);
        }
        se = glae_warp_sum(se);
        zs = glae_warp_sum(zs);
        zx = glae_warp_sum(zx);
        const double lse = log(se), inv = 1.0 / se;
        double yhat = 0.0; /* GLAE eq. 3 */
        for (int j = threadIdx.x; j < k; j += 32) {
            const double p = pr[j] * inv; /* the lane's own store above: no sync needed */
            pr[j] = (float)p;
            yhat += j * p;
        }
        yhat = glae_warp_sum(yhat);
        if (threadIdx.x == 0) {
            const double kl = zlogz[r / group] - (zx - zs * lse); /* LAE eq. 1, GLAE eq. 2 */
            const double er = fabs((double)y[r / group] - yhat);  /* LAE eq. 2, GLAE eq. 4 */
            double l = kl;
            if (mode == GLAE_LOSS_BASE) l += (double)lambda * er;            /* GLAE eq. 5 */
            else if (mode == GLAE_LOSS_LAE_CLS) l += (er - mae) * (er - mae); /* LAE eq. 4 */
            loss[r] = (float)l;
        }
    }
}

extern "C" int glae_ldl_loss_forward_cuda(glae_ctx *ctx, float *loss, float *prob,
                                          const float *logits, const float *z, const float *y,
                                          int64_t rows, int group, int k, int mode, float lambda,
                                          float mae) {
    const char *fn = "ldl_loss_forward_cuda";
    GLAE_STREAM(ctx, fn, st);
    GLAE_TRY(glae_check_ldl_loss(fn, rows, group, k, mode, lambda, mae));
    if (rows == 0) return GLAE_OK;
    const int64_t n = rows / group;
    double *zlogz;
    GLAE_TRY(glae_cuda_workspace(ctx, (size_t)n * sizeof(double), (void **)&zlogz));
    zlogz_k<<<glae_warp_grid(n), dim3(32, 8), 0, st>>>(zlogz, z, n, k);
    GLAE_LAUNCHED();
    ldl_fwd_k<<<glae_warp_grid(rows), dim3(32, 8), 0, st>>>(loss, prob, logits, z, y, zlogz, rows,
                                                            group, k, mode, lambda, mae);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* g_j = dloss * (S p_j - z_j + c p_j (j - y_hat)), see loss.c */
__global__ static void ldl_bwd_k(float *dlogits, const float *dloss, const float *prob,
                                 const float *z, const float *y, int64_t rows, int group, int k,
                                 int mode, float lambda, float mae) {
    GLAE_FOR_ROWS(r, rows) {
        const float *pr = prob + r * k;
        const float *zr = z + (r / group) * k;
        float *g = dlogits + r * k;
        double s = 0.0, yhat = 0.0;
        for (int j = threadIdx.x; j < k; j += 32) {
            s += zr[j];
            yhat += j * (double)pr[j];
        }
        s = glae_warp_sum(s);
        yhat = glae_warp_sum(yhat);
        double c = 0.0;
        if (mode != GLAE_LOSS_KL) {
            const double e = yhat - (double)y[r / group];
            const double sg = (e > 0.0) - (e < 0.0); /* 0 at the kink, like PyTorch's abs */
            c = mode == GLAE_LOSS_BASE ? (double)lambda * sg : 2.0 * (fabs(e) - (double)mae) * sg;
        }
        const double d = dloss[r];
        for (int j = threadIdx.x; j < k; j += 32) {
            const double p = pr[j];
            g[j] = (float)(d * (s * p - zr[j] + c * p * (j - yhat)));
        }
    }
}

extern "C" int glae_ldl_loss_backward_cuda(glae_ctx *ctx, float *dlogits, const float *dloss,
                                           const float *prob, const float *z, const float *y,
                                           int64_t rows, int group, int k, int mode, float lambda,
                                           float mae) {
    const char *fn = "ldl_loss_backward_cuda";
    GLAE_STREAM(ctx, fn, st);
    GLAE_TRY(glae_check_ldl_loss(fn, rows, group, k, mode, lambda, mae));
    if (rows == 0) return GLAE_OK;
    ldl_bwd_k<<<glae_warp_grid(rows), dim3(32, 8), 0, st>>>(dlogits, dloss, prob, z, y, rows, group,
                                                            k, mode, lambda, mae);
    GLAE_LAUNCHED();
    return GLAE_OK;
}
