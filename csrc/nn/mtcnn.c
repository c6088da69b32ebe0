/* MTCNN inference: P-Net over an image pyramid, R-Net and O-Net over square crops,
 * with the box arithmetic of the facenet-pytorch pipeline (see docs/mtcnn.md). */
#include "nn/mtcnn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"

/* ---- weight specs (state-dict order of the published files) ------------------------ */

typedef struct {
    const char *name;
    int ndim;
    int64_t dims[4];
} tspec;

static const tspec PNET_SPEC[] = {
    {"conv1.weight", 4, {10, 3, 3, 3}},   {"conv1.bias", 1, {10}},  {"prelu1.weight", 1, {10}},
    {"conv2.weight", 4, {16, 10, 3, 3}},  {"conv2.bias", 1, {16}},  {"prelu2.weight", 1, {16}},
    {"conv3.weight", 4, {32, 16, 3, 3}},  {"conv3.bias", 1, {32}},  {"prelu3.weight", 1, {32}},
    {"conv4_1.weight", 4, {2, 32, 1, 1}}, {"conv4_1.bias", 1, {2}},
    {"conv4_2.weight", 4, {4, 32, 1, 1}}, {"conv4_2.bias", 1, {4}},
};
static const tspec RNET_SPEC[] = {
    {"conv1.weight", 4, {28, 3, 3, 3}},  {"conv1.bias", 1, {28}},  {"prelu1.weight", 1, {28}},
    {"conv2.weight", 4, {48, 28, 3, 3}}, {"conv2.bias", 1, {48}},  {"prelu2.weight", 1, {48}},
    {"conv3.weight", 4, {64, 48, 2, 2}}, {"conv3.bias", 1, {64}},  {"prelu3.weight", 1, {64}},
    {"dense4.weight", 2, {128, 576}},    {"dense4.bias", 1, {128}}, {"prelu4.weight", 1, {128}},
    {"dense5_1.weight", 2, {2, 128}},    {"dense5_1.bias", 1, {2}},
    {"dense5_2.weight", 2, {4, 128}},    {"dense5_2.bias", 1, {4}},
};
static const tspec ONET_SPEC[] = {
    {"conv1.weight", 4, {32, 3, 3, 3}},   {"conv1.bias", 1, {32}},  {"prelu1.weight", 1, {32}},
    {"conv2.weight", 4, {64, 32, 3, 3}},  {"conv2.bias", 1, {64}},  {"prelu2.weight", 1, {64}},
    {"conv3.weight", 4, {64, 64, 3, 3}},  {"conv3.bias", 1, {64}},  {"prelu3.weight", 1, {64}},
    {"conv4.weight", 4, {128, 64, 2, 2}}, {"conv4.bias", 1, {128}}, {"prelu4.weight", 1, {128}},
    {"dense5.weight", 2, {256, 1152}},    {"dense5.bias", 1, {256}}, {"prelu5.weight", 1, {256}},
    {"dense6_1.weight", 2, {2, 256}},     {"dense6_1.bias", 1, {2}},
    {"dense6_2.weight", 2, {4, 256}},     {"dense6_2.bias", 1, {4}},
    {"dense6_3.weight", 2, {10, 256}},    {"dense6_3.bias", 1, {10}},
};

static const tspec *spec_of(int net, int *count) {
    switch (net) {
    case GLAE_MTCNN_PNET: *count = (int)(sizeof PNET_SPEC / sizeof *PNET_SPEC); return PNET_SPEC;
    case GLAE_MTCNN_RNET: *count = (int)(sizeof RNET_SPEC / sizeof *RNET_SPEC); return RNET_SPEC;
    case GLAE_MTCNN_ONET: *count = (int)(sizeof ONET_SPEC / sizeof *ONET_SPEC); return ONET_SPEC;
    default: *count = 0; return NULL;
    }
}

int glae_mtcnn_tensor_count(int net) {
    int n;
    spec_of(net, &n);
    return n;
}

const char *glae_mtcnn_tensor_spec(int net, int i, int *ndim, int64_t dims[4]) {
    int n;
    const tspec *s = spec_of(net, &n);
    if (!s || i < 0 || i >= n) return NULL;
    *ndim = s[i].ndim;
    for (int d = 0; d < 4; d++) dims[d] = d < s[i].ndim ? s[i].dims[d] : 1;
    return s[i].name;
}

static int64_t numel(const tspec *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->dims[d];
    return n;
}

/* ---- the architectures: a conv + PReLU (+ max pool, ceil mode) trunk, then heads ---- */

typedef struct {
    int nconv;
    int cin[4], cout[4], k[4];
    int pool_k[4], pool_s[4]; /* 0: no pool after this conv */
    int dense_in, dense_out;  /* R/O-Net: flatten -> dense + PReLU; 0 for P-Net */
    int head;                 /* merged head outputs: 2 logits, 4 reg (, 10 landmarks) */
} arch;

static const arch ARCH[3] = {
    {3, {3, 10, 16}, {10, 16, 32}, {3, 3, 3}, {2, 0, 0}, {2, 0, 0}, 0, 0, 6},
    {3, {3, 28, 48}, {28, 48, 64}, {3, 3, 2}, {3, 3, 0}, {2, 2, 0}, 576, 128, 6},
    {4, {3, 32, 64, 64}, {32, 64, 64, 128}, {3, 3, 3, 2}, {3, 3, 2, 0}, {2, 2, 2, 0}, 1152, 256, 16},
};

