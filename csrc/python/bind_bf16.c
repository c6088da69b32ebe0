/* Test bindings for the mixed-precision layers (ops.h, bf16.c / bf16.cu). Every
 * activation argument is a float32 array whose values are rounded to bf16 on the way in;
 * bf16 results come back widened to float32 (exact), float32 results as they are. The
 * last argument, ctx, is None for the CPU layer or a context from cuda_context() for
 * its CUDA twin: both run through the same op table (backend.h), so one binding checks
 * the two devices against each other. For tests, not for speed. */
#include "python/py.h" /* Python.h first */

#include <string.h>

#include "ops/backend.h"
#include "ops/ops.h"

#ifdef GLAE_WITH_CUDA
glae_ctx *glae_py_cuda_ctx(PyObject *o); /* bind_cuda.c */
#endif

#define RUN_MAX 16
/* one call: a context (the CPU one or the caller's CUDA one) and its allocations */
typedef struct {
    glae_ctx *ctx;
    glae_ctx cpu;
    int own_cpu;
    void *mem[RUN_MAX];
    int nmem;
} run_t;

static int run_begin(run_t *r, PyObject *ctxo) {
    memset(r, 0, sizeof *r);
    if (!ctxo || ctxo == Py_None) {
        int st = glae_ctx_init(&r->cpu, GLAE_CPU);
        if (st) {
            glae_raise(st);
            return -1;
        }
        r->own_cpu = 1;
        r->ctx = &r->cpu;
        return 0;
    }
#ifdef GLAE_WITH_CUDA
    r->ctx = glae_py_cuda_ctx(ctxo);
    return r->ctx ? 0 : -1;
#else
    PyErr_SetString(PyExc_RuntimeError, "ctx: glae was built without CUDA (pass ctx=None)");
    return -1;
#endif
}

static void run_end(run_t *r) {
    for (int i = 0; i < r->nmem; i++) r->ctx->ops->free(r->ctx, r->mem[i]);
    if (r->own_cpu) glae_ctx_free(&r->cpu);
}

/* device (or host) memory of `bytes`, zeroed; NULL with an exception */
static void *run_alloc(run_t *r, size_t bytes) {
    void *p = NULL;
    if (r->nmem == RUN_MAX) {
        PyErr_SetString(PyExc_RuntimeError, "bf16 binding: too many buffers");
        return NULL;
    }
    int st = r->ctx->ops->alloc(r->ctx, &p, bytes ? bytes : 1);
    if (st) {
        glae_raise(st);
        return NULL;
    }
    r->mem[r->nmem++] = p;
    return p;
}

/* a float32 array -> bf16 copy on the run's device (NULL for None when optional) */
static glae_bf16 *in16(run_t *r, PyArrayObject *a) {
    if (!a) return NULL;
    const int64_t n = PyArray_SIZE(a);
    glae_bf16 *host = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(glae_bf16));
    if (!host) return (glae_bf16 *)PyErr_NoMemory();
    const float *x = PyArray_DATA(a);
    for (int64_t i = 0; i < n; i++) host[i] = glae_f2bf(x[i]);
    glae_bf16 *d = run_alloc(r, (size_t)n * sizeof(glae_bf16));
    int st = d ? r->ctx->ops->copy(r->ctx, d, host, (size_t)n * sizeof(glae_bf16), GLAE_COPY_H2D) : 0;
    PyMem_Free(host);
    if (st) {
        glae_raise(st);
        return NULL;
    }
    return d;
}

/* an array of `bytes` copied as it is (float32, int32) */
static void *in_raw(run_t *r, PyArrayObject *a) {
    if (!a) return NULL;
    size_t bytes = (size_t)PyArray_NBYTES(a);
    void *d = run_alloc(r, bytes);
    int st = d ? r->ctx->ops->copy(r->ctx, d, PyArray_DATA(a), bytes, GLAE_COPY_H2D) : 0;
    if (st) {
        glae_raise(st);
        return NULL;
    }
    return d;
}

/* bf16 device values -> the float32 array dst */
static int out16(run_t *r, PyArrayObject *dst, const glae_bf16 *d) {
    const int64_t n = PyArray_SIZE(dst);
    glae_bf16 *host = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(glae_bf16));
    if (!host) {
        PyErr_NoMemory();
        return -1;
    }
    int st = r->ctx->ops->copy(r->ctx, host, d, (size_t)n * sizeof(glae_bf16), GLAE_COPY_D2H);
    if (!st) {
        float *y = PyArray_DATA(dst);
        for (int64_t i = 0; i < n; i++) y[i] = glae_bf2f(host[i]);
    }
    PyMem_Free(host);
    if (st) glae_raise(st);
    return st ? -1 : 0;
}

