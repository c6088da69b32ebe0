/* conv2d through cuDNN 9's legacy convolution API (cudnnConvolutionForward /
 * BackwardData / BackwardFilter), NHWC activations, OHWI weights (= cuDNN's NHWC filter
 * layout KRSC), cross-correlation like PyTorch. The algorithm for each (op, dtype, math
 * mode, shape) is chosen once, by the cudnnGet*_v7 heuristics or, in benchmark mode, by
 * timing with cudnnFind*, and cached in the context.
 *
 * Math: float32 tensors use FMA math (FP32 mode, and the heads' float32 convs in BF16 mode)
 * or TF32 tensor cores (TF32 mode); the _bf16 twins take bf16 activations, convert the float32 master weights to
 * bf16 per call (like autocast) and accumulate in float32 inside cuDNN. Bias add and bias
 * gradient are our own kernels (per-channel, deterministic). */
#include <stdlib.h>
#include <string.h>

#include "ops/kernels.cuh"

enum { OP_FWD = 0, OP_BWD_DATA = 1, OP_BWD_FILTER = 2 };

/* ---- conversions ----------------------------------------------------------------------- */

__global__ static void f2bf_k(__nv_bfloat16 *out, const float *in, int64_t n) {
    GLAE_FOR(i, n) out[i] = __float2bfloat16_rn(in[i]);
}
__global__ static void bf2f_k(float *out, const __nv_bfloat16 *in, int64_t n) {
    GLAE_FOR(i, n) out[i] = __bfloat162float(in[i]);
}
__global__ static void add_bf_to_f_k(float *dst, const __nv_bfloat16 *src, int64_t n) {
    GLAE_FOR(i, n) dst[i] += __bfloat162float(src[i]);
}

extern "C" int glae_f32_to_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, const float *in, int64_t n) {
    GLAE_STREAM(ctx, "f32_to_bf16_cuda", st);
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "f32_to_bf16_cuda: negative size %lld", (long long)n);
    if (n == 0) return GLAE_OK;
    f2bf_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>((__nv_bfloat16 *)out, in, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_bf16_to_f32_cuda(glae_ctx *ctx, float *out, const glae_bf16 *in, int64_t n) {
    GLAE_STREAM(ctx, "bf16_to_f32_cuda", st);
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "bf16_to_f32_cuda: negative size %lld", (long long)n);
    if (n == 0) return GLAE_OK;
    bf2f_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(out, (const __nv_bfloat16 *)in, n);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* out[i] (+)= bias[i % c], out float32 or bf16; bias NULL: zeros (fill) */
__global__ static void bias_k(void *out, const float *bias, int64_t total, int c, int bf16,
                              int fill) {
    GLAE_FOR(i, total) {
        const float b = bias ? bias[i % c] : 0.0f;
        if (bf16) {
            __nv_bfloat16 *o = (__nv_bfloat16 *)out;
            o[i] = __float2bfloat16_rn(fill ? b : __bfloat162float(o[i]) + b);
        } else {
            float *o = (float *)out;
            o[i] = fill ? b : o[i] + b;
        }
    }
}

/* ---- descriptors ----------------------------------------------------------------------- */

typedef struct {
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
} descs;

static void descs_free(descs *d) {
    if (d->x) cudnnDestroyTensorDescriptor(d->x);
    if (d->y) cudnnDestroyTensorDescriptor(d->y);
    if (d->w) cudnnDestroyFilterDescriptor(d->w);
    if (d->conv) cudnnDestroyConvolutionDescriptor(d->conv);
    memset(d, 0, sizeof *d);
}

static cudnnMathType_t desc_math(int math, int bf16) {
    if (bf16) return CUDNN_TENSOR_OP_MATH;
    /* DEFAULT math lets cuDNN use TF32 tensor cores for float32 on sm_80+; FMA forbids it.
     * A float32 conv under bf16 mixed precision is a head's (Feature Rearrangement): float32
     * as on the CPU, so only TF32 mode allows TF32. */
    return math == GLAE_MATH_TF32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
}

static int descs_make(descs *d, const glae_conv2d_shape *s, int bf16, int math) {
    const cudnnDataType_t dt = bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    GLAE_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d->x));
    GLAE_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d->y));
    GLAE_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d->w));
    GLAE_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d->conv));
    GLAE_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NHWC, dt, s->n, s->c_in, s->h, s->w));
    GLAE_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NHWC, dt, s->n, s->c_out, s->oh, s->ow));
    /* NHWC filter = KRSC = (Cout, KH, KW, Cin): our OHWI weights as they are */
    GLAE_CUDNN_CHECK(cudnnSetFilter4dDescriptor(d->w, dt, CUDNN_TENSOR_NHWC, s->c_out, s->c_in, s->kh, s->kw));
    GLAE_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d->conv, s->pad_h, s->pad_w, s->stride_h,
                                                     s->stride_w, 1, 1, CUDNN_CROSS_CORRELATION,
                                                     CUDNN_DATA_FLOAT));
    GLAE_CUDNN_CHECK(cudnnSetConvolutionMathType(d->conv, desc_math(math, bf16)));
    return GLAE_OK;
}

