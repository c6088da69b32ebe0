/* Small ops that used to be plain loops in the model code (head.c, model.c). As ops they
 * run on whichever backend the model's ctx holds; these CPU versions are those loops. */
#include "ops.h"

int glae_fill(glae_ctx *ctx, float *out, float value, int64_t n) {
    (void)ctx;
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "fill: negative size %lld", (long long)n);
    for (int64_t i = 0; i < n; i++) out[i] = value;
    return GLAE_OK;
}

static int check_flat(const char *fn, int n, int64_t p, int c) {
    if (n < 0 || p < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (%d, %lld, %d)", fn, n, (long long)p, c);
    return GLAE_OK;
}

int glae_flatten_nchw_forward(glae_ctx *ctx, float *out, const float *in, int n, int64_t p, int c) {
    (void)ctx;
    GLAE_TRY(check_flat("flatten_nchw_forward", n, p, c));
    for (int i = 0; i < n; i++)
        for (int64_t q = 0; q < p; q++)
            for (int k = 0; k < c; k++)
                out[((int64_t)i * c + k) * p + q] = in[((int64_t)i * p + q) * c + k];
    return GLAE_OK;
}

int glae_flatten_nchw_backward(glae_ctx *ctx, float *din, const float *dout, int n, int64_t p,
                               int c) {
    (void)ctx;
    GLAE_TRY(check_flat("flatten_nchw_backward", n, p, c));
    for (int i = 0; i < n; i++)
        for (int64_t q = 0; q < p; q++)
            for (int k = 0; k < c; k++)
                din[((int64_t)i * p + q) * c + k] = dout[((int64_t)i * c + k) * p + q];
    return GLAE_OK;
}

int glae_avg2_forward(glae_ctx *ctx, float *out, const float *a, const float *b, int64_t n) {
    (void)ctx;
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "avg2_forward: negative size %lld", (long long)n);
    for (int64_t i = 0; i < n; i++) out[i] = 0.5f * (a[i] + b[i]);
    return GLAE_OK;
}
