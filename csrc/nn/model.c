/* The whole estimator (see model.h). */
#include "nn/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/copy.h"
#include "core/status.h"
#ifdef GLAE_WITH_CUDA
#include "core/cuda_ctx.h"
#endif
#include "ops/route.h"
#include "ops/optim.h"
#include "ops/backend.h"
#include "ops/loss.h"
#include "ops/ops.h"

void glae_model_config_default(glae_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->backbone = 18;
    cfg->head = GLAE_HEAD_FRPA;
    cfg->r = 16;
    cfg->k = 16;
    cfg->s = 16;
    cfg->proj_depth = 0;
    cfg->proj_width = 512;
    cfg->num_classes = 101;
    cfg->input_size = 224;
    cfg->lam = 1.0f;
    cfg->seed = 0;
    cfg->device = GLAE_CPU;
    cfg->cuda_device = 0;
    cfg->math = 0;
    cfg->stochastic_depth = 0.2f;
}

/* ---- the backbone: a ResNet or an EfficientNetV2, behind one set of calls -------------- */

int glae_model_is_effnet(const glae_model *m) { return glae_effnet_arch_of(m->cfg.backbone) != NULL; }

int glae_model_feat_channels(const glae_model *m) {
    return glae_model_is_effnet(m) ? m->eff.out_c : m->net.out_c;
}

static int bb_out_size(int backbone, int h, int w, int *fh, int *fw) {
    const glae_effnet_arch *e = glae_effnet_arch_of(backbone);
    return e ? glae_effnet_out_size(e, h, w, fh, fw) : glae_resnet_out_size(h, w, fh, fw);
}

static float *bb_feat(const glae_model *m) { return glae_model_is_effnet(m) ? m->eff.feat : m->net.feat; }
static int bb_fh(const glae_model *m) { return glae_model_is_effnet(m) ? m->eff.fh : m->net.fh; }
static int bb_fw(const glae_model *m) { return glae_model_is_effnet(m) ? m->eff.fw : m->net.fw; }

static int bb_plan(glae_model *m, glae_arena *a, int n, int h, int w, int grads) {
    if (glae_model_is_effnet(m)) return glae_effnet_plan(&m->eff, a, n, h, w, grads);
    return glae_resnet_plan(&m->net, a, n, h, w, grads);
}

static int bb_forward(glae_model *m, const float *x, int training) {
    if (glae_model_is_effnet(m)) return glae_effnet_forward(&m->ctx, &m->eff, &m->p, x, training);
    return glae_resnet_forward(&m->ctx, &m->net, &m->p, x, training);
}

static int bb_backward(glae_model *m, float *dfeat) {
    if (glae_model_is_effnet(m)) return glae_effnet_backward(&m->ctx, &m->eff, &m->p, dfeat);
    return glae_resnet_backward(&m->ctx, &m->net, &m->p, dfeat);
}

static int make_ctx(glae_ctx *ctx, const glae_model_config *cfg) {
    if (cfg->device != GLAE_CPU && cfg->device != GLAE_CUDA)
        return glae_fail(GLAE_ERR_VALUE, "model: unknown device %d", cfg->device);
#ifndef GLAE_WITH_CUDA
    if (cfg->device == GLAE_CUDA)
        return glae_fail(GLAE_ERR_RUNTIME, "model: glae was built without CUDA (device='cuda')");
#endif
    return glae_ctx_open_backend(ctx, cfg->device, cfg->cuda_device, cfg->math, cfg->cpu_backend);
}

