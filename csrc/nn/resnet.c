/* ResNet-18/50 backbone: build from a size table, init, plan, forward, backward. */
#include "nn/resnet.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/rng.h"
#include "core/status.h"
#include "ops/backend.h"

/* ---- registration helpers ----------------------------------------------------------- */

int glae_conv_layer_add(glae_conv_layer *l, glae_params *p, const char *prefix, int c_in,
                        int c_out, int k, int stride, int pad, int bias, int group) {
    char name[2 * GLAE_NAME_LEN];
    memset(l, 0, sizeof *l);
    l->c_in = c_in;
    l->c_out = c_out;
    l->k = k;
    l->stride = stride;
    l->pad = pad;
    l->b = -1;
    int64_t shape[4] = {c_out, k, k, c_in}; /* OHWI */
    snprintf(name, sizeof name, "%s.weight", prefix);
    GLAE_TRY(glae_params_add(p, name, 4, shape, 0, group, &l->w));
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        GLAE_TRY(glae_params_add(p, name, 1, shape, GLAE_P_NO_DECAY, group, &l->b));
    }
    return GLAE_OK;
}

int glae_bn_layer_add(glae_bn_layer *l, glae_params *p, const char *prefix, int c, int group) {
    char name[2 * GLAE_NAME_LEN];
    int64_t shape[1] = {c};
    memset(l, 0, sizeof *l);
    l->c = c;
    snprintf(name, sizeof name, "%s.weight", prefix);
    GLAE_TRY(glae_params_add(p, name, 1, shape, GLAE_P_NO_DECAY, group, &l->g));
    snprintf(name, sizeof name, "%s.bias", prefix);
    GLAE_TRY(glae_params_add(p, name, 1, shape, GLAE_P_NO_DECAY, group, &l->b));
    snprintf(name, sizeof name, "%s.running_mean", prefix);
    GLAE_TRY(glae_params_add(p, name, 1, shape, GLAE_P_BUFFER, group, &l->rm));
    snprintf(name, sizeof name, "%s.running_var", prefix);
    GLAE_TRY(glae_params_add(p, name, 1, shape, GLAE_P_BUFFER, group, &l->rv));
    return GLAE_OK;
}

static const glae_resnet_arch ARCHS[] = {
    {18, 0, {2, 2, 2, 2}, {64, 128, 256, 512}},
    {50, 1, {3, 4, 6, 3}, {64, 128, 256, 512}},
};
#define N_ARCHS ((int)(sizeof ARCHS / sizeof *ARCHS))

const glae_resnet_arch *glae_resnet_arch_of(int depth) {
    for (int i = 0; i < N_ARCHS; i++)
        if (ARCHS[i].depth == depth) return &ARCHS[i];
    return NULL;
}

const glae_resnet_arch *glae_resnet_archs(int *n) {
    *n = N_ARCHS;
    return ARCHS;
}

