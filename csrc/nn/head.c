/* The classifier heads: GAP, FR, FR+PA (see head.h). */
#include "nn/head.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/status.h"
#include "ops/backend.h"
#include "ops/loss.h"

static int add_linear(glae_params *p, const char *prefix, const char *name, int in_f, int out_f,
                      int group, int *w, int *b) {
    char full[2 * GLAE_NAME_LEN];
    int64_t shape[2] = {out_f, in_f};
    if (snprintf(full, sizeof full, "%s%s.weight", prefix, name) >= (int)sizeof full)
        return glae_fail(GLAE_ERR_VALUE, "head: name too long");
    GLAE_TRY(glae_params_add(p, full, 2, shape, 0, group, w));
    if (snprintf(full, sizeof full, "%s%s.bias", prefix, name) >= (int)sizeof full)
        return glae_fail(GLAE_ERR_VALUE, "head: name too long");
    GLAE_TRY(glae_params_add(p, full, 1, shape, GLAE_P_NO_DECAY, group, b));
    return GLAE_OK;
}

int glae_head_build(glae_head *hd, glae_params *p, const glae_head_config *cfg, int c, int fh,
                    int fw, const char *prefix, int group) {
    memset(hd, 0, sizeof *hd);
    hd->kind = cfg->kind;
    hd->k_cls = cfg->num_classes;
    hd->c = c;
    hd->r = cfg->r;
    hd->k = cfg->k;
    hd->s = cfg->s;
    hd->depth = cfg->depth;
    hd->width = cfg->width;
    const int K = cfg->num_classes;
    if (K < 2) return glae_fail(GLAE_ERR_VALUE, "head: num_classes must be >= 2, got %d", K);
    char name[2 * GLAE_NAME_LEN];
    if (cfg->kind == GLAE_HEAD_GAP) {
        return add_linear(p, prefix, "fc", c, K, group, &hd->fc_w, &hd->fc_b);
    }
    if (cfg->kind != GLAE_HEAD_FR && cfg->kind != GLAE_HEAD_FRPA)
        return glae_fail(GLAE_ERR_VALUE, "head: unknown head kind %d", cfg->kind);
    if (cfg->r < 1 || cfg->k < 1 || cfg->s < 1)
        return glae_fail(GLAE_ERR_VALUE, "head: r, k, s must be >= 1, got r=%d k=%d s=%d", cfg->r,
                         cfg->k, cfg->s);
    if (c % (cfg->r * cfg->r) != 0)
        return glae_fail(GLAE_ERR_VALUE,
                         "head: r=%d: r*r must divide the backbone's %d channels", cfg->r, c);
    snprintf(name, sizeof name, "%sfr", prefix);
    GLAE_TRY(glae_conv_layer_add(&hd->fr, p, name, c / (cfg->r * cfg->r), K, cfg->k, cfg->s, 0, 1,
                                 group));
    if (cfg->kind == GLAE_HEAD_FR) return GLAE_OK;
    if (cfg->depth < 0 || cfg->depth > GLAE_PROJ_MAX_DEPTH)
        return glae_fail(GLAE_ERR_VALUE, "head: proj_depth must be 0, 1 or 2, got %d", cfg->depth);
    if (cfg->width < 1)
        return glae_fail(GLAE_ERR_VALUE, "head: proj_width must be >= 1, got %d", cfg->width);
    /* nn.Sequential numbering: Linear(0), then per block BN1d(3j+1), ReLU(3j+2), Linear(3j+3).
     * Its input is the FR map flattened: K * H' * W', fixed by the model's input size. */
    int hp, wp;
    GLAE_TRY(glae_head_out_size(hd, fh, fw, &hp, &wp));
    hd->flat = (int64_t)K * hp * wp;
    if (hd->flat > INT32_MAX) return glae_fail(GLAE_ERR_VALUE, "head: projection input too large");
    GLAE_TRY(add_linear(p, prefix, "proj.0", (int)hd->flat, cfg->width, group, &hd->lin_w[0],
                        &hd->lin_b[0]));
    for (int j = 0; j < cfg->depth; j++) {
        snprintf(name, sizeof name, "%sproj.%d", prefix, 3 * j + 1);
        GLAE_TRY(glae_bn_layer_add(&hd->bn[j], p, name, cfg->width, group));
        snprintf(name, sizeof name, "proj.%d", 3 * j + 3);
        GLAE_TRY(add_linear(p, prefix, name, cfg->width, cfg->width, group, &hd->lin_w[j + 1],
                            &hd->lin_b[j + 1]));
    }
    return add_linear(p, prefix, "cls", cfg->width, K, group, &hd->cls_w, &hd->cls_b);
}