static int out_raw(run_t *r, PyArrayObject *dst, const void *d) {
    int st = r->ctx->ops->copy(r->ctx, PyArray_DATA(dst), d, (size_t)PyArray_NBYTES(dst), GLAE_COPY_D2H);
    if (st) glae_raise(st);
    return st ? -1 : 0;
}

static PyArrayObject *like(PyArrayObject *a, int typenum) {
    return glae_new_array(PyArray_NDIM(a), PyArray_DIMS(a), typenum);
}

static void drop(int n, PyArrayObject **o) {
    for (int i = 0; i < n; i++) Py_XDECREF(o[i]);
}

/* the end of every binding: release the run, then the outputs (one array or a tuple), or
 * drop them when something failed (an exception is set) */
static PyObject *finish(run_t *r, int bad, int n, PyArrayObject **o) {
    run_end(r);
    if (bad) {
        drop(n, o);
        return NULL;
    }
    return glae_return_arrays(GLAE_OK, n, o);
}

static int64_t rows_of(PyArrayObject *a) {
    int64_t r = 1;
    for (int i = 0; i < PyArray_NDIM(a) - 1; i++) r *= PyArray_DIM(a, i);
    return r;
}

/* ---- bf16_round ------------------------------------------------------------------- */

/* bf16_round(x float32) -> x rounded to bf16 (nearest even), as float32 */
static PyObject *py_bf16_round(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O:bf16_round", &xo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x) return NULL;
    PyArrayObject *y = like(x, NPY_FLOAT32);
    if (!y) return NULL;
    const float *a = PyArray_DATA(x);
    float *b = PyArray_DATA(y);
    for (int64_t i = 0; i < PyArray_SIZE(x); i++) b[i] = glae_bf2f(glae_f2bf(a[i]));
    return (PyObject *)y;
}

/* ---- conv2d ------------------------------------------------------------------------ */

static int conv_args(PyObject *xo, PyObject *wo, int stride, int pad, PyArrayObject **x,
                     PyArrayObject **w, glae_conv2d_shape *s) {
    *x = glae_arg_f32(xo, "x", 4);
    if (!*x || glae_check_fits_int(*x, "x")) return -1;
    *w = glae_arg_f32(wo, "w", 4);
    if (!*w || glae_check_fits_int(*w, "w")) return -1;
    if (PyArray_DIM(*x, 3) != PyArray_DIM(*w, 3)) {
        PyErr_Format(PyExc_ValueError, "conv2d_bf16: x has %zd channels but w expects %zd",
                     (Py_ssize_t)PyArray_DIM(*x, 3), (Py_ssize_t)PyArray_DIM(*w, 3));
        return -1;
    }
    int st = glae_conv2d_shape_init(s, (int)PyArray_DIM(*x, 0), (int)PyArray_DIM(*x, 1),
                                    (int)PyArray_DIM(*x, 2), (int)PyArray_DIM(*x, 3),
                                    (int)PyArray_DIM(*w, 0), (int)PyArray_DIM(*w, 1),
                                    (int)PyArray_DIM(*w, 2), stride, stride, pad, pad);
    if (st) {
        glae_raise(st);
        return -1;
    }
    return 0;
}

/* conv2d_forward_bf16(x, w, b | None, stride, pad, ctx=None) -> y */
static PyObject *py_conv2d_forward_bf16(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *bo, *ctxo = Py_None;
    int stride, pad, ok = 1;
    if (!PyArg_ParseTuple(args, "OOOii|O:conv2d_forward_bf16", &xo, &wo, &bo, &stride, &pad, &ctxo))
        return NULL;
    PyArrayObject *x, *w, *b;
    glae_conv2d_shape s;
    if (conv_args(xo, wo, stride, pad, &x, &w, &s)) return NULL;
    b = glae_arg_array_opt(bo, "b", NPY_FLOAT32, 1, &ok);
    if (!ok || (b && glae_check_dim(b, "b", 0, s.c_out))) return NULL;
    npy_intp dims[4] = {s.n, s.oh, s.ow, s.c_out};
    PyArrayObject *y = glae_new_array(4, dims, NPY_FLOAT32);
    if (!y) return NULL;
    run_t r;
    if (run_begin(&r, ctxo)) {
        Py_DECREF(y);
        return NULL;
    }
    glae_bf16 *dx = in16(&r, x), *dy = dx ? run_alloc(&r, (size_t)PyArray_SIZE(y) * 2) : NULL;
    float *dw = dy ? in_raw(&r, w) : NULL, *db = b && dw ? in_raw(&r, b) : NULL;
    int bad = !dw || (b && !db);
    if (!bad) {
        int st;
        GLAE_NOGIL(st, r.ctx->ops->conv2d_forward_bf16(r.ctx, dy, dx, dw, db, &s));
        if (st) glae_raise(st);
        bad = st || out16(&r, y, dy);
    }
    return finish(&r, bad, 1, &y);
}

