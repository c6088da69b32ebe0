/* The identity pre-training model (see pretrain.h). */
#include "nn/pretrain.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "nn/model.h" /* GLAE_INPUT_F32 */
#include "ops/amsoftmax.h"
#include "ops/backend.h"
#include "ops/check.h"
#include "ops/optim.h"

void glae_pretrain_config_default(glae_pretrain_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->backbone = 18;
    cfg->embed_dim = 512;
    cfg->num_ids = 2;
    cfg->s = GLAE_AMSOFTMAX_S;
    cfg->m = GLAE_AMSOFTMAX_M;
    cfg->device = GLAE_CPU;
}

static int check_config(const glae_pretrain_config *cfg) {
    const char *fn = "pretrain model";
    if (cfg->embed_dim < 1)
        return glae_fail(GLAE_ERR_VALUE, "%s: embed_dim must be >= 1, got %d", fn, cfg->embed_dim);
    if (cfg->num_ids < 2)
        return glae_fail(GLAE_ERR_VALUE, "%s: num_ids must be >= 2 (identities to tell apart), got %d",
                         fn, cfg->num_ids);
    if ((int64_t)cfg->num_ids * cfg->embed_dim > ((int64_t)1 << 40))
        return glae_fail(GLAE_ERR_VALUE, "%s: %d identities x %d dimensions is too large", fn,
                         cfg->num_ids, cfg->embed_dim);
    if (cfg->math < 0 || cfg->math > 2)
        return glae_fail(GLAE_ERR_VALUE, "%s: math must be 0 (fp32), 1 (tf32) or 2 (bf16), got %d",
                         fn, cfg->math);
    if (cfg->device != GLAE_CPU && cfg->device != GLAE_CUDA)
        return glae_fail(GLAE_ERR_VALUE, "%s: unknown device %d", fn, cfg->device);
#ifndef GLAE_WITH_CUDA
    if (cfg->device == GLAE_CUDA)
        return glae_fail(GLAE_ERR_RUNTIME, "%s: glae was built without CUDA (device='cuda')", fn);
#endif
    /* the op's own rule for s and m, before any memory is taken */
    return glae_check_amsoftmax(fn, 0, cfg->embed_dim, cfg->num_ids, cfg->s, cfg->m, 1);
}

int glae_pretrain_init(glae_pretrain_model *m, const glae_pretrain_config *cfg) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    GLAE_TRY(check_config(cfg));
    GLAE_TRY(glae_ctx_open(&m->ctx, cfg->device, cfg->cuda_device, cfg->math));
    if (m->ctx.device == GLAE_CUDA) m->arena.dev = &m->ctx;
    GLAE_TRY(glae_resnet_build(&m->net, &m->p, cfg->backbone));
    m->net.bf16 = cfg->math == 2;
    const int C = m->net.out_c, d = cfg->embed_dim;
    int64_t wshape[2] = {d, C}, cshape[2] = {cfg->num_ids, d};
    GLAE_TRY(glae_params_add(&m->p, "embedding.0.weight", 2, wshape, 0, GLAE_G_HEAD, &m->fc_w));
    GLAE_TRY(glae_bn_layer_add(&m->bn, &m->p, "embedding.1", d, GLAE_G_HEAD));
    GLAE_TRY(glae_params_add(&m->p, "amsoftmax.weight", 2, cshape, 0, GLAE_G_HEAD, &m->cls_w));
    GLAE_TRY(glae_params_alloc(&m->p));
    GLAE_TRY(glae_resnet_init(&m->net, &m->p, cfg->seed));
    /* PyTorch's Linear default for the embedding; BatchNorm1d weight 1, bias 0, var 1; the
     * class weights uniformly in a ball's cube (only their directions matter) */
    glae_init_uniform(&m->p, m->fc_w, cfg->seed, 1.0 / sqrt((double)C));
    glae_init_const(&m->p, m->bn.g, 1.0f);
    glae_init_const(&m->p, m->bn.b, 0.0f);
    glae_init_const(&m->p, m->bn.rm, 0.0f);
    glae_init_const(&m->p, m->bn.rv, 1.0f);
    glae_init_uniform(&m->p, m->cls_w, cfg->seed, 1.0 / sqrt((double)d));
    /* the weight-decay mask, made on the host and moved with the parameters */
    GLAE_TRY(glae_sgd_no_decay_mask_on(&m->ctx, &m->p, &m->no_decay));
    return glae_params_to_device(&m->p, &m->ctx);
}

void glae_pretrain_free(glae_pretrain_model *m) {
    if (m->no_decay && m->ctx.dev) m->ctx.dev->free(&m->ctx, m->no_decay);
    glae_params_free(&m->p);
    glae_arena_free(&m->arena);
    if (m->ctx.dev) glae_ctx_close(&m->ctx);
    memset(m, 0, sizeof *m);
}

