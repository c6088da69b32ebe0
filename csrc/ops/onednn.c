/* The oneDNN CPU backend (onednn.h): convolutions as oneDNN primitives, NHWC activations
 * and OHWI weights as the reference has them (oneDNN's nhwc / ohwi tags), weights
 * reordered into the layout the primitive asks for (tag `any`: blocked for the ISA).
 *
 * Semantics are the reference's (conv.c): out and din overwritten, dweight and dbias
 * accumulated (+=). oneDNN's weight gradient overwrites, so it lands in the entry's own
 * buffer and a reorder with a sum post-op adds it to dweight (one pass, any layout).
 * A shape oneDNN has no primitive for (or a degenerate one: a zero size) runs the
 * reference kernel. */
#include "ops/onednn.h"

#ifdef GLAE_WITH_ONEDNN

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include "core/status.h"
#include "ops/fused.h"

enum { K_FWD = 0, K_BWD_DATA = 1, K_BWD_W = 2, K_FUSED = 3 };
/* flag bits of a K_FUSED entry */
enum { F_RESIDUAL = 1, F_RELU = 2 };
enum { MAX_ENTRIES = 512 };

/* one primitive of one shape, with everything a call needs */
typedef struct {
    int kind, flag, nthreads; /* flag: bias (fwd), dbias (bwd weights) */
    glae_conv2d_shape s;
    int fallback;           /* oneDNN has no primitive for it: run the reference */
    dnnl_primitive_t prim;
    dnnl_memory_t m_act, m_wei, m_bias, m_out; /* handles set per call */
    size_t scratch_bytes;
    dnnl_memory_t m_scratch;
    /* weights in the primitive's layout when it differs from OHWI (wbuf): the forward and
     * backward-data reorder into it, the backward-weights writes into it */
    dnnl_primitive_t w_reorder; /* OHWI -> wbuf, or wbuf -> dweight with sum */
    dnnl_memory_t m_wuser;      /* the OHWI side of the reorder */
    void *wbuf;
    float *bbuf; /* the bias gradient before it is added; K_FUSED: the folded bias */
    float *scale;            /* K_FUSED: gamma / sqrt(var + eps), per output channel */
    dnnl_memory_t m_scale;   /* K_FUSED: the weight reorder's per-channel scales */
    char impl[64];
} conv_entry;

typedef struct {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    int all;  /* every conv through oneDNN (GLAE_ONEDNN_CONV=all, or an AVX-512 CPU) */
    conv_entry *e[MAX_ENTRIES];
    int n;
} onednn_state;

#define DN(call)                                                                          \
    do {                                                                                  \
        dnnl_status_t dst_ = (call);                                                      \
        if (dst_ != dnnl_success)                                                         \
            return glae_fail(GLAE_ERR_RUNTIME, "onednn: %s failed: %s", #call,           \
                             dnnl_status2str(dst_));                                      \
    } while (0)

int glae_onednn_ctx_init(glae_ctx *ctx) {
    if (ctx->onednn) return GLAE_OK;
    onednn_state *st = calloc(1, sizeof *st);
    if (!st) return glae_fail(GLAE_ERR_MEMORY, "onednn: cannot allocate the backend state");
    dnnl_status_t r = dnnl_engine_create(&st->eng, dnnl_cpu, 0);
    if (r == dnnl_success) r = dnnl_stream_create(&st->stream, st->eng, dnnl_stream_default_flags);
    if (r != dnnl_success) {
        if (st->eng) dnnl_engine_destroy(st->eng);
        free(st);
        return glae_fail(GLAE_ERR_RUNTIME, "onednn: cannot create the CPU engine: %s",
                         dnnl_status2str(r));
    }
    /* GLAE_ONEDNN_CONV=all|auto: the tests run every shape through oneDNN; "auto" (the
     * default) keeps the reference where it measured faster (conv_pays) */
    const char *pol = getenv("GLAE_ONEDNN_CONV");
    st->all = (pol && !strcmp(pol, "all")) || dnnl_get_effective_cpu_isa() >= dnnl_cpu_isa_avx512_core;
    ctx->onednn = st;
    return GLAE_OK;
}