typedef struct {
    const float *cw[4], *cb[4], *ca[4]; /* conv OHWI, bias, PReLU slopes */
    const float *dw, *db, *da;          /* dense over the NHWC flatten, bias, slopes */
    const float *hw, *hb;               /* merged head (head, features), bias */
} netw;

struct glae_mtcnn {
    float *buf;
    netw net[3];
};

void glae_mtcnn_free(glae_mtcnn *m) {
    if (!m) return;
    free(m->buf);
    free(m);
}

/* OIHW -> OHWI */
static void conv_to_ohwi(float *dst, const float *src, int o, int i, int kh, int kw) {
    for (int a = 0; a < o; a++)
        for (int c = 0; c < i; c++)
            for (int y = 0; y < kh; y++)
                for (int x = 0; x < kw; x++)
                    dst[((a * kh + y) * kw + x) * i + c] = src[((a * i + c) * kh + y) * kw + x];
}

/* The Caffe-converted dense layers read the trunk output flattened after permute(0, 3, 2, 1)
 * of NCHW, i.e. in (W, H, C) order: column (x*H + y)*C + c. Our activation is NHWC,
 * flattened (y*W + x)*C + c: move the columns once here. */
static void dense_to_nhwc(float *dst, const float *src, int out, int h, int w, int c) {
    const int64_t in = (int64_t)h * w * c;
    for (int o = 0; o < out; o++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int k = 0; k < c; k++)
                    dst[o * in + ((int64_t)y * w + x) * c + k] = src[o * in + ((int64_t)x * h + y) * c + k];
}

int glae_mtcnn_create(glae_mtcnn **out, const float *const *pnet, const float *const *rnet,
                      const float *const *onet) {
    if (!out) return glae_fail(GLAE_ERR_VALUE, "mtcnn_create: out is NULL");
    *out = NULL;
    const float *const *src[3] = {pnet, rnet, onet};
    int64_t total = 0;
    for (int net = 0; net < 3; net++) {
        int cnt;
        const tspec *s = spec_of(net, &cnt);
        if (!src[net]) return glae_fail(GLAE_ERR_VALUE, "mtcnn_create: weights of net %d are NULL", net);
        for (int i = 0; i < cnt; i++) {
            if (!src[net][i])
                return glae_fail(GLAE_ERR_VALUE, "mtcnn_create: tensor %s of net %d is NULL",
                                 s[i].name, net);
            total += numel(&s[i]);
        }
    }
    glae_mtcnn *m = calloc(1, sizeof *m);
    if (!m || !(m->buf = malloc(sizeof(float) * (size_t)total))) {
        free(m);
        return glae_fail(GLAE_ERR_MEMORY, "mtcnn_create: out of memory");
    }
    float *p = m->buf;
    for (int net = 0; net < 3; net++) {
        int cnt;
        const tspec *s = spec_of(net, &cnt);
        const arch *a = &ARCH[net];
        netw *nw = &m->net[net];
        const float *const *w = src[net];
        int t = 0;
        for (int l = 0; l < a->nconv; l++, t += 3) {
            conv_to_ohwi(p, w[t], a->cout[l], a->cin[l], a->k[l], a->k[l]);
            nw->cw[l] = p;
            p += numel(&s[t]);
            memcpy(p, w[t + 1], sizeof(float) * (size_t)a->cout[l]);
            nw->cb[l] = p;
            p += a->cout[l];
            memcpy(p, w[t + 2], sizeof(float) * (size_t)a->cout[l]);
            nw->ca[l] = p;
            p += a->cout[l];
        }
        int feat = a->cout[a->nconv - 1];
        if (a->dense_in) {
            const int c = a->cout[a->nconv - 1], hw = 3; /* 3x3 trunk output for both */
            dense_to_nhwc(p, w[t], a->dense_out, hw, hw, c);
            nw->dw = p;
            p += (int64_t)a->dense_out * a->dense_in;
            memcpy(p, w[t + 1], sizeof(float) * (size_t)a->dense_out);
            nw->db = p;
            p += a->dense_out;
            memcpy(p, w[t + 2], sizeof(float) * (size_t)a->dense_out);
            nw->da = p;
            p += a->dense_out;
            t += 3;
            feat = a->dense_out;
        }
        /* merged head: (logits 2 | reg 4 | landmarks 10) x feat; weights then biases */
        float *hw = p, *hb = p + (int64_t)a->head * feat;
        int row = 0;
        for (; t < cnt; t += 2) {
            int rows = (int)s[t].dims[0];
            memcpy(hw + (int64_t)row * feat, w[t], sizeof(float) * (size_t)rows * (size_t)feat);
            memcpy(hb + row, w[t + 1], sizeof(float) * (size_t)rows);
            row += rows;
        }
        nw->hw = hw;
        nw->hb = hb;
        p += (int64_t)a->head * (feat + 1);
    }
    *out = m;
    return GLAE_OK;
}

/* ---- network forward ----------------------------------------------------------------- */