int glae_model_init(glae_model *m, const glae_model_config *cfg) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (cfg->threads < 0)
        return glae_fail(GLAE_ERR_VALUE, "model: threads must be >= 0 (0: the default), got %d",
                         cfg->threads);
    GLAE_TRY(make_ctx(&m->ctx, cfg));
    glae_ctx_set_threads(&m->ctx, cfg->threads);
    glae_ctx_apply_threads(&m->ctx); /* the context is born here: the init's loops use it */
    if (m->ctx.device == GLAE_CUDA) m->arena.dev = &m->ctx; /* activations on the device */
    int fh, fw;
    if (cfg->input_size < 1)
        return glae_fail(GLAE_ERR_VALUE, "model: input_size must be >= 1, got %d", cfg->input_size);
    GLAE_TRY(bb_out_size(cfg->backbone, cfg->input_size, cfg->input_size, &fh, &fw));
    if (cfg->math < 0 || cfg->math > 2)
        return glae_fail(GLAE_ERR_VALUE, "model: math must be 0 (fp32), 1 (tf32) or 2 (bf16), got %d",
                         cfg->math);
    const int eff = glae_model_is_effnet(m);
    if (eff) {
        if (cfg->math == 2)
            return glae_fail(GLAE_ERR_VALUE, "model: math='bf16' is not available for %s yet "
                             "(fp32 or tf32)", glae_effnet_arch_of(cfg->backbone)->name);
        if (!(cfg->stochastic_depth >= 0.0f && cfg->stochastic_depth < 1.0f))
            return glae_fail(GLAE_ERR_VALUE, "model: stochastic_depth must be in [0, 1), got %g",
                             (double)cfg->stochastic_depth);
        GLAE_TRY(glae_effnet_build(&m->eff, &m->p, cfg->backbone));
        m->eff.drop_prob = cfg->stochastic_depth;
    } else {
        GLAE_TRY(glae_resnet_build(&m->net, &m->p, cfg->backbone));
    }
    m->net.bf16 = cfg->math == 2; /* mixed precision: bf16 backbone activations (also on the CPU) */
    glae_head_config hc = {cfg->head, cfg->num_classes, cfg->r, cfg->k, cfg->s, cfg->proj_depth,
                           cfg->proj_width};
    const int C = glae_model_feat_channels(m);
    GLAE_TRY(glae_head_build(&m->head, &m->p, &hc, C, fh, fw, "", GLAE_G_HEAD));
    GLAE_TRY(glae_head_build(&m->bal, &m->p, &hc, C, fh, fw, "balanced.", GLAE_G_BALANCED));
    GLAE_TRY(glae_params_alloc(&m->p));
    if (eff) GLAE_TRY(glae_effnet_init(&m->eff, &m->p, cfg->seed));
    else GLAE_TRY(glae_resnet_init(&m->net, &m->p, cfg->seed));
    GLAE_TRY(glae_head_init(&m->head, &m->p, cfg->seed));
    GLAE_TRY(glae_head_init(&m->bal, &m->p, cfg->seed));
    /* initialised on the host (the Philox draws are plain C), then moved */
    GLAE_TRY(glae_sgd_no_decay_mask_on(&m->ctx, &m->p, &m->no_decay));
    return glae_params_to_device(&m->p, &m->ctx);
}

int glae_model_set_threads(glae_model *m, int n) {
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "model: threads must be >= 0, got %d", n);
    glae_ctx_set_threads(&m->ctx, n);
    return GLAE_OK;
}

int glae_model_set_bn_batch(glae_model *m, int k) {
    if (k < 0) return glae_fail(GLAE_ERR_VALUE, "model: bn_batch must be >= 0 (0: the whole batch), got %d", k);
    if (k > 0 && glae_model_is_effnet(m))
        return glae_fail(GLAE_ERR_VALUE,
                         "model: bn_batch (ghost batch norm) is implemented for the ResNet backbones "
                         "only; EfficientNetV2 takes its BN statistics over the whole batch (bn_batch = 0)");
    if (m->net.bn_batch != k) {
        m->net.bn_batch = k;
        m->plan_kind = GLAE_PLAN_NONE; /* the saved statistics take (groups, C) */
    }
    return GLAE_OK;
}

void glae_model_free(glae_model *m) {
    glae_model_async_free(m); /* waits for the slots' steps */
#ifdef GLAE_WITH_CUDA
    if (m->graph && m->ctx.device == GLAE_CUDA) glae_cuda_sync(&m->ctx); /* no launch in flight */
    glae_cuda_graph_destroy(m->graph); /* the graph reads the arena, not the slots */
    m->graph = NULL;
#endif
    if (m->no_decay && m->ctx.dev) m->ctx.dev->free(&m->ctx, m->no_decay);
    glae_params_free(&m->p);
    glae_arena_free(&m->arena);
    glae_ctx_close(&m->ctx);
    memset(m, 0, sizeof *m);
}

int glae_model_shapes(const glae_model *m, int h, int w, int *fh, int *fw, int *hp, int *wp) {
    if (h < 1 || w < 1) return glae_fail(GLAE_ERR_VALUE, "model: image size %dx%d", h, w);
    GLAE_TRY(bb_out_size(m->cfg.backbone, h, w, fh, fw));
    GLAE_TRY(glae_head_out_size(&m->head, *fh, *fw, hp, wp));
    if (m->head.kind == GLAE_HEAD_FRPA && (int64_t)*hp * *wp * m->head.k_cls != m->head.flat)
        return glae_fail(GLAE_ERR_VALUE,
                         "model: a %dx%d image gives a %dx%d FR map, but the fr+pa projection was "
                         "built for input_size=%d: use images of that size",
                         h, w, *hp, *wp, m->cfg.input_size);
    return GLAE_OK;
}


