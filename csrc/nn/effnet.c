/* EfficientNetV2-S/M backbone: build from torchvision's stage tables, init, plan, forward,
 * backward (effnet.h). */
#include "nn/effnet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "nn/droppath.h"
#include "ops/backend.h"

/* torchvision's tables (efficientnet.py, _efficientnet_conf): fused, expansion, kernel,
 * stride, input channels, output channels, layers */
static const glae_effnet_arch ARCHS[] = {
    {GLAE_EFFNET_V2_S, "efficientnet_v2_s", 6,
     {{1, 1, 3, 1, 24, 24, 2}, {1, 4, 3, 2, 24, 48, 4}, {1, 4, 3, 2, 48, 64, 4},
      {0, 4, 3, 2, 64, 128, 6}, {0, 6, 3, 1, 128, 160, 9}, {0, 6, 3, 2, 160, 256, 15}},
     1280},
    {GLAE_EFFNET_V2_M, "efficientnet_v2_m", 7,
     {{1, 1, 3, 1, 24, 24, 3}, {1, 4, 3, 2, 24, 48, 5}, {1, 4, 3, 2, 48, 80, 5},
      {0, 4, 3, 2, 80, 160, 7}, {0, 6, 3, 1, 160, 176, 14}, {0, 6, 3, 2, 176, 304, 18},
      {0, 6, 3, 1, 304, 512, 5}},
     1280},
};
#define N_ARCHS ((int)(sizeof ARCHS / sizeof *ARCHS))

const glae_effnet_arch *glae_effnet_arch_of(int code) {
    for (int i = 0; i < N_ARCHS; i++)
        if (ARCHS[i].code == code) return &ARCHS[i];
    return NULL;
}

const glae_effnet_arch *glae_effnet_arch_named(const char *name) {
    for (int i = 0; name && i < N_ARCHS; i++)
        if (!strcmp(ARCHS[i].name, name)) return &ARCHS[i];
    return NULL;
}

const glae_effnet_arch *glae_effnet_archs(int *n) {
    *n = N_ARCHS;
    return ARCHS;
}

/* torchvision's _make_divisible(v, 8): the nearest multiple of 8, never 10% below v */
static int divisible8(int v) {
    int r = (v + 4) / 8 * 8;
    if (r < 8) r = 8;
    if (r < 0.9 * v) r += 8;
    return r;
}

/* ---- build ------------------------------------------------------------------------------ */

/* prefix.0 = the conv, prefix.1 = its BN */
static int unit_add(glae_effnet_unit *u, glae_params *p, const char *prefix, int c_in, int c_out,
                    int k, int stride, int dw, int act) {
    char name[2 * GLAE_NAME_LEN + 8];
    memset(u, 0, sizeof *u);
    u->dw = dw;
    u->act = act;
    snprintf(name, sizeof name, "%s.0", prefix);
    /* a depthwise weight is (C, k, k, 1): registered with c_in 1, then the layer's c_in set */
    GLAE_TRY(glae_conv_layer_add(&u->conv, p, name, dw ? 1 : c_in, c_out, k, stride, (k - 1) / 2,
                                 0, GLAE_G_BACKBONE));
    u->conv.c_in = c_in;
    snprintf(name, sizeof name, "%s.1", prefix);
    return glae_bn_layer_add(&u->bn, p, name, c_out, GLAE_G_BACKBONE);
}