/* conv2d_backward_bf16(dy, x, w, stride, pad, has_bias, ctx=None) -> (dx, dw, db | None);
 * dw, db are the float32 gradients accumulated from zero */
static PyObject *py_conv2d_backward_bf16(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *xo, *wo, *ctxo = Py_None;
    int stride, pad, has_bias;
    if (!PyArg_ParseTuple(args, "OOOiip|O:conv2d_backward_bf16", &dyo, &xo, &wo, &stride, &pad,
                          &has_bias, &ctxo))
        return NULL;
    PyArrayObject *x, *w;
    glae_conv2d_shape s;
    if (conv_args(xo, wo, stride, pad, &x, &w, &s)) return NULL;
    PyArrayObject *g = glae_arg_f32(dyo, "dy", 4);
    if (!g || glae_check_dim(g, "dy", 0, s.n) || glae_check_dim(g, "dy", 1, s.oh) ||
        glae_check_dim(g, "dy", 2, s.ow) || glae_check_dim(g, "dy", 3, s.c_out))
        return NULL;
    npy_intp cd[1] = {s.c_out};
    PyArrayObject *o[3] = {like(x, NPY_FLOAT32), like(w, NPY_FLOAT32),
                           has_bias ? glae_new_array(1, cd, NPY_FLOAT32) : NULL};
    if (!o[0] || !o[1] || (has_bias && !o[2])) {
        drop(3, o);
        return NULL;
    }
    run_t r;
    if (run_begin(&r, ctxo)) {
        drop(3, o);
        return NULL;
    }
    glae_bf16 *ddy = in16(&r, g), *dxin = ddy ? in16(&r, x) : NULL;
    float *dw = dxin ? in_raw(&r, w) : NULL;
    glae_bf16 *ddx = dw ? run_alloc(&r, (size_t)PyArray_SIZE(x) * 2) : NULL;
    float *gw = ddx ? run_alloc(&r, (size_t)PyArray_NBYTES(w)) : NULL;
    float *gb = gw && has_bias ? run_alloc(&r, (size_t)s.c_out * sizeof(float)) : NULL;
    int bad = !gw || (has_bias && !gb);
    if (!bad) {
        int st;
        GLAE_NOGIL(st, r.ctx->ops->conv2d_backward_bf16(r.ctx, ddx, gw, gb, ddy, dxin, dw, &s));
        if (st) glae_raise(st);
        bad = st || out16(&r, o[0], ddx) || out_raw(&r, o[1], gw) || (has_bias && out_raw(&r, o[2], gb));
    }
    return finish(&r, bad, 3, o);
}

/* ---- fused batch norm + residual + ReLU ------------------------------------------------ */

/* bn_act_forward_bf16(x (..., C), residual | None, gamma, beta, running_mean, running_var,
 *                     training, relu, ctx=None)
 *   -> (y, save_mean, save_invstd, running_mean', running_var') */