/* Whether oneDNN runs this conv. With AVX-512 (or more) oneDNN's kernels are the fast ones
 * everywhere. With AVX2 only (measured on a 2-core Zen 3, docs/benchmarks.md) its
 * primitives won clearly on large feature maps and lost on small ones (7x7, 3x3 at 112 px)
 * and on 1x1 convs, where glae's im2col + OpenBLAS GEMM is as good or better; its weight
 * gradient won only on the RGB stem. The rule keeps each conv on the faster engine. */
static int conv_pays(const onednn_state *st, int kind, const glae_conv2d_shape *s) {
    if (st->all) return 1;
    const long long p = (long long)s->oh * s->ow;
    const int spatial = s->kh * s->kw > 1;
    if (kind == K_BWD_W) return spatial && s->c_in < 8;
    return spatial && p >= 784;
}

static void mem_free(dnnl_memory_t m) {
    if (m) dnnl_memory_destroy(m);
}

static void entry_free(conv_entry *e) {
    if (!e) return;
    if (e->prim) dnnl_primitive_destroy(e->prim);
    if (e->w_reorder) dnnl_primitive_destroy(e->w_reorder);
    mem_free(e->m_act);
    mem_free(e->m_wei);
    mem_free(e->m_bias);
    mem_free(e->m_out);
    mem_free(e->m_scratch);
    mem_free(e->m_wuser);
    mem_free(e->m_scale);
    free(e->wbuf);
    free(e->bbuf);
    free(e->scale);
    free(e);
}

void glae_onednn_ctx_free(glae_ctx *ctx) {
    onednn_state *st = ctx->onednn;
    if (!st) return;
    for (int i = 0; i < st->n; i++) entry_free(st->e[i]);
    dnnl_stream_destroy(st->stream);
    dnnl_engine_destroy(st->eng);
    free(st);
    ctx->onednn = NULL;
}

int glae_onednn_cache_size(const glae_ctx *ctx) {
    const onednn_state *st = ctx->onednn;
    return st ? st->n : 0;
}

/* ---- building an entry ------------------------------------------------------------- */

static int md_tag(dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims, dnnl_format_tag_t tag) {
    DN(dnnl_memory_desc_create_with_tag(md, nd, dims, dnnl_f32, tag));
    return GLAE_OK;
}

/* the descriptors of a conv shape: activations NHWC, weights OHWI (or any) */
typedef struct {
    dnnl_memory_desc_t in, out, wei_user, wei_any, bias;
    dnnl_dims_t strides, dilates, pad_l, pad_r;
} conv_mds;

static void mds_free(conv_mds *d) {
    dnnl_memory_desc_t *all[] = {&d->in, &d->out, &d->wei_user, &d->wei_any, &d->bias};
    for (int i = 0; i < 5; i++)
        if (*all[i]) dnnl_memory_desc_destroy(*all[i]);
}

static int mds_make(conv_mds *d, const glae_conv2d_shape *s) {
    memset(d, 0, sizeof *d);
    dnnl_dims_t in = {s->n, s->c_in, s->h, s->w}, out = {s->n, s->c_out, s->oh, s->ow};
    dnnl_dims_t wei = {s->c_out, s->c_in, s->kh, s->kw}, bias = {s->c_out};
    GLAE_TRY(md_tag(&d->in, 4, in, dnnl_nhwc));
    GLAE_TRY(md_tag(&d->out, 4, out, dnnl_nhwc));
    GLAE_TRY(md_tag(&d->wei_user, 4, wei, dnnl_ohwi));
    GLAE_TRY(md_tag(&d->wei_any, 4, wei, dnnl_format_tag_any));
    GLAE_TRY(md_tag(&d->bias, 1, bias, dnnl_a));
    d->strides[0] = s->stride_h;
    d->strides[1] = s->stride_w;
    /* PyTorch's symmetric padding; oneDNN's output size rule floors like PyTorch's, so the
     * right padding is the left one */
    d->pad_l[0] = d->pad_r[0] = s->pad_h;
    d->pad_l[1] = d->pad_r[1] = s->pad_w;
    return GLAE_OK;
}

static int attr_user_scratchpad(dnnl_primitive_attr_t *attr) {
    DN(dnnl_primitive_attr_create(attr));
    DN(dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user));
    return GLAE_OK;
}

