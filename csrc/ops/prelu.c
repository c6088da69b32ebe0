/* PReLU, PyTorch semantics with one slope per channel (the channel is the last axis in
 * NHWC): out = x > 0 ? x : weight[c] * x. For nn.PReLU() with a single shared slope, call
 * with c = 1 and rows = the element count. */
#include <stdlib.h>

#include "ops/ops.h"

int glae_prelu_forward(glae_ctx *ctx, float *out, const float *in, const float *weight,
                       int64_t rows, int c) {
    (void)ctx;
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "prelu_forward: negative size (rows %lld, c %d)",
                         (long long)rows, c);
#pragma omp parallel for schedule(static) if (rows * c > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = in + r * c;
        float *y = out + r * c;
        for (int j = 0; j < c; j++) y[j] = x[j] > 0.0f ? x[j] : weight[j] * x[j];
    }
    return GLAE_OK;
}

#define PRELU_BLOCK 512 /* rows per partial sum of dweight (fixed: thread-count independent) */

/* din = x > 0 ? dout : weight * dout (PyTorch: the x == 0 side takes the slope);
 * dweight[c] += sum over x <= 0 of dout * x */
int glae_prelu_backward(glae_ctx *ctx, float *din, float *dweight, const float *dout,
                        const float *in, const float *weight, int64_t rows, int c) {
    (void)ctx;
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "prelu_backward: negative size (rows %lld, c %d)",
                         (long long)rows, c);
    if (din) {
#pragma omp parallel for schedule(static) if (rows * c > 65536)
        for (int64_t r = 0; r < rows; r++) {
            const float *x = in + r * c, *g = dout + r * c;
            float *d = din + r * c;
            for (int j = 0; j < c; j++) d[j] = x[j] > 0.0f ? g[j] : weight[j] * g[j];
        }
    }
    if (dweight && rows > 0 && c > 0) {
        const int64_t nb = (rows + PRELU_BLOCK - 1) / PRELU_BLOCK;
        double *part = calloc((size_t)(nb * c), sizeof(double));
        if (!part) return glae_fail(GLAE_ERR_MEMORY, "prelu_backward: out of memory");
#pragma omp parallel for schedule(static) if (rows * c > 65536)
        for (int64_t b = 0; b < nb; b++) {
            double *p = part + b * c;
            const int64_t r1 = (b + 1) * PRELU_BLOCK < rows ? (b + 1) * PRELU_BLOCK : rows;
            for (int64_t r = b * PRELU_BLOCK; r < r1; r++) {
                const float *x = in + r * c, *g = dout + r * c;
                for (int j = 0; j < c; j++)
                    if (!(x[j] > 0.0f)) p[j] += (double)g[j] * x[j];
            }
        }
        for (int j = 0; j < c; j++) {
            double acc = 0.0;
            for (int64_t b = 0; b < nb; b++) acc += part[b * c + j];
            dweight[j] += (float)acc;
        }
        free(part);
    }
    return GLAE_OK;
}
