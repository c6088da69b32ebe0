/* Element-wise layers: ReLU, the residual add, the flip, SiLU, sigmoid, channel scale. */
#include <math.h>
#include <stdlib.h>
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

/* exp(x) for the SiLU / sigmoid loops in a form the compiler vectorises (libm's expf is a
 * call per element, which left SiLU at a fifth of EfficientNetV2's CPU inference time):
 * x = k ln2 + r with |r| <= ln2 / 2 (ln2 split in two for an exact k ln2), a degree-6
 * polynomial for e^r (Cephes' expf coefficients, about 1 ulp), then 2^k put into the
 * exponent bits. x is clamped to [-87.3, 88] (k from -126 to 127, normal floats): the
 * results at the ends (1.2e-38, 1.7e38) are what the callers' 1 / (1 + e) needs (1 or 0
 * to float32's precision). NaN passes the clamps and stays NaN. */
static inline float exp_poly(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.3f ? -87.3f : x;
    const float k = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.0f;
    union { int32_t i; float f; } e = {.i = ((int32_t)k + 127) << 23};
    return y * e.f;
}

int glae_silu_forward(glae_ctx *ctx, float *out, const float *in, int64_t n) {
    (void)ctx;
    CHECK_N(n, "silu_forward");
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) out[i] = in[i] / (1.0f + exp_poly(-in[i]));
    return GLAE_OK;
}

/* d/dx x s(x) = s(x) (1 + x (1 - s(x))) */
int glae_silu_backward(glae_ctx *ctx, float *din, const float *dout, const float *in, int64_t n) {
    (void)ctx;
    CHECK_N(n, "silu_backward");
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        const float sg = 1.0f / (1.0f + exp_poly(-in[i]));
        din[i] = dout[i] * (sg * (1.0f + in[i] * (1.0f - sg)));
    }
    return GLAE_OK;
}

int glae_sigmoid_forward(glae_ctx *ctx, float *out, const float *in, int64_t n) {
    (void)ctx;
    CHECK_N(n, "sigmoid_forward");
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) out[i] = 1.0f / (1.0f + exp_poly(-in[i]));
    return GLAE_OK;
}

int glae_sigmoid_backward(glae_ctx *ctx, float *din, const float *dout, const float *out,
                          int64_t n) {
    (void)ctx;
    CHECK_N(n, "sigmoid_backward");
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) din[i] = dout[i] * (out[i] * (1.0f - out[i]));
    return GLAE_OK;
}

static int check_scale(const char *fn, int n, int64_t hw, int c) {
    if (n < 0 || hw < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (%d, %lld, %d)", fn, n, (long long)hw, c);
    return GLAE_OK;
}

int glae_channel_scale_forward(glae_ctx *ctx, float *out, const float *in, const float *scale,
                               int n, int64_t hw, int c) {
    (void)ctx;
    GLAE_TRY(check_scale("channel_scale_forward", n, hw, c));
#pragma omp parallel for schedule(static) if ((int64_t)n * hw * c > 65536)
    for (int64_t r = 0; r < (int64_t)n * hw; r++) {
        const float *s = scale + (r / (hw ? hw : 1)) * c;
        for (int j = 0; j < c; j++) out[r * c + j] = in[r * c + j] * s[j];
    }
    return GLAE_OK;
}

int glae_channel_scale_backward(glae_ctx *ctx, float *din, float *dscale, const float *dout,
                                const float *in, const float *scale, int n, int64_t hw, int c) {
    (void)ctx;
    GLAE_TRY(check_scale("channel_scale_backward", n, hw, c));
    int oom = 0;
#pragma omp parallel for schedule(static) reduction(| : oom) if ((int64_t)n * hw * c > 65536)
    for (int i = 0; i < n; i++) {
        const float *g = dout + (int64_t)i * hw * c, *x = in + (int64_t)i * hw * c;
        if (din) {
            float *d = din + (int64_t)i * hw * c;
            const float *s = scale + (int64_t)i * c;
            for (int64_t p = 0; p < hw; p++)
                for (int j = 0; j < c; j++) d[p * c + j] = g[p * c + j] * s[j];
        }
        if (!dscale) continue;
        double *acc = calloc((size_t)(c > 0 ? c : 1), sizeof(double));
        if (!acc) {
            oom = 1;
            continue;
        }
        for (int64_t p = 0; p < hw; p++)
            for (int j = 0; j < c; j++) acc[j] += (double)g[p * c + j] * x[p * c + j];
        for (int j = 0; j < c; j++) dscale[(int64_t)i * c + j] = (float)acc[j];
        free(acc);
    }
    return oom ? glae_fail(GLAE_ERR_MEMORY, "channel_scale_backward: out of memory") : GLAE_OK;
}
