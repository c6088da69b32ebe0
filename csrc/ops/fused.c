/* Fused inference layers, the reference (fused.h): the three ops in turn, in place on out
 * (the eval batch norm, the add and the ReLU are elementwise). */
#include "ops/fused.h"

int glae_conv2d_bn_act_forward(glae_ctx *ctx, float *out, float *save_mean, float *save_invstd,
                               const float *in, const float *residual, const float *weight,
                               const float *bias, const float *gamma, const float *beta,
                               const float *running_mean, const float *running_var, float eps,
                               int relu, const glae_conv2d_shape *s) {
    if (!s) return glae_fail(GLAE_ERR_VALUE, "conv2d_bn_act_forward: shape is NULL");
    if (!running_mean || !running_var)
        return glae_fail(GLAE_ERR_VALUE, "conv2d_bn_act_forward: needs the running statistics");
    GLAE_TRY(glae_conv2d_forward(ctx, out, in, weight, bias, s));
    const int64_t rows = (int64_t)s->n * s->oh * s->ow, n = rows * s->c_out;
    /* training = 0 reads the running statistics and writes neither */
    GLAE_TRY(glae_batchnorm_forward(ctx, out, save_mean, save_invstd, out, gamma, beta,
                                    (float *)running_mean, (float *)running_var, rows, s->c_out,
                                    0.1f, eps, 0));
    if (residual) GLAE_TRY(glae_add_forward(ctx, out, out, residual, n));
    return relu ? glae_relu_forward(ctx, out, out, n) : GLAE_OK;
}