static int block_add(glae_effnet_block *b, glae_params *p, const glae_effnet_stage *st, int si,
                     int bi, int c_in, int stride, float prob) {
    char pre[2 * GLAE_NAME_LEN];
    memset(b, 0, sizeof *b);
    const int out = st->c_out, e = divisible8(c_in * st->expand);
    b->fused = st->fused;
    b->res = stride == 1 && c_in == out;
    b->p = prob;
#define UNIT(j, ci, co, k, s, dw, act)                                                    \
    do {                                                                                  \
        snprintf(pre, sizeof pre, "features.%d.%d.block.%d", si, bi, (j) < 2 ? (j) : (j) + 1); \
        GLAE_TRY(unit_add(&b->u[j], p, pre, ci, co, k, s, dw, act));                      \
    } while (0)
    if (st->fused && e == c_in) { /* expansion 1: one conv */
        b->nunit = 1;
        snprintf(pre, sizeof pre, "features.%d.%d.block.0", si, bi);
        GLAE_TRY(unit_add(&b->u[0], p, pre, c_in, out, st->kernel, stride, 0, 1));
    } else if (st->fused) {
        b->nunit = 2;
        UNIT(0, c_in, e, st->kernel, stride, 0, 1);
        UNIT(1, e, out, 1, 1, 0, 0);
    } else {
        /* torchvision's MBConv always expands in V2 (expansion 4 or 6) */
        if (e == c_in)
            return glae_fail(GLAE_ERR_RUNTIME, "effnet: an MBConv without expansion is not built");
        b->nunit = 3;
        b->se = 1;
        b->e = e;
        b->sq = c_in / 4 > 1 ? c_in / 4 : 1;
        UNIT(0, c_in, e, 1, 1, 0, 1);
        UNIT(1, e, e, st->kernel, stride, 1, 1);
        snprintf(pre, sizeof pre, "features.%d.%d.block.2.fc1", si, bi);
        GLAE_TRY(glae_conv_layer_add(&b->fc1, p, pre, e, b->sq, 1, 1, 0, 1, GLAE_G_BACKBONE));
        snprintf(pre, sizeof pre, "features.%d.%d.block.2.fc2", si, bi);
        GLAE_TRY(glae_conv_layer_add(&b->fc2, p, pre, b->sq, e, 1, 1, 0, 1, GLAE_G_BACKBONE));
        UNIT(2, e, out, 1, 1, 0, 0); /* block.3 */
    }
#undef UNIT
    return GLAE_OK;
}

int glae_effnet_build(glae_effnet *net, glae_params *p, int code) {
    memset(net, 0, sizeof *net);
    const glae_effnet_arch *arch = glae_effnet_arch_of(code);
    if (!arch) return glae_fail(GLAE_ERR_VALUE, "effnet: unknown backbone code %d", code);
    net->arch = arch;
    net->drop_prob = 0.2f;
    int total = 0;
    for (int s = 0; s < arch->nstages; s++) total += arch->stage[s].layers;
    if (total > GLAE_EFFNET_MAX_BLOCKS)
        return glae_fail(GLAE_ERR_RUNTIME, "effnet: %d blocks, at most %d", total,
                         GLAE_EFFNET_MAX_BLOCKS);
    const int c0 = arch->stage[0].c_in;
    GLAE_TRY(unit_add(&net->stem, p, "features.0", 3, c0, 3, 2, 0, 1));
    int c = c0;
    for (int s = 0; s < arch->nstages; s++) {
        const glae_effnet_stage *st = &arch->stage[s];
        if (st->c_in != c)
            return glae_fail(GLAE_ERR_RUNTIME, "effnet: stage %d takes %d channels, gets %d", s,
                             st->c_in, c);
        for (int j = 0; j < st->layers; j++) {
            const int i = net->nblocks;
            /* the probability is set again from drop_prob by the plan (it may change) */
            GLAE_TRY(block_add(&net->blocks[i], p, st, s + 1, j, c, j == 0 ? st->stride : 1,
                               glae_drop_path_prob(net->drop_prob, i, total)));
            net->nblocks++;
            c = st->c_out;
        }
    }
    char pre[32];
    snprintf(pre, sizeof pre, "features.%d", arch->nstages + 1);
    GLAE_TRY(unit_add(&net->head, p, pre, c, arch->last, 1, 1, 0, 1));
    net->out_c = arch->last;
    return GLAE_OK;
}

/* ---- init ------------------------------------------------------------------------------- */

static void init_conv(const glae_conv_layer *l, glae_params *p, uint64_t seed) {
    /* fan_out = c_out k k (PyTorch does not divide by the groups) */
    glae_init_normal(p, l->w, seed, sqrt(2.0 / ((double)l->c_out * l->k * l->k)));
    if (l->b >= 0) glae_init_const(p, l->b, 0.0f);
}