int glae_head_init(const glae_head *hd, glae_params *p, uint64_t seed) {
    if (hd->kind == GLAE_HEAD_GAP) {
        double bound = 1.0 / sqrt((double)hd->c);
        glae_init_uniform(p, hd->fc_w, seed, bound);
        glae_init_uniform(p, hd->fc_b, seed, bound);
        return GLAE_OK;
    }
    double bound = 1.0 / sqrt((double)hd->fr.c_in * hd->fr.k * hd->fr.k);
    glae_init_uniform(p, hd->fr.w, seed, bound);
    glae_init_uniform(p, hd->fr.b, seed, bound);
    if (hd->kind == GLAE_HEAD_FR) return GLAE_OK;
    for (int j = 0; j <= hd->depth; j++) {
        int64_t in_f = j == 0 ? hd->flat : hd->width;
        bound = 1.0 / sqrt((double)in_f);
        glae_init_uniform(p, hd->lin_w[j], seed, bound);
        glae_init_uniform(p, hd->lin_b[j], seed, bound);
        if (j < hd->depth) {
            glae_init_const(p, hd->bn[j].g, 1.0f);
            glae_init_const(p, hd->bn[j].b, 0.0f);
            glae_init_const(p, hd->bn[j].rm, 0.0f);
            glae_init_const(p, hd->bn[j].rv, 1.0f);
        }
    }
    bound = 1.0 / sqrt((double)hd->width);
    glae_init_uniform(p, hd->cls_w, seed, bound);
    glae_init_uniform(p, hd->cls_b, seed, bound);
    return GLAE_OK;
}

int glae_head_out_size(const glae_head *hd, int fh, int fw, int *hp, int *wp) {
    if (hd->kind == GLAE_HEAD_GAP) {
        *hp = *wp = 1;
        return GLAE_OK;
    }
    int H = fh * hd->r, W = fw * hd->r;
    if (H < hd->k || W < hd->k)
        return glae_fail(GLAE_ERR_VALUE,
                         "head: the rearranged map %dx%d (feature map %dx%d, r=%d) is smaller "
                         "than the FR kernel k=%d",
                         H, W, fh, fw, hd->r, hd->k);
    *hp = (H - hd->k) / hd->s + 1;
    *wp = (W - hd->k) / hd->s + 1;
    return GLAE_OK;
}


int glae_head_plan(glae_head *hd, glae_arena *a, int n, int fh, int fw, int grads) {
    const int K = hd->k_cls;
    hd->n = n;
    hd->fh = fh;
    hd->fw = fw;
    GLAE_TRY(glae_head_out_size(hd, fh, fw, &hd->hp, &hd->wp));
    int64_t fm = (int64_t)n * fh * fw * hd->c;
    ALLOC_F(hd->logits, (int64_t)n * K);
    ALLOC_F(hd->prob, (int64_t)n * K);
    ALLOC_F(hd->loss, n);
    ALLOC_F(hd->dloss, n);
    if (grads) ALLOC_F(hd->dlogits, (int64_t)n * K);
    if (hd->kind == GLAE_HEAD_GAP) {
        ALLOC_F(hd->pooled, (int64_t)n * hd->c);
        if (grads) ALLOC_F(hd->dpooled, (int64_t)n * hd->c);
        return GLAE_OK;
    }
    GLAE_TRY(glae_conv2d_shape_init(&hd->fr.s, n, fh * hd->r, fw * hd->r, hd->fr.c_in, K, hd->k,
                                    hd->k, hd->s, hd->s, 0, 0));
    if (hd->fr.s.oh != hd->hp || hd->fr.s.ow != hd->wp)
        return glae_fail(GLAE_ERR_RUNTIME, "head: FR conv shape mismatch");
    int64_t P = (int64_t)hd->hp * hd->wp, mrows = (int64_t)n * P;
    if (mrows > INT32_MAX) /* the loss means average over int-sized rows */
        return glae_fail(GLAE_ERR_VALUE, "head: %lld FR positions in a batch is too many",
                         (long long)mrows);
    ALLOC_F(hd->shuf, fm);
    ALLOC_F(hd->map, mrows * K);
    if (grads) {
        ALLOC_F(hd->dshuf, fm);
        ALLOC_F(hd->dmap, mrows * K);
    }
    if (hd->kind == GLAE_HEAD_FR) return GLAE_OK;
    if (hd->flat != P * K)
        return glae_fail(GLAE_ERR_VALUE,
                         "head: the projection was built for a %lld-long flattened FR map, this "
                         "input gives %lld (K=%d x %dx%d): use the input size the model was "
                         "created with",
                         (long long)hd->flat, (long long)(P * K), K, hd->hp, hd->wp);
    ALLOC_F(hd->loc_prob, mrows * K);
    ALLOC_F(hd->loc_loss, mrows);
    ALLOC_F(hd->dloc_loss, mrows);
    ALLOC_F(hd->flatv, mrows * K);
    for (int j = 0; j <= hd->depth; j++) ALLOC_F(hd->h[j], (int64_t)n * hd->width);
    for (int j = 0; j < hd->depth; j++) {
        ALLOC_F(hd->hb[j], (int64_t)n * hd->width);
        ALLOC_F(hd->bn[j].mean, hd->width);
        ALLOC_F(hd->bn[j].invstd, hd->width);
    }
    if (grads) {
        ALLOC_F(hd->dmap2, mrows * K);
        ALLOC_F(hd->dflat, mrows * K);
        ALLOC_F(hd->dh, (int64_t)n * hd->width);
        ALLOC_F(hd->dh2, (int64_t)n * hd->width);
    }
    return GLAE_OK;
}