/* ---- algorithm choice and cache ------------------------------------------------------------ */

static void conv_key(int key[16], int op, int bf16, int math, const glae_conv2d_shape *s) {
    /* float32 tensors in BF16 mode behave as FP32 (desc_math): share their entries */
    const int m = bf16 ? 2 : (math == GLAE_MATH_TF32 ? 1 : 0);
    const int k[16] = {op, bf16, m, s->n, s->h, s->w, s->c_in, s->c_out, s->kh, s->kw,
                       s->stride_h, s->stride_w, s->pad_h, s->pad_w, 0, 0};
    memcpy(key, k, sizeof k);
}

/* the fields the three perf structs share */
typedef struct {
    int algo;
    cudnnStatus_t status;
    size_t memory;
    cudnnMathType_t math;
} perf;

#define MAX_ALGOS 16

static int query(glae_cuda_ctx *c, const descs *d, int op, perf *out, int *count) {
    int n = 0;
    *count = 0;
    switch (op) {
    case OP_FWD: {
        cudnnConvolutionFwdAlgoPerf_t r[MAX_ALGOS];
        if (c->benchmark)
            GLAE_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(c->cudnn, d->x, d->w, d->conv, d->y,
                                                                  MAX_ALGOS, &n, r));
        else
            GLAE_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(c->cudnn, d->x, d->w, d->conv,
                                                                    d->y, MAX_ALGOS, &n, r));
        for (int i = 0; i < n; i++) out[i] = (perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].mathType};
    } break;
    case OP_BWD_DATA: {
        cudnnConvolutionBwdDataAlgoPerf_t r[MAX_ALGOS];
        if (c->benchmark)
            GLAE_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(c->cudnn, d->w, d->y, d->conv,
                                                                       d->x, MAX_ALGOS, &n, r));
        else
            GLAE_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(c->cudnn, d->w, d->y, d->conv,
                                                                         d->x, MAX_ALGOS, &n, r));
        for (int i = 0; i < n; i++) out[i] = (perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].mathType};
    } break;
    default: {
        cudnnConvolutionBwdFilterAlgoPerf_t r[MAX_ALGOS];
        if (c->benchmark)
            GLAE_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(c->cudnn, d->x, d->y, d->conv,
                                                                         d->w, MAX_ALGOS, &n, r));
        else
            GLAE_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(c->cudnn, d->x, d->y,
                                                                           d->conv, d->w, MAX_ALGOS,
                                                                           &n, r));
        for (int i = 0; i < n; i++) out[i] = (perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].mathType};
    } break;
    }
    /* cudnnFind runs trials that may fail to allocate and are skipped; their errors stay
     * as the runtime's last error, which the next launch check would report */
    if (c->benchmark) (void)cudaGetLastError();
    *count = n;
    return GLAE_OK;
}

/* workspace the algorithm really needs with the math type we will set (the heuristics'
 * `memory` can differ from what the call asks for) */
