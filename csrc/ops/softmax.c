/* Softmax and log-softmax over the last axis of (rows, K), numerically stable: the row
 * maximum is subtracted before exp, and the normaliser is summed in double. */
#include <math.h>

#include "ops/ops.h"

#define CHECK(fn, rows, k)                                                                 \
    do {                                                                                   \
        if ((rows) < 0 || (k) < 0)                                                         \
            return glae_fail(GLAE_ERR_VALUE, fn ": negative size (rows %lld, k %d)",       \
                             (long long)(rows), (k));                                      \
    } while (0)

static float row_max(const float *x, int k) {
    float m = -INFINITY;
    for (int j = 0; j < k; j++)
        if (x[j] > m || isnan(x[j])) m = x[j];
    return m;
}

int glae_softmax_forward(glae_ctx *ctx, float *out, const float *in, int64_t rows, int k) {
    (void)ctx;
    CHECK("softmax_forward", rows, k);
#pragma omp parallel for schedule(static) if (rows * k > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = in + r * k;
        float *y = out + r * k;
        const float m = row_max(x, k);
        /* an all -inf row has no finite maximum: shift by 0 to get NaN like PyTorch */
        const float shift = isinf(m) && m < 0 ? 0.0f : m;
        double s = 0.0;
        for (int j = 0; j < k; j++) {
            y[j] = expf(x[j] - shift);
            s += y[j];
        }
        const double inv = 1.0 / s;
        for (int j = 0; j < k; j++) y[j] = (float)(y[j] * inv);
    }
    return GLAE_OK;
}

/* d/dx softmax: din = y * (dout - sum(dout * y)) */
int glae_softmax_backward(glae_ctx *ctx, float *din, const float *dout, const float *out,
                          int64_t rows, int k) {
    (void)ctx;
    CHECK("softmax_backward", rows, k);
#pragma omp parallel for schedule(static) if (rows * k > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = dout + r * k, *y = out + r * k;
        float *d = din + r * k;
        double dot = 0.0;
        for (int j = 0; j < k; j++) dot += (double)g[j] * y[j];
        for (int j = 0; j < k; j++) d[j] = (float)(y[j] * (g[j] - dot));
    }
    return GLAE_OK;
}

/* log_softmax(x) = x - m - log(sum exp(x - m)) */
int glae_log_softmax_forward(glae_ctx *ctx, float *out, const float *in, int64_t rows, int k) {
    (void)ctx;
    CHECK("log_softmax_forward", rows, k);
#pragma omp parallel for schedule(static) if (rows * k > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = in + r * k;
        float *y = out + r * k;
        const float m = row_max(x, k);
        const float shift = isinf(m) && m < 0 ? 0.0f : m;
        double s = 0.0;
        for (int j = 0; j < k; j++) s += exp((double)x[j] - shift);
        const double lse = shift + log(s);
        for (int j = 0; j < k; j++) y[j] = (float)((double)x[j] - lse);
    }
    return GLAE_OK;
}

/* d/dx log_softmax: din = dout - exp(y) * sum(dout) */
int glae_log_softmax_backward(glae_ctx *ctx, float *din, const float *dout, const float *out,
                              int64_t rows, int k) {
    (void)ctx;
    CHECK("log_softmax_backward", rows, k);
#pragma omp parallel for schedule(static) if (rows * k > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = dout + r * k, *y = out + r * k;
        float *d = din + r * k;
        double s = 0.0;
        for (int j = 0; j < k; j++) s += g[j];
        for (int j = 0; j < k; j++) d[j] = (float)(g[j] - exp((double)y[j]) * s);
    }
    return GLAE_OK;
}