int glae_resnet_build(glae_resnet *net, glae_params *p, int depth) {
    memset(net, 0, sizeof *net);
    const glae_resnet_arch *arch = glae_resnet_arch_of(depth);
    if (!arch) return glae_fail(GLAE_ERR_VALUE, "resnet: depth must be 18 or 50, got %d", depth);
    net->depth = depth;
    const int G = GLAE_G_BACKBONE;
    const int expansion = arch->bottleneck ? 4 : 1;
    const int *counts = arch->blocks;
    GLAE_TRY(glae_conv_layer_add(&net->conv1, p, "conv1", 3, 64, 7, 2, 3, 0, G));
    GLAE_TRY(glae_bn_layer_add(&net->bn1, p, "bn1", 64, G));
    int inplanes = 64;
    char pre[2 * GLAE_NAME_LEN];
    for (int li = 0; li < 4; li++) {
        int planes = arch->width[li];
        for (int bi = 0; bi < counts[li]; bi++) {
            glae_block *b = &net->blocks[net->nblocks++];
            int stride = (li > 0 && bi == 0) ? 2 : 1;
            int out = planes * expansion;
            if (!arch->bottleneck) {
                b->nconv = 2;
                snprintf(pre, sizeof pre, "layer%d.%d.conv1", li + 1, bi);
                GLAE_TRY(glae_conv_layer_add(&b->conv[0], p, pre, inplanes, planes, 3, stride, 1, 0, G));
                snprintf(pre, sizeof pre, "layer%d.%d.bn1", li + 1, bi);
                GLAE_TRY(glae_bn_layer_add(&b->bn[0], p, pre, planes, G));
                snprintf(pre, sizeof pre, "layer%d.%d.conv2", li + 1, bi);
                GLAE_TRY(glae_conv_layer_add(&b->conv[1], p, pre, planes, planes, 3, 1, 1, 0, G));
                snprintf(pre, sizeof pre, "layer%d.%d.bn2", li + 1, bi);
                GLAE_TRY(glae_bn_layer_add(&b->bn[1], p, pre, planes, G));
            } else { /* Bottleneck v1.5: 1x1, 3x3 (stride), 1x1 */
                b->nconv = 3;
                snprintf(pre, sizeof pre, "layer%d.%d.conv1", li + 1, bi);
                GLAE_TRY(glae_conv_layer_add(&b->conv[0], p, pre, inplanes, planes, 1, 1, 0, 0, G));
                snprintf(pre, sizeof pre, "layer%d.%d.bn1", li + 1, bi);
                GLAE_TRY(glae_bn_layer_add(&b->bn[0], p, pre, planes, G));
                snprintf(pre, sizeof pre, "layer%d.%d.conv2", li + 1, bi);
                GLAE_TRY(glae_conv_layer_add(&b->conv[1], p, pre, planes, planes, 3, stride, 1, 0, G));
                snprintf(pre, sizeof pre, "layer%d.%d.bn2", li + 1, bi);
                GLAE_TRY(glae_bn_layer_add(&b->bn[1], p, pre, planes, G));
                snprintf(pre, sizeof pre, "layer%d.%d.conv3", li + 1, bi);
                GLAE_TRY(glae_conv_layer_add(&b->conv[2], p, pre, planes, out, 1, 1, 0, 0, G));
                snprintf(pre, sizeof pre, "layer%d.%d.bn3", li + 1, bi);
                GLAE_TRY(glae_bn_layer_add(&b->bn[2], p, pre, out, G));
            }
            if (stride != 1 || inplanes != out) {
                b->has_down = 1;
                snprintf(pre, sizeof pre, "layer%d.%d.downsample.0", li + 1, bi);
                GLAE_TRY(glae_conv_layer_add(&b->dconv, p, pre, inplanes, out, 1, stride, 0, 0, G));
                snprintf(pre, sizeof pre, "layer%d.%d.downsample.1", li + 1, bi);
                GLAE_TRY(glae_bn_layer_add(&b->dbn, p, pre, out, G));
            }
            inplanes = out;
        }
    }
    net->out_c = inplanes;
    return GLAE_OK;
}

/* ---- init ----------------------------------------------------------------------------- */

/* Element i is a pure function of (seed, tensor index, i): one Philox call gives the two
 * normals of a Box-Muller pair (elements 2j, 2j+1), so the loop parallelises freely. */
void glae_init_normal(glae_params *p, int index, uint64_t seed, double std) {
    float *w = glae_params_ptr(p, index);
    const int64_t n = p->info[index].numel, pairs = (n + 1) / 2;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t j = 0; j < pairs; j++) {
        uint32_t r[4];
        glae_rand4(seed, (uint32_t)index, 0x1417u, (uint32_t)j, (uint32_t)(j >> 32), r);
        double u1 = 1.0 - glae_u01d(r[0], r[1]); /* (0, 1]: log is finite */
        double u2 = glae_u01d(r[2], r[3]);
        double rad = std * sqrt(-2.0 * log(u1)), th = 2.0 * 3.14159265358979323846 * u2;
        w[2 * j] = (float)(rad * cos(th));
        if (2 * j + 1 < n) w[2 * j + 1] = (float)(rad * sin(th));
    }
}

void glae_init_uniform(glae_params *p, int index, uint64_t seed, double bound) {
    float *w = glae_params_ptr(p, index);
    const int64_t n = p->info[index].numel, pairs = (n + 1) / 2;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t j = 0; j < pairs; j++) {
        uint32_t r[4];
        glae_rand4(seed, (uint32_t)index, 0x1418u, (uint32_t)j, (uint32_t)(j >> 32), r);
        w[2 * j] = (float)((2.0 * glae_u01d(r[0], r[1]) - 1.0) * bound);
        if (2 * j + 1 < n) w[2 * j + 1] = (float)((2.0 * glae_u01d(r[2], r[3]) - 1.0) * bound);
    }
}

void glae_init_const(glae_params *p, int index, float v) {
    float *w = glae_params_ptr(p, index);
    for (int64_t i = 0; i < p->info[index].numel; i++) w[i] = v;
}

static void init_conv_kaiming(const glae_conv_layer *l, glae_params *p, uint64_t seed) {
    glae_init_normal(p, l->w, seed, sqrt(2.0 / ((double)l->c_out * l->k * l->k)));
}

static void init_bn(const glae_bn_layer *l, glae_params *p) {
    glae_init_const(p, l->g, 1.0f);
    glae_init_const(p, l->b, 0.0f);
    glae_init_const(p, l->rm, 0.0f);
    glae_init_const(p, l->rv, 1.0f);
}