static void init_unit(const glae_effnet_unit *u, glae_params *p, uint64_t seed) {
    init_conv(&u->conv, p, seed);
    glae_init_const(p, u->bn.g, 1.0f);
    glae_init_const(p, u->bn.b, 0.0f);
    glae_init_const(p, u->bn.rm, 0.0f);
    glae_init_const(p, u->bn.rv, 1.0f);
}

int glae_effnet_init(glae_effnet *net, glae_params *p, uint64_t seed) {
    net->seed = seed;
    net->step = 0;
    init_unit(&net->stem, p, seed);
    for (int i = 0; i < net->nblocks; i++) {
        const glae_effnet_block *b = &net->blocks[i];
        for (int j = 0; j < b->nunit; j++) init_unit(&b->u[j], p, seed);
        if (b->se) {
            init_conv(&b->fc1, p, seed);
            init_conv(&b->fc2, p, seed);
        }
    }
    init_unit(&net->head, p, seed);
    return GLAE_OK;
}

/* ---- planning --------------------------------------------------------------------------- */

static int half_up(int x) { return (x + 2 * 1 - 3) / 2 + 1; } /* 3x3, stride 2, pad 1 */

int glae_effnet_out_size(const glae_effnet_arch *arch, int h, int w, int *fh, int *fw) {
    int y = half_up(h), x = half_up(w);
    for (int s = 0; s < arch->nstages && y >= 1 && x >= 1; s++)
        if (arch->stage[s].stride == 2) {
            y = half_up(y);
            x = half_up(x);
        }
    if (h < 1 || w < 1 || y < 1 || x < 1)
        return glae_fail(GLAE_ERR_VALUE, "%s: input %dx%d is too small (the last map must be >= 1x1)",
                         arch->name, h, w);
    *fh = y;
    *fw = x;
    return GLAE_OK;
}

static int64_t unit_numel(const glae_effnet_unit *u) {
    return (int64_t)u->conv.s.n * u->conv.s.oh * u->conv.s.ow * u->conv.c_out;
}

static int unit_shape(glae_effnet_unit *u, int n, int h, int w, int64_t *gmax) {
    const glae_conv_layer *l = &u->conv;
    GLAE_TRY(glae_conv2d_shape_init(&u->conv.s, n, h, w, l->c_in, l->c_out, l->k, l->k, l->stride,
                                    l->stride, l->pad, l->pad));
    if (unit_numel(u) > *gmax) *gmax = unit_numel(u);
    const int64_t in = (int64_t)n * h * w * l->c_in;
    if (in > *gmax) *gmax = in;
    return GLAE_OK;
}

static int plan_shapes(glae_effnet *net, int n, int h, int w) {
    int64_t gmax = 0;
    net->emax = net->sqmax = 1;
    GLAE_TRY(unit_shape(&net->stem, n, h, w, &gmax));
    int ih = net->stem.conv.s.oh, iw = net->stem.conv.s.ow;
    int total = net->nblocks;
    for (int i = 0; i < total; i++) {
        glae_effnet_block *b = &net->blocks[i];
        b->p = b->res ? glae_drop_path_prob(net->drop_prob, i, total) : 0.0f;
        for (int j = 0; j < b->nunit; j++) {
            GLAE_TRY(unit_shape(&b->u[j], n, ih, iw, &gmax));
            ih = b->u[j].conv.s.oh;
            iw = b->u[j].conv.s.ow;
        }
        b->hw = (int64_t)ih * iw;
        if (b->e > net->emax) net->emax = b->e;
        if (b->sq > net->sqmax) net->sqmax = b->sq;
    }
    GLAE_TRY(unit_shape(&net->head, n, ih, iw, &gmax));
    if (net->head.conv.s.oh != net->fh || net->head.conv.s.ow != net->fw)
        return glae_fail(GLAE_ERR_RUNTIME, "effnet: planned %dx%d, expected %dx%d",
                         net->head.conv.s.oh, net->head.conv.s.ow, net->fh, net->fw);
    net->gmax = gmax;
    return GLAE_OK;
}

