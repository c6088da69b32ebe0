/* The CUDA twins of the CPU layers (ops.h, loss.h, nn/route.h, train/optim.h): the same
 * signatures with a `_cuda` suffix, every pointer a device pointer, ctx a CUDA context
 * (core/cuda_ctx.h). They validate sizes and arguments like the CPU versions, queue their
 * work on ctx's compute stream and return without waiting; values that only the data
 * can reveal (a NaN age, a negative probability, an argmax outside the image) are not
 * checked on the GPU, where a check would cost a device-to-host round trip.
 * Only built with the CUDA backend (GLAE_WITH_CUDA). See docs/cuda.md. */
#ifndef GLAE_OPS_CUDA_H
#define GLAE_OPS_CUDA_H

#include "core/cuda_ctx.h" /* first: under nvcc it includes the C++-aware CUDA headers */

#ifdef __cplusplus
extern "C" { /* the CPU headers below have no extern "C" of their own */
#endif

#include "nn/route.h"
#include "train/optim.h"
#include "ops/loss.h"
#include "ops/ops.h"

/* ---- conv2d (conv.cu, cuDNN): float32; FMA or TF32 math by ctx's mode -------------- */
int glae_conv2d_forward_cuda(glae_ctx *ctx, float *out, const float *in, const float *weight,
                             const float *bias, const glae_conv2d_shape *s);
int glae_conv2d_backward_cuda(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                              const float *dout, const float *in, const float *weight,
                              const glae_conv2d_shape *s);
/* bf16 activations, float32 master weights (converted to bf16 per call, as autocast
 * does), fp32 accumulation; dweight / dbias accumulate in float32. */
int glae_conv2d_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *in,
                                  const float *weight, const float *bias,
                                  const glae_conv2d_shape *s);
int glae_conv2d_backward_bf16_cuda(glae_ctx *ctx, glae_bf16 *din, float *dweight, float *dbias,
                                   const glae_bf16 *dout, const glae_bf16 *in,
                                   const float *weight, const glae_conv2d_shape *s);
/* dtype conversion (round to nearest even) */
int glae_f32_to_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, const float *in, int64_t n);
int glae_bf16_to_f32_cuda(glae_ctx *ctx, float *out, const glae_bf16 *in, int64_t n);

/* ---- mixed precision (ops.h; bf16.cu, max pool in layers.cu) --------------------------- */
int glae_bn_act_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, float *save_mean,
                                  float *save_invstd, const glae_bf16 *in,
                                  const glae_bf16 *residual, const float *gamma,
                                  const float *beta, float *running_mean, float *running_var,
                                  int64_t rows, int c, float momentum, float eps, int training,
                                  int relu);
int glae_bn_act_backward_bf16_cuda(glae_ctx *ctx, glae_bf16 *din, glae_bf16 *dres, float *dgamma,
                                   float *dbeta, const glae_bf16 *dout, const glae_bf16 *out,
                                   const glae_bf16 *in, const float *save_mean,
                                   const float *save_invstd, const float *gamma, int64_t rows,
                                   int c, int training, int relu);
int glae_add_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *a,
                               const glae_bf16 *b, int64_t n);
int glae_maxpool2d_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, int32_t *argmax,
                                     const glae_bf16 *in, const glae_pool_shape *s);
int glae_maxpool2d_backward_bf16_cuda(glae_ctx *ctx, glae_bf16 *din, const glae_bf16 *dout,
                                      const int32_t *argmax, const glae_pool_shape *s);

/* ---- layers.cu -------------------------------------------------------------------- */
int glae_batchnorm_forward_cuda(glae_ctx *ctx, float *out, float *save_mean, float *save_invstd,
                                const float *in, const float *gamma, const float *beta,
                                float *running_mean, float *running_var, int64_t rows, int c,
                                float momentum, float eps, int training);
int glae_batchnorm_backward_cuda(glae_ctx *ctx, float *din, float *dgamma, float *dbeta,
                                 const float *dout, const float *in, const float *save_mean,
                                 const float *save_invstd, const float *gamma, int64_t rows, int c,
                                 int training);
int glae_relu_forward_cuda(glae_ctx *ctx, float *out, const float *in, int64_t n);
int glae_relu_backward_cuda(glae_ctx *ctx, float *din, const float *dout, const float *out,
                            int64_t n);
int glae_add_forward_cuda(glae_ctx *ctx, float *out, const float *a, const float *b, int64_t n);
int glae_add_backward_cuda(glae_ctx *ctx, float *da, float *db, const float *dout, int64_t n);
int glae_maxpool2d_forward_cuda(glae_ctx *ctx, float *out, int32_t *argmax, const float *in,
                                const glae_pool_shape *s);