static int ws_size(glae_cuda_ctx *c, const descs *d, int op, int algo, size_t *bytes) {
    switch (op) {
    case OP_FWD:
        GLAE_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(
            c->cudnn, d->x, d->w, d->conv, d->y, (cudnnConvolutionFwdAlgo_t)algo, bytes));
        break;
    case OP_BWD_DATA:
        GLAE_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
            c->cudnn, d->w, d->y, d->conv, d->x, (cudnnConvolutionBwdDataAlgo_t)algo, bytes));
        break;
    default:
        GLAE_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
            c->cudnn, d->x, d->y, d->conv, d->w, (cudnnConvolutionBwdFilterAlgo_t)algo, bytes));
        break;
    }
    return GLAE_OK;
}

/* Set the cached (or newly chosen) algorithm's math type on d->conv and return it. */
/* append e (with `key`) to the cache */
static int cache_add(glae_cuda_ctx *c, const int key[16], glae_conv_algo *e) {
    memcpy(e->key, key, 16 * sizeof(int));
    if (c->n_algos == c->cap_algos) {
        int cap = c->cap_algos ? 2 * c->cap_algos : 64;
        glae_conv_algo *grown = (glae_conv_algo *)realloc(c->algos, (size_t)cap * sizeof *grown);
        if (!grown) return glae_fail(GLAE_ERR_MEMORY, "conv2d_cuda: cannot grow the algorithm cache");
        c->algos = grown;
        c->cap_algos = cap;
    }
    c->algos[c->n_algos++] = *e;
    return GLAE_OK;
}

/* A bf16 cuDNN call that the heuristics offered but that returned NOT_SUPPORTED when run:
 * the entry is turned into a "no algorithm" one (later calls go straight to the float32
 * fallback) and forward()/backward() return one of these to their entry point. */
enum { BF16_UNSUPPORTED_FWD = -77, BF16_UNSUPPORTED_DATA = -78, BF16_UNSUPPORTED_FILTER = -79 };

/* cuDNN 9 reports NOT_SUPPORTED with sub-codes (..._SHAPE, ..._LAYOUT, ...) */
static int not_supported(cudnnStatus_t cs) {
#ifdef CUDNN_STATUS_CATEGORY
    return CUDNN_STATUS_CATEGORY(cs) == CUDNN_STATUS_NOT_SUPPORTED;
#else
    return cs == CUDNN_STATUS_NOT_SUPPORTED;
#endif
}

static void forget(glae_cuda_ctx *c, int op, const glae_conv2d_shape *s) {
    int key[16];
    conv_key(key, op, 1, c->math, s);
    for (int i = 0; i < c->n_algos; i++)
        if (!memcmp(c->algos[i].key, key, sizeof key)) c->algos[i].algo = -1;
}

static int choose(glae_cuda_ctx *c, const descs *d, int op, int bf16, const glae_conv2d_shape *s,
                  glae_conv_algo *chosen) {
    int key[16];
    conv_key(key, op, bf16, c->math, s);
    for (int i = 0; i < c->n_algos; i++)
        if (!memcmp(c->algos[i].key, key, sizeof key)) {
            if (c->algos[i].algo < 0) /* known to have none: the bf16 twins fall back */
                return glae_fail(GLAE_ERR_CUDA, "conv2d_cuda: cuDNN has no algorithm for op %d, %s "
                                 "(cached)", op, bf16 ? "bf16" : "float32");
            *chosen = c->algos[i];
            GLAE_CUDNN_CHECK(cudnnSetConvolutionMathType(d->conv, (cudnnMathType_t)chosen->math));
            return GLAE_OK;
        }
    perf r[MAX_ALGOS];
    int n;
    GLAE_TRY(query(c, d, op, r, &n));
    const int strict = !bf16 && c->math != GLAE_MATH_TF32; /* float32 without TF32 */
    /* results come best first. Each candidate gets its math type set on the descriptor and
     * its workspace size computed for that math type (the figure the op will ask for, which
     * can differ from the heuristic's), and only then is it checked against the limit; one
     * whose size query fails is skipped. In strict fp32 mode the first pass takes FMA-math
     * entries only; the fallback keeps the entry's own (tensor-op) math rather than forcing
     * FMA onto an algorithm that may not support it (docs/cuda.md). float32 is never
     * converted to fp16 inside cuDNN (ALLOW_CONVERSION -> TENSOR_OP). */
    glae_conv_algo e;
    int pick = -1;
    for (int pass = 0; pass < 2 && pick < 0; pass++)
        for (int i = 0; i < n && pick < 0; i++) {
            if (r[i].status != CUDNN_STATUS_SUCCESS || r[i].memory > c->ws_limit) continue;
            if (pass == 0 && strict && r[i].math != CUDNN_FMA_MATH) continue;
            cudnnMathType_t m = r[i].math;
            if (m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) m = CUDNN_TENSOR_OP_MATH;
            if (cudnnSetConvolutionMathType(d->conv, m) != CUDNN_STATUS_SUCCESS) continue;
            size_t need;
            if (ws_size(c, d, op, r[i].algo, &need) != GLAE_OK || need > c->ws_limit) continue;
            e.algo = r[i].algo;
            e.math = (int)m;
            e.ws = need;
            pick = i;
        }
    if (pick < 0) {
        e.algo = -1; /* remembered, so the fallback decision costs no query next time */
        e.math = 0;
        e.ws = 0;
    }
    if (pick < 0 && cache_add(c, key, &e) != GLAE_OK) return GLAE_ERR_MEMORY;
    if (pick < 0)
        return glae_fail(GLAE_ERR_CUDA,
                         "conv2d_cuda: cuDNN has no algorithm for op %d, %s, shape n=%d h=%d w=%d "
                         "c_in=%d c_out=%d k=%dx%d stride=(%d,%d) pad=(%d,%d) within %zu bytes of "
                         "workspace", op, bf16 ? "bf16" : "float32", s->n, s->h, s->w, s->c_in,
                         s->c_out, s->kh, s->kw, s->stride_h, s->stride_w, s->pad_h, s->pad_w,
                         c->ws_limit);
    GLAE_TRY(cache_add(c, key, &e));
    *chosen = e;
    return GLAE_OK;
}