int glae_resnet_init(const glae_resnet *net, glae_params *p, uint64_t seed) {
    init_conv_kaiming(&net->conv1, p, seed);
    init_bn(&net->bn1, p);
    for (int i = 0; i < net->nblocks; i++) {
        const glae_block *b = &net->blocks[i];
        for (int j = 0; j < b->nconv; j++) {
            init_conv_kaiming(&b->conv[j], p, seed);
            init_bn(&b->bn[j], p);
        }
        if (b->has_down) {
            init_conv_kaiming(&b->dconv, p, seed);
            init_bn(&b->dbn, p);
        }
    }
    return GLAE_OK;
}

/* ---- planning ------------------------------------------------------------------------- */

static int conv_out(int x, int k, int s, int pad) { return (x + 2 * pad - k) / s + 1; }

int glae_resnet_out_size(int h, int w, int *fh, int *fw) {
    /* stem conv 7/2/3, maxpool 3/2/1, then three stride-2 3x3 (pad 1) stages */
    int y = h, x = w;
    y = conv_out(y, 7, 2, 3);
    x = conv_out(x, 7, 2, 3);
    if (y < 1 || x < 1) goto small;
    y = conv_out(y, 3, 2, 1);
    x = conv_out(x, 3, 2, 1);
    for (int i = 0; i < 3; i++) {
        if (y < 1 || x < 1) goto small;
        y = conv_out(y, 3, 2, 1);
        x = conv_out(x, 3, 2, 1);
    }
    if (y < 1 || x < 1) goto small;
    *fh = y;
    *fw = x;
    return GLAE_OK;
small:
    return glae_fail(GLAE_ERR_VALUE, "resnet: input %dx%d is too small (the last map must be >= 1x1)",
                     h, w);
}


static size_t act_bytes(const glae_resnet *net) {
    return net->bf16 ? sizeof(glae_bf16) : sizeof(float);
}

/* an activation of `count` values in the plan's precision */
#define ACT(ptr, count)                                                      \
    do {                                                                     \
        (ptr) = glae_arena_alloc(a, (size_t)(count) * act_bytes(net));       \
        if (!(ptr)) return GLAE_ERR_MEMORY;                                  \
    } while (0)

/* the number of ghost-BN groups of a batch of n images (1: whole-batch statistics) */
static int bn_groups(const glae_resnet *net, int n) {
    return net->bn_batch > 0 && net->bn_batch < n ? (n + net->bn_batch - 1) / net->bn_batch : 1;
}

static int plan_bn(glae_bn_layer *l, glae_arena *a, int groups) {
    ALLOC_F(l->mean, (int64_t)groups * l->c);
    ALLOC_F(l->invstd, (int64_t)groups * l->c);
    return GLAE_OK;
}

/* Every layer's shape for a batch (n, h, w, 3), the blocks' input and output sizes and
 * the largest activation (gmax): what the allocation pass needs to know first. */
static int plan_shapes(glae_resnet *net, int n, int h, int w) {
    glae_conv_layer *c = &net->conv1;
    GLAE_TRY(glae_conv2d_shape_init(&c->s, n, h, w, 3, 64, 7, 7, 2, 2, 3, 3));
    int64_t gmax = (int64_t)n * c->s.oh * c->s.ow * 64;
    GLAE_TRY(glae_pool_shape_init(&net->pool, n, c->s.oh, c->s.ow, 64, 3, 2, 1, 0));
    int ih = net->pool.oh, iw = net->pool.ow;
    for (int i = 0; i < net->nblocks; i++) {
        glae_block *b = &net->blocks[i];
        b->in_numel = (int64_t)n * ih * iw * b->conv[0].c_in;
        int ch = ih, cw = iw;
        for (int j = 0; j < b->nconv; j++) {
            glae_conv_layer *l = &b->conv[j];
            GLAE_TRY(glae_conv2d_shape_init(&l->s, n, ch, cw, l->c_in, l->c_out, l->k, l->k,
                                            l->stride, l->stride, l->pad, l->pad));
            ch = l->s.oh;
            cw = l->s.ow;
            b->out_numel = (int64_t)n * ch * cw * l->c_out;
            if (b->out_numel > gmax) gmax = b->out_numel;
        }
        if (b->has_down) {
            glae_conv_layer *l = &b->dconv;
            GLAE_TRY(glae_conv2d_shape_init(&l->s, n, ih, iw, l->c_in, l->c_out, 1, 1, l->stride,
                                            l->stride, 0, 0));
            if (l->s.oh != ch || l->s.ow != cw)
                return glae_fail(GLAE_ERR_RUNTIME, "resnet: downsample shape mismatch");
        }
        ih = ch;
        iw = cw;
    }
    if (ih != net->fh || iw != net->fw)
        return glae_fail(GLAE_ERR_RUNTIME, "resnet: planned %dx%d, expected %dx%d", ih, iw,
                         net->fh, net->fw);
    net->gmax = gmax;
    return GLAE_OK;
}