/* Where the activations go, as in resnet.c: KEEP each in its own place (training: the
 * backward reads them all); without a backward MEASURE the largest tenant of each role,
 * then SHARE: a role's slot serves every block, since a block's activations die with it.
 * Roles: 3j + {0, 1, 2} = unit j's conv, BN and SiLU outputs; SE output; drop; the block
 * outputs alternate between two slots (a residual block reads its input last). */
enum { PLACE_KEEP, PLACE_MEASURE, PLACE_SHARE };
enum { R_SE = 9, R_DROP = 10, R_OUT0 = 11, N_ROLES = 13 };

typedef struct {
    int mode;
    float *slot[N_ROLES];
    int64_t need[N_ROLES];
} placer;

static int place(glae_arena *a, placer *pl, void **act, int64_t count, int role) {
    switch (pl->mode) {
    case PLACE_KEEP:
        ALLOC_F(*act, count);
        break;
    case PLACE_MEASURE:
        if (count > pl->need[role]) pl->need[role] = count;
        *act = NULL;
        break;
    default:
        *act = pl->slot[role];
    }
    return GLAE_OK;
}

/* unit j's outputs; its last output (a, or b without SiLU) goes to role `out_role` when >= 0 */
static int place_unit(glae_arena *a, placer *pl, glae_effnet_unit *u, int j, int out_role) {
    const int64_t m = unit_numel(u);
    GLAE_TRY(place(a, pl, &u->c, m, 3 * j));
    GLAE_TRY(place(a, pl, &u->b, m, !u->act && out_role >= 0 ? out_role : 3 * j + 1));
    if (u->act) GLAE_TRY(place(a, pl, &u->a, m, out_role >= 0 ? out_role : 3 * j + 2));
    else u->a = u->b;
    return GLAE_OK;
}

static int place_all(glae_effnet *net, glae_arena *a, placer *pl) {
    int parity = 1;
    net->stem.in = net->x; /* set again by the forward */
    GLAE_TRY(place_unit(a, pl, &net->stem, 0, R_OUT0 + parity));
    const void *in = net->stem.a;
    for (int i = 0; i < net->nblocks; i++) {
        glae_effnet_block *b = &net->blocks[i];
        const int64_t m = unit_numel(&b->u[b->nunit - 1]);
        parity ^= 1;
        b->in = in;
        for (int j = 0; j < b->nunit; j++) {
            b->u[j].in = j == 0 ? in : (b->se && j == 2) ? b->se_out : b->u[j - 1].a;
            GLAE_TRY(place_unit(a, pl, &b->u[j], j, j == b->nunit - 1 && !b->res ? R_OUT0 + parity : -1));
            if (b->se && j == 1) {
                GLAE_TRY(place(a, pl, &b->se_out, unit_numel(&b->u[1]), R_SE));
            }
        }
        if (b->res) GLAE_TRY(place(a, pl, &b->out, m, R_OUT0 + parity));
        else b->out = b->u[b->nunit - 1].a;
        b->drop = NULL;
        if (b->res && b->p > 0) GLAE_TRY(place(a, pl, &b->drop, m, R_DROP));
        in = b->out;
    }
    net->head.in = in;
    return place_unit(a, pl, &net->head, 0, -1);
}

static int plan_bn(glae_bn_layer *l, glae_arena *a) {
    ALLOC_F(l->mean, l->c);
    ALLOC_F(l->invstd, l->c);
    return GLAE_OK;
}

