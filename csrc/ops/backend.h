/* The backend op table: one function pointer per layer op, with the signatures of ops.h
 * (a leading ctx everywhere, also for the few CPU functions that take none). Model code
 * (nn/resnet.c, head.c, model.c) calls every op through ctx->ops, so the same
 * orchestration runs on the CPU table (the readable reference kernels) or on the CUDA
 * table (the `_cuda` twins, device pointers). Host code in the model never loops over
 * activations itself: such loops are ops here (fill, flatten_nchw, avg2). */
#ifndef GLAE_BACKEND_H
#define GLAE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/ctx.h"
#include "ops/ops.h"

/* copy directions; the CPU table treats them all as memcpy */
enum { GLAE_COPY_H2D = 0, GLAE_COPY_D2H = 1, GLAE_COPY_D2D = 2 };

typedef struct glae_backend {
    const char *name; /* "cpu" or "cuda" */
    /* memory: device allocations (zeroed), copies, waiting for queued work. A D2H copy
     * returns once the host data is ready. */
    int (*alloc)(glae_ctx *ctx, void **ptr, size_t bytes);
    void (*free)(glae_ctx *ctx, void *ptr);
    int (*memset)(glae_ctx *ctx, void *dst, int value, size_t bytes);
    int (*copy)(glae_ctx *ctx, void *dst, const void *src, size_t bytes, int kind);
    int (*sync)(glae_ctx *ctx);
    /* layers (ops.h) */
    int (*conv2d_forward)(glae_ctx *ctx, float *out, const float *in, const float *weight,
                          const float *bias, const glae_conv2d_shape *s);
    int (*conv2d_backward)(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                           const float *dout, const float *in, const float *weight,
                           const glae_conv2d_shape *s);
    int (*batchnorm_forward)(glae_ctx *ctx, float *out, float *save_mean, float *save_invstd,
                             const float *in, const float *gamma, const float *beta,
                             float *running_mean, float *running_var, int64_t rows, int c,
                             float momentum, float eps, int training);
    int (*batchnorm_backward)(glae_ctx *ctx, float *din, float *dgamma, float *dbeta,
                              const float *dout, const float *in, const float *save_mean,
                              const float *save_invstd, const float *gamma, int64_t rows, int c,
                              int training);
    int (*relu_forward)(glae_ctx *ctx, float *out, const float *in, int64_t n);
    int (*relu_backward)(glae_ctx *ctx, float *din, const float *dout, const float *out,
                         int64_t n);
    int (*add_forward)(glae_ctx *ctx, float *out, const float *a, const float *b, int64_t n);
    int (*add_backward)(glae_ctx *ctx, float *da, float *db, const float *dout, int64_t n);
    int (*maxpool2d_forward)(glae_ctx *ctx, float *out, int32_t *argmax, const float *in,
                             const glae_pool_shape *s);
    int (*maxpool2d_backward)(glae_ctx *ctx, float *din, const float *dout,
                              const int32_t *argmax, const glae_pool_shape *s);
    int (*avgpool_forward)(glae_ctx *ctx, float *out, const float *in, int n, int hw, int c);
    int (*avgpool_backward)(glae_ctx *ctx, float *din, const float *dout, int n, int hw, int c);
    int (*linear_forward)(glae_ctx *ctx, float *out, const float *in, const float *weight,
                          const float *bias, int n, int in_f, int out_f);
    int (*linear_backward)(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                           const float *dout, const float *in, const float *weight, int n,
                           int in_f, int out_f);
    int (*pixel_shuffle_forward)(glae_ctx *ctx, float *out, const float *in, int n, int h, int w,
                                 int c_in, int r);
    int (*pixel_shuffle_backward)(glae_ctx *ctx, float *din, const float *dout, int n, int h,
                                  int w, int c_in, int r);
    int (*softmax_forward)(glae_ctx *ctx, float *out, const float *in, int64_t rows, int k);
    int (*softmax_backward)(glae_ctx *ctx, float *din, const float *dout, const float *out,
                            int64_t rows, int k);
    int (*hflip_forward)(glae_ctx *ctx, float *out, const float *in, int n, int h, int w, int c);
    /* small ops that replace host loops of the model code (ops/util.c) */
    int (*fill)(glae_ctx *ctx, float *out, float value, int64_t n);
    int (*flatten_nchw_forward)(glae_ctx *ctx, float *out, const float *in, int n, int64_t p,
                                int c);
    int (*flatten_nchw_backward)(glae_ctx *ctx, float *din, const float *dout, int n, int64_t p,
                                 int c);
    int (*avg2_forward)(glae_ctx *ctx, float *out, const float *a, const float *b, int64_t n);
    int (*normalise_u8)(glae_ctx *ctx, float *out, const uint8_t *in, int64_t n, int norm);
    /* mixed precision: bf16 activations (ops.h, bf16.c / bf16.cu) */
    int (*f32_to_bf16)(glae_ctx *ctx, glae_bf16 *out, const float *in, int64_t n);
    int (*bf16_to_f32)(glae_ctx *ctx, float *out, const glae_bf16 *in, int64_t n);
    int (*conv2d_forward_bf16)(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *in,
                               const float *weight, const float *bias, const glae_conv2d_shape *s);
    int (*conv2d_backward_bf16)(glae_ctx *ctx, glae_bf16 *din, float *dweight, float *dbias,
                                const glae_bf16 *dout, const glae_bf16 *in, const float *weight,
                                const glae_conv2d_shape *s);
    int (*bn_act_forward_bf16)(glae_ctx *ctx, glae_bf16 *out, float *save_mean,
                               float *save_invstd, const glae_bf16 *in, const glae_bf16 *residual,
                               const float *gamma, const float *beta, float *running_mean,
                               float *running_var, int64_t rows, int c, float momentum, float eps,
                               int training, int relu);
    int (*bn_act_backward_bf16)(glae_ctx *ctx, glae_bf16 *din, glae_bf16 *dres, float *dgamma,
                                float *dbeta, const glae_bf16 *dout, const glae_bf16 *out,
                                const glae_bf16 *in, const float *save_mean,
                                const float *save_invstd, const float *gamma, int64_t rows, int c,
                                int training, int relu);
    int (*add_forward_bf16)(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *a, const glae_bf16 *b,
                            int64_t n);
    int (*maxpool2d_forward_bf16)(glae_ctx *ctx, glae_bf16 *out, int32_t *argmax,
                                  const glae_bf16 *in, const glae_pool_shape *s);
    int (*maxpool2d_backward_bf16)(glae_ctx *ctx, glae_bf16 *din, const glae_bf16 *dout,
                                   const int32_t *argmax, const glae_pool_shape *s);
    /* losses (loss.h) */
    int (*label_distribution)(glae_ctx *ctx, float *z, const float *y, const float *sigma,
                              float sigma0, int64_t n, int k, int normalize);
    int (*ldl_loss_forward)(glae_ctx *ctx, float *loss, float *prob, const float *logits,
                            const float *z, const float *y, int64_t rows, int group, int k,
                            int mode, float lambda, float mae);
    int (*ldl_loss_backward)(glae_ctx *ctx, float *dlogits, const float *dloss,
                             const float *prob, const float *z, const float *y, int64_t rows,
                             int group, int k, int mode, float lambda, float mae);
    /* inference (nn/route.h) */
    int (*expected_age)(glae_ctx *ctx, float *age, const float *p, int64_t rows, int k);
    int (*kl_rows)(glae_ctx *ctx, float *out, const float *p, const float *q, int64_t rows,
                   int k);
    int (*adaptive_route)(glae_ctx *ctx, float *prob, float *age, int32_t *choice, float *ups,
                          const float *p_van, const float *p_van_flip, const float *p_bal,
                          const float *p_bal_flip, int64_t n, int k, int mode, int flip_average);
    /* optimiser (train/optim.h) */
    int (*sgd_step)(glae_ctx *ctx, float *params, float *momentum_buf, const float *grads,
                    size_t begin, size_t end, const uint8_t *no_decay_mask, float lr,
                    float momentum, float dampening, float wd, int nesterov, int first_step);
} glae_backend;

extern const glae_backend glae_backend_cpu;
#ifdef GLAE_WITH_CUDA
extern const glae_backend glae_backend_cuda;
#endif

#endif