static PyObject *py_bn_act_forward_bf16(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *ro, *go, *bo, *rmo, *rvo, *ctxo = Py_None;
    int training, relu, ok = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOpp|O:bn_act_forward_bf16", &xo, &ro, &go, &bo, &rmo, &rvo,
                          &training, &relu, &ctxo))
        return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x) return NULL;
    if (PyArray_NDIM(x) < 1) {
        PyErr_SetString(PyExc_ValueError, "x must have a channel axis");
        return NULL;
    }
    const int c = (int)PyArray_DIM(x, PyArray_NDIM(x) - 1);
    const int64_t rows = rows_of(x);
    PyArrayObject *res = glae_arg_array_opt(ro, "residual", NPY_FLOAT32, -1, &ok);
    if (!ok || (res && glae_check_same_shape(x, "x", res, "residual"))) return NULL;
    PyArrayObject *p[4];
    const char *names[4] = {"gamma", "beta", "running_mean", "running_var"};
    PyObject *po[4] = {go, bo, rmo, rvo};
    for (int i = 0; i < 4; i++) {
        p[i] = glae_arg_f32(po[i], names[i], 1);
        if (!p[i] || glae_check_dim(p[i], names[i], 0, c)) return NULL;
    }
    npy_intp cd[1] = {c};
    PyArrayObject *o[5] = {like(x, NPY_FLOAT32), glae_new_array(1, cd, NPY_FLOAT32),
                           glae_new_array(1, cd, NPY_FLOAT32), glae_new_array(1, cd, NPY_FLOAT32),
                           glae_new_array(1, cd, NPY_FLOAT32)};
    for (int i = 0; i < 5; i++)
        if (!o[i]) {
            drop(5, o);
            return NULL;
        }
    run_t r;
    if (run_begin(&r, ctxo)) {
        drop(5, o);
        return NULL;
    }
    glae_bf16 *dx = in16(&r, x), *dres = dx && res ? in16(&r, res) : NULL;
    float *dp[4] = {0};
    int bad = !dx || (res && !dres);
    for (int i = 0; i < 4 && !bad; i++) bad = !(dp[i] = in_raw(&r, p[i]));
    glae_bf16 *dy = bad ? NULL : run_alloc(&r, (size_t)PyArray_SIZE(x) * 2);
    float *sm = dy ? run_alloc(&r, (size_t)c * 4) : NULL, *si = sm ? run_alloc(&r, (size_t)c * 4) : NULL;
    bad = !si;
    if (!bad) {
        int st;
        GLAE_NOGIL(st, r.ctx->ops->bn_act_forward_bf16(r.ctx, dy, sm, si, dx, dres, dp[0], dp[1], dp[2],
                                                       dp[3], rows, c, 0.1f, 1e-5f, training, relu));
        if (st) glae_raise(st);
        bad = st || out16(&r, o[0], dy) || out_raw(&r, o[1], sm) || out_raw(&r, o[2], si) ||
              out_raw(&r, o[3], dp[2]) || out_raw(&r, o[4], dp[3]);
    }
    return finish(&r, bad, 5, o);
}

/* bn_act_backward_bf16(dy, y | None, x, save_mean, save_invstd, gamma, training, relu,
 *                      ctx=None) -> (dx, dres, dgamma, dbeta); y is needed when relu */
static PyObject *py_bn_act_backward_bf16(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *yo, *xo, *mo, *io, *go, *ctxo = Py_None;
    int training, relu, ok = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOpp|O:bn_act_backward_bf16", &dyo, &yo, &xo, &mo, &io, &go,
                          &training, &relu, &ctxo))
        return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    PyArrayObject *g = x ? glae_arg_f32(dyo, "dy", -1) : NULL;
    if (!g || glae_check_same_shape(x, "x", g, "dy")) return NULL;
    if (PyArray_NDIM(x) < 1) {
        PyErr_SetString(PyExc_ValueError, "x must have a channel axis");
        return NULL;
    }
    PyArrayObject *y = glae_arg_array_opt(yo, "y", NPY_FLOAT32, -1, &ok);
    if (!ok || (y && glae_check_same_shape(x, "x", y, "y"))) return NULL;
    const int c = (int)PyArray_DIM(x, PyArray_NDIM(x) - 1);
    const int64_t rows = rows_of(x);
    PyArrayObject *p[3];
    const char *names[3] = {"save_mean", "save_invstd", "gamma"};
    PyObject *po[3] = {mo, io, go};
    for (int i = 0; i < 3; i++) {
        p[i] = glae_arg_f32(po[i], names[i], 1);
        if (!p[i] || glae_check_dim(p[i], names[i], 0, c)) return NULL;
    }
    npy_intp cd[1] = {c};
    PyArrayObject *o[4] = {like(x, NPY_FLOAT32), like(x, NPY_FLOAT32),
                           glae_new_array(1, cd, NPY_FLOAT32), glae_new_array(1, cd, NPY_FLOAT32)};
    for (int i = 0; i < 4; i++)
        if (!o[i]) {
            drop(4, o);
            return NULL;
        }
    run_t r;
    if (run_begin(&r, ctxo)) {
        drop(4, o);
        return NULL;
    }
    glae_bf16 *dg = in16(&r, g), *dx = dg ? in16(&r, x) : NULL, *dyv = dx && y ? in16(&r, y) : NULL;
    float *dp[3] = {0};
    int bad = !dx || (y && !dyv);
    for (int i = 0; i < 3 && !bad; i++) bad = !(dp[i] = in_raw(&r, p[i]));
    const size_t n2 = (size_t)PyArray_SIZE(x) * 2;
    glae_bf16 *din = bad ? NULL : run_alloc(&r, n2), *dres = din ? run_alloc(&r, n2) : NULL;
    float *dgam = dres ? run_alloc(&r, (size_t)c * 4) : NULL, *dbet = dgam ? run_alloc(&r, (size_t)c * 4) : NULL;
    bad = !dbet;
    if (!bad) {
        int st;
        GLAE_NOGIL(st, r.ctx->ops->bn_act_backward_bf16(r.ctx, din, dres, dgam, dbet, dg, dyv, dx, dp[0],
                                                        dp[1], dp[2], rows, c, training, relu));
        if (st) glae_raise(st);
        bad = st || out16(&r, o[0], din) || out16(&r, o[1], dres) || out_raw(&r, o[2], dgam) ||
              out_raw(&r, o[3], dbet);
    }
    return finish(&r, bad, 4, o);
}