/* Where a plan puts the backbone's activations. KEEP: each in a place of its own (a
 * training plan: the backward reads them all). Without a backward (inference, the frozen
 * backbone of stage 2) no activation outlives the next block, so four slots take turns:
 * MEASURE records each slot's largest tenant, SHARE points the activations into the slots
 * (see glae_resnet_plan). */
enum { PLACE_KEEP, PLACE_MEASURE, PLACE_SHARE };

typedef struct {
    int mode;
    void *slot[4];   /* in the plan's precision */
    int64_t need[4]; /* values, after MEASURE */
} glae_placer;

static int place(glae_resnet *net, glae_arena *a, glae_placer *pl, void **act, int64_t count,
                 int slot) {
    switch (pl->mode) {
    case PLACE_KEEP:
        ACT(*act, count);
        break;
    case PLACE_MEASURE:
        if (count > pl->need[slot]) pl->need[slot] = count;
        *act = NULL;
        break;
    default:
        *act = pl->slot[slot];
    }
    return GLAE_OK;
}

/* A block reads its input from slot X and uses C (inner conv outputs, then the identity's
 * BN), A (inner ReLU outputs, then the block's output: the next X) and D (the last conv's
 * and the downsample conv's outputs). The forward's order (block_forward) never writes a
 * slot whose value is still to be read (docs/model.md). */
static int place_activations(glae_resnet *net, glae_arena *a, glae_placer *pl) {
#define PLACE(act, count, slot) GLAE_TRY(place(net, a, pl, &(act), count, slot))
    const int n = net->n;
    const glae_conv_layer *c = &net->conv1;
    PLACE(net->c1, (int64_t)n * c->s.oh * c->s.ow * 64, 1);
    PLACE(net->a1, (int64_t)n * c->s.oh * c->s.ow * 64, 2);
    PLACE(net->p1, (int64_t)n * net->pool.oh * net->pool.ow * 64, 0);
    const void *in = net->p1;
    int x = 0; /* the slot holding the block's input */
    for (int i = 0; i < net->nblocks; i++) {
        glae_block *b = &net->blocks[i];
        const int C = (x + 1) % 4, A = (x + 2) % 4, D = (x + 3) % 4, last = b->nconv - 1;
        b->in = in;
        for (int j = 0; j < b->nconv; j++) {
            const glae_conv_layer *l = &b->conv[j];
            const int64_t m = (int64_t)n * l->s.oh * l->s.ow * l->c_out;
            PLACE(b->c[j], m, j < last ? C : D);
            if (j < last) PLACE(b->a[j], m, A);
        }
        PLACE(b->out, b->out_numel, A);
        if (b->has_down) {
            PLACE(b->dc, b->out_numel, D);
            PLACE(b->db, b->out_numel, C);
        }
        in = b->out;
        x = A;
    }
#undef PLACE
    return GLAE_OK;
}

int glae_resnet_plan(glae_resnet *net, glae_arena *a, int n, int h, int w, int grads) {
    if (n < 1 || h < 1 || w < 1)
        return glae_fail(GLAE_ERR_VALUE, "resnet: bad batch shape (%d, %d, %d)", n, h, w);
    GLAE_TRY(glae_resnet_out_size(h, w, &net->fh, &net->fw));
    net->n = n;
    net->h = h;
    net->w = w;
    GLAE_TRY(plan_shapes(net, n, h, w));
    const int share = !grads && !net->keep_all;
    glae_placer pl = {.mode = share ? PLACE_MEASURE : PLACE_KEEP};
    if (share) { /* slots sized to their largest tenant */
        GLAE_TRY(place_activations(net, a, &pl));
        for (int k = 0; k < 4; k++) ACT(pl.slot[k], pl.need[k]);
        pl.mode = PLACE_SHARE;
    }
    GLAE_TRY(place_activations(net, a, &pl));
    if (net->bn_batch < 0)
        return glae_fail(GLAE_ERR_VALUE, "resnet: bn_batch must be >= 0 (0: the whole batch), got %d",
                         net->bn_batch);
    const int groups = bn_groups(net, n);
    if (grads && groups > 1 && n % net->bn_batch == 1)
        return glae_fail(GLAE_ERR_VALUE,
                         "resnet: a batch of %d images in groups of bn_batch=%d leaves a last "
                         "group of 1 image: batch norm needs more than 1 value per channel",
                         n, net->bn_batch);
    GLAE_TRY(plan_bn(&net->bn1, a, groups));
    const int64_t npool = (int64_t)n * net->pool.oh * net->pool.ow * 64;
    net->argmax = glae_arena_alloc(a, (size_t)npool * sizeof(int32_t));
    if (!net->argmax) return GLAE_ERR_MEMORY;
    for (int i = 0; i < net->nblocks; i++) {
        glae_block *b = &net->blocks[i];
        for (int j = 0; j < b->nconv; j++) GLAE_TRY(plan_bn(&b->bn[j], a, groups));
        if (b->has_down) GLAE_TRY(plan_bn(&b->dbn, a, groups));
    }
    const int64_t nfeat = (int64_t)n * net->fh * net->fw * net->out_c;
    net->x_h = net->dfeat_h = NULL;
    if (net->bf16) {
        ALLOC_F(net->feat, nfeat); /* the head's float32 input */
        ALLOC_H(net->x_h, (int64_t)n * h * w * 3);
        if (grads) ALLOC_H(net->dfeat_h, nfeat);
    } else {
        net->feat = net->blocks[net->nblocks - 1].out;
    }
    for (int i = 0; i < 4; i++) net->g[i] = NULL;
    if (grads)
        for (int i = 0; i < 4; i++) ACT(net->g[i], net->gmax);
    return GLAE_OK;
}