int glae_maxpool2d_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                 const int32_t *argmax, const glae_pool_shape *s);
int glae_avgpool_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n, int hw, int c);
int glae_avgpool_backward_cuda(glae_ctx *ctx, float *din, const float *dout, int n, int hw, int c);
int glae_linear_forward_cuda(glae_ctx *ctx, float *out, const float *in, const float *weight,
                             const float *bias, int n, int in_f, int out_f);
int glae_linear_backward_cuda(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                              const float *dout, const float *in, const float *weight, int n,
                              int in_f, int out_f);
int glae_pixel_shuffle_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n, int h,
                                    int w, int c_in, int r);
int glae_pixel_shuffle_backward_cuda(glae_ctx *ctx, float *din, const float *dout, int n, int h,
                                     int w, int c_in, int r);
int glae_softmax_forward_cuda(glae_ctx *ctx, float *out, const float *in, int64_t rows, int k);
int glae_softmax_backward_cuda(glae_ctx *ctx, float *din, const float *dout, const float *out,
                               int64_t rows, int k);
int glae_log_softmax_forward_cuda(glae_ctx *ctx, float *out, const float *in, int64_t rows, int k);
int glae_log_softmax_backward_cuda(glae_ctx *ctx, float *din, const float *dout, const float *out,
                                   int64_t rows, int k);
int glae_prelu_forward_cuda(glae_ctx *ctx, float *out, const float *in, const float *weight,
                            int64_t rows, int c);
int glae_prelu_backward_cuda(glae_ctx *ctx, float *din, float *dweight, const float *dout,
                             const float *in, const float *weight, int64_t rows, int c);
int glae_hflip_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n, int h, int w, int c);

/* ---- util.cu (ops.h: the small ops of the model code) ------------------------------ */
int glae_fill_cuda(glae_ctx *ctx, float *out, float value, int64_t n);
int glae_flatten_nchw_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n, int64_t p,
                                   int c);
int glae_flatten_nchw_backward_cuda(glae_ctx *ctx, float *din, const float *dout, int n,
                                    int64_t p, int c);
int glae_avg2_forward_cuda(glae_ctx *ctx, float *out, const float *a, const float *b, int64_t n);
int glae_normalise_u8_cuda(glae_ctx *ctx, float *out, const uint8_t *in, int64_t n, int norm);

/* ---- loss.cu (loss.h) --------------------------------------------------------------- */
int glae_label_distribution_cuda(glae_ctx *ctx, float *z, const float *y, const float *sigma,
                                 float sigma0, int64_t n, int k, int normalize);
int glae_ldl_loss_forward_cuda(glae_ctx *ctx, float *loss, float *prob, const float *logits,
                               const float *z, const float *y, int64_t rows, int group, int k,
                               int mode, float lambda, float mae);
int glae_ldl_loss_backward_cuda(glae_ctx *ctx, float *dlogits, const float *dloss,
                                const float *prob, const float *z, const float *y, int64_t rows,
                                int group, int k, int mode, float lambda, float mae);

/* ---- nn/route.cu (route.h); the CPU versions take no ctx, the twins need the stream --- */
int glae_expected_age_cuda(glae_ctx *ctx, float *age, const float *p, int64_t rows, int k);
int glae_kl_rows_cuda(glae_ctx *ctx, float *out, const float *p, const float *q, int64_t rows,
                      int k);
int glae_adaptive_route_cuda(glae_ctx *ctx, float *prob, float *age, int32_t *choice, float *ups,
                             const float *p_van, const float *p_van_flip, const float *p_bal,
                             const float *p_bal_flip, int64_t n, int k, int mode,
                             int flip_average);

/* ---- train/optim.cu (optim.h) --------------------------------------------------------- */
int glae_sgd_step_cuda(glae_ctx *ctx, float *params, float *momentum_buf, const float *grads,
                       size_t begin, size_t end, const uint8_t *no_decay_mask, float lr,
                       float momentum, float dampening, float wd, int nesterov, int first_step);

/* ---- metrics/metrics.cu: the sums behind MAE (GLAE eq. 12) and epsilon-error (eq. 14) - */
int glae_metric_mae_cuda(glae_ctx *ctx, double *mae, const float *y, const float *yhat, int64_t n);
int glae_metric_epsilon_cuda(glae_ctx *ctx, double *eps, const float *y, const float *yhat,
                             const float *sigma, int64_t n);

#ifdef __cplusplus
}
#endif

#endif
