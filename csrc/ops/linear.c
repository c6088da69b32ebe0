/* Fully connected layer, PyTorch layout: out (N, OUT) = in (N, IN) W^T + b, W (OUT, IN).
 * The products go through glae_sgemm, which splits them over the OpenMP threads. */
#include <string.h>

#include "core/blas.h"
#include "ops/ops.h"

static int check_sizes(const char *fn, int n, int in_f, int out_f) {
    if (n < 0 || in_f < 0 || out_f < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (n %d, in %d, out %d)", fn, n, in_f,
                         out_f);
    return GLAE_OK;
}

int glae_linear_forward(glae_ctx *ctx, float *out, const float *in, const float *weight,
                        const float *bias, int n, int in_f, int out_f) {
    (void)ctx;
    GLAE_TRY(check_sizes("linear_forward", n, in_f, out_f));
    if (n == 0 || out_f == 0) return GLAE_OK;
    /* start from the bias (or zero) and let the GEMM add the product (beta = 1) */
    for (int64_t i = 0; i < n; i++) {
        if (bias) memcpy(out + i * out_f, bias, sizeof(float) * (size_t)out_f);
        else memset(out + i * out_f, 0, sizeof(float) * (size_t)out_f);
    }
    if (in_f == 0) return GLAE_OK; /* empty product; BLAS rejects lda = 0 */
    glae_sgemm(0, 1, n, out_f, in_f, 1.0f, in, in_f, weight, in_f, 1.0f, out, out_f);
    return GLAE_OK;
}

int glae_linear_backward(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                         const float *dout, const float *in, const float *weight, int n,
                         int in_f, int out_f) {
    (void)ctx;
    GLAE_TRY(check_sizes("linear_backward", n, in_f, out_f));
    if (din && n > 0 && in_f > 0) {
        if (out_f == 0) memset(din, 0, sizeof(float) * (size_t)n * (size_t)in_f);
        else /* din (N, IN) = dout (N, OUT) W (OUT, IN) */
            glae_sgemm(0, 0, n, in_f, out_f, 1.0f, dout, out_f, weight, in_f, 0.0f, din, in_f);
    }
    if (dweight && n > 0 && in_f > 0 && out_f > 0) /* dW (OUT, IN) += dout^T in */
        glae_sgemm(1, 0, out_f, in_f, n, 1.0f, dout, out_f, in, in_f, 1.0f, dweight, in_f);
    if (dbias) {
#pragma omp parallel for schedule(static) if ((int64_t)n * out_f > 65536)
        for (int j = 0; j < out_f; j++) {
            double acc = 0.0;
            for (int64_t i = 0; i < n; i++) acc += dout[i * out_f + j];
            dbias[j] += (float)acc;
        }
    }
    return GLAE_OK;
}
