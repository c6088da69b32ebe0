/* The oneDNN CPU backend (onednn.c): the CPU's cuDNN. Built when setup.py finds oneDNN
 * (GLAE_WITH_ONEDNN; the pip wheels onednn-cpu-gomp / onednn-devel-cpu-gomp), chosen per
 * context (glae_ctx_open_backend(..., GLAE_CPU_ONEDNN)). Its table (backend.c) is the
 * reference table with the ops oneDNN does faster replaced by primitives; every other op is
 * the reference kernel itself, and the reference stays the definition its parity tests
 * compare with (tests/test_backend_ops.py, the `dev` fixture).
 *
 * A context's oneDNN state (ctx->onednn): the CPU engine, a stream, and a cache of
 * primitives keyed by op, shape and thread count, each holding its memory objects and the
 * buffers of weights in the layout its primitive wants, so a call after the first plans and
 * allocates nothing. Scratchpads are the context's scratch (user scratchpad mode). */
#ifndef GLAE_ONEDNN_H
#define GLAE_ONEDNN_H

#include "core/ctx.h"
#include "ops/ops.h"

#ifdef GLAE_WITH_ONEDNN
/* the engine and stream of ctx (idempotent); freed by glae_onednn_ctx_free */
int glae_onednn_ctx_init(glae_ctx *ctx);
void glae_onednn_ctx_free(glae_ctx *ctx);
/* primitives cached in ctx (tests: a second call of a shape adds none) */
int glae_onednn_cache_size(const glae_ctx *ctx);
/* oneDNN's name of the implementation running conv forward for a shape ("" on error): the
 * ISA it chose, for bench/ and docs */
const char *glae_onednn_conv_impl(glae_ctx *ctx, const glae_conv2d_shape *s);

int glae_conv2d_forward_onednn(glae_ctx *ctx, float *out, const float *in, const float *weight,
                               const float *bias, const glae_conv2d_shape *s);
int glae_conv2d_backward_onednn(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                                const float *dout, const float *in, const float *weight,
                                const glae_conv2d_shape *s);
/* ops/fused.h's conv + eval batch norm (+ residual) (+ ReLU): the batch norm folded into the
 * weights (in the reorder, as per-channel scales) and bias, one primitive with the sum and
 * ReLU post-ops */
int glae_conv2d_bn_act_forward_onednn(glae_ctx *ctx, float *out, float *save_mean,
                                      float *save_invstd, const float *in, const float *residual,
                                      const float *weight, const float *bias, const float *gamma,
                                      const float *beta, const float *running_mean,
                                      const float *running_var, float eps, int relu,
                                      const glae_conv2d_shape *s);
#endif

#endif
