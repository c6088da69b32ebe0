/* Small ops that used to be plain loops in the model code (head.c, model.c). As ops they
 * run on whichever backend the model's ctx holds; these CPU versions are those loops. */
#include "ops/ops.h"

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

int glae_norm_coeffs(int norm, float scale[3], float offset[3]) {
    static const double mean[3] = {0.485, 0.456, 0.406}, sd[3] = {0.229, 0.224, 0.225};
    for (int c = 0; c < 3; c++) {
        if (norm == GLAE_NORM_GLAE) { /* exact in float */
            scale[c] = 1.0f / 128.0f; offset[c] = -127.5f / 128.0f;
        } else if (norm == GLAE_NORM_IMAGENET) {
            scale[c] = (float)(1.0 / (255.0 * sd[c])); offset[c] = (float)(-mean[c] / sd[c]);
        } else if (norm == GLAE_NORM_NONE) {
            scale[c] = 1.0f; offset[c] = 0.0f;
        } else {
            return glae_fail(GLAE_ERR_VALUE, "normalise: unknown normalisation %d", norm);
        }
    }
    return GLAE_OK;
}

/* Coefficient rows of 48 values (a multiple of 3 and of the vector width) so the loop
 * vectorises; C11 mode keeps gcc from contracting the multiply-add into an FMA. */
int glae_normalise_u8(glae_ctx *ctx, float *restrict out, const uint8_t *restrict in, int64_t n,
                      int norm) {
    (void)ctx;
    if (n < 0 || n % 3)
        return glae_fail(GLAE_ERR_VALUE, "normalise: %lld values is not a whole number of RGB pixels",
                         (long long)n);
    float s3[3], o3[3], sc[48], off[48];
    GLAE_TRY(glae_norm_coeffs(norm, s3, o3));
    for (int j = 0; j < 48; j++) {
        sc[j] = s3[j % 3];
        off[j] = o3[j % 3];
    }
    int64_t j0 = 0;
    for (; j0 + 48 <= n; j0 += 48)
        for (int j = 0; j < 48; j++) out[j0 + j] = (float)in[j0 + j] * sc[j] + off[j];
    for (int64_t j = j0; j < n; j++) out[j] = (float)in[j] * sc[j - j0] + off[j - j0];
    return GLAE_OK;
}