static int mem_of(dnnl_memory_t *m, const_dnnl_memory_desc_t md, dnnl_engine_t eng) {
    DN(dnnl_memory_create(m, md, eng, DNNL_MEMORY_NONE));
    return GLAE_OK;
}

/* A primitive of pd with its memory objects, its scratchpad size and the weights buffer
 * (and reorder) when the primitive's weights are not OHWI. */
static int entry_finish(conv_entry *e, onednn_state *st, dnnl_primitive_desc_t pd,
                        const conv_mds *d, dnnl_query_t wq) {
    DN(dnnl_primitive_create(&e->prim, pd));
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        snprintf(e->impl, sizeof e->impl, "%s", impl);
    const_dnnl_memory_desc_t spd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    e->scratch_bytes = spd ? dnnl_memory_desc_get_size(spd) : 0;
    if (e->scratch_bytes) GLAE_TRY(mem_of(&e->m_scratch, spd, st->eng));
    const_dnnl_memory_desc_t wmd = dnnl_primitive_desc_query_md(pd, wq, 0);
    GLAE_TRY(mem_of(&e->m_wei, wmd, st->eng));
    /* the fused op folds the batch norm's scale into the weights in the reorder, so it
     * always has one (OHWI to OHWI where the primitive takes plain weights) */
    if (e->kind == K_FUSED || !dnnl_memory_desc_equal(wmd, d->wei_user)) {
        size_t bytes = dnnl_memory_desc_get_size(wmd);
        e->wbuf = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!e->wbuf) return glae_fail(GLAE_ERR_MEMORY, "onednn: cannot allocate %zu bytes", bytes);
        DN(dnnl_memory_set_data_handle(e->m_wei, e->wbuf));
        GLAE_TRY(mem_of(&e->m_wuser, d->wei_user, st->eng));
        dnnl_primitive_desc_t rpd = NULL;
        dnnl_primitive_attr_t attr = NULL;
        DN(dnnl_primitive_attr_create(&attr));
        dnnl_status_t r;
        if (e->kind == K_BWD_W) {
            /* wbuf -> dweight, added to it */
            dnnl_post_ops_t po = NULL;
            r = dnnl_post_ops_create(&po);
            if (r == dnnl_success) r = dnnl_post_ops_append_sum(po, 1.0f, 0, dnnl_data_type_undef);
            if (r == dnnl_success) r = dnnl_primitive_attr_set_post_ops(attr, po);
            if (po) dnnl_post_ops_destroy(po);
            if (r == dnnl_success)
                r = dnnl_reorder_primitive_desc_create(&rpd, wmd, st->eng, d->wei_user, st->eng, attr);
        } else {
            r = e->kind == K_FUSED ? dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_SRC, 1)
                                   : dnnl_success;
            if (r == dnnl_success)
                r = dnnl_reorder_primitive_desc_create(&rpd, d->wei_user, st->eng, wmd, st->eng, attr);
        }
        dnnl_primitive_attr_destroy(attr);
        if (r == dnnl_success) r = dnnl_primitive_create(&e->w_reorder, rpd);
        if (rpd) dnnl_primitive_desc_destroy(rpd);
        if (r != dnnl_success)
            return glae_fail(GLAE_ERR_RUNTIME, "onednn: weight reorder: %s", dnnl_status2str(r));
    }
    return GLAE_OK;
}

static int fwd_pd(dnnl_primitive_desc_t *pd, onednn_state *st, const conv_mds *d, int bias,
                  const_dnnl_primitive_attr_t attr) {
    return dnnl_convolution_forward_primitive_desc_create(
        pd, st->eng, dnnl_forward_training, dnnl_convolution_direct, d->in, d->wei_any,
        bias ? d->bias : NULL, d->out, d->strides, d->dilates, d->pad_l, d->pad_r, attr);
}

static int set(dnnl_memory_t m, const void *p);