/* The one allocation sequence, measured and then replayed (as model.c's plan_into). */
static int plan_into(glae_pretrain_model *m, glae_arena *a, int train, int n, int h, int w) {
    const int C = m->net.out_c, d = m->cfg.embed_dim, K = m->cfg.num_ids;
    GLAE_TRY(glae_resnet_plan(&m->net, a, n, h, w, train));
    ALLOC_F(m->xin, (int64_t)n * h * w * 3);
    m->xu8 = glae_arena_alloc(a, (size_t)n * h * w * 3);
    if (!m->xu8) return GLAE_ERR_MEMORY;
    ALLOC_F(m->pooled, (int64_t)n * C);
    ALLOC_F(m->h, (int64_t)n * d);
    ALLOC_F(m->emb, (int64_t)n * d);
    ALLOC_F(m->bn.mean, d);
    ALLOC_F(m->bn.invstd, d);
    m->labels = NULL;
    m->loss = m->prob = m->cos = m->dloss = m->demb = m->dh = m->dpooled = m->dfeat = NULL;
    m->mean_loss = NULL;
    if (!train) return GLAE_OK;
    m->labels = glae_arena_alloc(a, (size_t)n * sizeof(int32_t));
    if (!m->labels) return GLAE_ERR_MEMORY;
    ALLOC_F(m->loss, n);
    ALLOC_F(m->prob, (int64_t)n * K);
    ALLOC_F(m->cos, (int64_t)n * K);
    ALLOC_F(m->dloss, n);
    ALLOC_F(m->demb, (int64_t)n * d);
    ALLOC_F(m->dh, (int64_t)n * d);
    ALLOC_F(m->dpooled, (int64_t)n * C);
    ALLOC_F(m->dfeat, (int64_t)n * m->net.fh * m->net.fw * C);
    ALLOC_F(m->mean_loss, 1);
    return GLAE_OK;
}

static int plan(glae_pretrain_model *m, int train, int n, int h, int w) {
    if (m->plan_n == n && m->plan_train == train && m->plan_h == h && m->plan_w == w)
        return GLAE_OK;
    int fh, fw;
    GLAE_TRY(glae_resnet_out_size(h, w, &fh, &fw));
    m->plan_n = 0;
    glae_arena meas = {0};
    glae_arena_measure(&meas);
    GLAE_TRY(plan_into(m, &meas, train, n, h, w));
    if (meas.peak > m->arena.size) {
        GLAE_TRY(glae_arena_reserve(&m->arena, meas.peak));
        if (m->arena.size > m->peak_bytes) m->peak_bytes = m->arena.size;
    }
    glae_arena_reset(&m->arena);
    GLAE_TRY(plan_into(m, &m->arena, train, n, h, w));
    m->plan_train = train;
    m->plan_n = n;
    m->plan_h = h;
    m->plan_w = w;
    return GLAE_OK;
}

/* the caller's host batch into m->xin on the device: a float32 copy, or the uint8 bytes
 * and the normalisation on the device (model.c's stage_input) */
static int stage_input(glae_pretrain_model *m, const void *x, int xnorm, size_t values) {
    glae_ctx *ctx = &m->ctx;
    if (xnorm == GLAE_INPUT_F32)
        return ctx->dev->copy(ctx, m->xin, x, values * sizeof(float), GLAE_COPY_H2D);
    if (xnorm < GLAE_NORM_GLAE || xnorm > GLAE_NORM_NONE)
        return glae_fail(GLAE_ERR_VALUE, "pretrain model: unknown input format %d", xnorm);
    const uint8_t *src = x;
    if (ctx->device != GLAE_CPU) {
        GLAE_TRY(ctx->dev->copy(ctx, m->xu8, x, values, GLAE_COPY_H2D));
        src = m->xu8;
    }
    return ctx->ops->normalise_u8(ctx, m->xin, src, (int64_t)values, xnorm);
}

#define PP(i) glae_params_ptr(&m->p, (i))
#define PG(i) glae_params_grad(&m->p, (i))

/* backbone, pool, Linear, BatchNorm1d: m->emb */
static int embed_forward(glae_pretrain_model *m, int training) {
    glae_ctx *ctx = &m->ctx;
    const int n = m->plan_n, C = m->net.out_c, d = m->cfg.embed_dim;
    GLAE_TRY(glae_resnet_forward(ctx, &m->net, &m->p, m->xin, training));
    GLAE_TRY(ctx->ops->avgpool_forward(ctx, m->pooled, m->net.feat, n, m->net.fh * m->net.fw, C));
    GLAE_TRY(ctx->ops->linear_forward(ctx, m->h, m->pooled, PP(m->fc_w), NULL, n, C, d));
    return ctx->ops->batchnorm_forward(ctx, m->emb, m->bn.mean, m->bn.invstd, m->h, PP(m->bn.g),
                                       PP(m->bn.b), PP(m->bn.rm), PP(m->bn.rv), n, d,
                                       GLAE_BN_MOMENTUM, GLAE_BN_EPS, training);
}

