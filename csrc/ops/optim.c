/* SGD with momentum, dampening, Nesterov and (masked) weight decay: torch.optim.SGD. */
#include "ops/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/status.h"

#define SGD_OMP_MIN 32768 /* below this, a thread team costs more than it saves */

int glae_sgd_step(glae_ctx *ctx, float *params, float *momentum_buf, const float *grads,
                  size_t begin, size_t end, const uint8_t *no_decay_mask, float lr, float momentum,
                  float dampening, float wd, int nesterov, int first_step) {
    (void)ctx; /* the CPU needs no handle; the signature is the twins' */
    /* the same validation as torch.optim.SGD.__init__ (NaN fails every comparison) */
    if (!(lr >= 0.0f)) return glae_fail(GLAE_ERR_VALUE, "sgd_step: invalid learning rate %g", lr);
    if (!(momentum >= 0.0f))
        return glae_fail(GLAE_ERR_VALUE, "sgd_step: invalid momentum %g", momentum);
    if (!(wd >= 0.0f))
        return glae_fail(GLAE_ERR_VALUE, "sgd_step: invalid weight_decay %g", wd);
    if (!isfinite(dampening))
        return glae_fail(GLAE_ERR_VALUE, "sgd_step: invalid dampening %g", dampening);
    if (nesterov && (momentum <= 0.0f || dampening != 0.0f))
        return glae_fail(GLAE_ERR_VALUE,
                         "sgd_step: Nesterov momentum requires a momentum and zero dampening");
    if (begin > end)
        return glae_fail(GLAE_ERR_VALUE, "sgd_step: begin %zu > end %zu", begin, end);
    if (begin == end) return GLAE_OK;
    if (!params || !grads) return glae_fail(GLAE_ERR_VALUE, "sgd_step: params/grads is NULL");
    if (momentum != 0.0f && !momentum_buf)
        return glae_fail(GLAE_ERR_VALUE, "sgd_step: momentum > 0 needs a momentum buffer");

    /* PyTorch passes alpha = 1 - dampening as a Python float, cast to the tensor's dtype */
    const float one_m_damp = (float)(1.0 - (double)dampening);
    const int64_t b = (int64_t)begin, e = (int64_t)end;
    const int decay = wd != 0.0f, use_mom = momentum != 0.0f;

#pragma omp parallel for schedule(static) if (e - b > SGD_OMP_MIN)
    for (int64_t i = b; i < e; i++) {
        float d = grads[i];
        if (decay && !(no_decay_mask && no_decay_mask[i])) d = d + wd * params[i];
        if (use_mom) {
            float buf = first_step ? d : momentum * momentum_buf[i] + one_m_damp * d;
            momentum_buf[i] = buf;
            d = nesterov ? d + momentum * buf : buf;
        }
        params[i] = params[i] - lr * d;
    }
    return GLAE_OK;
}

int glae_sgd_no_decay_mask(const glae_params *p, uint8_t *mask) {
    if (!p || !mask) return glae_fail(GLAE_ERR_VALUE, "sgd_no_decay_mask: NULL argument");
    memset(mask, 0, p->n);
    for (int t = 0; t < p->count; t++) {
        const glae_param_info *in = &p->info[t];
        if ((in->flags & GLAE_P_BUFFER) || !(in->flags & GLAE_P_NO_DECAY)) continue;
        memset(mask + in->offset, 1, (size_t)in->numel);
    }
    return GLAE_OK;
}

int glae_sgd_no_decay_mask_on(glae_ctx *ctx, const glae_params *p, uint8_t **mask) {
    void *dev = NULL;
    *mask = NULL;
    GLAE_TRY(ctx->dev->alloc(ctx, &dev, p->n));
    uint8_t *host = malloc(p->n ? p->n : 1);
    int st = host ? glae_sgd_no_decay_mask(p, host)
                  : glae_fail(GLAE_ERR_MEMORY, "no-decay mask: out of memory");
    if (!st) st = ctx->dev->copy(ctx, dev, host, p->n, GLAE_COPY_H2D);
    if (!st) st = ctx->dev->sync(ctx); /* the host copy is freed next */
    free(host);
    if (st) {
        ctx->dev->free(ctx, dev);
        return st;
    }
    *mask = dev;
    return GLAE_OK;
}