static int entry_build(conv_entry *e, onednn_state *st) {
    conv_mds d;
    int rc = mds_make(&d, &e->s);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t hint = NULL, pd = NULL;
    if (!rc) rc = attr_user_scratchpad(&attr);
    if (rc) goto done;
    dnnl_status_t r;
    if (e->kind == K_FWD) {
        r = fwd_pd(&pd, st, &d, e->flag, attr);
    } else if (e->kind == K_FUSED) {
        /* the residual arrives in the output (copied there first) for the sum post-op */
        dnnl_post_ops_t po = NULL;
        r = dnnl_post_ops_create(&po);
        if (r == dnnl_success && (e->flag & F_RESIDUAL))
            r = dnnl_post_ops_append_sum(po, 1.0f, 0, dnnl_data_type_undef);
        if (r == dnnl_success && (e->flag & F_RELU))
            r = dnnl_post_ops_append_eltwise(po, dnnl_eltwise_relu, 0.0f, 0.0f);
        if (r == dnnl_success) r = dnnl_primitive_attr_set_post_ops(attr, po);
        if (po) dnnl_post_ops_destroy(po);
        if (r == dnnl_success)
            r = dnnl_convolution_forward_primitive_desc_create(
                &pd, st->eng, dnnl_forward_inference, dnnl_convolution_direct, d.in, d.wei_any,
                d.bias, d.out, d.strides, d.dilates, d.pad_l, d.pad_r, attr);
    } else {
        r = fwd_pd(&hint, st, &d, e->kind == K_BWD_W && e->flag, NULL);
        if (r == dnnl_success && e->kind == K_BWD_DATA)
            r = dnnl_convolution_backward_data_primitive_desc_create(
                &pd, st->eng, dnnl_convolution_direct, d.in, d.wei_any, d.out, d.strides,
                d.dilates, d.pad_l, d.pad_r, hint, attr);
        else if (r == dnnl_success)
            r = dnnl_convolution_backward_weights_primitive_desc_create(
                &pd, st->eng, dnnl_convolution_direct, d.in, d.wei_any, e->flag ? d.bias : NULL,
                d.out, d.strides, d.dilates, d.pad_l, d.pad_r, hint, attr);
    }
    if (r == dnnl_unimplemented) {
        e->fallback = 1; /* the reference runs this shape */
        goto done;
    }
    if (r != dnnl_success) {
        rc = glae_fail(GLAE_ERR_RUNTIME, "onednn: conv primitive (kind %d): %s", e->kind,
                       dnnl_status2str(r));
        goto done;
    }
    dnnl_query_t wq = e->kind == K_BWD_W ? dnnl_query_diff_weights_md : dnnl_query_weights_md;
    rc = entry_finish(e, st, pd, &d, wq);
    if (!rc) rc = mem_of(&e->m_act, d.in, st->eng);
    if (!rc) rc = mem_of(&e->m_out, d.out, st->eng);
    if (!rc && (e->flag || e->kind == K_FUSED)) rc = mem_of(&e->m_bias, d.bias, st->eng);
    if (!rc && e->kind == K_FUSED) {
        rc = mem_of(&e->m_scale, d.bias, st->eng);
        e->bbuf = malloc((size_t)e->s.c_out * sizeof(float));
        e->scale = malloc((size_t)e->s.c_out * sizeof(float));
        if (!rc && (!e->bbuf || !e->scale))
            rc = glae_fail(GLAE_ERR_MEMORY, "onednn: cannot allocate the folded batch norm");
        if (!rc) rc = set(e->m_scale, e->scale);
        if (!rc) rc = set(e->m_bias, e->bbuf);
    }
    if (!rc && e->kind == K_BWD_W && e->flag) {
        e->bbuf = malloc((size_t)e->s.c_out * sizeof(float));
        if (!e->bbuf) rc = glae_fail(GLAE_ERR_MEMORY, "onednn: cannot allocate the bias gradient");
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (hint) dnnl_primitive_desc_destroy(hint);
    if (attr) dnnl_primitive_attr_destroy(attr);
    mds_free(&d);
    return rc;
}

/* The entry of (kind, shape, flag) on the calling thread's count, built on first use. */
static int entry_get(glae_ctx *ctx, int kind, const glae_conv2d_shape *s, int flag,
                     conv_entry **out) {
    GLAE_TRY(glae_onednn_ctx_init(ctx));
    onednn_state *st = ctx->onednn;
    int nthr = glae_ctx_threads(ctx);
    for (int i = 0; i < st->n; i++) {
        conv_entry *e = st->e[i];
        if (e->kind == kind && e->flag == flag && e->nthreads == nthr &&
            !memcmp(&e->s, s, sizeof *s)) {
            *out = e;
            return GLAE_OK;
        }
    }
    if (st->n == MAX_ENTRIES) {
        /* a stream of new shapes: start the cache again rather than grow without bound */
        for (int i = 0; i < st->n; i++) entry_free(st->e[i]);
        st->n = 0;
    }
    conv_entry *e = calloc(1, sizeof *e);
    if (!e) return glae_fail(GLAE_ERR_MEMORY, "onednn: cannot allocate a cache entry");
    e->kind = kind;
    e->flag = flag;
    e->nthreads = nthr;
    e->s = *s;
    int rc = entry_build(e, st);
    if (rc) {
        entry_free(e);
        return rc;
    }
    st->e[st->n++] = e;
    *out = e;
    return GLAE_OK;
}

/* The shape re-validated (the caller may have filled it by hand), as the reference does. */
static int conv_check(const glae_conv2d_shape *s, const char *fn) {
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    glae_conv2d_shape t;
    GLAE_TRY(glae_conv2d_shape_init(&t, s->n, s->h, s->w, s->c_in, s->c_out, s->kh, s->kw,
                                    s->stride_h, s->stride_w, s->pad_h, s->pad_w));
    if (t.oh != s->oh || t.ow != s->ow)
        return glae_fail(GLAE_ERR_VALUE, "%s: shape.oh/ow (%d, %d) do not match the sizes (%d, %d)",
                         fn, s->oh, s->ow, t.oh, t.ow);
    return GLAE_OK;
}

/* ---- running an entry -------------------------------------------------------------- */

static int set(dnnl_memory_t m, const void *p) {
    DN(dnnl_memory_set_data_handle(m, (void *)p));
    return GLAE_OK;
}

static int run(glae_ctx *ctx, dnnl_primitive_t p, int nargs, const dnnl_exec_arg_t *args) {
    onednn_state *st = ctx->onednn;
    DN(dnnl_primitive_execute(p, st->stream, nargs, args));
    DN(dnnl_stream_wait(st->stream));
    return GLAE_OK;
}

/* the scratchpad argument (ctx scratch), appended to args; returns the new count */
static int with_scratch(glae_ctx *ctx, conv_entry *e, dnnl_exec_arg_t *args, int n, int *rc) {
    *rc = GLAE_OK;
    if (!e->scratch_bytes) return n;
    float *sp = glae_ctx_scratch(ctx, (e->scratch_bytes + sizeof(float) - 1) / sizeof(float));
    if (!sp) {
        *rc = GLAE_ERR_MEMORY;
        return n;
    }
    *rc = set(e->m_scratch, sp);
    args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, e->m_scratch};
    return n;
}