/* The one allocation sequence, replayed on a measuring arena and then on the real one. */
static int plan_into(glae_model *m, glae_arena *a, int kind, int n, int h, int w) {
    const int K = m->cfg.num_classes;
    GLAE_TRY(bb_plan(m, a, n, h, w, kind == GLAE_PLAN_TRAIN1));
    const int fh = bb_fh(m), fw = bb_fw(m);
    GLAE_TRY(glae_head_plan(&m->head, a, n, fh, fw, kind != GLAE_PLAN_INFER));
    GLAE_TRY(glae_head_plan(&m->bal, a, n, fh, fw, kind != GLAE_PLAN_INFER));
    ALLOC_F(m->z, (int64_t)n * K);
    ALLOC_F(m->y, n);
    m->dfeat = NULL;
    m->xflip = m->xin = m->sig = m->losses = NULL;
    /* a quarter of the float input's size, whether or not the batches come as uint8 */
    m->xu8 = glae_arena_alloc(a, (size_t)n * h * w * 3);
    if (!m->xu8) return GLAE_ERR_MEMORY;
    m->o_prob = m->o_age = m->o_ups = NULL;
    m->o_choice = NULL;
    if (kind == GLAE_PLAN_TRAIN1)
        ALLOC_F(m->dfeat, (int64_t)n * fh * fw * glae_model_feat_channels(m));
    if (kind == GLAE_PLAN_INFER) {
        /* the input batch (and its mirror image) and predict's outputs, on the device */
        ALLOC_F(m->xflip, (int64_t)n * h * w * 3);
        ALLOC_F(m->o_prob, (int64_t)n * K);
        ALLOC_F(m->o_age, n);
        ALLOC_F(m->o_ups, 2 * (int64_t)n);
        m->o_choice = glae_arena_alloc(a, (size_t)n * sizeof(int32_t));
        if (!m->o_choice) return GLAE_ERR_MEMORY;
    } else {
        /* the caller's batch, sigmas and the step's losses, on the device */
        ALLOC_F(m->xin, (int64_t)n * h * w * 3);
        ALLOC_F(m->sig, n);
        ALLOC_F(m->losses, 3);
    }
    return GLAE_OK;
}

/* Plan once per (kind, batch shape): measure, grow the arena if needed, assign. */
static int plan(glae_model *m, int kind, int n, int h, int w) {
    if (m->plan_kind == kind && m->plan_n == n && m->plan_h == h && m->plan_w == w)
        return GLAE_OK;
    int fh, fw, hp, wp;
    GLAE_TRY(glae_model_shapes(m, h, w, &fh, &fw, &hp, &wp));
    m->plan_kind = GLAE_PLAN_NONE;
    glae_arena meas = {0};
    glae_arena_measure(&meas);
    GLAE_TRY(plan_into(m, &meas, kind, n, h, w));
    if (meas.peak > m->arena.size) {
        GLAE_TRY(glae_arena_reserve(&m->arena, meas.peak));
        if (m->arena.size > m->peak_bytes) m->peak_bytes = m->arena.size;
    }
    glae_arena_reset(&m->arena);
    GLAE_TRY(plan_into(m, &m->arena, kind, n, h, w));
    m->plan_gen++;
    m->plan_kind = kind;
    m->plan_n = n;
    m->plan_h = h;
    m->plan_w = w;
    return GLAE_OK;
}

static int check_input(const char *fn, int xnorm) {
    if (xnorm < GLAE_INPUT_F32 || xnorm > GLAE_NORM_NONE)
        return glae_fail(GLAE_ERR_VALUE, "%s: unknown input format %d", fn, xnorm);
    return GLAE_OK;
}

/* The network's float32 input at dst (device) from the caller's host batch of `values`
 * numbers: a copy, or for uint8 pixels a copy of the bytes and the normalisation on the
 * device (the CPU normalises straight from the caller's array). */
static int stage_input(glae_model *m, float *dst, const void *x, int xnorm, size_t values) {
    glae_ctx *ctx = &m->ctx;
    if (xnorm == GLAE_INPUT_F32)
        return ctx->dev->copy(ctx, dst, x, values * sizeof(float), GLAE_COPY_H2D);
    const uint8_t *src = x;
    if (ctx->device != GLAE_CPU) {
        GLAE_TRY(ctx->dev->copy(ctx, m->xu8, x, values, GLAE_COPY_H2D));
        src = m->xu8;
    }
    return ctx->ops->normalise_u8(ctx, dst, src, (int64_t)values, xnorm);
}