/* per-image float count of the largest activation, and the trunk output size */
static int trunk_plan(const arch *a, int h, int w, int64_t *maxact, int *oh, int *ow) {
    int64_t mx = (int64_t)h * w * 3;
    for (int l = 0; l < a->nconv; l++) {
        h -= a->k[l] - 1;
        w -= a->k[l] - 1;
        if (h < 1 || w < 1) return glae_fail(GLAE_ERR_VALUE, "mtcnn: input too small for the network");
        if ((int64_t)h * w * a->cout[l] > mx) mx = (int64_t)h * w * a->cout[l];
        if (a->pool_k[l]) {
            glae_pool_shape ps;
            GLAE_TRY(glae_pool_shape_init(&ps, 1, h, w, a->cout[l], a->pool_k[l], a->pool_s[l], 0, 1));
            h = ps.oh;
            w = ps.ow;
        }
    }
    *maxact = mx;
    *oh = h;
    *ow = w;
    return GLAE_OK;
}

/* conv + PReLU (+ pool) layers; returns in *res which of the two buffers holds the output */
static int trunk(glae_ctx *ctx, float **res, float *a_buf, float *b_buf, int32_t *argmax,
                 const float *in, const arch *a, const netw *nw, int n, int h, int w) {
    const float *x = in;
    float *bufs[2] = {a_buf, b_buf};
    int cur = 0;
    for (int l = 0; l < a->nconv; l++) {
        glae_conv2d_shape cs;
        GLAE_TRY(glae_conv2d_shape_init(&cs, n, h, w, a->cin[l], a->cout[l], a->k[l], a->k[l], 1,
                                        1, 0, 0));
        float *y = bufs[cur];
        GLAE_TRY(glae_conv2d_forward(ctx, y, x, nw->cw[l], nw->cb[l], &cs));
        h = cs.oh;
        w = cs.ow;
        const int64_t rows = (int64_t)n * h * w;
        GLAE_TRY(glae_prelu_forward(ctx, y, y, nw->ca[l], rows, a->cout[l]));
        x = y;
        cur ^= 1;
        if (a->pool_k[l]) {
            glae_pool_shape ps;
            GLAE_TRY(glae_pool_shape_init(&ps, n, h, w, a->cout[l], a->pool_k[l], a->pool_s[l], 0, 1));
            float *z = bufs[cur];
            GLAE_TRY(glae_maxpool2d_forward(ctx, z, argmax, x, &ps));
            h = ps.oh;
            w = ps.ow;
            x = z;
            cur ^= 1;
        }
    }
    *res = (float *)x;
    return GLAE_OK;
}

/* probability of "face" from the first two logits of each head row (softmax over 2) */
static int face_prob(glae_ctx *ctx, float *prob, const float *head, int64_t rows, int ld) {
    if (rows <= 0) return GLAE_OK;
    float *lg = calloc((size_t)(4 * rows + 4), sizeof(float)), *sm = lg + 2 * rows + 2;
    if (!lg) return glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory");
    for (int64_t r = 0; r < rows; r++) {
        lg[2 * r] = head[r * ld];
        lg[2 * r + 1] = head[r * ld + 1];
    }
    int st = glae_softmax_forward(ctx, sm, lg, rows, 2);
    if (!st)
        for (int64_t r = 0; r < rows; r++) prob[r] = sm[2 * r + 1];
    free(lg);
    return st;
}

int glae_mtcnn_pnet_size(int h, int w, int *oh, int *ow) {
    int64_t mx;
    if (h < 12 || w < 12)
        return glae_fail(GLAE_ERR_VALUE, "pnet: input must be at least 12x12, got %dx%d", h, w);
    return trunk_plan(&ARCH[0], h, w, &mx, oh, ow);
}

typedef struct {
    float *a, *b, *head;
    int32_t *argmax;
} bufs;

static void bufs_free(bufs *b) {
    free(b->a);
    free(b->b);
    free(b->head);
    free(b->argmax);
}

static int bufs_alloc(bufs *b, int64_t act, int64_t head) {
    memset(b, 0, sizeof *b);
    b->a = malloc(sizeof(float) * (size_t)act);
    b->b = malloc(sizeof(float) * (size_t)act);
    b->head = malloc(sizeof(float) * (size_t)head);
    b->argmax = malloc(sizeof(int32_t) * (size_t)act);
    if (!b->a || !b->b || !b->head || !b->argmax) {
        bufs_free(b);
        return glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory for activations");
    }
    return GLAE_OK;
}

int glae_mtcnn_pnet_forward(glae_ctx *ctx, float *prob, float *reg, const float *in,
                            const glae_mtcnn *m, int n, int h, int w) {
    if (!m || !in || !prob || !reg) return glae_fail(GLAE_ERR_VALUE, "pnet_forward: NULL argument");
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "pnet_forward: negative batch %d", n);
    int oh, ow;
    int64_t mx;
    GLAE_TRY(glae_mtcnn_pnet_size(h, w, &oh, &ow));
    GLAE_TRY(trunk_plan(&ARCH[0], h, w, &mx, &oh, &ow));
    if (n == 0) return GLAE_OK;
    const int64_t rows = (int64_t)n * oh * ow;
    bufs b;
    GLAE_TRY(bufs_alloc(&b, n * mx, rows * 6));
    const netw *nw = &m->net[0];
    float *feat;
    int st = trunk(ctx, &feat, b.a, b.b, b.argmax, in, &ARCH[0], nw, n, h, w);
    glae_conv2d_shape cs;
    if (!st) st = glae_conv2d_shape_init(&cs, n, oh, ow, 32, 6, 1, 1, 1, 1, 0, 0);
    if (!st) st = glae_conv2d_forward(ctx, b.head, feat, nw->hw, nw->hb, &cs); /* conv4_1|conv4_2 */
    if (!st) st = face_prob(ctx, prob, b.head, rows, 6);
    if (!st)
        for (int64_t r = 0; r < rows; r++) memcpy(reg + 4 * r, b.head + 6 * r + 2, 4 * sizeof(float));
    bufs_free(&b);
    return st;
}