/* the weights into the entry's layout (forward, backward data) */
static int weights_in(glae_ctx *ctx, conv_entry *e, const float *weight) {
    if (!e->w_reorder) return set(e->m_wei, weight);
    GLAE_TRY(set(e->m_wuser, weight));
    dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, e->m_wuser}, {DNNL_ARG_TO, e->m_wei}};
    return run(ctx, e->w_reorder, 2, a);
}

static int degenerate(const glae_conv2d_shape *s) {
    return s->n == 0 || s->h == 0 || s->w == 0 || s->c_in == 0 || s->c_out == 0;
}

int glae_conv2d_forward_onednn(glae_ctx *ctx, float *out, const float *in, const float *weight,
                               const float *bias, const glae_conv2d_shape *s) {
    GLAE_TRY(conv_check(s, "conv2d_forward"));
    if (!out || !in || !weight || degenerate(s))
        return glae_conv2d_forward(ctx, out, in, weight, bias, s);
    GLAE_TRY(glae_onednn_ctx_init(ctx));
    if (!conv_pays(ctx->onednn, K_FWD, s)) return glae_conv2d_forward(ctx, out, in, weight, bias, s);
    conv_entry *e;
    GLAE_TRY(entry_get(ctx, K_FWD, s, bias != NULL, &e));
    if (e->fallback) return glae_conv2d_forward(ctx, out, in, weight, bias, s);
    GLAE_TRY(weights_in(ctx, e, weight));
    GLAE_TRY(set(e->m_act, in));
    GLAE_TRY(set(e->m_out, out));
    dnnl_exec_arg_t a[5] = {{DNNL_ARG_SRC, e->m_act}, {DNNL_ARG_WEIGHTS, e->m_wei},
                            {DNNL_ARG_DST, e->m_out}};
    int n = 3, rc;
    if (bias) {
        GLAE_TRY(set(e->m_bias, bias));
        a[n++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, e->m_bias};
    }
    n = with_scratch(ctx, e, a, n, &rc);
    GLAE_TRY(rc);
    return run(ctx, e->prim, n, a);
}