static int check_step(int n, int stage, int mode) {
    if (stage != 1 && stage != 2)
        return glae_fail(GLAE_ERR_VALUE, "train_step: stage must be 1 or 2, got %d", stage);
    if (mode != GLAE_LOSS_BASE && mode != GLAE_LOSS_KL && mode != GLAE_LOSS_LAE_CLS)
        return glae_fail(GLAE_ERR_VALUE, "train_step: unknown loss mode %d", mode);
    if (n < 1) return glae_fail(GLAE_ERR_VALUE, "train_step: empty batch");
    return GLAE_OK;
}

/* The step on a batch already on the model's device: x (n, h, w, 3), ages (n), sigma (n)
 * or NULL; the losses land in m->losses (device). Planned by the caller. */
static int step_core(glae_model *m, const float *x, const float *ages, const float *sigma, int n,
                     int stage, int mode, float mae) {
    const int K = m->cfg.num_classes;
    glae_ctx *ctx = &m->ctx;
    GLAE_TRY(ctx->ops->label_distribution(ctx, m->z, ages, sigma, 1.0f, n, K, 1));
    /* stage 2 freezes the backbone: eval-mode BN, no backward */
    GLAE_TRY(bb_forward(m, x, stage == 1));
    glae_head *hd = stage == 1 ? &m->head : &m->bal;
    GLAE_TRY(glae_head_forward(ctx, hd, &m->p, bb_feat(m), 1));
    GLAE_TRY(glae_head_loss_backward(ctx, hd, &m->p, m->losses, stage == 1 ? m->dfeat : NULL,
                                     bb_feat(m), m->z, ages, mode, m->cfg.lam, mae));
    if (stage == 1) GLAE_TRY(bb_backward(m, m->dfeat));
    return GLAE_OK;
}

int glae_model_train_step(glae_model *m, float losses[3], const void *x, int xnorm, int n, int h,
                          int w, const float *ages, const float *sigma, int stage, int mode,
                          float mae) {
    GLAE_TRY(check_step(n, stage, mode));
    GLAE_TRY(check_input("train_step", xnorm));
    GLAE_TRY(plan(m, stage == 1 ? GLAE_PLAN_TRAIN1 : GLAE_PLAN_TRAIN2, n, h, w));
    glae_ctx *ctx = &m->ctx;
    GLAE_TRY(stage_input(m, m->xin, x, xnorm, (size_t)n * h * w * 3));
    GLAE_TRY(ctx->dev->copy(ctx, m->y, ages, (size_t)n * sizeof(float), GLAE_COPY_H2D));
    if (sigma) GLAE_TRY(ctx->dev->copy(ctx, m->sig, sigma, (size_t)n * sizeof(float), GLAE_COPY_H2D));
    GLAE_TRY(step_core(m, m->xin, m->y, sigma ? m->sig : NULL, n, stage, mode, mae));
    /* the step's one device-to-host copy (it waits for the step to finish) */
    return ctx->dev->copy(ctx, losses, m->losses, 3 * sizeof(float), GLAE_COPY_D2H);
}

/* ---- the pipelined step ----------------------------------------------------------------- */

void glae_model_async_free(glae_model *m) {
#ifdef GLAE_WITH_CUDA
    for (int i = 0; i < 2; i++) {
        glae_cuda_slot_destroy(m->slot[i]); /* waits for its copies and compute */
        m->slot[i] = NULL;
        if (m->pin[i]) glae_cuda_host_free(m->pin[i]);
        if (m->dslot[i]) glae_cuda_free(m->dslot[i]);
        m->pin[i] = m->dslot[i] = NULL;
    }
#endif
    m->async_cap = 0;
}

#ifdef GLAE_WITH_CUDA
/* two (pinned, device) slots of `bytes` each; each pinned one has 16 more bytes at
 * [bytes] for the losses of its step */
static int async_grow(glae_model *m, size_t bytes) {
    GLAE_TRY(glae_cuda_sync(&m->ctx));
    /* the losses of the last two steps live in the old pinned tails */
    float keep[2][3] = {{0}};
    for (int i = 0; i < 2; i++)
        if (m->pin[i]) memcpy(keep[i], m->pin[i] + m->async_cap, sizeof keep[i]);
    glae_model_async_free(m);
    for (int i = 0; i < 2; i++) {
        void *p = NULL, *d = NULL;
        GLAE_TRY(glae_cuda_slot_create(&m->ctx, (glae_cuda_slot **)&m->slot[i]));
        GLAE_TRY(glae_cuda_host_alloc(&p, bytes + 4 * sizeof(float)));
        m->pin[i] = p;
        GLAE_TRY(glae_cuda_malloc(&d, bytes));
        m->dslot[i] = d;
    }
    m->async_cap = bytes;
    for (int i = 0; i < 2; i++) memcpy(m->pin[i] + bytes, keep[i], sizeof keep[i]);
    return GLAE_OK;
}
#endif