int glae_effnet_plan(glae_effnet *net, glae_arena *a, int n, int h, int w, int grads) {
    if (n < 1 || h < 1 || w < 1)
        return glae_fail(GLAE_ERR_VALUE, "effnet: bad batch shape (%d, %d, %d)", n, h, w);
    if (!(net->drop_prob >= 0.0f && net->drop_prob < 1.0f))
        return glae_fail(GLAE_ERR_VALUE, "effnet: stochastic_depth_prob must be in [0, 1), got %g",
                         (double)net->drop_prob);
    GLAE_TRY(glae_effnet_out_size(net->arch, h, w, &net->fh, &net->fw));
    net->n = n;
    net->h = h;
    net->w = w;
    GLAE_TRY(plan_shapes(net, n, h, w));
    const int share = !grads && !net->keep_all;
    placer pl = {.mode = share ? PLACE_MEASURE : PLACE_KEEP};
    if (share) {
        GLAE_TRY(place_all(net, a, &pl));
        for (int k = 0; k < N_ROLES; k++)
            if (pl.need[k]) ALLOC_F(pl.slot[k], pl.need[k]);
        pl.mode = PLACE_SHARE;
    }
    /* the head's output is the feature map the heads read: never shared */
    GLAE_TRY(place_all(net, a, &pl));
    if (share) ALLOC_F(net->head.a, unit_numel(&net->head));
    GLAE_TRY(plan_bn(&net->stem.bn, a));
    GLAE_TRY(plan_bn(&net->head.bn, a));
    for (int i = 0; i < net->nblocks; i++) {
        glae_effnet_block *b = &net->blocks[i];
        for (int j = 0; j < b->nunit; j++) GLAE_TRY(plan_bn(&b->u[j].bn, a));
        if (b->se) {
            ALLOC_F(b->pool, (int64_t)n * b->e);
            ALLOC_F(b->f1, (int64_t)n * b->sq);
            ALLOC_F(b->f1a, (int64_t)n * b->sq);
            ALLOC_F(b->f2, (int64_t)n * b->e);
            ALLOC_F(b->sg, (int64_t)n * b->e);
        }
        b->scale = NULL;
        if (b->drop) ALLOC_F(b->scale, n);
    }
    net->feat = net->head.a;
    for (int i = 0; i < 3; i++) net->g[i] = NULL;
    net->dsg = net->dpool = net->df1 = NULL;
    if (grads) {
        for (int i = 0; i < 3; i++) ALLOC_F(net->g[i], net->gmax);
        ALLOC_F(net->dsg, (int64_t)n * net->emax);
        ALLOC_F(net->dpool, (int64_t)n * net->emax);
        ALLOC_F(net->df1, (int64_t)n * net->sqmax);
    }
    return GLAE_OK;
}

/* ---- forward ----------------------------------------------------------------------------- */

static int unit_fwd(glae_ctx *ctx, glae_effnet_unit *u, glae_params *p, int training) {
    const glae_backend *ops = ctx->ops;
    const float *w = glae_params_ptr(p, u->conv.w);
    if (u->dw) GLAE_TRY(ops->dwconv2d_forward(ctx, u->c, u->in, w, NULL, &u->conv.s));
    else GLAE_TRY(ops->conv2d_forward(ctx, u->c, u->in, w, NULL, &u->conv.s));
    const glae_bn_layer *l = &u->bn;
    const int64_t m = unit_numel(u), rows = m / l->c;
    GLAE_TRY(ops->batchnorm_forward(ctx, u->b, l->mean, l->invstd, u->c, glae_params_ptr(p, l->g),
                                    glae_params_ptr(p, l->b), glae_params_ptr(p, l->rm),
                                    glae_params_ptr(p, l->rv), rows, l->c, GLAE_BN_MOMENTUM,
                                    GLAE_EFFNET_BN_EPS, training));
    return u->act ? ops->silu_forward(ctx, u->a, u->b, m) : GLAE_OK;
}

static int se_fwd(glae_ctx *ctx, glae_effnet_block *b, glae_params *p, int n) {
    const glae_backend *ops = ctx->ops;
    const glae_effnet_unit *dw = &b->u[1];
    const int hw = (int)b->hw;
    GLAE_TRY(ops->avgpool_forward(ctx, b->pool, dw->a, n, hw, b->e));
    GLAE_TRY(ops->linear_forward(ctx, b->f1, b->pool, glae_params_ptr(p, b->fc1.w),
                                 glae_params_ptr(p, b->fc1.b), n, b->e, b->sq));
    GLAE_TRY(ops->silu_forward(ctx, b->f1a, b->f1, (int64_t)n * b->sq));
    GLAE_TRY(ops->linear_forward(ctx, b->f2, b->f1a, glae_params_ptr(p, b->fc2.w),
                                 glae_params_ptr(p, b->fc2.b), n, b->sq, b->e));
    GLAE_TRY(ops->sigmoid_forward(ctx, b->sg, b->f2, (int64_t)n * b->e));
    return ops->channel_scale_forward(ctx, b->se_out, dw->a, b->sg, n, hw, b->e);
}

