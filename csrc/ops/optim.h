/* SGD exactly as torch.optim.SGD defines it, one fused pass over a range of the flat
 * parameter buffer (params.h: params, grads and momentum are parallel arrays). */
#ifndef GLAE_OPTIM_H
#define GLAE_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "core/ctx.h"
#include "core/params.h"

/* One SGD step on elements [begin, end) of params/momentum_buf/grads (all indexed from
 * the start of the flat buffer, so passing the head's range leaves the backbone frozen,
 * bit for bit). Per element, in float32 like PyTorch (docs/training-numerics.md):
 *     d   = g + wd * p                (skipped where wd == 0 or no_decay_mask[i] != 0)
 *     b   = d                          on the first step (PyTorch clones d into the buffer)
 *     b   = momentum * b + (1 - dampening) * d   afterwards
 *     d   = nesterov ? d + momentum * b : b      (momentum == 0: no buffer, d unchanged)
 *     p  -= lr * d
 * no_decay_mask: NULL (every element decays) or one byte per element of the whole buffer
 * (indexed like params), nonzero = excluded from weight decay (BN weights/biases, biases).
 * momentum_buf may be NULL only when momentum == 0. Same checks as PyTorch: lr, momentum
 * and weight_decay >= 0; nesterov needs momentum > 0 and dampening == 0. */
int glae_sgd_step(glae_ctx *ctx, float *params, float *momentum_buf, const float *grads,
                  size_t begin, size_t end, const uint8_t *no_decay_mask, float lr, float momentum,
                  float dampening, float wd, int nesterov, int first_step);

/* Fill mask[0 .. p->n) with 1 for tensors flagged GLAE_P_NO_DECAY, 0 otherwise: the
 * no_decay_mask glae_sgd_step expects for a registered model. */
int glae_sgd_no_decay_mask(const glae_params *p, uint8_t *mask);
/* The same mask in ctx's memory (ctx->dev->alloc'd; free it with ctx->dev->free): made on
 * the host, then copied, as every model that trains with SGD keeps it beside its params. */
int glae_sgd_no_decay_mask_on(glae_ctx *ctx, const glae_params *p, uint8_t **mask);

/* The ops of this header in the op table (ops/backend.h): glae_<op> here is the
 * reference, glae_<op>_cuda its twin with the same signature (ops_cuda.h). A new op of
 * this family adds its name here. */
#define GLAE_OPS_OPTIM(X) \
    X(sgd_step)

#endif
