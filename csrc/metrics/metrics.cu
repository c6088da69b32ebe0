/* The per-sample sums of MAE (GLAE eq. 12) and epsilon-error (GLAE eq. 14) on the GPU:
 * per-block double partial sums, added on the host in block order (deterministic). The
 * result is written to a HOST double and the call waits for the stream. The data checks
 * of metrics.c (finite ages in range, sigma > 0) are not repeated here. The other metrics
 * (CMAE, AAR, groups) are per-age bookkeeping on a few thousand values: the CPU does them. */
#include <stdlib.h>

#include "ops/kernels.cuh"

extern "C" {
#include "metrics/metrics.h"
}

#define MET_BLOCKS 256

__global__ static void metric_sum_k(double *part, const float *y, const float *yhat,
                                    const float *sigma, int64_t n) {
    __shared__ double sh[GLAE_BLOCK];
    double acc = 0.0;
    GLAE_FOR(i, n) {
        const double e = (double)yhat[i] - y[i];
        if (sigma) acc += exp(-e * e / (2.0 * (double)sigma[i] * sigma[i]));
        else acc += fabs(e);
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int s = GLAE_BLOCK / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

static int metric_sum(glae_ctx *ctx, const char *fn, double *sum, const float *y,
                      const float *yhat, const float *sigma, int64_t n) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, fn);
    if (!c) return GLAE_ERR_VALUE;
    if (!sum) return glae_fail(GLAE_ERR_VALUE, "%s: result pointer is NULL", fn);
    if (n <= 0) return glae_fail(GLAE_ERR_VALUE, "%s: n must be > 0, got %lld", fn, (long long)n);
    const unsigned blocks = glae_grid(n) < MET_BLOCKS ? glae_grid(n) : MET_BLOCKS;
    double *part, host[MET_BLOCKS];
    GLAE_TRY(glae_cuda_workspace(ctx, blocks * sizeof(double), (void **)&part));
    metric_sum_k<<<blocks, GLAE_BLOCK, 0, c->stream>>>(part, y, yhat, sigma, n);
    GLAE_LAUNCHED();
    GLAE_TRY(glae_cuda_d2h(ctx, host, part, blocks * sizeof(double)));
    double s = 0.0;
    for (unsigned b = 0; b < blocks; b++) s += host[b];
    *sum = s;
    return GLAE_OK;
}

extern "C" int glae_metric_mae_cuda(glae_ctx *ctx, double *mae, const float *y, const float *yhat,
                                    int64_t n) {
    double s;
    GLAE_TRY(metric_sum(ctx, "metric_mae_cuda", &s, y, yhat, NULL, n));
    *mae = s / (double)n; /* GLAE eq. 12 */
    return GLAE_OK;
}

extern "C" int glae_metric_epsilon_cuda(glae_ctx *ctx, double *eps, const float *y,
                                        const float *yhat, const float *sigma, int64_t n) {
    if (!sigma) return glae_fail(GLAE_ERR_VALUE, "metric_epsilon_cuda: sigma is NULL");
    double s;
    GLAE_TRY(metric_sum(ctx, "metric_epsilon_cuda", &s, y, yhat, sigma, n));
    *eps = 1.0 - s / (double)n; /* GLAE eq. 14 */
    return GLAE_OK;
}