/* ---- forward / backward -------------------------------------------------------------------- */

static int check(const glae_conv2d_shape *s, const char *fn) {
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    glae_conv2d_shape t;
    GLAE_TRY(glae_conv2d_shape_init(&t, s->n, s->h, s->w, s->c_in, s->c_out, s->kh, s->kw,
                                    s->stride_h, s->stride_w, s->pad_h, s->pad_w));
    if (t.oh != s->oh || t.ow != s->ow)
        return glae_fail(GLAE_ERR_VALUE, "%s: shape.oh/ow (%d, %d) do not match the sizes (%d, %d)",
                         fn, s->oh, s->ow, t.oh, t.ow);
    /* the legacy API describes tensors with int strides */
    const long long big = 0x7fffffffLL;
    if ((long long)s->n * s->h * s->w * s->c_in > big ||
        (long long)s->n * s->oh * s->ow * s->c_out > big ||
        (long long)s->c_out * s->kh * s->kw * s->c_in > big)
        return glae_fail(GLAE_ERR_VALUE, "%s: a tensor has more than 2^31-1 elements (cuDNN limit)", fn);
    return GLAE_OK;
}

static int64_t w_numel(const glae_conv2d_shape *s) { return (int64_t)s->c_out * s->kh * s->kw * s->c_in; }

static int forward(glae_ctx *ctx, void *out, const void *in, const float *weight, const float *bias,
                   const glae_conv2d_shape *s, int bf16, descs *d) {
    glae_cuda_ctx *c = (glae_cuda_ctx *)ctx->cuda;
    const int64_t ototal = (int64_t)s->n * s->oh * s->ow * s->c_out;
    if (s->c_in == 0) { /* empty sum: the output is the bias */
        bias_k<<<glae_grid(ototal), GLAE_BLOCK, 0, c->stream>>>(out, bias, ototal, s->c_out, bf16, 1);
        GLAE_LAUNCHED();
        return GLAE_OK;
    }
    GLAE_TRY(descs_make(d, s, bf16, c->math));
    glae_conv_algo a;
    GLAE_TRY(choose(c, d, OP_FWD, bf16, s, &a));
    const size_t wbytes = bf16 ? glae_align256((size_t)w_numel(s) * 2) : 0;
    char *ws;
    GLAE_TRY(glae_cuda_workspace(ctx, wbytes + a.ws, (void **)&ws));
    const void *wd = weight;
    if (bf16) {
        f2bf_k<<<glae_grid(w_numel(s)), GLAE_BLOCK, 0, c->stream>>>((__nv_bfloat16 *)ws, weight, w_numel(s));
        GLAE_LAUNCHED();
        wd = ws;
    }
    const float one = 1.0f, zero = 0.0f;
    const cudnnStatus_t cs = cudnnConvolutionForward(c->cudnn, &one, d->x, in, d->w, wd, d->conv,
                                                     (cudnnConvolutionFwdAlgo_t)a.algo, ws + wbytes,
                                                     a.ws, &zero, d->y, out);
    if (not_supported(cs) && bf16) {
        forget(c, OP_FWD, s);
        return BF16_UNSUPPORTED_FWD;
    }
    GLAE_CUDNN_CHECK(cs);
    if (bias) {
        bias_k<<<glae_grid(ototal), GLAE_BLOCK, 0, c->stream>>>(out, bias, ototal, s->c_out, bf16, 0);
        GLAE_LAUNCHED();
    }
    return GLAE_OK;
}