/* ---- the layers of the walk, in the plan's precision ------------------------------------ */

/* Each calls the op table's float32 op or its bf16 twin (ops.h): the walk below is written
 * once for both. Activations are float or glae_bf16 as net->bf16 says; parameters and
 * their gradients are float32 in both. */

static int64_t rows_of(const glae_conv_layer *l) { return (int64_t)l->s.n * l->s.oh * l->s.ow; }

static int conv_fwd(glae_ctx *ctx, const glae_resnet *net, glae_conv_layer *l, glae_params *p,
                    void *out, const void *in) {
    const float *w = glae_params_ptr(p, l->w), *b = l->b >= 0 ? glae_params_ptr(p, l->b) : NULL;
    if (net->bf16) return ctx->ops->conv2d_forward_bf16(ctx, out, in, w, b, &l->s);
    return ctx->ops->conv2d_forward(ctx, out, in, w, b, &l->s);
}

static int conv_bwd(glae_ctx *ctx, const glae_resnet *net, glae_conv_layer *l, glae_params *p,
                    void *din, const void *dout, const void *in) {
    const float *w = glae_params_ptr(p, l->w);
    float *dw = glae_params_grad(p, l->w), *db = l->b >= 0 ? glae_params_grad(p, l->b) : NULL;
    if (net->bf16) return ctx->ops->conv2d_backward_bf16(ctx, din, dw, db, dout, in, w, &l->s);
    return ctx->ops->conv2d_backward(ctx, din, dw, db, dout, in, w, &l->s);
}

/* Ghost BN in bf16: the fused op on each group of bn_batch images (rows per image = rows /
 * n), the running statistics fed by group 0 as batchnorm_ghost_forward does. */
static int bn_act_ghost_fwd_bf16(glae_ctx *ctx, const glae_resnet *net, glae_bn_layer *l,
                                 glae_bf16 *out, const glae_bf16 *in, const glae_bf16 *residual,
                                 const float *g, const float *b, float *rm, float *rv,
                                 int64_t rows, int relu) {
    const int64_t gr = rows / net->n * net->bn_batch, c = l->c;
    for (int64_t r0 = 0, k = 0; r0 < rows; r0 += gr, k++) {
        const int64_t m = rows - r0 < gr ? rows - r0 : gr;
        GLAE_TRY(ctx->ops->bn_act_forward_bf16(ctx, out + r0 * c, l->mean + k * c,
                                               l->invstd + k * c, in + r0 * c,
                                               residual ? residual + r0 * c : NULL, g, b,
                                               k ? NULL : rm, k ? NULL : rv, m, l->c,
                                               GLAE_BN_MOMENTUM, GLAE_BN_EPS, 1, relu));
    }
    return GLAE_OK;
}

static int bn_act_ghost_bwd_bf16(glae_ctx *ctx, const glae_resnet *net, glae_bn_layer *l,
                                 glae_bf16 *din, glae_bf16 *dres, float *dg, float *db,
                                 glae_bf16 *dout, const glae_bf16 *out, const glae_bf16 *in,
                                 const float *g, int64_t rows) {
    const int64_t gr = rows / net->n * net->bn_batch, c = l->c;
    for (int64_t r0 = 0, k = 0; r0 < rows; r0 += gr, k++) {
        const int64_t m = rows - r0 < gr ? rows - r0 : gr;
        GLAE_TRY(ctx->ops->bn_act_backward_bf16(ctx, din + r0 * c, dres ? dres + r0 * c : NULL, dg,
                                                db, dout + r0 * c, out ? out + r0 * c : NULL,
                                                in + r0 * c, l->mean + k * c, l->invstd + k * c,
                                                g, m, l->c, 1, out != NULL));
    }
    return GLAE_OK;
}

