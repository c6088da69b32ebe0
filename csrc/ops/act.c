/* Element-wise layers: ReLU and the residual add. */
#include <string.h>

#include "ops/ops.h"

#define CHECK_N(n, what)                                                         \
    do {                                                                         \
        if ((n) < 0) return glae_fail(GLAE_ERR_VALUE, what ": negative size %lld", \
                                      (long long)(n));                           \
    } while (0)

int glae_relu_forward(glae_ctx *ctx, float *out, const float *in, int64_t n) {
    (void)ctx;
    CHECK_N(n, "relu_forward");
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
    return GLAE_OK;
}

int glae_relu_backward(glae_ctx *ctx, float *din, const float *dout, const float *out, int64_t n) {
    (void)ctx;
    CHECK_N(n, "relu_backward");
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) din[i] = out[i] > 0.0f ? dout[i] : 0.0f;
    return GLAE_OK;
}

int glae_add_forward(glae_ctx *ctx, float *out, const float *a, const float *b, int64_t n) {
    (void)ctx;
    CHECK_N(n, "add_forward");
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    return GLAE_OK;
}

int glae_add_backward(glae_ctx *ctx, float *da, float *db, const float *dout, int64_t n) {
    (void)ctx;
    CHECK_N(n, "add_backward");
    if (da && da != dout) memcpy(da, dout, (size_t)n * sizeof(float));
    if (db && db != dout) memcpy(db, dout, (size_t)n * sizeof(float));
    return GLAE_OK;
}

int glae_hflip_forward(glae_ctx *ctx, float *out, const float *in, int n, int h, int w, int c) {
    (void)ctx;
    if (n < 0 || h < 0 || w < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "hflip: negative size (%d, %d, %d, %d)", n, h, w, c);
    if (out == in) return glae_fail(GLAE_ERR_VALUE, "hflip: out must not alias in");
#pragma omp parallel for schedule(static) if ((int64_t)n * h > 64)
    for (int64_t r = 0; r < (int64_t)n * h; r++)
        for (int x = 0; x < w; x++)
            memcpy(out + (r * w + x) * c, in + (r * w + (w - 1 - x)) * c, (size_t)c * sizeof(float));
    return GLAE_OK;
}