static int backward(glae_ctx *ctx, void *din, float *dweight, float *dbias, const void *dout,
                    const void *in, const float *weight, const glae_conv2d_shape *s, int bf16,
                    descs *d) {
    glae_cuda_ctx *c = (glae_cuda_ctx *)ctx->cuda;
    const int64_t rows = (int64_t)s->n * s->oh * s->ow, itotal = (int64_t)s->n * s->h * s->w * s->c_in;
    const size_t esz = bf16 ? 2 : 4;
    if (dbias && rows > 0) { /* first: it uses the workspace the cuDNN calls reuse below */
        double *part;
        int nch;
        GLAE_TRY(glae_cuda_workspace(ctx, glae_col_bytes(rows, s->c_out), (void **)&part));
        GLAE_TRY(glae_colsum(c->stream, part, &nch, dout, NULL, NULL, rows, s->c_out,
                             bf16 ? GLAE_COL_SUM_BF16 : GLAE_COL_SUM));
        glae_col_add_kernel<<<(s->c_out + 255) / 256, 256, 0, c->stream>>>(dbias, part, nch, s->c_out);
        GLAE_LAUNCHED();
    }
    if (s->c_in == 0 || (!din && !dweight)) return GLAE_OK;
    if (s->c_out == 0) { /* nothing flows back */
        if (din) GLAE_CUDA_CHECK(cudaMemsetAsync(din, 0, (size_t)itotal * esz, c->stream));
        return GLAE_OK;
    }
    GLAE_TRY(descs_make(d, s, bf16, c->math));
    const float one = 1.0f, zero = 0.0f;
    const int64_t wn = w_numel(s);
    const size_t wbytes = bf16 ? glae_align256((size_t)wn * 2) : 0;
    if (din) {
        glae_conv_algo a;
        GLAE_TRY(choose(c, d, OP_BWD_DATA, bf16, s, &a));
        char *ws;
        GLAE_TRY(glae_cuda_workspace(ctx, wbytes + a.ws, (void **)&ws));
        const void *wd = weight;
        if (bf16) {
            f2bf_k<<<glae_grid(wn), GLAE_BLOCK, 0, c->stream>>>((__nv_bfloat16 *)ws, weight, wn);
            GLAE_LAUNCHED();
            wd = ws;
        }
        const cudnnStatus_t cs = cudnnConvolutionBackwardData(
            c->cudnn, &one, d->w, wd, d->y, dout, d->conv, (cudnnConvolutionBwdDataAlgo_t)a.algo,
            ws + wbytes, a.ws, &zero, d->x, din);
        if (not_supported(cs) && bf16) {
            forget(c, OP_BWD_DATA, s);
            return BF16_UNSUPPORTED_DATA;
        }
        GLAE_CUDNN_CHECK(cs);
    }
    if (dweight) {
        glae_conv_algo a;
        GLAE_TRY(choose(c, d, OP_BWD_FILTER, bf16, s, &a));
        char *ws;
        GLAE_TRY(glae_cuda_workspace(ctx, wbytes + a.ws, (void **)&ws));
        /* float32: accumulate in place (beta = 1); bf16: into a bf16 temporary, then
         * added to the float32 gradient (autocast's cast backward does the same) */
        void *dw = bf16 ? (void *)ws : (void *)dweight;
        const float *beta = bf16 ? &zero : &one;
        const cudnnStatus_t cs = cudnnConvolutionBackwardFilter(
            c->cudnn, &one, d->x, in, d->y, dout, d->conv, (cudnnConvolutionBwdFilterAlgo_t)a.algo,
            ws + wbytes, a.ws, beta, d->w, dw);
        if (not_supported(cs) && bf16) {
            forget(c, OP_BWD_FILTER, s);
            return BF16_UNSUPPORTED_FILTER;
        }
        GLAE_CUDNN_CHECK(cs);
        if (bf16) {
            add_bf_to_f_k<<<glae_grid(wn), GLAE_BLOCK, 0, c->stream>>>(dweight, (const __nv_bfloat16 *)ws, wn);
            GLAE_LAUNCHED();
        }
    }
    return GLAE_OK;
}

