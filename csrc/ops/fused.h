/* Fused inference layers (fused.c, fused.cu; the oneDNN backend's in onednn.c): what
 * deployment engines run in place of a convolution, its batch norm, the residual add and
 * the ReLU when the batch norm uses its running statistics (inference, a frozen backbone).
 *
 * conv2d_bn_act_forward: out = act(BN_eval(conv(in, weight) + bias) + residual), BN_eval
 * with running_mean / running_var as glae_batchnorm_forward(training = 0) computes it,
 * residual NULL for none, act = ReLU when relu != 0. save_mean / save_invstd (C_out) are
 * written as that batch norm writes them (the running mean and 1/sqrt(var + eps)). The
 * reference runs the three ops in turn (the same bits as calling them); the oneDNN
 * backend folds the batch norm into the convolution's weights and bias and runs one
 * primitive with the add and the ReLU as post-ops, which rounds differently (~1e-6). */
#ifndef GLAE_OPS_FUSED_H
#define GLAE_OPS_FUSED_H

#include "core/ctx.h"
#include "core/status.h"
#include "ops/ops.h"

int glae_conv2d_bn_act_forward(glae_ctx *ctx, float *out, float *save_mean, float *save_invstd,
                               const float *in, const float *residual, const float *weight,
                               const float *bias, const float *gamma, const float *beta,
                               const float *running_mean, const float *running_var, float eps,
                               int relu, const glae_conv2d_shape *s);

/* the ops of this header in the op table (ops/backend.h) */
#define GLAE_OPS_FUSED(X) X(conv2d_bn_act_forward)

#endif