/* R-Net / O-Net: trunk, dense + PReLU, merged head (rows of a->head) */
static int crop_net(glae_ctx *ctx, float *head, const float *in, const arch *a, const netw *nw,
                    int n, int size) {
    int oh, ow;
    int64_t mx;
    GLAE_TRY(trunk_plan(a, size, size, &mx, &oh, &ow));
    if (oh * ow * a->cout[a->nconv - 1] != a->dense_in)
        return glae_fail(GLAE_ERR_RUNTIME, "mtcnn: trunk output does not match the dense layer");
    bufs b;
    GLAE_TRY(bufs_alloc(&b, n * mx, (int64_t)n * a->dense_out));
    float *feat;
    int st = trunk(ctx, &feat, b.a, b.b, b.argmax, in, a, nw, n, size, size);
    if (!st) st = glae_linear_forward(ctx, b.head, feat, nw->dw, nw->db, n, a->dense_in, a->dense_out);
    if (!st) st = glae_prelu_forward(ctx, b.head, b.head, nw->da, n, a->dense_out);
    if (!st) st = glae_linear_forward(ctx, head, b.head, nw->hw, nw->hb, n, a->dense_out, a->head);
    bufs_free(&b);
    return st;
}

int glae_mtcnn_rnet_forward(glae_ctx *ctx, float *prob, float *reg, const float *in,
                            const glae_mtcnn *m, int n) {
    if (!m || !in || !prob || !reg) return glae_fail(GLAE_ERR_VALUE, "rnet_forward: NULL argument");
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "rnet_forward: negative batch %d", n);
    if (n == 0) return GLAE_OK;
    float *head = malloc(sizeof(float) * (size_t)n * 6);
    if (!head) return glae_fail(GLAE_ERR_MEMORY, "rnet_forward: out of memory");
    int st = crop_net(ctx, head, in, &ARCH[1], &m->net[1], n, 24);
    if (!st) st = face_prob(ctx, prob, head, n, 6);
    if (!st)
        for (int64_t r = 0; r < n; r++) memcpy(reg + 4 * r, head + 6 * r + 2, 4 * sizeof(float));
    free(head);
    return st;
}

int glae_mtcnn_onet_forward(glae_ctx *ctx, float *prob, float *reg, float *landmarks,
                            const float *in, const glae_mtcnn *m, int n) {
    if (!m || !in || !prob || !reg || !landmarks)
        return glae_fail(GLAE_ERR_VALUE, "onet_forward: NULL argument");
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "onet_forward: negative batch %d", n);
    if (n == 0) return GLAE_OK;
    float *head = malloc(sizeof(float) * (size_t)n * 16);
    if (!head) return glae_fail(GLAE_ERR_MEMORY, "onet_forward: out of memory");
    int st = crop_net(ctx, head, in, &ARCH[2], &m->net[2], n, 48);
    if (!st) st = face_prob(ctx, prob, head, n, 16);
    if (!st)
        for (int64_t r = 0; r < n; r++) {
            memcpy(reg + 4 * r, head + 16 * r + 2, 4 * sizeof(float));
            memcpy(landmarks + 10 * r, head + 16 * r + 6, 10 * sizeof(float));
        }
    free(head);
    return st;
}

/* ---- box arithmetic -------------------------------------------------------------------- */

typedef struct {
    float score;
    int64_t idx;
} scored;