#define PP(i) glae_params_ptr(p, (i))
#define PG(i) glae_params_grad(p, (i))

int glae_head_forward(glae_ctx *ctx, glae_head *hd, glae_params *p, const float *feat,
                      int training) {
    const int n = hd->n, K = hd->k_cls;
    if (!hd->logits) return glae_fail(GLAE_ERR_RUNTIME, "head_forward: not planned");
    if (hd->kind == GLAE_HEAD_GAP) {
        GLAE_TRY(ctx->ops->avgpool_forward(ctx, hd->pooled, feat, n, hd->fh * hd->fw, hd->c));
        GLAE_TRY(ctx->ops->linear_forward(ctx, hd->logits, hd->pooled, PP(hd->fc_w), PP(hd->fc_b), n,
                                     hd->c, K));
        return ctx->ops->softmax_forward(ctx, hd->prob, hd->logits, n, K);
    }
    const int64_t P = (int64_t)hd->hp * hd->wp;
    GLAE_TRY(ctx->ops->pixel_shuffle_forward(ctx, hd->shuf, feat, n, hd->fh, hd->fw, hd->c, hd->r));
    GLAE_TRY(ctx->ops->conv2d_forward(ctx, hd->map, hd->shuf, PP(hd->fr.w), PP(hd->fr.b), &hd->fr.s));
    if (hd->kind == GLAE_HEAD_FR) {
        /* "fr" alone: the image's logits are the H'W'-average of the FR map */
        GLAE_TRY(ctx->ops->avgpool_forward(ctx, hd->logits, hd->map, n, (int)P, K));
        return ctx->ops->softmax_forward(ctx, hd->prob, hd->logits, n, K);
    }
    GLAE_TRY(ctx->ops->softmax_forward(ctx, hd->loc_prob, hd->map, (int64_t)n * P, K)); /* eq. 6 */
    GLAE_TRY(ctx->ops->flatten_nchw_forward(ctx, hd->flatv, hd->map, n, P, K));
    const float *in = hd->flatv;
    int in_f = (int)hd->flat;
    for (int j = 0; j <= hd->depth; j++) { /* eq. 8: Proj(F') */
        GLAE_TRY(ctx->ops->linear_forward(ctx, hd->h[j], in, PP(hd->lin_w[j]), PP(hd->lin_b[j]), n,
                                     in_f, hd->width));
        if (j == hd->depth) break;
        glae_bn_layer *b = &hd->bn[j];
        GLAE_TRY(ctx->ops->batchnorm_forward(ctx, hd->hb[j], b->mean, b->invstd, hd->h[j], PP(b->g),
                                        PP(b->b), PP(b->rm), PP(b->rv), n, hd->width,
                                        GLAE_BN_MOMENTUM, GLAE_BN_EPS, training));
        GLAE_TRY(ctx->ops->relu_forward(ctx, hd->hb[j], hd->hb[j], (int64_t)n * hd->width));
        in = hd->hb[j];
        in_f = hd->width;
    }
    GLAE_TRY(ctx->ops->linear_forward(ctx, hd->logits, hd->h[hd->depth], PP(hd->cls_w), PP(hd->cls_b),
                                 n, hd->width, K));
    return ctx->ops->softmax_forward(ctx, hd->prob, hd->logits, n, K);
}

