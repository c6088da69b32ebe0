/* Test bindings for the mixed-precision layers (ops.h, bf16.c / bf16.cu). Every
 * activation argument is a float32 array whose values are rounded to bf16 on the way in;
 * bf16 results come back widened to float32 (exact), float32 results as they are. The
 * last argument, ctx, is None for the CPU layer or a context from cuda_context() for
 * its CUDA twin: both run through the same op table (job.h). For tests, not for speed. */
#include "python/job.h" /* Python.h first */

/* a float32 array -> a bf16 buffer on the job's device, rounded by the op table's own
 * conversion (NULL for None when optional) */
static glae_bf16 *in16(glae_job *j, PyArrayObject *a) {
    if (!a) return NULL;
    const int64_t n = PyArray_SIZE(a);
    float *f = glae_job_in(j, a);
    glae_bf16 *h = f ? glae_job_tmp(j, (size_t)n * sizeof(glae_bf16)) : NULL;
    if (h) glae_job_check(j, j->ctx->ops->f32_to_bf16(j->ctx, h, f, n));
    return j->failed ? NULL : h;
}

/* a bf16 buffer for an op's result of n values */
static glae_bf16 *tmp16(glae_job *j, int64_t n) {
    return glae_job_tmp(j, (size_t)n * sizeof(glae_bf16));
}

/* the bf16 result src widened into the job output dst (float32) */
static int out16(glae_job *j, float *dst, const glae_bf16 *src, int64_t n) {
    return j->ctx->ops->bf16_to_f32(j->ctx, dst, src, n);
}

#define KW(...) static char *kw_[] = {__VA_ARGS__, "ctx", NULL}
#define PARSE(fmt, ...) \
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kw_, __VA_ARGS__)) return NULL
/* the op, then the widening of its bf16 results, without the GIL */
#define RUN16(J, op_call, widen)                                 \
    do {                                                         \
        int st_ = 0, op_;                                        \
        if (!(J).failed) GLAE_NOGIL(st_, (op_ = (op_call)) ? op_ : (widen)); \
        return glae_job_finish(&(J), st_);                       \
    } while (0)

/* ---- bf16_round ------------------------------------------------------------------- */

/* bf16_round(x float32) -> x rounded to bf16 (nearest even), as float32 */
static PyObject *py_bf16_round(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O:bf16_round", &xo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x) return NULL;
    PyArrayObject *y = glae_new_array(DIMS_OF(x), NPY_FLOAT32);
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
static PyObject *py_conv2d_forward_bf16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "w", "b", "stride", "pad");
    PyObject *xo, *wo, *bo, *ctxo = NULL;
    int stride, pad;
    PARSE("OOOii|O:conv2d_forward_bf16", &xo, &wo, &bo, &stride, &pad, &ctxo);
    PyArrayObject *x, *w;
    glae_conv2d_shape s;
    if (conv_args(xo, wo, stride, pad, &x, &w, &s)) return NULL;
    ARG_F32_OPT(b, bo, "b", 1);
    if (b) ARG_DIM(b, "b", 0, s.c_out);
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp dims[4] = {s.n, s.oh, s.ow, s.c_out};
    const int64_t ny = (int64_t)s.n * s.oh * s.ow * s.c_out;
    glae_bf16 *dx = in16(&J, x), *dy = tmp16(&J, ny);
    float *dw = glae_job_in(&J, w), *db = glae_job_in(&J, b);
    float *y = glae_job_out(&J, 4, dims, NPY_FLOAT32, 0);
    RUN16(J, J.ctx->ops->conv2d_forward_bf16(J.ctx, dy, dx, dw, db, &s), out16(&J, y, dy, ny));
}

/* conv2d_backward_bf16(dy, x, w, stride, pad, has_bias, ctx=None) -> (dx, dw, db | None);
 * dw, db are the float32 gradients accumulated from zero */