#ifdef GLAE_WITH_CUDA
/* The step on the arena's inputs as a CUDA graph (glae_model_use_graph). */
static int step_graph(glae_model *m, int n, int stage, int mode, float mae, int has_sigma) {
    glae_ctx *ctx = &m->ctx;
    const float *sig = has_sigma ? m->sig : NULL;
    uint32_t mae_bits;
    memcpy(&mae_bits, &mae, sizeof mae_bits);
    unsigned long long key[8] = {m->plan_gen, (unsigned long long)(uintptr_t)m->arena.base,
                                 (unsigned long long)n, (unsigned long long)stage,
                                 (unsigned long long)mode, mae_bits,
                                 (unsigned long long)has_sigma, glae_cuda_ws_generation(ctx)};
    const int same = !memcmp(key, m->graph_key, sizeof key);
    if (m->graph && same) return glae_cuda_graph_launch(ctx, m->graph);
    glae_cuda_graph_destroy(m->graph);
    m->graph = NULL;
    if (m->graph_state != GLAE_GRAPH_WARM || !same) {
        /* first step of this key: run it, so the workspace and the algorithm choices settle */
        GLAE_TRY(step_core(m, m->xin, m->y, sig, n, stage, mode, mae));
        key[7] = glae_cuda_ws_generation(ctx);
        memcpy(m->graph_key, key, sizeof key);
        m->graph_state = GLAE_GRAPH_WARM;
        return GLAE_OK;
    }
    int st = glae_cuda_graph_ready(ctx);
    void *exec = NULL;
    if (!st) st = glae_cuda_capture_begin(ctx);
    if (!st) {
        int run = step_core(m, m->xin, m->y, sig, n, stage, mode, mae);
        st = glae_cuda_capture_end(ctx, run == GLAE_OK, &exec);
        if (!st) st = run;
    }
    if (!st && glae_cuda_ws_generation(ctx) != key[7])
        st = glae_fail(GLAE_ERR_RUNTIME, "the workspace grew while capturing");
    if (!st) {
        m->graph = exec;
        m->graph_state = GLAE_GRAPH_CAPTURED;
        return glae_cuda_graph_launch(ctx, exec);
    }
    glae_cuda_graph_destroy(exec);
    snprintf(m->graph_why, sizeof m->graph_why, "failed: %s", glae_last_error());
    m->graph_state = GLAE_GRAPH_FAILED;
    m->graph_on = 0;
    glae_clear_error();
    return step_core(m, m->xin, m->y, sig, n, stage, mode, mae); /* this step, plainly */
}
#endif

int glae_model_use_graph(glae_model *m, int on) {
    if (m->ctx.device != GLAE_CUDA)
        return glae_fail(GLAE_ERR_VALUE, "use_graph: CUDA graphs need a CUDA model (device='cuda')");
    if (on && glae_model_is_effnet(m) && m->eff.drop_prob > 0)
        return glae_fail(GLAE_ERR_VALUE, "use_graph: stochastic depth draws its masks on the host "
                         "every step, which a replayed graph would not: set stochastic_depth=0 "
                         "to use CUDA graphs with %s", m->eff.arch->name);
#ifdef GLAE_WITH_CUDA
    glae_cuda_graph_destroy(m->graph);
#endif
    m->graph = NULL;
#ifdef GLAE_WITH_CUDA
    /* cuBLAS's fixed workspace before the warm-up step, so capture sees the same setup */
    if (on) GLAE_TRY(glae_cuda_graph_ready(&m->ctx));
#endif
    m->graph_on = on != 0;
    m->graph_state = GLAE_GRAPH_OFF;
    m->graph_why[0] = 0;
    memset(m->graph_key, 0, sizeof m->graph_key);
    return GLAE_OK;
}

void glae_model_keep_activations(glae_model *m, int on) {
    m->net.keep_all = on != 0;
    m->eff.keep_all = on != 0;
    m->plan_kind = GLAE_PLAN_NONE;
}