/* out = act(BN(in) + residual), residual may be NULL: one fused op in bf16; in float32 the
 * BN, then the add and the ReLU in place on out */
static int bn_act_fwd(glae_ctx *ctx, const glae_resnet *net, glae_bn_layer *l, glae_params *p,
                      void *out, const void *in, const void *residual, int64_t rows,
                      int training, int relu) {
    const glae_backend *ops = ctx->ops;
    float *g = glae_params_ptr(p, l->g), *b = glae_params_ptr(p, l->b);
    float *rm = glae_params_ptr(p, l->rm), *rv = glae_params_ptr(p, l->rv);
    const int groups = training ? bn_groups(net, net->n) : 1;
    if (net->bf16 && groups > 1) /* ghost BN: the fused op on each group of images */
        return bn_act_ghost_fwd_bf16(ctx, net, l, out, in, residual, g, b, rm, rv, rows, relu);
    if (net->bf16)
        return ops->bn_act_forward_bf16(ctx, out, l->mean, l->invstd, in, residual, g, b, rm, rv,
                                        rows, l->c, GLAE_BN_MOMENTUM, GLAE_BN_EPS, training, relu);
    if (groups > 1)
        GLAE_TRY(ops->batchnorm_ghost_forward(ctx, out, l->mean, l->invstd, in, g, b, rm, rv, rows,
                                              l->c, rows / net->n * net->bn_batch,
                                              GLAE_BN_MOMENTUM, GLAE_BN_EPS, training));
    else
        GLAE_TRY(ops->batchnorm_forward(ctx, out, l->mean, l->invstd, in, g, b, rm, rv, rows, l->c,
                                        GLAE_BN_MOMENTUM, GLAE_BN_EPS, training));
    if (residual) GLAE_TRY(ops->add_forward(ctx, out, out, residual, rows * l->c));
    return relu ? ops->relu_forward(ctx, out, out, rows * l->c) : GLAE_OK;
}

/* The backward of bn_act_fwd. out: the forward's output when it had a ReLU (its mask),
 * else NULL. dout is consumed: with a ReLU it may be overwritten by the masked gradient
 * (float32 masks in place); dres, NULL or dout itself, then holds that masked gradient,
 * which is also the residual's. */
static int bn_act_bwd(glae_ctx *ctx, const glae_resnet *net, glae_bn_layer *l, glae_params *p,
                      void *din, void *dres, void *dout, const void *out, const void *in,
                      int64_t rows) {
    const glae_backend *ops = ctx->ops;
    float *dg = glae_params_grad(p, l->g), *db = glae_params_grad(p, l->b);
    const float *g = glae_params_ptr(p, l->g);
    const int groups = bn_groups(net, net->n);
    if (net->bf16 && groups > 1)
        return bn_act_ghost_bwd_bf16(ctx, net, l, din, dres, dg, db, dout, out, in, g, rows);
    if (net->bf16)
        return ops->bn_act_backward_bf16(ctx, din, dres, dg, db, dout, out, in, l->mean,
                                         l->invstd, g, rows, l->c, 1, out != NULL);
    if (out) GLAE_TRY(ops->relu_backward(ctx, dout, dout, out, rows * l->c));
    if (groups > 1)
        return ops->batchnorm_ghost_backward(ctx, din, dg, db, dout, in, l->mean, l->invstd, g,
                                             rows, l->c, rows / net->n * net->bn_batch, 1);
    return ops->batchnorm_backward(ctx, din, dg, db, dout, in, l->mean, l->invstd, g, rows,
                                   l->c, 1);
}

static int add_fwd(glae_ctx *ctx, const glae_resnet *net, void *out, const void *x,
                   const void *y, int64_t n) {
    if (net->bf16) return ctx->ops->add_forward_bf16(ctx, out, x, y, n);
    return ctx->ops->add_forward(ctx, out, x, y, n);
}

static int pool_fwd(glae_ctx *ctx, const glae_resnet *net, void *out, const void *in) {
    if (net->bf16) return ctx->ops->maxpool2d_forward_bf16(ctx, out, net->argmax, in, &net->pool);
    return ctx->ops->maxpool2d_forward(ctx, out, net->argmax, in, &net->pool);
}

static int pool_bwd(glae_ctx *ctx, const glae_resnet *net, void *din, const void *dout) {
    if (net->bf16)
        return ctx->ops->maxpool2d_backward_bf16(ctx, din, dout, net->argmax, &net->pool);
    return ctx->ops->maxpool2d_backward(ctx, din, dout, net->argmax, &net->pool);
}