static int check_batch(const char *fn, int n, int h, int w) {
    if (n < 1) return glae_fail(GLAE_ERR_VALUE, "%s: empty batch", fn);
    if (h < 1 || w < 1) return glae_fail(GLAE_ERR_VALUE, "%s: image size %dx%d", fn, h, w);
    return GLAE_OK;
}

int glae_pretrain_train_step(glae_pretrain_model *m, float *loss, const void *x, int xnorm, int n,
                             int h, int w, const int32_t *labels) {
    const char *fn = "pretrain train_step";
    GLAE_TRY(check_batch(fn, n, h, w));
    if (n < 2)
        return glae_fail(GLAE_ERR_VALUE, "%s: a batch of %d image: the embedding's BatchNorm1d "
                         "needs at least 2 per step", fn, n);
    const int K = m->cfg.num_ids, d = m->cfg.embed_dim, C = m->net.out_c;
    for (int i = 0; i < n; i++) /* on the host: the GPU kernels do not check labels */
        if (labels[i] < 0 || labels[i] >= K)
            return glae_fail(GLAE_ERR_VALUE, "%s: labels[%d] = %d is outside [0, %d) (num_ids)", fn,
                             i, (int)labels[i], K);
    GLAE_TRY(plan(m, 1, n, h, w));
    glae_ctx *ctx = &m->ctx;
    const glae_backend *ops = ctx->ops;
    GLAE_TRY(stage_input(m, x, xnorm, (size_t)n * h * w * 3));
    GLAE_TRY(ctx->dev->copy(ctx, m->labels, labels, (size_t)n * sizeof(int32_t), GLAE_COPY_H2D));
    GLAE_TRY(embed_forward(m, 1));
    GLAE_TRY(ops->amsoftmax_forward(ctx, m->loss, m->prob, m->cos, m->emb, m->labels, PP(m->cls_w),
                                    n, d, K, m->cfg.s, m->cfg.m));
    /* the batch mean (an average pool over one column sums in double) and its gradient */
    GLAE_TRY(ops->avgpool_forward(ctx, m->mean_loss, m->loss, 1, n, 1));
    GLAE_TRY(ops->fill(ctx, m->dloss, 1.0f / (float)n, n));
    GLAE_TRY(ops->amsoftmax_backward(ctx, m->demb, PG(m->cls_w), m->dloss, m->prob, m->cos, m->emb,
                                     m->labels, PP(m->cls_w), n, d, K, m->cfg.s));
    GLAE_TRY(ops->batchnorm_backward(ctx, m->dh, PG(m->bn.g), PG(m->bn.b), m->demb, m->h,
                                     m->bn.mean, m->bn.invstd, PP(m->bn.g), n, d, 1));
    GLAE_TRY(ops->linear_backward(ctx, m->dpooled, PG(m->fc_w), NULL, m->dh, m->pooled,
                                  PP(m->fc_w), n, C, d));
    GLAE_TRY(ops->avgpool_backward(ctx, m->dfeat, m->dpooled, n, m->net.fh * m->net.fw, C));
    GLAE_TRY(glae_resnet_backward(ctx, &m->net, &m->p, m->dfeat));
    return ctx->dev->copy(ctx, loss, m->mean_loss, sizeof(float), GLAE_COPY_D2H);
}

int glae_pretrain_embed(glae_pretrain_model *m, float *emb, const void *x, int xnorm, int n, int h,
                        int w) {
    GLAE_TRY(check_batch("pretrain embed", n, h, w));
    GLAE_TRY(plan(m, 0, n, h, w));
    glae_ctx *ctx = &m->ctx;
    GLAE_TRY(stage_input(m, x, xnorm, (size_t)n * h * w * 3));
    GLAE_TRY(embed_forward(m, 0));
    return ctx->dev->copy(ctx, emb, m->emb, (size_t)n * m->cfg.embed_dim * sizeof(float),
                          GLAE_COPY_D2H);
}

int glae_pretrain_sgd_step(glae_pretrain_model *m, float lr, float momentum, float dampening,
                           float wd, int nesterov, int first_step, int wd_exclude) {
    glae_ctx *ctx = &m->ctx;
    return ctx->ops->sgd_step(ctx, m->p.params, m->p.momentum, m->p.grads, 0, m->p.n,
                              wd_exclude ? m->no_decay : NULL, lr, momentum, dampening, wd,
                              nesterov, first_step);
}