/* ---- add, max pool --------------------------------------------------------------------- */

/* add_forward_bf16(a, b, ctx=None) -> a + b */
static PyObject *py_add_forward_bf16(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ao, *bo, *ctxo = Py_None;
    if (!PyArg_ParseTuple(args, "OO|O:add_forward_bf16", &ao, &bo, &ctxo)) return NULL;
    PyArrayObject *a = glae_arg_f32(ao, "a", -1);
    PyArrayObject *b = a ? glae_arg_f32(bo, "b", -1) : NULL;
    if (!b || glae_check_same_shape(a, "a", b, "b")) return NULL;
    PyArrayObject *y = like(a, NPY_FLOAT32);
    if (!y) return NULL;
    run_t r;
    if (run_begin(&r, ctxo)) {
        Py_DECREF(y);
        return NULL;
    }
    glae_bf16 *da = in16(&r, a), *db = da ? in16(&r, b) : NULL;
    glae_bf16 *dy = db ? run_alloc(&r, (size_t)PyArray_SIZE(a) * 2) : NULL;
    int bad = !dy;
    if (!bad) {
        int st = r.ctx->ops->add_forward_bf16(r.ctx, dy, da, db, PyArray_SIZE(a));
        if (st) glae_raise(st);
        bad = st || out16(&r, y, dy);
    }
    return finish(&r, bad, 1, &y);
}

/* maxpool2d_forward_bf16(x (N, H, W, C), k, stride, pad, ctx=None) -> (y, argmax) */
static PyObject *py_maxpool2d_forward_bf16(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *ctxo = Py_None;
    int k, stride, pad;
    if (!PyArg_ParseTuple(args, "Oiii|O:maxpool2d_forward_bf16", &xo, &k, &stride, &pad, &ctxo))
        return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", 4);
    if (!x || glae_check_fits_int(x, "x")) return NULL;
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1),
                                  (int)PyArray_DIM(x, 2), (int)PyArray_DIM(x, 3), k, stride, pad, 0);
    if (st) return glae_raise(st);
    npy_intp dims[4] = {s.n, s.oh, s.ow, s.c};
    PyArrayObject *o[2] = {glae_new_array(4, dims, NPY_FLOAT32), glae_new_array(4, dims, NPY_INT32)};
    if (!o[0] || !o[1]) {
        drop(2, o);
        return NULL;
    }
    run_t r;
    if (run_begin(&r, ctxo)) {
        drop(2, o);
        return NULL;
    }
    glae_bf16 *dx = in16(&r, x), *dy = dx ? run_alloc(&r, (size_t)PyArray_SIZE(o[0]) * 2) : NULL;
    int32_t *am = dy ? run_alloc(&r, (size_t)PyArray_NBYTES(o[1])) : NULL;
    int bad = !am;
    if (!bad) {
        GLAE_NOGIL(st, r.ctx->ops->maxpool2d_forward_bf16(r.ctx, dy, am, dx, &s));
        if (st) glae_raise(st);
        bad = st || out16(&r, o[0], dy) || out_raw(&r, o[1], am);
    }
    return finish(&r, bad, 2, o);
}