int glae_head_loss_backward(glae_ctx *ctx, glae_head *hd, glae_params *p, float *losses,
                            float *dfeat, const float *feat, const float *z, const float *y,
                            int mode, float lambda, float mae) {
    const int n = hd->n, K = hd->k_cls;
    if (!hd->dlogits) return glae_fail(GLAE_ERR_RUNTIME, "head: planned without gradients");
    /* image-level classifier (GAP fc, FR average, or PA holistic branch: eq. 9) */
    GLAE_TRY(ctx->ops->ldl_loss_forward(ctx, hd->loss, hd->prob, hd->logits, z, y, n, 1, K, mode,
                                   lambda, mae));
    /* batch means: an average "pool" over one column sums in double, as the loss wants */
    GLAE_TRY(ctx->ops->avgpool_forward(ctx, losses + 2, hd->loss, 1, n, 1));
    GLAE_TRY(ctx->ops->fill(ctx, losses + 1, 0.0f, 1));
    GLAE_TRY(ctx->ops->fill(ctx, hd->dloss, 1.0f / (float)n, n));
    GLAE_TRY(ctx->ops->ldl_loss_backward(ctx, hd->dlogits, hd->dloss, hd->prob, z, y, n, 1, K, mode,
                                    lambda, mae));
    if (hd->kind == GLAE_HEAD_GAP) {
        GLAE_TRY(ctx->ops->linear_backward(ctx, hd->dpooled, PG(hd->fc_w), PG(hd->fc_b), hd->dlogits,
                                      hd->pooled, PP(hd->fc_w), n, hd->c, K));
        GLAE_TRY(ctx->dev->copy(ctx, losses, losses + 2, sizeof(float), GLAE_COPY_D2D));
        if (dfeat)
            GLAE_TRY(ctx->ops->avgpool_backward(ctx, dfeat, hd->dpooled, n, hd->fh * hd->fw, hd->c));
        return GLAE_OK;
    }
    const int64_t P = (int64_t)hd->hp * hd->wp, mrows = (int64_t)n * P;
    if (hd->kind == GLAE_HEAD_FR) {
        GLAE_TRY(ctx->ops->avgpool_backward(ctx, hd->dmap, hd->dlogits, n, (int)P, K));
        GLAE_TRY(ctx->dev->copy(ctx, losses, losses + 2, sizeof(float), GLAE_COPY_D2D));
    } else {
        /* local branch, eq. 7: every position carries its image's label (group = H'W') */
        GLAE_TRY(ctx->ops->ldl_loss_forward(ctx, hd->loc_loss, hd->loc_prob, hd->map, z, y, mrows,
                                       (int)P, K, mode, lambda, mae));
        GLAE_TRY(ctx->ops->avgpool_forward(ctx, losses + 1, hd->loc_loss, 1, (int)mrows, 1));
        GLAE_TRY(ctx->ops->add_forward(ctx, losses, losses + 1, losses + 2, 1)); /* eq. 10 */
        GLAE_TRY(ctx->ops->fill(ctx, hd->dloc_loss, 1.0f / (float)mrows, mrows));
        GLAE_TRY(ctx->ops->ldl_loss_backward(ctx, hd->dmap, hd->dloc_loss, hd->loc_prob, z, y, mrows,
                                        (int)P, K, mode, lambda, mae));
        /* holistic branch back to the FR map */
        float *dcur = hd->dh, *dother = hd->dh2;
        GLAE_TRY(ctx->ops->linear_backward(ctx, dcur, PG(hd->cls_w), PG(hd->cls_b), hd->dlogits,
                                      hd->h[hd->depth], PP(hd->cls_w), n, hd->width, K));
        for (int j = hd->depth; j >= 1; j--) {
            /* dcur = d h[j]; h[j] = lin_j(hb[j-1]) */
            GLAE_TRY(ctx->ops->linear_backward(ctx, dother, PG(hd->lin_w[j]), PG(hd->lin_b[j]), dcur,
                                          hd->hb[j - 1], PP(hd->lin_w[j]), n, hd->width,
                                          hd->width));
            GLAE_TRY(ctx->ops->relu_backward(ctx, dother, dother, hd->hb[j - 1],
                                        (int64_t)n * hd->width));
            glae_bn_layer *b = &hd->bn[j - 1];
            GLAE_TRY(ctx->ops->batchnorm_backward(ctx, dcur, PG(b->g), PG(b->b), dother, hd->h[j - 1],
                                             b->mean, b->invstd, PP(b->g), n, hd->width, 1));
        }
        GLAE_TRY(ctx->ops->linear_backward(ctx, hd->dflat, PG(hd->lin_w[0]), PG(hd->lin_b[0]), dcur,
                                      hd->flatv, PP(hd->lin_w[0]), n, (int)hd->flat, hd->width));
        GLAE_TRY(ctx->ops->flatten_nchw_backward(ctx, hd->dmap2, hd->dflat, n, P, K));
        GLAE_TRY(ctx->ops->add_forward(ctx, hd->dmap, hd->dmap, hd->dmap2, mrows * K));
    }
    GLAE_TRY(ctx->ops->conv2d_backward(ctx, dfeat ? hd->dshuf : NULL, PG(hd->fr.w), PG(hd->fr.b),
                                  hd->dmap, hd->shuf, PP(hd->fr.w), &hd->fr.s));
    if (dfeat)
        GLAE_TRY(ctx->ops->pixel_shuffle_backward(ctx, dfeat, hd->dshuf, n, hd->fh, hd->fw, hd->c, hd->r));
    return GLAE_OK;
}