int glae_conv2d_backward_onednn(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                                const float *dout, const float *in, const float *weight,
                                const glae_conv2d_shape *s) {
    GLAE_TRY(conv_check(s, "conv2d_backward"));
    if (!dout || (dweight && !in) || (din && !weight) || degenerate(s))
        return glae_conv2d_backward(ctx, din, dweight, dbias, dout, in, weight, s);
    GLAE_TRY(glae_onednn_ctx_init(ctx));
    const onednn_state *st = ctx->onednn;
    if ((dweight || dbias) && (!in || !conv_pays(st, K_BWD_W, s))) {
        /* dbias alone, or a weight gradient the reference does faster */
        GLAE_TRY(glae_conv2d_backward(ctx, NULL, dweight, dbias, dout, in, NULL, s));
    } else if (dweight || dbias) {
        conv_entry *e;
        GLAE_TRY(entry_get(ctx, K_BWD_W, s, dbias != NULL, &e));
        if (e->fallback) {
            GLAE_TRY(glae_conv2d_backward(ctx, NULL, dweight, dbias, dout, in, NULL, s));
        } else {
            /* the gradient lands in wbuf (or, OHWI already, in scratch of our own) and is
             * added to dweight */
            float *tmp = NULL;
            void *wdst = e->wbuf;
            if (!wdst) {
                tmp = malloc((size_t)s->c_out * s->kh * s->kw * s->c_in * sizeof(float));
                if (!tmp) return glae_fail(GLAE_ERR_MEMORY, "onednn: cannot allocate dweight");
                wdst = tmp;
            }
            int rc = set(e->m_act, in);
            if (!rc) rc = set(e->m_out, dout);
            if (!rc) rc = set(e->m_wei, wdst);
            dnnl_exec_arg_t a[5] = {{DNNL_ARG_SRC, e->m_act}, {DNNL_ARG_DIFF_DST, e->m_out},
                                    {DNNL_ARG_DIFF_WEIGHTS, e->m_wei}};
            int n = 3;
            if (!rc && dbias) {
                rc = set(e->m_bias, e->bbuf);
                a[n++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_BIAS, e->m_bias};
            }
            if (!rc) n = with_scratch(ctx, e, a, n, &rc);
            if (!rc) rc = run(ctx, e->prim, n, a);
            if (!rc && dweight) {
                if (e->w_reorder) {
                    rc = set(e->m_wuser, dweight);
                    dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, e->m_wei}, {DNNL_ARG_TO, e->m_wuser}};
                    if (!rc) rc = run(ctx, e->w_reorder, 2, r);
                } else {
                    int64_t nw = (int64_t)s->c_out * s->kh * s->kw * s->c_in;
                    for (int64_t i = 0; i < nw; i++) dweight[i] += tmp[i];
                }
            }
            free(tmp);
            GLAE_TRY(rc);
            if (dbias)
                for (int c = 0; c < s->c_out; c++) dbias[c] += e->bbuf[c];
        }
    }
    if (din && !conv_pays(st, K_BWD_DATA, s))
        return glae_conv2d_backward(ctx, din, NULL, NULL, dout, NULL, weight, s);
    if (din) {
        conv_entry *e;
        GLAE_TRY(entry_get(ctx, K_BWD_DATA, s, 0, &e));
        if (e->fallback) return glae_conv2d_backward(ctx, din, NULL, NULL, dout, NULL, weight, s);
        GLAE_TRY(weights_in(ctx, e, weight));
        GLAE_TRY(set(e->m_act, din));
        GLAE_TRY(set(e->m_out, dout));
        dnnl_exec_arg_t a[4] = {{DNNL_ARG_DIFF_SRC, e->m_act}, {DNNL_ARG_WEIGHTS, e->m_wei},
                                {DNNL_ARG_DIFF_DST, e->m_out}};
        int n = 3, rc;
        n = with_scratch(ctx, e, a, n, &rc);
        GLAE_TRY(rc);
        GLAE_TRY(run(ctx, e->prim, n, a));
    }
    return GLAE_OK;
}