static PyObject *py_conv2d_backward_bf16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "x", "w", "stride", "pad", "has_bias");
    PyObject *dyo, *xo, *wo, *ctxo = NULL;
    int stride, pad, has_bias;
    PARSE("OOOiip|O:conv2d_backward_bf16", &dyo, &xo, &wo, &stride, &pad, &has_bias, &ctxo);
    PyArrayObject *x, *w;
    glae_conv2d_shape s;
    if (conv_args(xo, wo, stride, pad, &x, &w, &s)) return NULL;
    ARG_F32(g, dyo, "dy", 4);
    npy_intp od[4] = {s.n, s.oh, s.ow, s.c_out};
    for (int i = 0; i < 4; i++) ARG_DIM(g, "dy", i, od[i]);
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp cd[1] = {s.c_out};
    const int64_t nx = PyArray_SIZE(x);
    glae_bf16 *ddy = in16(&J, g), *dxin = in16(&J, x), *ddx = tmp16(&J, nx);
    float *dw = glae_job_in(&J, w);
    float *gx = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *gw = glae_job_out(&J, DIMS_OF(w), NPY_FLOAT32, 1), *gb = NULL;
    if (has_bias) gb = glae_job_out(&J, 1, cd, NPY_FLOAT32, 1);
    else glae_job_none(&J);
    RUN16(J, J.ctx->ops->conv2d_backward_bf16(J.ctx, ddx, gw, gb, ddy, dxin, dw, &s),
          out16(&J, gx, ddx, nx));
}

/* ---- fused batch norm + residual + ReLU ------------------------------------------------ */

/* bn_act_forward_bf16(x (..., C), residual | None, gamma, beta, running_mean, running_var,
 *                     training, relu, ctx=None)
 *   -> (y, save_mean, save_invstd, running_mean', running_var') */
static PyObject *py_bn_act_forward_bf16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "residual", "gamma", "beta", "running_mean", "running_var", "training", "relu");
    PyObject *xo, *ro, *go, *bo, *rmo, *rvo, *ctxo = NULL;
    int training, relu;
    PARSE("OOOOOOpp|O:bn_act_forward_bf16", &xo, &ro, &go, &bo, &rmo, &rvo, &training, &relu,
          &ctxo);
    ARG_F32(x, xo, "x", -1);
    if (glae_check_min_ndim(x, "x", 1)) return NULL;
    const int c = glae_last_dim(x);
    const int64_t rows = glae_rows_of(x);
    ARG_F32_OPT(res, ro, "residual", -1);
    if (res) ARG_SAME(x, "x", res, "residual");
    PyArrayObject *p[4];
    const char *names[4] = {"gamma", "beta", "running_mean", "running_var"};
    PyObject *po[4] = {go, bo, rmo, rvo};
    for (int i = 0; i < 4; i++) {
        p[i] = glae_arg_f32(po[i], names[i], 1);
        if (!p[i] || glae_check_dim(p[i], names[i], 0, c)) return NULL;
    }
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp cd[1] = {c};
    glae_bf16 *dx = in16(&J, x), *dres = in16(&J, res), *dy = tmp16(&J, PyArray_SIZE(x));
    float *dg = glae_job_in(&J, p[0]), *db = glae_job_in(&J, p[1]);
    float *y = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *sm = glae_job_out(&J, 1, cd, NPY_FLOAT32, 0), *si = glae_job_out(&J, 1, cd, NPY_FLOAT32, 0);
    /* the running statistics come back as new arrays: the caller's stay as they are */
    float *rm = glae_job_out(&J, 1, cd, NPY_FLOAT32, 0), *rv = glae_job_out(&J, 1, cd, NPY_FLOAT32, 0);
    if (!J.failed) {
        glae_job_check(&J, J.ctx->dev->copy(J.ctx, rm, PyArray_DATA(p[2]), (size_t)c * 4, GLAE_COPY_H2D));
        glae_job_check(&J, J.ctx->dev->copy(J.ctx, rv, PyArray_DATA(p[3]), (size_t)c * 4, GLAE_COPY_H2D));
    }
    RUN16(J, J.ctx->ops->bn_act_forward_bf16(J.ctx, dy, sm, si, dx, dres, dg, db, rm, rv, rows, c,
                                             0.1f, 1e-5f, training, relu),
          out16(&J, y, dy, PyArray_SIZE(x)));
}

/* bn_act_backward_bf16(dy, y | None, x, save_mean, save_invstd, gamma, training, relu,
 *                      ctx=None) -> (dx, dres, dgamma, dbeta); y is needed when relu */