const char *glae_model_graph_state(const glae_model *m) {
    switch (m->graph_state) {
    case GLAE_GRAPH_WARM: return "warming up";
    case GLAE_GRAPH_CAPTURED: return "captured";
    case GLAE_GRAPH_FAILED: return m->graph_why;
    default: return "off";
    }
}

int glae_model_train_step_async(glae_model *m, const void *x, int xnorm, int n, int h, int w,
                                const float *ages, const float *sigma, int stage, int mode,
                                float mae) {
    GLAE_TRY(check_step(n, stage, mode));
    GLAE_TRY(check_input("train_step_async", xnorm));
    if (m->ctx.device != GLAE_CUDA) {
        GLAE_TRY(glae_model_train_step(m, m->cpu_losses[m->async_steps & 1], x, xnorm, n, h, w,
                                       ages, sigma, stage, mode, mae));
        m->async_last = (int)(m->async_steps & 1);
        m->async_steps++;
        return GLAE_OK;
    }
#ifdef GLAE_WITH_CUDA
    GLAE_TRY(plan(m, stage == 1 ? GLAE_PLAN_TRAIN1 : GLAE_PLAN_TRAIN2, n, h, w));
    glae_ctx *ctx = &m->ctx;
    const glae_backend *ops = ctx->ops;
    /* a slot: the images (float32 or uint8, padded to 16 bytes), ages, sigmas */
    const size_t img = (size_t)n * h * w * 3, F = sizeof(float);
    const size_t ximg = img * (xnorm == GLAE_INPUT_F32 ? F : 1), xpad = (ximg + 15) & ~(size_t)15;
    if (xpad + 2 * n * F > m->async_cap) GLAE_TRY(async_grow(m, xpad + 2 * n * F));
    const int i = (int)(m->async_steps & 1);
    glae_cuda_slot *slot = m->slot[i];
    unsigned char *pin = m->pin[i], *dev = m->dslot[i];
    float *dev_y = (float *)(dev + xpad);
    /* the copy of step k-2 has finished reading pinned[i]: refill it */
    GLAE_TRY(glae_cuda_slot_host_sync(slot));
    glae_memcpy_big(pin, x, ximg);
    memcpy(pin + xpad, ages, n * F);
    if (sigma) memcpy(pin + xpad + n * F, sigma, n * F);
    /* copy stream: after step k-2's compute released dev[i]; compute waits for the copy */
    GLAE_TRY(glae_cuda_slot_h2d(ctx, slot, dev, pin, xpad + n * F * (sigma ? 2 : 1)));
    GLAE_TRY(glae_cuda_slot_wait_copy(ctx, slot));
    /* uint8 pixels are normalised into the arena's input; float32 ones are read in place */
    const float *xd = (const float *)dev;
    int st = GLAE_OK;
    if (xnorm != GLAE_INPUT_F32) {
        st = ops->normalise_u8(ctx, m->xin, dev, (int64_t)img, xnorm);
        xd = m->xin;
    }
    if (m->graph_on) {
        /* a graph reads fixed addresses: the arena's input buffers */
        if (!st && xd != m->xin) st = ctx->dev->copy(ctx, m->xin, xd, img * F, GLAE_COPY_D2D);
        if (!st) st = ctx->dev->copy(ctx, m->y, dev_y, n * F, GLAE_COPY_D2D);
        if (!st && sigma) st = ctx->dev->copy(ctx, m->sig, dev_y + n, n * F, GLAE_COPY_D2D);
        if (!st) st = step_graph(m, n, stage, mode, mae, sigma != NULL);
    } else if (!st) {
        st = step_core(m, xd, dev_y, sigma ? dev_y + n : NULL, n, stage, mode, mae);
    }
    /* the losses come back behind the step, into the slot's pinned tail */
    if (!st) st = glae_cuda_d2h_async(ctx, pin + m->async_cap, m->losses, 3 * sizeof(float));
    /* also after a failure: whatever was queued reading dev[i] is before this event, so
     * the next copy into the slot waits for it */
    int st2 = glae_cuda_slot_compute_done(ctx, slot);
    if (st) return st;
    GLAE_TRY(st2);
    m->async_last = i;
    m->async_steps++;
    return GLAE_OK;
#else
    return glae_fail(GLAE_ERR_RUNTIME, "train_step_async: glae was built without CUDA");
#endif
}