int glae_conv2d_bn_act_forward_onednn(glae_ctx *ctx, float *out, float *save_mean,
                                      float *save_invstd, const float *in, const float *residual,
                                      const float *weight, const float *bias, const float *gamma,
                                      const float *beta, const float *running_mean,
                                      const float *running_var, float eps, int relu,
                                      const glae_conv2d_shape *s) {
    GLAE_TRY(conv_check(s, "conv2d_bn_act_forward"));
    GLAE_TRY(glae_onednn_ctx_init(ctx));
    if (!out || !in || !weight || !save_mean || !save_invstd || !running_mean || !running_var ||
        !(eps > 0.0f) || degenerate(s) || !conv_pays(ctx->onednn, K_FWD, s))
        return glae_conv2d_bn_act_forward(ctx, out, save_mean, save_invstd, in, residual, weight,
                                          bias, gamma, beta, running_mean, running_var, eps,
                                          relu, s);
    conv_entry *e;
    int flag = (residual ? F_RESIDUAL : 0) | (relu ? F_RELU : 0);
    GLAE_TRY(entry_get(ctx, K_FUSED, s, flag, &e));
    if (e->fallback)
        return glae_conv2d_bn_act_forward(ctx, out, save_mean, save_invstd, in, residual, weight,
                                          bias, gamma, beta, running_mean, running_var, eps,
                                          relu, s);
    /* the batch norm as the reference's eval mode computes it (double, then float), folded:
     * w' = w * scale, b' = (b - mean) * scale + beta */
    for (int j = 0; j < s->c_out; j++) {
        double invstd = 1.0 / sqrt((double)running_var[j] + (double)eps);
        double sc = (gamma ? gamma[j] : 1.0) * invstd;
        save_mean[j] = running_mean[j];
        save_invstd[j] = (float)invstd;
        e->scale[j] = (float)sc;
        e->bbuf[j] = (float)(((bias ? bias[j] : 0.0) - running_mean[j]) * sc + (beta ? beta[j] : 0.0));
    }
    GLAE_TRY(set(e->m_wuser, weight));
    dnnl_exec_arg_t ra[3] = {{DNNL_ARG_FROM, e->m_wuser}, {DNNL_ARG_TO, e->m_wei},
                             {DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, e->m_scale}};
    GLAE_TRY(run(ctx, e->w_reorder, 3, ra));
    if (residual && residual != out)
        memcpy(out, residual, (size_t)s->n * s->oh * s->ow * s->c_out * sizeof(float));
    GLAE_TRY(set(e->m_act, in));
    GLAE_TRY(set(e->m_out, out));
    dnnl_exec_arg_t a[5] = {{DNNL_ARG_SRC, e->m_act}, {DNNL_ARG_WEIGHTS, e->m_wei},
                            {DNNL_ARG_BIAS, e->m_bias}, {DNNL_ARG_DST, e->m_out}};
    int n = 4, rc;
    n = with_scratch(ctx, e, a, n, &rc);
    GLAE_TRY(rc);
    return run(ctx, e->prim, n, a);
}

const char *glae_onednn_conv_impl(glae_ctx *ctx, const glae_conv2d_shape *s) {
    conv_entry *e;
    if (glae_onednn_ctx_init(ctx)) return "";
    if (!conv_pays(ctx->onednn, K_FWD, s)) return "reference";
    if (entry_get(ctx, K_FWD, s, 0, &e)) return "";
    return e->fallback ? "reference" : e->impl;
}

#endif