/* maxpool2d_backward_bf16(dy, argmax, h, w, k, stride, pad, ctx=None) -> dx (N, h, w, C) */
static PyObject *py_maxpool2d_backward_bf16(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *ao, *ctxo = Py_None;
    int h, w, k, stride, pad;
    if (!PyArg_ParseTuple(args, "OOiiiii|O:maxpool2d_backward_bf16", &dyo, &ao, &h, &w, &k,
                          &stride, &pad, &ctxo))
        return NULL;
    PyArrayObject *g = glae_arg_f32(dyo, "dy", 4);
    PyArrayObject *am = g ? glae_arg_array(ao, "argmax", NPY_INT32, 4) : NULL;
    if (!am || glae_check_same_shape(g, "dy", am, "argmax") || glae_check_fits_int(g, "dy"))
        return NULL;
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)PyArray_DIM(g, 0), h, w, (int)PyArray_DIM(g, 3), k,
                                  stride, pad, 0);
    if (st) return glae_raise(st);
    if (s.oh != PyArray_DIM(g, 1) || s.ow != PyArray_DIM(g, 2)) {
        PyErr_Format(PyExc_ValueError, "dy is %zdx%zd but a %dx%d input pools to %dx%d",
                     (Py_ssize_t)PyArray_DIM(g, 1), (Py_ssize_t)PyArray_DIM(g, 2), h, w, s.oh, s.ow);
        return NULL;
    }
    /* argmax values index the input: checked here, the GPU does not check them */
    const int32_t *a = PyArray_DATA(am);
    for (int64_t i = 0; i < PyArray_SIZE(am); i++)
        if (a[i] < 0 || a[i] >= h * w) {
            PyErr_Format(PyExc_ValueError, "argmax[%lld] = %d is outside the %dx%d input",
                         (long long)i, a[i], h, w);
            return NULL;
        }
    npy_intp dims[4] = {s.n, h, w, s.c};
    PyArrayObject *dx = glae_new_array(4, dims, NPY_FLOAT32);
    if (!dx) return NULL;
    run_t r;
    if (run_begin(&r, ctxo)) {
        Py_DECREF(dx);
        return NULL;
    }
    glae_bf16 *dg = in16(&r, g);
    int32_t *dam = dg ? in_raw(&r, am) : NULL;
    glae_bf16 *ddx = dam ? run_alloc(&r, (size_t)PyArray_SIZE(dx) * 2) : NULL;
    int bad = !ddx;
    if (!bad) {
        GLAE_NOGIL(st, r.ctx->ops->maxpool2d_backward_bf16(r.ctx, ddx, dg, dam, &s));
        if (st) glae_raise(st);
        bad = st || out16(&r, dx, ddx);
    }
    return finish(&r, bad, 1, &dx);
}

PyMethodDef glae_bf16_methods[] = {
    {"bf16_round", py_bf16_round, METH_VARARGS, "bf16_round(x) -> x rounded to bfloat16 (float32)"},
    {"conv2d_forward_bf16", py_conv2d_forward_bf16, METH_VARARGS,
     "conv2d_forward_bf16(x, w, b, stride, pad, ctx=None): bf16 activations"},
    {"conv2d_backward_bf16", py_conv2d_backward_bf16, METH_VARARGS,
     "conv2d_backward_bf16(dy, x, w, stride, pad, has_bias, ctx=None) -> (dx, dw, db)"},
    {"bn_act_forward_bf16", py_bn_act_forward_bf16, METH_VARARGS,
     "bn_act_forward_bf16(x, residual, gamma, beta, rm, rv, training, relu, ctx=None)"},
    {"bn_act_backward_bf16", py_bn_act_backward_bf16, METH_VARARGS,
     "bn_act_backward_bf16(dy, y, x, mean, invstd, gamma, training, relu, ctx=None)"},
    {"add_forward_bf16", py_add_forward_bf16, METH_VARARGS, "add_forward_bf16(a, b, ctx=None)"},
    {"maxpool2d_forward_bf16", py_maxpool2d_forward_bf16, METH_VARARGS,
     "maxpool2d_forward_bf16(x, k, stride, pad, ctx=None) -> (y, argmax)"},
    {"maxpool2d_backward_bf16", py_maxpool2d_backward_bf16, METH_VARARGS,
     "maxpool2d_backward_bf16(dy, argmax, h, w, k, stride, pad, ctx=None) -> dx"},
    {NULL, NULL, 0, NULL},
};