static PyObject *py_bn_act_backward_bf16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "y", "x", "save_mean", "save_invstd", "gamma", "training", "relu");
    PyObject *dyo, *yo, *xo, *mo, *io, *go, *ctxo = NULL;
    int training, relu;
    PARSE("OOOOOOpp|O:bn_act_backward_bf16", &dyo, &yo, &xo, &mo, &io, &go, &training, &relu,
          &ctxo);
    ARG_F32(x, xo, "x", -1);
    ARG_F32(g, dyo, "dy", -1);
    ARG_SAME(x, "x", g, "dy");
    if (glae_check_min_ndim(x, "x", 1)) return NULL;
    ARG_F32_OPT(y, yo, "y", -1);
    if (y) ARG_SAME(x, "x", y, "y");
    const int c = glae_last_dim(x);
    const int64_t rows = glae_rows_of(x), n = PyArray_SIZE(x);
    PyArrayObject *p[3];
    const char *names[3] = {"save_mean", "save_invstd", "gamma"};
    PyObject *po[3] = {mo, io, go};
    for (int i = 0; i < 3; i++) {
        p[i] = glae_arg_f32(po[i], names[i], 1);
        if (!p[i] || glae_check_dim(p[i], names[i], 0, c)) return NULL;
    }
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp cd[1] = {c};
    glae_bf16 *dg = in16(&J, g), *dx = in16(&J, x), *dyv = in16(&J, y);
    float *dp[3];
    for (int i = 0; i < 3; i++) dp[i] = glae_job_in(&J, p[i]);
    glae_bf16 *din = tmp16(&J, n), *dres = tmp16(&J, n);
    float *o_dx = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *o_dres = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *dgam = glae_job_out(&J, 1, cd, NPY_FLOAT32, 1), *dbet = glae_job_out(&J, 1, cd, NPY_FLOAT32, 1);
    RUN16(J, J.ctx->ops->bn_act_backward_bf16(J.ctx, din, dres, dgam, dbet, dg, dyv, dx, dp[0],
                                              dp[1], dp[2], rows, c, training, relu),
          out16(&J, o_dx, din, n) || out16(&J, o_dres, dres, n));
}

/* ---- add, max pool --------------------------------------------------------------------- */

/* add_forward_bf16(a, b, ctx=None) -> a + b */
static PyObject *py_add_forward_bf16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("a", "b");
    PyObject *ao, *bo, *ctxo = NULL;
    PARSE("OO|O:add_forward_bf16", &ao, &bo, &ctxo);
    ARG_F32(a, ao, "a", -1);
    ARG_F32(b, bo, "b", -1);
    ARG_SAME(a, "a", b, "b");
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    const int64_t n = PyArray_SIZE(a);
    glae_bf16 *da = in16(&J, a), *db = in16(&J, b), *dy = tmp16(&J, n);
    float *y = glae_job_out(&J, DIMS_OF(a), NPY_FLOAT32, 0);
    RUN16(J, J.ctx->ops->add_forward_bf16(J.ctx, dy, da, db, n), out16(&J, y, dy, n));
}

/* maxpool2d_forward_bf16(x (N, H, W, C), k, stride, pad, ctx=None) -> (y, argmax) */
static PyObject *py_maxpool2d_forward_bf16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "k", "stride", "pad");
    PyObject *xo, *ctxo = NULL;
    int k, stride, pad;
    PARSE("Oiii|O:maxpool2d_forward_bf16", &xo, &k, &stride, &pad, &ctxo);
    ARG_F32(x, xo, "x", 4);
    ARG_FITS(x, "x");
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1),
                                  (int)PyArray_DIM(x, 2), (int)PyArray_DIM(x, 3), k, stride, pad, 0);
    if (st) return glae_raise(st);
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp dims[4] = {s.n, s.oh, s.ow, s.c};
    const int64_t ny = (int64_t)s.n * s.oh * s.ow * s.c;
    glae_bf16 *dx = in16(&J, x), *dy = tmp16(&J, ny);
    float *y = glae_job_out(&J, 4, dims, NPY_FLOAT32, 0);
    int32_t *am = glae_job_out(&J, 4, dims, NPY_INT32, 0);
    RUN16(J, J.ctx->ops->maxpool2d_forward_bf16(J.ctx, dy, am, dx, &s), out16(&J, y, dy, ny));
}