/* Inference (running statistics, float32): conv, batch norm, residual and ReLU as one op,
 * which the oneDNN backend runs as one primitive with the batch norm folded in; the
 * reference runs the same three ops as the training path. The conv output c[] is not
 * written: nothing reads it without a backward, and only training runs one. */
static int fused_ok(const glae_resnet *net, int training) { return !training && !net->bf16; }

static int conv_bn_act_fwd(glae_ctx *ctx, glae_conv_layer *cl, glae_bn_layer *bl, glae_params *p,
                           void *out, const void *in, const void *residual, int relu) {
    const float *w = glae_params_ptr(p, cl->w), *b = cl->b >= 0 ? glae_params_ptr(p, cl->b) : NULL;
    return ctx->ops->conv2d_bn_act_forward(ctx, out, bl->mean, bl->invstd, in, residual, w, b,
                                           glae_params_ptr(p, bl->g), glae_params_ptr(p, bl->b),
                                           glae_params_ptr(p, bl->rm), glae_params_ptr(p, bl->rv),
                                           GLAE_BN_EPS, relu, &cl->s);
}

/* ---- forward / backward: the one walk ---------------------------------------------------- */

/* The inner stages, the downsample branch, then the last conv and its BN with the
 * identity added and the ReLU: out = relu(bn_last(conv_last(...)) + identity). */
static int block_forward(glae_ctx *ctx, const glae_resnet *net, glae_block *b, glae_params *p,
                         int training) {
    const int last = b->nconv - 1;
    const void *in = b->in;
    if (fused_ok(net, training)) {
        /* No conv output is kept, so the inner stages write the conv slots (place_activations:
         * C holds c[0], D c[last]), alternating so that the last inner output lands in D:
         * never the slot being read (a[] all share A), and C is free again for the
         * identity's BN output (db) and D for nothing else; the block's output goes to A. */
        void *slot_c = b->c[0], *slot_d = b->c[last];
        for (int j = 0; j < last; j++) {
            void *o = (last - 1 - j) % 2 == 0 ? slot_d : slot_c;
            GLAE_TRY(conv_bn_act_fwd(ctx, &b->conv[j], &b->bn[j], p, o, in, NULL, 1));
            in = o;
        }
        const void *identity = b->in;
        if (b->has_down) {
            GLAE_TRY(conv_bn_act_fwd(ctx, &b->dconv, &b->dbn, p, b->db, b->in, NULL, 0));
            identity = b->db;
        }
        return conv_bn_act_fwd(ctx, &b->conv[last], &b->bn[last], p, b->out, in, identity, 1);
    }
    for (int j = 0; j < last; j++) {
        GLAE_TRY(conv_fwd(ctx, net, &b->conv[j], p, b->c[j], in));
        GLAE_TRY(bn_act_fwd(ctx, net, &b->bn[j], p, b->a[j], b->c[j], NULL, rows_of(&b->conv[j]),
                            training, 1));
        in = b->a[j];
    }
    const void *identity = b->in;
    if (b->has_down) {
        GLAE_TRY(conv_fwd(ctx, net, &b->dconv, p, b->dc, b->in));
        GLAE_TRY(bn_act_fwd(ctx, net, &b->dbn, p, b->db, b->dc, NULL, rows_of(&b->dconv),
                            training, 0));
        identity = b->db;
    }
    GLAE_TRY(conv_fwd(ctx, net, &b->conv[last], p, b->c[last], in));
    return bn_act_fwd(ctx, net, &b->bn[last], p, b->out, b->c[last], identity,
                      rows_of(&b->conv[last]), training, 1);
}

int glae_resnet_forward(glae_ctx *ctx, glae_resnet *net, glae_params *p, const float *x,
                        int training) {
    if (!net->feat || (net->bf16 && !net->x_h))
        return glae_fail(GLAE_ERR_RUNTIME, "resnet_forward: not planned");
    net->x = x;
    const void *in = x;
    if (net->bf16) { /* the image is rounded once */
        GLAE_TRY(ctx->ops->f32_to_bf16(ctx, net->x_h, x, (int64_t)net->n * net->h * net->w * 3));
        in = net->x_h;
    }
    if (fused_ok(net, training)) {
        GLAE_TRY(conv_bn_act_fwd(ctx, &net->conv1, &net->bn1, p, net->a1, in, NULL, 1));
    } else {
        GLAE_TRY(conv_fwd(ctx, net, &net->conv1, p, net->c1, in));
        GLAE_TRY(bn_act_fwd(ctx, net, &net->bn1, p, net->a1, net->c1, NULL, rows_of(&net->conv1),
                            training, 1));
    }
    GLAE_TRY(pool_fwd(ctx, net, net->p1, net->a1));
    for (int i = 0; i < net->nblocks; i++)
        GLAE_TRY(block_forward(ctx, net, &net->blocks[i], p, training));
    if (!net->bf16) return GLAE_OK; /* feat is the last block's output */
    const glae_block *lb = &net->blocks[net->nblocks - 1];
    return ctx->ops->bf16_to_f32(ctx, net->feat, lb->out, lb->out_numel);
}