static int block_fwd(glae_ctx *ctx, glae_effnet *net, int i, glae_params *p, int training) {
    glae_effnet_block *b = &net->blocks[i];
    const int n = net->n;
    for (int j = 0; j < b->nunit; j++) {
        GLAE_TRY(unit_fwd(ctx, &b->u[j], p, training));
        if (b->se && j == 1) GLAE_TRY(se_fwd(ctx, b, p, n));
    }
    b->dropped = 0;
    if (!b->res) return GLAE_OK;
    const glae_effnet_unit *last = &b->u[b->nunit - 1];
    const int64_t m = unit_numel(last);
    const void *branch = last->a;
    if (training && b->p > 0) {
        float *host = malloc((size_t)n * sizeof(float));
        if (!host) return glae_fail(GLAE_ERR_MEMORY, "effnet: out of memory");
        int st = glae_drop_path_scales(host, n, b->p, net->seed, net->step, (uint32_t)i);
        if (!st) st = ctx->dev->copy(ctx, b->scale, host, (size_t)n * sizeof(float), GLAE_COPY_H2D);
        free(host);
        GLAE_TRY(st);
        GLAE_TRY(ctx->ops->channel_scale_forward(ctx, b->drop, branch, b->scale, n, m / n, 1));
        branch = b->drop;
        b->dropped = 1;
    }
    return ctx->ops->add_forward(ctx, b->out, branch, b->in, m);
}

int glae_effnet_forward(glae_ctx *ctx, glae_effnet *net, glae_params *p, const float *x,
                        int training) {
    if (!net->feat) return glae_fail(GLAE_ERR_RUNTIME, "effnet_forward: not planned");
    net->x = x;
    net->stem.in = x;
    GLAE_TRY(unit_fwd(ctx, &net->stem, p, training));
    for (int i = 0; i < net->nblocks; i++) GLAE_TRY(block_fwd(ctx, net, i, p, training));
    GLAE_TRY(unit_fwd(ctx, &net->head, p, training));
    if (training) net->step++;
    return GLAE_OK;
}

/* ---- backward ---------------------------------------------------------------------------- */

/* da (the unit's output gradient) is consumed; din, which may be da itself or NULL (not
 * needed), receives the input gradient; t is work space apart from both. */
static int unit_bwd(glae_ctx *ctx, glae_effnet_unit *u, glae_params *p, void *din, void *da,
                    void *t) {
    const glae_backend *ops = ctx->ops;
    const glae_bn_layer *l = &u->bn;
    const int64_t m = unit_numel(u), rows = m / l->c;
    if (u->act) GLAE_TRY(ops->silu_backward(ctx, da, da, u->b, m));
    GLAE_TRY(ops->batchnorm_backward(ctx, t, glae_params_grad(p, l->g), glae_params_grad(p, l->b),
                                     da, u->c, l->mean, l->invstd, glae_params_ptr(p, l->g), rows,
                                     l->c, 1));
    const float *w = glae_params_ptr(p, u->conv.w);
    float *dw = glae_params_grad(p, u->conv.w);
    if (u->dw) return ops->dwconv2d_backward(ctx, din, dw, NULL, t, u->in, w, &u->conv.s);
    return ops->conv2d_backward(ctx, din, dw, NULL, t, u->in, w, &u->conv.s);
}