/* ---- bf16 shapes cuDNN cannot run ---------------------------------------------------------
 * The legacy API's bf16 NHWC kernels may have no algorithm for a shape (channel counts that
 * are not multiples of 8: the stem's 3 input channels). Such a shape runs through the
 * float32 twin (TF32 math in the BF16 mode) on widened copies of the same bf16 values and
 * the bf16-rounded weight, with the same roundings of the results as the bf16 path (the
 * CPU definition, ops/bf16.c). Temporaries are stream-ordered allocations: the float32
 * twin uses the context's workspace itself. */

__global__ static void round_w_k(float *out, const float *in, int64_t n) {
    GLAE_FOR(i, n) out[i] = __bfloat162float(__float2bfloat16_rn(in[i]));
}
__global__ static void add_rounded_k(float *dst, const float *src, int64_t n) {
    GLAE_FOR(i, n) dst[i] += __bfloat162float(__float2bfloat16_rn(src[i]));
}

/* the cache's word on (op, bf16, shape): 1 an algorithm, 0 none, -1 not asked yet */
static int cached_bf16(glae_cuda_ctx *c, int op, const glae_conv2d_shape *s) {
    int key[16];
    conv_key(key, op, 1, c->math, s);
    for (int i = 0; i < c->n_algos; i++)
        if (!memcmp(c->algos[i].key, key, sizeof key)) return c->algos[i].algo >= 0;
    return -1;
}

/* 1 when cuDNN has bf16 algorithms for every op the call needs */
static int bf16_runs(glae_ctx *ctx, const glae_conv2d_shape *s, int fwd, int bwd_data, int bwd_filter) {
    glae_cuda_ctx *c = (glae_cuda_ctx *)ctx->cuda;
    /* the usual case costs a cache lookup, no descriptors */
    const int ops[3] = {fwd ? OP_FWD : -1, bwd_data ? OP_BWD_DATA : -1, bwd_filter ? OP_BWD_FILTER : -1};
    int known = 1;
    for (int k = 0; k < 3; k++) {
        if (ops[k] < 0) continue;
        const int v = cached_bf16(c, ops[k], s);
        if (v == 0) return 0;
        if (v < 0) known = 0;
    }
    if (known) return 1;
    descs d = {0};
    glae_conv_algo a;
    int ok = descs_make(&d, s, 1, c->math) == GLAE_OK;
    if (ok && fwd) ok = choose(c, &d, OP_FWD, 1, s, &a) == GLAE_OK;
    if (ok && bwd_data) ok = choose(c, &d, OP_BWD_DATA, 1, s, &a) == GLAE_OK;
    if (ok && bwd_filter) ok = choose(c, &d, OP_BWD_FILTER, 1, s, &a) == GLAE_OK;
    descs_free(&d);
    return ok;
}

typedef struct {
    void *p[4];
    int n;
    cudaStream_t st;
} temps;

static float *temp(temps *t, int64_t floats) {
    void *p = NULL;
    if (cudaMallocAsync(&p, (size_t)(floats > 0 ? floats : 1) * sizeof(float), t->st) != cudaSuccess) {
        cudaGetLastError();
        glae_fail(GLAE_ERR_MEMORY, "conv2d_bf16_cuda: cannot allocate %lld floats of device memory",
                  (long long)floats);
        return NULL;
    }
    t->p[t->n++] = p;
    return (float *)p;
}