/* dout is consumed (its ReLU-masked gradient, also the identity's, may replace it); dx
 * receives the input gradient; t1, t2 are work buffers. None may alias another. */
static int block_backward(glae_ctx *ctx, const glae_resnet *net, glae_block *b, glae_params *p,
                          void *dx, void *dout, void *t1, void *t2) {
    const int last = b->nconv - 1;
    GLAE_TRY(bn_act_bwd(ctx, net, &b->bn[last], p, t1, dout, dout, b->out, b->c[last],
                        rows_of(&b->conv[last])));
    for (int j = last; j >= 0; j--) {
        /* t1 holds d(conv j output) */
        const void *in = j > 0 ? b->a[j - 1] : b->in;
        GLAE_TRY(conv_bwd(ctx, net, &b->conv[j], p, j > 0 ? t2 : dx, t1, in));
        if (j > 0)
            GLAE_TRY(bn_act_bwd(ctx, net, &b->bn[j - 1], p, t1, NULL, t2, b->a[j - 1],
                                b->c[j - 1], rows_of(&b->conv[j - 1])));
    }
    if (b->has_down) {
        GLAE_TRY(bn_act_bwd(ctx, net, &b->dbn, p, t1, NULL, dout, NULL, b->dc,
                            rows_of(&b->dconv)));
        GLAE_TRY(conv_bwd(ctx, net, &b->dconv, p, t2, t1, b->in));
        return add_fwd(ctx, net, dx, dx, t2, b->in_numel);
    }
    return add_fwd(ctx, net, dx, dx, dout, b->in_numel);
}

int glae_resnet_backward(glae_ctx *ctx, glae_resnet *net, glae_params *p, float *dfeat) {
    if (!net->g[0] || (net->bf16 && !net->dfeat_h))
        return glae_fail(GLAE_ERR_RUNTIME, "resnet_backward: planned without gradients");
    /* rotate: dout lives in g[cur], dx goes to g[nxt]; the head's dfeat is the first dout */
    void *dout = dfeat;
    if (net->bf16) {
        const glae_block *lb = &net->blocks[net->nblocks - 1];
        GLAE_TRY(ctx->ops->f32_to_bf16(ctx, net->dfeat_h, dfeat, lb->out_numel));
        dout = net->dfeat_h;
    }
    int nxt = 0;
    for (int i = net->nblocks - 1; i >= 0; i--) {
        void *dx = net->g[nxt], *t1 = net->g[(nxt + 1) % 4], *t2 = net->g[(nxt + 2) % 4];
        GLAE_TRY(block_backward(ctx, net, &net->blocks[i], p, dx, dout, t1, t2));
        dout = dx;
        nxt = (nxt + 1) % 4; /* dout is now g[nxt - 1]: the next three are clear of it */
    }
    /* stem: dout is d(pool output); two buffers other than dout */
    void *free_g[3];
    int nf = 0;
    for (int i = 0; i < 4; i++)
        if (net->g[i] != dout) free_g[nf++] = net->g[i];
    void *da = free_g[0], *dc = free_g[1];
    GLAE_TRY(pool_bwd(ctx, net, da, dout));
    GLAE_TRY(bn_act_bwd(ctx, net, &net->bn1, p, dc, NULL, da, net->a1, net->c1,
                        rows_of(&net->conv1)));
    const void *x = net->bf16 ? (const void *)net->x_h : net->x;
    return conv_bwd(ctx, net, &net->conv1, p, NULL, dc, x);
}

/* ---- layout conversion ------------------------------------------------------------------ */

void glae_oihw_to_ohwi(float *dst, const float *src, int o, int i, int kh, int kw) {
    for (int a = 0; a < o; a++)
        for (int c = 0; c < i; c++)
            for (int y = 0; y < kh; y++)
                for (int x = 0; x < kw; x++)
                    dst[(((size_t)a * kh + y) * kw + x) * i + c] =
                        src[(((size_t)a * i + c) * kh + y) * kw + x];
}

void glae_ohwi_to_oihw(float *dst, const float *src, int o, int i, int kh, int kw) {
    for (int a = 0; a < o; a++)
        for (int c = 0; c < i; c++)
            for (int y = 0; y < kh; y++)
                for (int x = 0; x < kw; x++)
                    dst[(((size_t)a * i + c) * kh + y) * kw + x] =
                        src[(((size_t)a * kh + y) * kw + x) * i + c];
}