int glae_model_async_losses(glae_model *m, float losses[3], int back) {
    if (back != 0 && back != 1)
        return glae_fail(GLAE_ERR_VALUE, "async_losses: back must be 0 (last step) or 1, got %d", back);
    if (m->async_steps <= back)
        return glae_fail(GLAE_ERR_VALUE, "async_losses: only %lld train_step_async call(s) so far",
                         m->async_steps);
    /* step j used slot j % 2; the last one is async_steps - 1 */
    const int i = (int)((m->async_steps - 1 - back) & 1);
    if (m->ctx.device == GLAE_CUDA && !m->pin[i]) /* a later step's slots failed to grow */
        return glae_fail(GLAE_ERR_RUNTIME, "async_losses: the input slots could not be "
                         "allocated, so the losses of those steps are gone");
    if (m->ctx.device != GLAE_CUDA) {
        memcpy(losses, m->cpu_losses[i], 3 * sizeof(float));
        return GLAE_OK;
    }
#ifdef GLAE_WITH_CUDA
    GLAE_TRY(glae_cuda_slot_host_sync_compute(m->slot[i]));
    memcpy(losses, m->pin[i] + m->async_cap, 3 * sizeof(float));
    return GLAE_OK;
#else
    return glae_fail(GLAE_ERR_RUNTIME, "async_losses: glae was built without CUDA");
#endif
}

static int copy_out(glae_ctx *ctx, void *dst, const void *src, size_t bytes) {
    return dst ? ctx->dev->copy(ctx, dst, src, bytes, GLAE_COPY_D2H) : GLAE_OK;
}

int glae_model_forward(glae_model *m, const void *x, int xnorm, int n, int h, int w, int training,
                       float *feat, float *p_van, float *p_bal, float *map_van, float *map_bal,
                       float *loc_van) {
    if (n < 1) return glae_fail(GLAE_ERR_VALUE, "forward: empty batch");
    GLAE_TRY(check_input("forward", xnorm));
    GLAE_TRY(plan(m, GLAE_PLAN_INFER, n, h, w));
    const int K = m->cfg.num_classes;
    glae_ctx *ctx = &m->ctx;
    const size_t F = sizeof(float);
    GLAE_TRY(stage_input(m, m->xflip, x, xnorm, (size_t)n * h * w * 3));
    GLAE_TRY(bb_forward(m, m->xflip, training));
    GLAE_TRY(glae_head_forward(ctx, &m->head, &m->p, bb_feat(m), training));
    GLAE_TRY(glae_head_forward(ctx, &m->bal, &m->p, bb_feat(m), training));
    GLAE_TRY(copy_out(ctx, feat, bb_feat(m),
                      (size_t)n * bb_fh(m) * bb_fw(m) * glae_model_feat_channels(m) * F));
    GLAE_TRY(copy_out(ctx, p_van, m->head.prob, (size_t)n * K * F));
    GLAE_TRY(copy_out(ctx, p_bal, m->bal.prob, (size_t)n * K * F));
    size_t mapb = (size_t)n * m->head.hp * m->head.wp * K * F;
    if (m->head.kind != GLAE_HEAD_GAP) {
        GLAE_TRY(copy_out(ctx, map_van, m->head.map, mapb));
        GLAE_TRY(copy_out(ctx, map_bal, m->bal.map, mapb));
    }
    if (m->head.kind == GLAE_HEAD_FRPA) GLAE_TRY(copy_out(ctx, loc_van, m->head.loc_prob, mapb));
    return GLAE_OK;
}