/* maxpool2d_backward_bf16(dy, argmax, h, w, k, stride, pad, ctx=None) -> dx (N, h, w, C) */
static PyObject *py_maxpool2d_backward_bf16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "argmax", "h", "w", "k", "stride", "pad");
    PyObject *dyo, *ao, *ctxo = NULL;
    int h, w, k, stride, pad;
    PARSE("OOiiiii|O:maxpool2d_backward_bf16", &dyo, &ao, &h, &w, &k, &stride, &pad, &ctxo);
    ARG_F32(g, dyo, "dy", 4);
    PyArrayObject *am = glae_arg_array(ao, "argmax", NPY_INT32, 4);
    if (!am) return NULL;
    ARG_SAME(g, "dy", am, "argmax");
    ARG_FITS(g, "dy");
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)PyArray_DIM(g, 0), h, w, (int)PyArray_DIM(g, 3), k,
                                  stride, pad, 0);
    if (st) return glae_raise(st);
    if (s.oh != PyArray_DIM(g, 1) || s.ow != PyArray_DIM(g, 2)) {
        PyErr_Format(PyExc_ValueError, "dy is %zdx%zd but a %dx%d input pools to %dx%d",
                     (Py_ssize_t)PyArray_DIM(g, 1), (Py_ssize_t)PyArray_DIM(g, 2), h, w, s.oh, s.ow);
        return NULL;
    }
    if (glae_check_argmax(am, h, w)) return NULL;
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp dims[4] = {s.n, h, w, s.c};
    const int64_t nx = (int64_t)s.n * h * w * s.c;
    glae_bf16 *dg = in16(&J, g), *ddx = tmp16(&J, nx);
    int32_t *dam = glae_job_in(&J, am);
    float *dx = glae_job_out(&J, 4, dims, NPY_FLOAT32, 0);
    RUN16(J, J.ctx->ops->maxpool2d_backward_bf16(J.ctx, ddx, dg, dam, &s), out16(&J, dx, ddx, nx));
}

PyMethodDef glae_bf16_methods[] = {
    {"bf16_round", py_bf16_round, METH_VARARGS, "bf16_round(x) -> x rounded to bfloat16 (float32)"},
    {"conv2d_forward_bf16", (PyCFunction)(void (*)(void))py_conv2d_forward_bf16, METH_VARARGS | METH_KEYWORDS,
     "conv2d_forward_bf16(x, w, b, stride, pad, ctx=None): bf16 activations"},
    {"conv2d_backward_bf16", (PyCFunction)(void (*)(void))py_conv2d_backward_bf16, METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward_bf16(dy, x, w, stride, pad, has_bias, ctx=None) -> (dx, dw, db)"},
    {"bn_act_forward_bf16", (PyCFunction)(void (*)(void))py_bn_act_forward_bf16, METH_VARARGS | METH_KEYWORDS,
     "bn_act_forward_bf16(x, residual, gamma, beta, rm, rv, training, relu, ctx=None)"},
    {"bn_act_backward_bf16", (PyCFunction)(void (*)(void))py_bn_act_backward_bf16, METH_VARARGS | METH_KEYWORDS,
     "bn_act_backward_bf16(dy, y, x, mean, invstd, gamma, training, relu, ctx=None)"},
    {"add_forward_bf16", (PyCFunction)(void (*)(void))py_add_forward_bf16, METH_VARARGS | METH_KEYWORDS, "add_forward_bf16(a, b, ctx=None)"},
    {"maxpool2d_forward_bf16", (PyCFunction)(void (*)(void))py_maxpool2d_forward_bf16, METH_VARARGS | METH_KEYWORDS,
     "maxpool2d_forward_bf16(x, k, stride, pad, ctx=None) -> (y, argmax)"},
    {"maxpool2d_backward_bf16", (PyCFunction)(void (*)(void))py_maxpool2d_backward_bf16, METH_VARARGS | METH_KEYWORDS,
     "maxpool2d_backward_bf16(dy, argmax, h, w, k, stride, pad, ctx=None) -> dx"},
    {NULL, NULL, 0, NULL},
};