/* cur holds d(se_out) (consumed); on return *cur holds d(u[1].a) and *tmp is free */
static int se_bwd(glae_ctx *ctx, glae_effnet *net, glae_effnet_block *b, glae_params *p,
                  void **cur, void **tmp) {
    const glae_backend *ops = ctx->ops;
    const int n = net->n, hw = (int)b->hw;
    const int64_t ne = (int64_t)n * b->e, nsq = (int64_t)n * b->sq;
    GLAE_TRY(ops->channel_scale_backward(ctx, *tmp, net->dsg, *cur, b->u[1].a, b->sg, n, hw, b->e));
    GLAE_TRY(ops->sigmoid_backward(ctx, net->dsg, net->dsg, b->sg, ne));
    GLAE_TRY(ops->linear_backward(ctx, net->df1, glae_params_grad(p, b->fc2.w),
                                  glae_params_grad(p, b->fc2.b), net->dsg, b->f1a,
                                  glae_params_ptr(p, b->fc2.w), n, b->sq, b->e));
    GLAE_TRY(ops->silu_backward(ctx, net->df1, net->df1, b->f1, nsq));
    GLAE_TRY(ops->linear_backward(ctx, net->dpool, glae_params_grad(p, b->fc1.w),
                                  glae_params_grad(p, b->fc1.b), net->df1, b->pool,
                                  glae_params_ptr(p, b->fc1.w), n, b->e, b->sq));
    GLAE_TRY(ops->avgpool_backward(ctx, *cur, net->dpool, n, hw, b->e));
    GLAE_TRY(ops->add_forward(ctx, *tmp, *tmp, *cur, ne * hw));
    void *s = *cur;
    *cur = *tmp;
    *tmp = s;
    return GLAE_OK;
}

/* the gradient buffers other than `a` and `b`, in order */
static void *other(glae_effnet *net, const void *a, const void *b) {
    for (int i = 0; i < 3; i++)
        if (net->g[i] != a && net->g[i] != b) return net->g[i];
    return NULL;
}

/* dout: the block output's gradient (consumed unless the block is residual); returns in
 * *dx the gradient buffer (g) holding the input's gradient */
static int block_bwd(glae_ctx *ctx, glae_effnet *net, glae_effnet_block *b, glae_params *p,
                     void *dout, void **dx) {
    const glae_effnet_unit *last = &b->u[b->nunit - 1];
    const int64_t m = unit_numel(last);
    void *cur = dout, *tmp;
    if (!b->res && dout != net->g[0] && dout != net->g[1] && dout != net->g[2]) {
        /* dfeat: the input gradient, written in place, may be larger than it */
        cur = net->g[0];
        GLAE_TRY(ctx->dev->copy(ctx, cur, dout, (size_t)m * sizeof(float), GLAE_COPY_D2D));
    } else if (b->res) { /* dout is kept for the identity: the branch gets a copy (scaled) */
        cur = other(net, dout, NULL);
        if (b->dropped)
            GLAE_TRY(ctx->ops->channel_scale_backward(ctx, cur, NULL, dout, NULL, b->scale, net->n,
                                                      m / net->n, 1));
        else
            GLAE_TRY(ctx->dev->copy(ctx, cur, dout, (size_t)m * sizeof(float), GLAE_COPY_D2D));
    }
    tmp = other(net, dout, cur);
    for (int j = b->nunit - 1; j >= 0; j--) {
        GLAE_TRY(unit_bwd(ctx, &b->u[j], p, cur, cur, tmp));
        if (b->se && j == 2) GLAE_TRY(se_bwd(ctx, net, b, p, &cur, &tmp));
    }
    if (b->res) GLAE_TRY(ctx->ops->add_forward(ctx, cur, cur, dout, m));
    *dx = cur;
    return GLAE_OK;
}

int glae_effnet_backward(glae_ctx *ctx, glae_effnet *net, glae_params *p, float *dfeat) {
    if (!net->g[0]) return glae_fail(GLAE_ERR_RUNTIME, "effnet_backward: planned without gradients");
    void *t = net->g[0];
    /* the head conv's input gradient overwrites dfeat (as large: 1280 >= its input channels) */
    GLAE_TRY(unit_bwd(ctx, &net->head, p, dfeat, dfeat, t));
    void *dout = dfeat;
    for (int i = net->nblocks - 1; i >= 0; i--) {
        void *dx;
        GLAE_TRY(block_bwd(ctx, net, &net->blocks[i], p, dout, &dx));
        dout = dx;
    }
    return unit_bwd(ctx, &net->stem, p, NULL, dout, other(net, dout, NULL));
}