static void temps_free(temps *t) {
    for (int i = 0; i < t->n; i++) cudaFreeAsync(t->p[i], t->st);
}

static int fwd_fallback(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *in, const float *weight,
                        const float *bias, const glae_conv2d_shape *s) {
    glae_cuda_ctx *c = (glae_cuda_ctx *)ctx->cuda;
    const int64_t ni = (int64_t)s->n * s->h * s->w * s->c_in, no = (int64_t)s->n * s->oh * s->ow * s->c_out;
    const int64_t nw = w_numel(s);
    temps t = {{0}, 0, c->stream};
    float *x = temp(&t, ni), *w = x ? temp(&t, nw) : NULL, *y = w ? temp(&t, no) : NULL;
    int st = y ? GLAE_OK : GLAE_ERR_MEMORY;
    if (!st) {
        bf2f_k<<<glae_grid(ni), GLAE_BLOCK, 0, c->stream>>>(x, (const __nv_bfloat16 *)in, ni);
        round_w_k<<<glae_grid(nw), GLAE_BLOCK, 0, c->stream>>>(w, weight, nw);
        st = glae_conv2d_forward_cuda(ctx, y, x, w, NULL, s);
    }
    if (!st) {
        f2bf_k<<<glae_grid(no), GLAE_BLOCK, 0, c->stream>>>((__nv_bfloat16 *)out, y, no);
        if (bias) bias_k<<<glae_grid(no), GLAE_BLOCK, 0, c->stream>>>(out, bias, no, s->c_out, 1, 0);
        st = cudaGetLastError() == cudaSuccess ? GLAE_OK
                                               : glae_fail(GLAE_ERR_CUDA, "conv2d_forward_bf16_cuda: launch failed");
    }
    temps_free(&t);
    return st;
}

static int bwd_fallback(glae_ctx *ctx, glae_bf16 *din, float *dweight, float *dbias,
                        const glae_bf16 *dout, const glae_bf16 *in, const float *weight,
                        const glae_conv2d_shape *s) {
    glae_cuda_ctx *c = (glae_cuda_ctx *)ctx->cuda;
    const int64_t ni = (int64_t)s->n * s->h * s->w * s->c_in, no = (int64_t)s->n * s->oh * s->ow * s->c_out;
    const int64_t nw = w_numel(s);
    temps t = {{0}, 0, c->stream};
    float *dy = temp(&t, no), *x = dy ? temp(&t, ni) : NULL, *w = x ? temp(&t, nw) : NULL;
    float *g = w ? temp(&t, ni > nw ? ni : nw) : NULL;
    int st = g ? GLAE_OK : GLAE_ERR_MEMORY;
    if (!st) {
        bf2f_k<<<glae_grid(no), GLAE_BLOCK, 0, c->stream>>>(dy, (const __nv_bfloat16 *)dout, no);
        bf2f_k<<<glae_grid(ni), GLAE_BLOCK, 0, c->stream>>>(x, (const __nv_bfloat16 *)in, ni);
        round_w_k<<<glae_grid(nw), GLAE_BLOCK, 0, c->stream>>>(w, weight, nw);
    }
    if (!st && din) {
        st = glae_conv2d_backward_cuda(ctx, g, NULL, NULL, dy, x, w, s);
        if (!st) f2bf_k<<<glae_grid(ni), GLAE_BLOCK, 0, c->stream>>>((__nv_bfloat16 *)din, g, ni);
    }
    if (!st && (dweight || dbias)) {
        if (dweight && cudaMemsetAsync(g, 0, (size_t)nw * sizeof(float), c->stream) != cudaSuccess)
            st = glae_fail(GLAE_ERR_CUDA, "conv2d_backward_bf16_cuda: memset failed");
        if (!st) st = glae_conv2d_backward_cuda(ctx, NULL, dweight ? g : NULL, dbias, dy, x, weight, s);
        /* the bf16 path's weight gradient is a bf16 tensor added to the float32 one */
        if (!st && dweight) add_rounded_k<<<glae_grid(nw), GLAE_BLOCK, 0, c->stream>>>(dweight, g, nw);
    }
    if (!st && cudaGetLastError() != cudaSuccess)
        st = glae_fail(GLAE_ERR_CUDA, "conv2d_backward_bf16_cuda: launch failed");
    temps_free(&t);
    return st;
}