int glae_model_predict(glae_model *m, float *age, float *prob, int32_t *head, float *ups,
                       float *head_age, const void *x, int xnorm, int n, int h, int w, int route,
                       int flip) {
    if (route < GLAE_PRED_SMALLER || route > GLAE_PRED_BALANCED)
        return glae_fail(GLAE_ERR_VALUE, "predict: unknown route %d", route);
    if (n < 1) return glae_fail(GLAE_ERR_VALUE, "predict: empty batch");
    GLAE_TRY(check_input("predict", xnorm));
    const int K = m->cfg.num_classes;
    int need_flip = flip || route == GLAE_PRED_SMALLER || route == GLAE_PRED_BIGGER;
    int nb = need_flip ? 2 * n : n;
    GLAE_TRY(plan(m, GLAE_PLAN_INFER, nb, h, w));
    /* one batch: the images, then their mirror images */
    glae_ctx *ctx = &m->ctx;
    const glae_backend *ops = ctx->ops;
    const size_t F = sizeof(float), img = (size_t)h * w * 3;
    GLAE_TRY(stage_input(m, m->xflip, x, xnorm, (size_t)n * img));
    if (need_flip) GLAE_TRY(ops->hflip_forward(ctx, m->xflip + n * img, m->xflip, n, h, w, 3));
    GLAE_TRY(bb_forward(m, m->xflip, 0));
    GLAE_TRY(glae_head_forward(ctx, &m->head, &m->p, bb_feat(m), 0));
    GLAE_TRY(glae_head_forward(ctx, &m->bal, &m->p, bb_feat(m), 0));
    const float *pv = m->head.prob, *pb = m->bal.prob;
    const int64_t nk = (int64_t)n * K;
    /* o_prob and o_age are scratch here: the route below writes its own answer over them */
    for (int k = 0; head_age && k < 2; k++) {
        const float *src = k ? pb : pv, *p = src;
        if (flip) {
            GLAE_TRY(ops->avg2_forward(ctx, m->o_prob, src, src + nk, nk));
            p = m->o_prob;
        }
        GLAE_TRY(ops->expected_age(ctx, m->o_age, p, n, K));
        GLAE_TRY(copy_out(ctx, head_age + (size_t)k * n, m->o_age, (size_t)n * F));
    }
    if (route == GLAE_PRED_SMALLER || route == GLAE_PRED_BIGGER) {
        GLAE_TRY(ops->adaptive_route(ctx, m->o_prob, m->o_age, m->o_choice, ups ? m->o_ups : NULL,
                                     pv, pv + nk, pb, pb + nk, n, K,
                                     route == GLAE_PRED_SMALLER ? GLAE_ROUTE_SMALLER
                                                                : GLAE_ROUTE_BIGGER,
                                     flip));
        GLAE_TRY(copy_out(ctx, head, m->o_choice, (size_t)n * sizeof(int32_t)));
        GLAE_TRY(copy_out(ctx, ups, m->o_ups, 2 * (size_t)n * F));
    } else {
        const float *src = route == GLAE_PRED_VANILLA ? pv : pb;
        if (flip) GLAE_TRY(ops->avg2_forward(ctx, m->o_prob, src, src + nk, nk));
        else GLAE_TRY(ctx->dev->copy(ctx, m->o_prob, src, (size_t)nk * F, GLAE_COPY_D2D));
        GLAE_TRY(ops->expected_age(ctx, m->o_age, m->o_prob, n, K));
        /* constants, written straight into the caller's host arrays */
        for (int i = 0; i < n; i++) head[i] = route == GLAE_PRED_BALANCED;
        if (ups && flip) {
            /* (Upsilon_1, Upsilon_2) as for routing; the route's choice is not used */
            GLAE_TRY(ops->adaptive_route(ctx, NULL, NULL, m->o_choice, m->o_ups, pv, pv + nk, pb,
                                         pb + nk, n, K, GLAE_ROUTE_SMALLER, 1));
            GLAE_TRY(copy_out(ctx, ups, m->o_ups, 2 * (size_t)n * F));
        } else if (ups) {
            for (int i = 0; i < 2 * n; i++) ups[i] = NAN;
        }
    }
    GLAE_TRY(copy_out(ctx, prob, m->o_prob, (size_t)nk * F));
    return copy_out(ctx, age, m->o_age, (size_t)n * F);
}

int glae_model_sgd_step(glae_model *m, float lr, float momentum, float dampening, float wd,
                        int nesterov, int first_step, size_t begin, size_t end, int wd_exclude) {
    if (begin > end || end > m->p.n)
        return glae_fail(GLAE_ERR_VALUE, "sgd_step: need 0 <= begin <= end <= %zu, got %zu, %zu",
                         m->p.n, begin, end);
    glae_ctx *ctx = &m->ctx;
    return ctx->ops->sgd_step(ctx, m->p.params, m->p.momentum, m->p.grads, begin, end,
                              wd_exclude ? m->no_decay : NULL, lr, momentum, dampening, wd,
                              nesterov, first_step);
}

int glae_model_copy_head_to_balanced(glae_model *m) {
    char name[GLAE_NAME_LEN + 16];
    for (int i = 0; i < m->p.count; i++) {
        const glae_param_info *t = &m->p.info[i];
        if (t->group != GLAE_G_HEAD) continue;
        snprintf(name, sizeof name, "balanced.%s", t->name);
        int j = glae_params_find(&m->p, name);
        if (j < 0 || m->p.info[j].numel != t->numel)
            return glae_fail(GLAE_ERR_RUNTIME, "copy_head_to_balanced: no match for '%s'", t->name);
        GLAE_TRY(m->ctx.dev->copy(&m->ctx, glae_params_ptr(&m->p, j), glae_params_ptr(&m->p, i),
                                  (size_t)t->numel * sizeof(float), GLAE_COPY_D2D));
    }
    return GLAE_OK;
}