static int by_score_desc(const void *pa, const void *pb) {
    const scored *a = pa, *b = pb;
    if (a->score > b->score) return -1;
    if (a->score < b->score) return 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

int glae_mtcnn_nms(int64_t *keep, int64_t *nkeep, const float *boxes, int64_t n, int ld,
                   float thresh, int mode) {
    if (n < 0 || ld < 5) return glae_fail(GLAE_ERR_VALUE, "nms: bad sizes (n %lld, ld %d)", (long long)n, ld);
    if (mode != GLAE_NMS_UNION && mode != GLAE_NMS_MIN)
        return glae_fail(GLAE_ERR_VALUE, "nms: mode must be union (0) or min (1), got %d", mode);
    *nkeep = 0;
    if (n == 0) return GLAE_OK;
    scored *order = malloc(sizeof *order * (size_t)n);
    unsigned char *dead = calloc((size_t)n, 1);
    if (!order || !dead) {
        free(order);
        free(dead);
        return glae_fail(GLAE_ERR_MEMORY, "nms: out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        float s = boxes[i * ld + 4];
        order[i].score = isnan(s) ? -INFINITY : s;
        order[i].idx = i;
    }
    qsort(order, (size_t)n, sizeof *order, by_score_desc);
    const float one = mode == GLAE_NMS_MIN ? 1.0f : 0.0f;
    int64_t k = 0;
    for (int64_t a = 0; a < n; a++) {
        if (dead[a]) continue;
        const float *bi = boxes + order[a].idx * ld;
        keep[k++] = order[a].idx;
        const float ai = (bi[2] - bi[0] + one) * (bi[3] - bi[1] + one);
        for (int64_t b = a + 1; b < n; b++) {
            if (dead[b]) continue;
            const float *bj = boxes + order[b].idx * ld;
            const float aj = (bj[2] - bj[0] + one) * (bj[3] - bj[1] + one);
            float iw = fminf(bi[2], bj[2]) - fmaxf(bi[0], bj[0]) + one;
            float ih = fminf(bi[3], bj[3]) - fmaxf(bi[1], bj[1]) + one;
            float inter = fmaxf(iw, 0.0f) * fmaxf(ih, 0.0f);
            float o = mode == GLAE_NMS_MIN ? inter / fminf(ai, aj) : inter / (ai + aj - inter);
            /* MIN follows the reference's "keep where o <= t" (NaN drops); UNION
             * torchvision's "drop where iou > t" (NaN keeps) */
            if (mode == GLAE_NMS_MIN ? !(o <= thresh) : o > thresh) dead[b] = 1;
        }
    }
    *nkeep = k;
    free(order);
    free(dead);
    return GLAE_OK;
}

int glae_mtcnn_bbreg(float *boxes, int64_t n, int ld, const float *reg) {
    if (n < 0 || ld < 4) return glae_fail(GLAE_ERR_VALUE, "bbreg: bad sizes");
    for (int64_t i = 0; i < n; i++) {
        float *b = boxes + i * ld;
        const float *r = reg + 4 * i;
        const float w = b[2] - b[0] + 1.0f, h = b[3] - b[1] + 1.0f;
        b[0] += r[0] * w;
        b[1] += r[1] * h;
        b[2] += r[2] * w;
        b[3] += r[3] * h;
    }
    return GLAE_OK;
}

int glae_mtcnn_rerec(float *boxes, int64_t n, int ld) {
    if (n < 0 || ld < 4) return glae_fail(GLAE_ERR_VALUE, "rerec: bad sizes");
    for (int64_t i = 0; i < n; i++) {
        float *b = boxes + i * ld;
        const float h = b[3] - b[1], w = b[2] - b[0];
        const float l = fmaxf(w, h);
        b[0] = b[0] + w * 0.5f - l * 0.5f;
        b[1] = b[1] + h * 0.5f - l * 0.5f;
        b[2] = b[0] + l;
        b[3] = b[1] + l;
    }
    return GLAE_OK;
}

/* Area resize of the window [wy0, wy0 + rh) x [wx0, wx0 + rw) of an (h, w, c) image with row
 * stride `stride`, reading zeros outside the image: the window may extend past it (a face
 * box at the border). Separable: the mean over each cell's column span, then over its row
 * span (the 2-D window mean of adaptive average pooling, exactly, in real arithmetic); the
 * sums run over the pixels inside the image, the divisors count the whole span. */
static int resize_window(float *out, int oh, int ow, const float *img, int h, int w, int c,
                         int64_t stride, int64_t wy0, int64_t wx0, int64_t rh, int64_t rw) {
    const int64_t ry0 = wy0 < 0 ? 0 : wy0, ry1 = wy0 + rh > h ? h : wy0 + rh; /* rows inside */
    const int64_t nr = ry1 > ry0 ? ry1 - ry0 : 0;
    float *tmp = malloc(sizeof(float) * (size_t)(nr ? nr : 1) * (size_t)ow * (size_t)c);
    if (!tmp) return glae_fail(GLAE_ERR_MEMORY, "resize_area: out of memory");
    for (int64_t y = 0; y < nr; y++) {
        const float *row = img + (ry0 + y) * stride;
        for (int j = 0; j < ow; j++) {
            int64_t x0 = wx0 + (int64_t)j * rw / ow, x1 = wx0 + ((int64_t)(j + 1) * rw + ow - 1) / ow;
            const double span = (double)(x1 - x0);
            if (x0 < 0) x0 = 0;
            if (x1 > w) x1 = w;
            for (int k = 0; k < c; k++) {
                double s = 0.0;
                for (int64_t x = x0; x < x1; x++) s += row[x * c + k];
                tmp[(y * ow + j) * c + k] = (float)(s / span);
            }
        }
    }
    for (int i = 0; i < oh; i++) {
        int64_t y0 = wy0 + (int64_t)i * rh / oh, y1 = wy0 + ((int64_t)(i + 1) * rh + oh - 1) / oh;
        const double span = (double)(y1 - y0);
        if (y0 < ry0) y0 = ry0;
        if (y1 > ry1) y1 = ry1;
        for (int j = 0; j < ow; j++)
            for (int k = 0; k < c; k++) {
                double s = 0.0;
                for (int64_t y = y0; y < y1; y++) s += tmp[((y - ry0) * ow + j) * c + k];
                out[((int64_t)i * ow + j) * c + k] = (float)(s / span);
            }
    }
    free(tmp);
    return GLAE_OK;
}

int glae_mtcnn_resize_area(float *out, int oh, int ow, const float *in, int rh, int rw, int c,
                           int64_t in_stride) {
    if (oh < 1 || ow < 1 || rh < 1 || rw < 1 || c < 1 || in_stride < (int64_t)rw * c)
        return glae_fail(GLAE_ERR_VALUE, "resize_area: bad sizes (%dx%d -> %dx%d, c %d)", rh, rw,
                         oh, ow, c);
    return resize_window(out, oh, ow, in, rh, rw, c, in_stride, 0, 0, rh, rw);
}

/* ---- the pipeline ----------------------------------------------------------------------- */

void glae_mtcnn_default_opts(glae_mtcnn_opts *o) {
    o->min_face = 20.0f;
    o->factor = 0.709f;
    o->thresh[0] = 0.6f;
    o->thresh[1] = 0.7f;
    o->thresh[2] = 0.7f;
    o->nms_scale = 0.5f;
    o->nms[0] = o->nms[1] = 0.7f;
    o->nms[2] = 0.7f;
}

void glae_mtcnn_result_free(glae_mtcnn_result *res) {
    if (!res) return;
    free(res->boxes);
    free(res->points);
    res->boxes = res->points = NULL;
    res->n = 0;
}

/* growable rows of LD floats: x1 y1 x2 y2 score r0 r1 r2 r3 */
enum { LD = 9 };
typedef struct {
    float *d;
    int64_t n, cap;
} rows_t;

static float *rows_push(rows_t *r) {
    if (r->n == r->cap) {
        int64_t cap = r->cap ? 2 * r->cap : 256;
        float *d = realloc(r->d, sizeof(float) * (size_t)(cap * LD));
        if (!d) return NULL;
        r->d = d;
        r->cap = cap;
    }
    return r->d + LD * r->n++;
}

/* keep only rows keep[0..k) in that order (indices into r) */
static int rows_select(rows_t *r, const int64_t *keep, int64_t k) {
    float *d = malloc(sizeof(float) * (size_t)((k ? k : 1) * LD));
    if (!d) return glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory");
    for (int64_t i = 0; i < k; i++) memcpy(d + i * LD, r->d + keep[i] * LD, LD * sizeof(float));
    free(r->d);
    r->d = d;
    r->n = r->cap = k;
    if (!k) r->cap = 1;
    return GLAE_OK;
}

static int rows_nms(rows_t *r, float thresh, int mode) {
    if (r->n == 0) return GLAE_OK;
    int64_t *keep = malloc(sizeof(int64_t) * (size_t)r->n), k;
    if (!keep) return glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory");
    int st = glae_mtcnn_nms(keep, &k, r->d, r->n, LD, thresh, mode);
    if (!st) st = rows_select(r, keep, k);
    free(keep);
    return st;
}

/* The box's integer crop window [y-1, ey) x [x-1, ex), x, y, ex, ey truncated toward zero,
 * NOT clipped to the image: as in the original MTCNN's pad(), the part outside the image
 * reads as zeros, so the crop shows the whole box, which the networks' box regression and
 * landmarks are relative to. (facenet-pytorch clips the window and stretches what is left
 * to the crop size: a face at the border then gets landmarks tens of pixels off,
 * docs/mtcnn.md.) 0 when the window is empty, misses the image, or the box is not finite. */
static int crop_window(const float *b, int h, int w, int64_t *y0, int64_t *y1, int64_t *x0,
                       int64_t *x1) {
    for (int i = 0; i < 4; i++)
        if (!isfinite(b[i])) return 0;
    const float lim = 1e9f; /* keep the int conversions defined */
    const int64_t x = (int64_t)fmaxf(fminf(b[0], lim), -lim), y = (int64_t)fmaxf(fminf(b[1], lim), -lim);
    const int64_t ex = (int64_t)fmaxf(fminf(b[2], lim), -lim), ey = (int64_t)fmaxf(fminf(b[3], lim), -lim);
    if (ey <= y - 1 || ex <= x - 1) return 0;              /* empty */
    if (ey <= 0 || ex <= 0 || y - 1 >= h || x - 1 >= w) return 0; /* wholly outside */
    *y0 = y - 1;
    *y1 = ey;
    *x0 = x - 1;
    *x1 = ex;
    return 1;
}

static void normalise(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = (x[i] - 127.5f) * 0.0078125f;
}

/* crops of every row of r (whose window is not empty: others are dropped from r), resized
 * to size x size and normalised, into *out (malloc'd) */
static int make_crops(float **out, rows_t *r, const float *img, int h, int w, int size) {
    const int64_t per = (int64_t)size * size * 3;
    float *crops = malloc(sizeof(float) * (size_t)((r->n ? r->n : 1) * per));
    if (!crops) return glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory for crops");
    int64_t k = 0;
    for (int64_t i = 0; i < r->n; i++) {
        int64_t y0, y1, x0, x1;
        if (!crop_window(r->d + i * LD, h, w, &y0, &y1, &x0, &x1)) continue;
        if (k != i) memmove(r->d + k * LD, r->d + i * LD, LD * sizeof(float));
        int st = resize_window(crops + k * per, size, size, img, h, w, 3, (int64_t)w * 3, y0, x0,
                               y1 - y0, x1 - x0);
        if (st) {
            free(crops);
            return st;
        }
        k++;
    }
    r->n = k;
    normalise(crops, k * per);
    *out = crops;
    return GLAE_OK;
}

enum { CHUNK = 256 }; /* crops per R-/O-Net call: bounds the activation memory */

static int stage1(glae_ctx *ctx, rows_t *all, const float *img, int h, int w, const glae_mtcnn *m,
                  const glae_mtcnn_opts *o) {
    double scale = 12.0 / o->min_face;
    double minl = (h < w ? h : w) * scale;
    int st = GLAE_OK;
    while (minl >= 12 && !st) {
        const int hs = (int)(h * scale + 1), ws = (int)(w * scale + 1);
        int oh, ow;
        if (glae_mtcnn_pnet_size(hs, ws, &oh, &ow)) {
            glae_clear_error();
            break;
        }
        const int64_t cells = (int64_t)oh * ow;
        float *lvl = malloc(sizeof(float) * (size_t)hs * ws * 3);
        float *prob = malloc(sizeof(float) * (size_t)cells);
        float *reg = malloc(sizeof(float) * (size_t)cells * 4);
        rows_t lv = {0};
        if (!lvl || !prob || !reg) st = glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory");
        if (!st) st = glae_mtcnn_resize_area(lvl, hs, ws, img, h, w, 3, (int64_t)w * 3);
        if (!st) {
            normalise(lvl, (int64_t)hs * ws * 3);
            st = glae_mtcnn_pnet_forward(ctx, prob, reg, lvl, m, 1, hs, ws);
        }
        /* cells above threshold -> boxes in image coordinates: stride 2, cell 12 */
        const float fs = (float)scale;
        for (int64_t c = 0; !st && c < cells; c++) {
            if (!(prob[c] >= o->thresh[0])) continue;
            float *b = rows_push(&lv);
            if (!b) {
                st = glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory");
                break;
            }
            const float x = (float)(c % ow), y = (float)(c / ow);
            b[0] = floorf((2.0f * x + 1.0f) / fs);
            b[1] = floorf((2.0f * y + 1.0f) / fs);
            b[2] = floorf((2.0f * x + 12.0f) / fs);
            b[3] = floorf((2.0f * y + 12.0f) / fs);
            b[4] = prob[c];
            memcpy(b + 5, reg + 4 * c, 4 * sizeof(float));
        }
        if (!st) st = rows_nms(&lv, o->nms_scale, GLAE_NMS_UNION);
        for (int64_t i = 0; !st && i < lv.n; i++) {
            float *b = rows_push(all);
            if (!b) st = glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory");
            else memcpy(b, lv.d + i * LD, LD * sizeof(float));
        }
        free(lv.d);
        free(lvl);
        free(prob);
        free(reg);
        scale *= o->factor;
        minl *= o->factor;
    }
    if (st) return st;
    GLAE_TRY(rows_nms(all, o->nms[0], GLAE_NMS_UNION));
    /* the P-Net regression uses the width without +1 (as the reference) */
    for (int64_t i = 0; i < all->n; i++) {
        float *b = all->d + i * LD;
        const float bw = b[2] - b[0], bh = b[3] - b[1];
        b[0] += b[5] * bw;
        b[1] += b[6] * bh;
        b[2] += b[7] * bw;
        b[3] += b[8] * bh;
    }
    return glae_mtcnn_rerec(all->d, all->n, LD);
}

static int stage2(glae_ctx *ctx, rows_t *r, const float *img, int h, int w, const glae_mtcnn *m,
                  const glae_mtcnn_opts *o) {
    float *crops = NULL;
    GLAE_TRY(make_crops(&crops, r, img, h, w, 24));
    const int64_t n = r->n, per = 24 * 24 * 3;
    float *prob = malloc(sizeof(float) * (size_t)(n + 1)), *reg = malloc(sizeof(float) * (size_t)(4 * n + 4));
    int st = (!prob || !reg) ? glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory") : GLAE_OK;
    for (int64_t i = 0; !st && i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        st = glae_mtcnn_rnet_forward(ctx, prob + i, reg + 4 * i, crops + i * per, m, k);
    }
    int64_t k = 0;
    for (int64_t i = 0; !st && i < n; i++) {
        if (!(prob[i] > o->thresh[1])) continue;
        float *b = r->d + k * LD;
        memmove(b, r->d + i * LD, 4 * sizeof(float));
        b[4] = prob[i];
        memcpy(b + 5, reg + 4 * i, 4 * sizeof(float));
        k++;
    }
    free(crops);
    free(prob);
    free(reg);
    if (st) return st;
    r->n = k;
    GLAE_TRY(rows_nms(r, o->nms[1], GLAE_NMS_UNION));
    for (int64_t i = 0; i < r->n; i++) glae_mtcnn_bbreg(r->d + i * LD, 1, LD, r->d + i * LD + 5);
    return glae_mtcnn_rerec(r->d, r->n, LD);
}

static int stage3(glae_ctx *ctx, glae_mtcnn_result *res, rows_t *r, const float *img, int h,
                  int w, const glae_mtcnn *m, const glae_mtcnn_opts *o) {
    float *crops = NULL;
    GLAE_TRY(make_crops(&crops, r, img, h, w, 48));
    const int64_t n = r->n, per = 48 * 48 * 3;
    float *prob = malloc(sizeof(float) * (size_t)(n + 1)), *reg = malloc(sizeof(float) * (size_t)(4 * n + 4));
    float *lm = malloc(sizeof(float) * (size_t)(10 * n + 10));
    float *pts = malloc(sizeof(float) * (size_t)(10 * n + 10));
    int64_t *keep = malloc(sizeof(int64_t) * (size_t)(n + 1));
    int st = (!prob || !reg || !lm || !pts || !keep) ? glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory") : GLAE_OK;
    for (int64_t i = 0; !st && i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        st = glae_mtcnn_onet_forward(ctx, prob + i, reg + 4 * i, lm + 10 * i, crops + i * per, m, k);
    }
    int64_t k = 0;
    for (int64_t i = 0; !st && i < n; i++) {
        if (!(prob[i] > o->thresh[2])) continue;
        float *b = r->d + k * LD;
        memmove(b, r->d + i * LD, 4 * sizeof(float));
        b[4] = prob[i];
        /* landmarks: relative to the box before its regression, +1 width convention */
        const float bw = b[2] - b[0] + 1.0f, bh = b[3] - b[1] + 1.0f;
        for (int j = 0; j < 5; j++) {
            pts[10 * k + 2 * j] = bw * lm[10 * i + j] + b[0] - 1.0f;
            pts[10 * k + 2 * j + 1] = bh * lm[10 * i + 5 + j] + b[1] - 1.0f;
        }
        glae_mtcnn_bbreg(b, 1, LD, reg + 4 * i);
        k++;
    }
    int64_t nk = 0;
    if (!st) st = glae_mtcnn_nms(keep, &nk, r->d, k, LD, o->nms[2], GLAE_NMS_MIN);
    if (!st) {
        res->boxes = malloc(sizeof(float) * (size_t)(5 * nk + 5));
        res->points = malloc(sizeof(float) * (size_t)(10 * nk + 10));
        if (!res->boxes || !res->points) {
            st = glae_fail(GLAE_ERR_MEMORY, "mtcnn: out of memory");
        } else {
            for (int64_t i = 0; i < nk; i++) {
                memcpy(res->boxes + 5 * i, r->d + keep[i] * LD, 5 * sizeof(float));
                memcpy(res->points + 10 * i, pts + 10 * keep[i], 10 * sizeof(float));
            }
            res->n = nk;
        }
    }
    free(crops);
    free(prob);
    free(reg);
    free(lm);
    free(pts);
    free(keep);
    return st;
}

int glae_mtcnn_detect(glae_ctx *ctx, glae_mtcnn_result *res, const uint8_t *img, int h, int w,
                      int64_t row_stride, const glae_mtcnn *m, const glae_mtcnn_opts *o) {
    if (!res) return glae_fail(GLAE_ERR_VALUE, "mtcnn_detect: res is NULL");
    memset(res, 0, sizeof *res);
    if (!m || !o) return glae_fail(GLAE_ERR_VALUE, "mtcnn_detect: model and options are required");
    if (h < 0 || w < 0) return glae_fail(GLAE_ERR_VALUE, "mtcnn_detect: negative image size %dx%d", h, w);
    if (!(o->min_face >= 1.0f) || !(o->factor > 0.0f && o->factor < 1.0f))
        return glae_fail(GLAE_ERR_VALUE, "mtcnn_detect: need min_face >= 1 and 0 < factor < 1 "
                         "(got %g, %g)", o->min_face, o->factor);
    if (h > 0 && w > 0 && (!img || row_stride < (int64_t)w * 3))
        return glae_fail(GLAE_ERR_VALUE, "mtcnn_detect: bad image buffer");
    int st = GLAE_OK;
    res->boxes = malloc(sizeof(float) * 5);
    res->points = malloc(sizeof(float) * 10);
    if (!res->boxes || !res->points) {
        glae_mtcnn_result_free(res);
        return glae_fail(GLAE_ERR_MEMORY, "mtcnn_detect: out of memory");
    }
    if (h == 0 || w == 0) return GLAE_OK;
    float *fimg = malloc(sizeof(float) * (size_t)h * (size_t)w * 3);
    if (!fimg) {
        glae_mtcnn_result_free(res);
        return glae_fail(GLAE_ERR_MEMORY, "mtcnn_detect: out of memory for a %dx%d image", h, w);
    }
    for (int y = 0; y < h; y++)
        for (int64_t x = 0; x < (int64_t)w * 3; x++)
            fimg[(int64_t)y * w * 3 + x] = (float)img[(int64_t)y * row_stride + x];
    rows_t r = {0};
    st = stage1(ctx, &r, fimg, h, w, m, o);
    if (!st && r.n) st = stage2(ctx, &r, fimg, h, w, m, o);
    if (!st && r.n) {
        free(res->boxes);
        free(res->points);
        res->boxes = res->points = NULL;
        st = stage3(ctx, res, &r, fimg, h, w, m, o);
    }
    free(r.d);
    free(fimg);
    if (st) glae_mtcnn_result_free(res);
    return st;
}