static int fwd_entry(glae_ctx *ctx, void *out, const void *in, const float *weight,
                     const float *bias, const glae_conv2d_shape *s, int bf16, const char *fn) {
    if (!glae_cuda_of(ctx, fn)) return GLAE_ERR_VALUE;
    GLAE_TRY(check(s, fn));
    if ((int64_t)s->n * s->oh * s->ow * s->c_out == 0) return GLAE_OK;
    if (bf16 && s->c_in > 0 && !bf16_runs(ctx, s, 1, 0, 0))
        return fwd_fallback(ctx, (glae_bf16 *)out, (const glae_bf16 *)in, weight, bias, s);
    descs d = {0};
    int st = forward(ctx, out, in, weight, bias, s, bf16, &d);
    descs_free(&d);
    if (st == BF16_UNSUPPORTED_FWD) { /* nothing was written */
        cudaGetLastError(); /* a launch cuDNN gave up on is not the fallback's error */
        st = fwd_fallback(ctx, (glae_bf16 *)out, (const glae_bf16 *)in, weight, bias, s);
    }
    return st;
}

static int bwd_entry(glae_ctx *ctx, void *din, float *dweight, float *dbias, const void *dout,
                     const void *in, const float *weight, const glae_conv2d_shape *s, int bf16,
                     const char *fn) {
    if (!glae_cuda_of(ctx, fn)) return GLAE_ERR_VALUE;
    GLAE_TRY(check(s, fn));
    if (s->n == 0) return GLAE_OK; /* every tensor the backward writes or adds to is empty / unchanged */
    if (bf16 && s->c_in > 0 && s->c_out > 0 && (din || dweight) &&
        !bf16_runs(ctx, s, 0, din != NULL, dweight != NULL))
        return bwd_fallback(ctx, (glae_bf16 *)din, dweight, dbias, (const glae_bf16 *)dout,
                            (const glae_bf16 *)in, weight, s);
    descs d = {0};
    int st = backward(ctx, din, dweight, dbias, dout, in, weight, s, bf16, &d);
    descs_free(&d);
    /* dbias is done by then; a failed data call left din and dweight to do, a failed
     * filter call only dweight */
    if (st == BF16_UNSUPPORTED_DATA || st == BF16_UNSUPPORTED_FILTER) cudaGetLastError();
    if (st == BF16_UNSUPPORTED_DATA)
        st = bwd_fallback(ctx, (glae_bf16 *)din, dweight, NULL, (const glae_bf16 *)dout,
                          (const glae_bf16 *)in, weight, s);
    else if (st == BF16_UNSUPPORTED_FILTER)
        st = bwd_fallback(ctx, NULL, dweight, NULL, (const glae_bf16 *)dout, (const glae_bf16 *)in,
                          weight, s);
    return st;
}

extern "C" int glae_conv2d_forward_cuda(glae_ctx *ctx, float *out, const float *in,
                                        const float *weight, const float *bias,
                                        const glae_conv2d_shape *s) {
    return fwd_entry(ctx, out, in, weight, bias, s, 0, "conv2d_forward_cuda");
}

extern "C" int glae_conv2d_backward_cuda(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                                         const float *dout, const float *in, const float *weight,
                                         const glae_conv2d_shape *s) {
    return bwd_entry(ctx, din, dweight, dbias, dout, in, weight, s, 0, "conv2d_backward_cuda");
}

extern "C" int glae_conv2d_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *in,
                                             const float *weight, const float *bias,
                                             const glae_conv2d_shape *s) {
    return fwd_entry(ctx, out, in, weight, bias, s, 1, "conv2d_forward_bf16_cuda");
}

extern "C" int glae_conv2d_backward_bf16_cuda(glae_ctx *ctx, glae_bf16 *din, float *dweight,
                                              float *dbias, const glae_bf16 *dout,
                                              const glae_bf16 *in, const float *weight,
                                              const glae_conv2d_shape *s) {
    return bwd_entry(ctx, din, dweight, dbias, dout, in, weight, s, 1, "conv2d_backward_bf16_cuda");
}
