/* Bindings for the element-wise, normalisation, pooling, linear, shuffle, softmax and
 * the model's small ops, on either device. Pattern for every binding (job.h): strict
 * argument checks, then a job on the context `ctx` picks (None: the CPU), fresh outputs
 * (poisoned in tests), the op called through the context's table without the GIL,
 * status -> exception. Borrowed references from glae_arg_* need no DECREF. */
#include "python/job.h" /* Python.h first */

#include <limits.h>

#define KW(...) static char *kw_[] = {__VA_ARGS__, "ctx", NULL}
#define PARSE(fmt, ...) \
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kw_, __VA_ARGS__)) return NULL
#define START()                                \
    glae_job J;                                \
    if (glae_job_begin(&J, ctxo)) return NULL; \
    glae_ctx *ctx = J.ctx;
#define RUN(op, ...) GLAE_JOB_RUN(J, ctx->ops->op(ctx, __VA_ARGS__))

/* ---- element-wise ------------------------------------------------------------------ */

/* relu_forward(x float32[...]) -> y */
static PyObject *py_relu_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x");
    PyObject *xo, *ctxo = NULL;
    PARSE("O|O:relu_forward", &xo, &ctxo);
    ARG_F32(x, xo, "x", -1);
    START();
    float *i = glae_job_in(&J, x), *o = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0);
    RUN(relu_forward, o, i, PyArray_SIZE(x));
}

/* relu_backward(dy, y) -> dx */
static PyObject *py_relu_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "y");
    PyObject *dyo, *yo, *ctxo = NULL;
    PARSE("OO|O:relu_backward", &dyo, &yo, &ctxo);
    ARG_F32(dy, dyo, "dy", -1);
    ARG_F32(y, yo, "y", -1);
    ARG_SAME(dy, "dy", y, "y");
    START();
    float *g = glae_job_in(&J, dy), *o = glae_job_in(&J, y);
    float *dx = glae_job_out(&J, DIMS_OF(y), NPY_FLOAT32, 0);
    RUN(relu_backward, dx, g, o, PyArray_SIZE(y));
}

/* add_forward(a, b) -> a + b */
static PyObject *py_add_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("a", "b");
    PyObject *ao, *bo, *ctxo = NULL;
    PARSE("OO|O:add_forward", &ao, &bo, &ctxo);
    ARG_F32(a, ao, "a", -1);
    ARG_F32(b, bo, "b", -1);
    ARG_SAME(a, "a", b, "b");
    START();
    float *da = glae_job_in(&J, a), *db = glae_job_in(&J, b);
    float *y = glae_job_out(&J, DIMS_OF(a), NPY_FLOAT32, 0);
    RUN(add_forward, y, da, db, PyArray_SIZE(a));
}

/* add_backward(dy) -> (da, db): the residual add passes dy to both inputs */
static PyObject *py_add_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy");
    PyObject *dyo, *ctxo = NULL;
    PARSE("O|O:add_backward", &dyo, &ctxo);
    ARG_F32(dy, dyo, "dy", -1);
    START();
    float *g = glae_job_in(&J, dy), *da = glae_job_out(&J, DIMS_OF(dy), NPY_FLOAT32, 0),
          *db = glae_job_out(&J, DIMS_OF(dy), NPY_FLOAT32, 0);
    RUN(add_backward, da, db, g, PyArray_SIZE(dy));
}

/* hflip_forward(x (N, H, W, C)) -> x[:, :, ::-1, :] */
static PyObject *py_hflip_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x");
    PyObject *xo, *ctxo = NULL;
    PARSE("O|O:hflip_forward", &xo, &ctxo);
    ARG_F32(x, xo, "x", 4);
    ARG_FITS(x, "x");
    START();
    const npy_intp *d = PyArray_DIMS(x);
    float *i = glae_job_in(&J, x), *o = glae_job_out(&J, 4, d, NPY_FLOAT32, 0);
    RUN(hflip_forward, o, i, (int)d[0], (int)d[1], (int)d[2], (int)d[3]);
}

/* prelu_forward(x (..., C), weight (C)) -> y */
static PyObject *py_prelu_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "weight");
    PyObject *xo, *wo, *ctxo = NULL;
    PARSE("OO|O:prelu_forward", &xo, &wo, &ctxo);
    ARG_F32(x, xo, "x", -1);
    if (glae_check_min_ndim(x, "x", 1)) return NULL;
    ARG_FITS(x, "x");
    ARG_F32(w, wo, "weight", 1);
    ARG_DIM(w, "weight", 0, glae_last_dim(x));
    START();
    float *i = glae_job_in(&J, x), *dw = glae_job_in(&J, w);
    float *o = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0);
    RUN(prelu_forward, o, i, dw, glae_rows_of(x), glae_last_dim(x));
}

/* prelu_backward(dy, x, weight) -> (dx, dweight) */
static PyObject *py_prelu_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "x", "weight");
    PyObject *dyo, *xo, *wo, *ctxo = NULL;
    PARSE("OOO|O:prelu_backward", &dyo, &xo, &wo, &ctxo);
    ARG_F32(dy, dyo, "dy", -1);
    ARG_F32(x, xo, "x", -1);
    if (glae_check_min_ndim(x, "x", 1)) return NULL;
    ARG_FITS(x, "x");
    ARG_SAME(dy, "dy", x, "x");
    ARG_F32(w, wo, "weight", 1);
    ARG_DIM(w, "weight", 0, glae_last_dim(x));
    START();
    float *g = glae_job_in(&J, dy), *i = glae_job_in(&J, x), *dw = glae_job_in(&J, w);
    float *gx = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *gw = glae_job_out(&J, DIMS_OF(w), NPY_FLOAT32, 1);
    RUN(prelu_backward, gx, gw, g, i, dw, glae_rows_of(x), glae_last_dim(x));
}

/* ---- SiLU, sigmoid, channel scale ---------------------------------------------------- */

/* the element-wise forward of one array: silu_forward(x), sigmoid_forward(x) */
static PyObject *unary(PyObject *args, PyObject *kw, const char *fmt, int sig) {
    KW("x");
    PyObject *xo, *ctxo = NULL;
    PARSE(fmt, &xo, &ctxo);
    ARG_F32(x, xo, "x", -1);
    START();
    float *i = glae_job_in(&J, x), *o = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0);
    if (sig) RUN(sigmoid_forward, o, i, PyArray_SIZE(x));
    RUN(silu_forward, o, i, PyArray_SIZE(x));
}

/* silu_backward(dy, x) (the input) and sigmoid_backward(dy, y) (the output) -> dx */
static PyObject *unary_grad(PyObject *args, PyObject *kw, const char *fmt, const char *saved,
                            int sig) {
    static char *kw_silu[] = {"dy", "x", "ctx", NULL}, *kw_sig[] = {"dy", "y", "ctx", NULL};
    PyObject *dyo, *so, *ctxo = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, sig ? kw_sig : kw_silu, &dyo, &so, &ctxo))
        return NULL;
    ARG_F32(dy, dyo, "dy", -1);
    ARG_F32(v, so, saved, -1);
    ARG_SAME(dy, "dy", v, saved);
    START();
    float *g = glae_job_in(&J, dy), *dv = glae_job_in(&J, v);
    float *dx = glae_job_out(&J, DIMS_OF(v), NPY_FLOAT32, 0);
    if (sig) RUN(sigmoid_backward, dx, g, dv, PyArray_SIZE(v));
    RUN(silu_backward, dx, g, dv, PyArray_SIZE(v));
}

static PyObject *py_silu_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return unary(args, kw, "O|O:silu_forward", 0);
}
static PyObject *py_silu_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return unary_grad(args, kw, "OO|O:silu_backward", "x", 0);
}
static PyObject *py_sigmoid_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return unary(args, kw, "O|O:sigmoid_forward", 1);
}
static PyObject *py_sigmoid_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return unary_grad(args, kw, "OO|O:sigmoid_backward", "y", 1);
}

/* x (N, ..., C) and scale (N, C): the sizes (n, hw, c) of the (N, HW, C) view */
static int scale_args(PyArrayObject *x, PyArrayObject *s, int *n, int64_t *hw, int *c) {
    if (glae_check_min_ndim(x, "x", 2) || glae_check_fits_int(x, "x")) return -1;
    if (glae_check_dim(s, "scale", 0, PyArray_DIM(x, 0)) ||
        glae_check_dim(s, "scale", 1, glae_last_dim(x)))
        return -1;
    *n = (int)PyArray_DIM(x, 0);
    *c = glae_last_dim(x);
    *hw = 1;
    for (int i = 1; i < PyArray_NDIM(x) - 1; i++) *hw *= PyArray_DIM(x, i);
    return 0;
}

/* channel_scale_forward(x (N, ..., C), scale (N, C)) -> x * scale[:, None, ..., :] */
static PyObject *py_channel_scale_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "scale");
    PyObject *xo, *so, *ctxo = NULL;
    PARSE("OO|O:channel_scale_forward", &xo, &so, &ctxo);
    ARG_F32(x, xo, "x", -1);
    ARG_F32(sc, so, "scale", 2);
    int n, c;
    int64_t hw;
    if (scale_args(x, sc, &n, &hw, &c)) return NULL;
    START();
    float *i = glae_job_in(&J, x), *ds = glae_job_in(&J, sc);
    float *y = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0);
    RUN(channel_scale_forward, y, i, ds, n, hw, c);
}

/* channel_scale_backward(dy, x, scale) -> (dx, dscale (N, C)) */
static PyObject *py_channel_scale_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "x", "scale");
    PyObject *dyo, *xo, *so, *ctxo = NULL;
    PARSE("OOO|O:channel_scale_backward", &dyo, &xo, &so, &ctxo);
    ARG_F32(dy, dyo, "dy", -1);
    ARG_F32(x, xo, "x", -1);
    ARG_SAME(dy, "dy", x, "x");
    ARG_F32(sc, so, "scale", 2);
    int n, c;
    int64_t hw;
    if (scale_args(x, sc, &n, &hw, &c)) return NULL;
    START();
    float *g = glae_job_in(&J, dy), *i = glae_job_in(&J, x), *ds = glae_job_in(&J, sc);
    float *dx = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *dsc = glae_job_out(&J, DIMS_OF(sc), NPY_FLOAT32, 0);
    RUN(channel_scale_backward, dx, dsc, g, i, ds, n, hw, c);
}

/* ---- batch norm --------------------------------------------------------------------- */

/* batchnorm_forward(x (..., C), gamma (C), beta (C), running_mean (C) | None,
 *                   running_var (C) | None, momentum, eps, training) -> (y, save_mean, save_invstd)
 * running_mean / running_var are updated IN PLACE in training mode. */
static PyObject *py_batchnorm_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "gamma", "beta", "running_mean", "running_var", "momentum", "eps", "training");
    PyObject *xo, *go, *bo, *rmo, *rvo, *ctxo = NULL;
    float momentum, eps;
    int training;
    PARSE("OOOOOffp|O:batchnorm_forward", &xo, &go, &bo, &rmo, &rvo, &momentum, &eps, &training,
          &ctxo);
    ARG_F32(x, xo, "x", -1);
    if (glae_check_min_ndim(x, "x", 2)) return NULL;
    ARG_FITS(x, "x");
    const int c = glae_last_dim(x);
    ARG_F32(g, go, "gamma", 1);
    ARG_DIM(g, "gamma", 0, c);
    ARG_F32(b, bo, "beta", 1);
    ARG_DIM(b, "beta", 0, c);
    ARG_F32_OPT(rm, rmo, "running_mean", 1);
    if (rm) ARG_DIM(rm, "running_mean", 0, c);
    ARG_F32_OPT(rv, rvo, "running_var", 1);
    if (rv) ARG_DIM(rv, "running_var", 0, c);
    if (glae_check_writeable(rm, "running_mean") || glae_check_writeable(rv, "running_var"))
        return NULL;
    if (!training && (!rm || !rv)) {
        PyErr_SetString(PyExc_ValueError,
                        "running_mean and running_var are required in eval mode (training=False)");
        return NULL;
    }
    START();
    npy_intp cd[1] = {c};
    float *dx = glae_job_in(&J, x), *dg = glae_job_in(&J, g), *db = glae_job_in(&J, b);
    float *drm = glae_job_inout(&J, rm), *drv = glae_job_inout(&J, rv);
    float *y = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *m = glae_job_out(&J, 1, cd, NPY_FLOAT32, 0), *is = glae_job_out(&J, 1, cd, NPY_FLOAT32, 0);
    RUN(batchnorm_forward, y, m, is, dx, dg, db, drm, drv, glae_rows_of(x), c, momentum, eps,
        training);
}

/* batchnorm_backward(dy, x, save_mean, save_invstd, gamma, training) -> (dx, dgamma, dbeta) */
static PyObject *py_batchnorm_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "x", "save_mean", "save_invstd", "gamma", "training");
    PyObject *dyo, *xo, *mo, *io, *go, *ctxo = NULL;
    int training;
    PARSE("OOOOOp|O:batchnorm_backward", &dyo, &xo, &mo, &io, &go, &training, &ctxo);
    ARG_F32(dy, dyo, "dy", -1);
    ARG_F32(x, xo, "x", -1);
    if (glae_check_min_ndim(x, "x", 2)) return NULL;
    ARG_FITS(x, "x");
    ARG_SAME(dy, "dy", x, "x");
    const int c = glae_last_dim(x);
    ARG_F32(m, mo, "save_mean", 1);
    ARG_DIM(m, "save_mean", 0, c);
    ARG_F32(is, io, "save_invstd", 1);
    ARG_DIM(is, "save_invstd", 0, c);
    ARG_F32(g, go, "gamma", 1);
    ARG_DIM(g, "gamma", 0, c);
    START();
    npy_intp cd[1] = {c};
    float *ddy = glae_job_in(&J, dy), *dx = glae_job_in(&J, x), *dm = glae_job_in(&J, m),
          *dis = glae_job_in(&J, is), *dg = glae_job_in(&J, g);
    float *gx = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *gg = glae_job_out(&J, 1, cd, NPY_FLOAT32, 1), *gb = glae_job_out(&J, 1, cd, NPY_FLOAT32, 1);
    RUN(batchnorm_backward, gx, gg, gb, ddy, dx, dm, dis, dg, glae_rows_of(x), c, training);
}

/* batchnorm_ghost_forward(x (..., C), gamma, beta, running_mean | None, running_var | None,
 *     group_rows, momentum, eps, training) -> (y, save_mean (G, C), save_invstd (G, C)):
 * batch norm over consecutive groups of group_rows rows of x viewed as (rows, C); the
 * running statistics (updated IN PLACE in training) follow group 0. */
static PyObject *py_batchnorm_ghost_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "gamma", "beta", "running_mean", "running_var", "group_rows", "momentum", "eps",
       "training");
    PyObject *xo, *go, *bo, *rmo, *rvo, *ctxo = NULL;
    long long group_rows;
    float momentum, eps;
    int training;
    PARSE("OOOOOLffp|O:batchnorm_ghost_forward", &xo, &go, &bo, &rmo, &rvo, &group_rows,
          &momentum, &eps, &training, &ctxo);
    ARG_F32(x, xo, "x", -1);
    if (glae_check_min_ndim(x, "x", 2)) return NULL;
    ARG_FITS(x, "x");
    const int c = glae_last_dim(x);
    ARG_F32(g, go, "gamma", 1);
    ARG_DIM(g, "gamma", 0, c);
    ARG_F32(b, bo, "beta", 1);
    ARG_DIM(b, "beta", 0, c);
    ARG_F32_OPT(rm, rmo, "running_mean", 1);
    if (rm) ARG_DIM(rm, "running_mean", 0, c);
    ARG_F32_OPT(rv, rvo, "running_var", 1);
    if (rv) ARG_DIM(rv, "running_var", 0, c);
    if (glae_check_writeable(rm, "running_mean") || glae_check_writeable(rv, "running_var"))
        return NULL;
    if (group_rows < 1) {
        PyErr_Format(PyExc_ValueError, "group_rows must be >= 1, got %lld", group_rows);
        return NULL;
    }
    if (!training && (!rm || !rv)) {
        PyErr_SetString(PyExc_ValueError,
                        "running_mean and running_var are required in eval mode (training=False)");
        return NULL;
    }
    const int64_t rows = glae_rows_of(x);
    START();
    npy_intp sd[2] = {(npy_intp)((rows + group_rows - 1) / group_rows), c};
    float *dx = glae_job_in(&J, x), *dg = glae_job_in(&J, g), *db = glae_job_in(&J, b);
    float *drm = glae_job_inout(&J, rm), *drv = glae_job_inout(&J, rv);
    float *y = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *m = glae_job_out(&J, 2, sd, NPY_FLOAT32, 0), *is = glae_job_out(&J, 2, sd, NPY_FLOAT32, 0);
    RUN(batchnorm_ghost_forward, y, m, is, dx, dg, db, drm, drv, rows, c, (int64_t)group_rows,
        momentum, eps, training);
}

/* batchnorm_ghost_backward(dy, x, save_mean (G, C), save_invstd (G, C), gamma, group_rows,
 *     training) -> (dx, dgamma, dbeta) */
static PyObject *py_batchnorm_ghost_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "x", "save_mean", "save_invstd", "gamma", "group_rows", "training");
    PyObject *dyo, *xo, *mo, *io, *go, *ctxo = NULL;
    long long group_rows;
    int training;
    PARSE("OOOOOLp|O:batchnorm_ghost_backward", &dyo, &xo, &mo, &io, &go, &group_rows, &training,
          &ctxo);
    ARG_F32(dy, dyo, "dy", -1);
    ARG_F32(x, xo, "x", -1);
    if (glae_check_min_ndim(x, "x", 2)) return NULL;
    ARG_FITS(x, "x");
    ARG_SAME(dy, "dy", x, "x");
    const int c = glae_last_dim(x);
    if (group_rows < 1) {
        PyErr_Format(PyExc_ValueError, "group_rows must be >= 1, got %lld", group_rows);
        return NULL;
    }
    const int64_t rows = glae_rows_of(x), groups = (rows + group_rows - 1) / group_rows;
    ARG_F32(m, mo, "save_mean", 2);
    ARG_DIM(m, "save_mean", 0, groups);
    ARG_DIM(m, "save_mean", 1, c);
    ARG_F32(is, io, "save_invstd", 2);
    ARG_DIM(is, "save_invstd", 0, groups);
    ARG_DIM(is, "save_invstd", 1, c);
    ARG_F32(g, go, "gamma", 1);
    ARG_DIM(g, "gamma", 0, c);
    START();
    npy_intp cd[1] = {c};
    float *ddy = glae_job_in(&J, dy), *dx = glae_job_in(&J, x), *dm = glae_job_in(&J, m),
          *dis = glae_job_in(&J, is), *dg = glae_job_in(&J, g);
    float *gx = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *gg = glae_job_out(&J, 1, cd, NPY_FLOAT32, 1), *gb = glae_job_out(&J, 1, cd, NPY_FLOAT32, 1);
    RUN(batchnorm_ghost_backward, gx, gg, gb, ddy, dx, dm, dis, dg, rows, c, (int64_t)group_rows,
        training);
}

/* ---- pooling ------------------------------------------------------------------------ */

/* maxpool2d_forward(x (N, H, W, C), k, stride, pad, ceil_mode=False) -> (y, argmax int32) */
static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "k", "stride", "pad", "ceil_mode");
    PyObject *xo, *ctxo = NULL;
    int k, stride, pad, ceil_mode = 0;
    PARSE("Oiii|pO:maxpool2d_forward", &xo, &k, &stride, &pad, &ceil_mode, &ctxo);
    ARG_F32(x, xo, "x", 4);
    ARG_FITS(x, "x");
    const npy_intp *d = PyArray_DIMS(x);
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)d[0], (int)d[1], (int)d[2], (int)d[3], k, stride, pad,
                                  ceil_mode);
    if (st) return glae_raise(st);
    START();
    npy_intp od[4] = {s.n, s.oh, s.ow, s.c};
    float *i = glae_job_in(&J, x), *y = glae_job_out(&J, 4, od, NPY_FLOAT32, 0);
    int32_t *am = glae_job_out(&J, 4, od, NPY_INT32, 0);
    RUN(maxpool2d_forward, y, am, i, &s);
}

/* maxpool2d_backward(dy (N, OH, OW, C), argmax (N, OH, OW, C) int32, h, w, k, stride, pad,
 *                    ceil_mode=False) -> dx (N, H, W, C) */
static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "argmax", "h", "w", "k", "stride", "pad", "ceil_mode");
    PyObject *dyo, *ao, *ctxo = NULL;
    int h, w, k, stride, pad, ceil_mode = 0;
    PARSE("OOiiiii|pO:maxpool2d_backward", &dyo, &ao, &h, &w, &k, &stride, &pad, &ceil_mode,
          &ctxo);
    ARG_F32(dy, dyo, "dy", 4);
    ARG_FITS(dy, "dy");
    PyArrayObject *a = glae_arg_array(ao, "argmax", NPY_INT32, 4);
    if (!a) return NULL;
    ARG_SAME(dy, "dy", a, "argmax");
    if (glae_check_min(h, "h", 0) || glae_check_min(w, "w", 0)) return NULL;
    const npy_intp *d = PyArray_DIMS(dy);
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)d[0], h, w, (int)d[3], k, stride, pad, ceil_mode);
    if (st) return glae_raise(st);
    ARG_DIM(dy, "dy", 1, s.oh);
    ARG_DIM(dy, "dy", 2, s.ow);
    if (glae_check_argmax(a, h, w)) return NULL;
    START();
    npy_intp xd[4] = {s.n, h, w, s.c};
    float *g = glae_job_in(&J, dy), *dx = glae_job_out(&J, 4, xd, NPY_FLOAT32, 0);
    int32_t *am = glae_job_in(&J, a);
    RUN(maxpool2d_backward, dx, g, am, &s);
}

/* avgpool_forward(x (N, H, W, C)) -> (N, C) */
static PyObject *py_avgpool_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x");
    PyObject *xo, *ctxo = NULL;
    PARSE("O|O:avgpool_forward", &xo, &ctxo);
    ARG_F32(x, xo, "x", 4);
    ARG_FITS(x, "x");
    const npy_intp *d = PyArray_DIMS(x);
    if ((int64_t)d[1] * d[2] > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "x: H*W is too large");
        return NULL;
    }
    if (d[1] * d[2] == 0 && d[0] * d[3] > 0) {
        PyErr_SetString(PyExc_ValueError, "x: cannot average over H*W = 0 positions");
        return NULL;
    }
    START();
    npy_intp od[2] = {d[0], d[3]};
    float *i = glae_job_in(&J, x), *y = glae_job_out(&J, 2, od, NPY_FLOAT32, 0);
    RUN(avgpool_forward, y, i, (int)d[0], (int)(d[1] * d[2]), (int)d[3]);
}

/* avgpool_backward(dy (N, C), h, w) -> dx (N, H, W, C) */
static PyObject *py_avgpool_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "h", "w");
    PyObject *dyo, *ctxo = NULL;
    int h, w;
    PARSE("Oii|O:avgpool_backward", &dyo, &h, &w, &ctxo);
    ARG_F32(dy, dyo, "dy", 2);
    ARG_FITS(dy, "dy");
    if (glae_check_min(h, "h", 1) || glae_check_min(w, "w", 1)) return NULL;
    if ((int64_t)h * w > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "h*w is too large");
        return NULL;
    }
    START();
    npy_intp xd[4] = {PyArray_DIM(dy, 0), h, w, PyArray_DIM(dy, 1)};
    float *g = glae_job_in(&J, dy), *dx = glae_job_out(&J, 4, xd, NPY_FLOAT32, 0);
    RUN(avgpool_backward, dx, g, (int)xd[0], h * w, (int)xd[3]);
}

/* ---- linear ------------------------------------------------------------------------- */

/* linear_forward(x (N, IN), w (OUT, IN), b (OUT) | None) -> (N, OUT) */
static PyObject *py_linear_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "w", "b");
    PyObject *xo, *wo, *bo, *ctxo = NULL;
    PARSE("OOO|O:linear_forward", &xo, &wo, &bo, &ctxo);
    ARG_F32(x, xo, "x", 2);
    ARG_FITS(x, "x");
    ARG_F32(w, wo, "w", 2);
    ARG_FITS(w, "w");
    ARG_DIM(w, "w", 1, PyArray_DIM(x, 1));
    ARG_F32_OPT(b, bo, "b", 1);
    if (b) ARG_DIM(b, "b", 0, PyArray_DIM(w, 0));
    START();
    npy_intp od[2] = {PyArray_DIM(x, 0), PyArray_DIM(w, 0)};
    float *dx = glae_job_in(&J, x), *dw = glae_job_in(&J, w), *db = glae_job_in(&J, b);
    float *y = glae_job_out(&J, 2, od, NPY_FLOAT32, 0);
    RUN(linear_forward, y, dx, dw, db, (int)od[0], (int)PyArray_DIM(x, 1), (int)od[1]);
}

/* linear_backward(dy (N, OUT), x (N, IN), w (OUT, IN), has_bias) -> (dx, dw, db | None) */
static PyObject *py_linear_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "x", "w", "has_bias");
    PyObject *dyo, *xo, *wo, *ctxo = NULL;
    int has_bias;
    PARSE("OOOp|O:linear_backward", &dyo, &xo, &wo, &has_bias, &ctxo);
    ARG_F32(dy, dyo, "dy", 2);
    ARG_FITS(dy, "dy");
    ARG_F32(x, xo, "x", 2);
    ARG_FITS(x, "x");
    ARG_DIM(x, "x", 0, PyArray_DIM(dy, 0));
    ARG_F32(w, wo, "w", 2);
    ARG_DIM(w, "w", 0, PyArray_DIM(dy, 1));
    ARG_DIM(w, "w", 1, PyArray_DIM(x, 1));
    START();
    npy_intp bd[1] = {PyArray_DIM(w, 0)};
    float *g = glae_job_in(&J, dy), *dx = glae_job_in(&J, x), *dw = glae_job_in(&J, w);
    float *gx = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *gw = glae_job_out(&J, DIMS_OF(w), NPY_FLOAT32, 1), *gb = NULL;
    if (has_bias) gb = glae_job_out(&J, 1, bd, NPY_FLOAT32, 1);
    else glae_job_none(&J);
    RUN(linear_backward, gx, gw, gb, g, dx, dw, (int)PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1),
        (int)bd[0]);
}

/* ---- pixel shuffle ------------------------------------------------------------------ */

/* pixel_shuffle_forward(x (N, H, W, C*r*r), r) -> (N, H*r, W*r, C) */
static PyObject *py_pixel_shuffle_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "r");
    PyObject *xo, *ctxo = NULL;
    int r;
    PARSE("Oi|O:pixel_shuffle_forward", &xo, &r, &ctxo);
    ARG_F32(x, xo, "x", 4);
    ARG_FITS(x, "x");
    if (glae_check_min(r, "r", 1)) return NULL;
    const npy_intp *d = PyArray_DIMS(x);
    if (d[3] % ((npy_intp)r * r) != 0) {
        PyErr_Format(PyExc_ValueError, "x: channels %zd not divisible by r*r = %lld",
                     (Py_ssize_t)d[3], (long long)r * r);
        return NULL;
    }
    if ((int64_t)d[1] * r > INT_MAX || (int64_t)d[2] * r > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "x: H*r or W*r is too large");
        return NULL;
    }
    START();
    npy_intp od[4] = {d[0], d[1] * r, d[2] * r, d[3] / ((npy_intp)r * r)};
    float *i = glae_job_in(&J, x), *y = glae_job_out(&J, 4, od, NPY_FLOAT32, 0);
    RUN(pixel_shuffle_forward, y, i, (int)d[0], (int)d[1], (int)d[2], (int)d[3], r);
}

/* pixel_shuffle_backward(dy (N, H*r, W*r, C), r) -> dx (N, H, W, C*r*r) */
static PyObject *py_pixel_shuffle_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("dy", "r");
    PyObject *dyo, *ctxo = NULL;
    int r;
    PARSE("Oi|O:pixel_shuffle_backward", &dyo, &r, &ctxo);
    ARG_F32(dy, dyo, "dy", 4);
    ARG_FITS(dy, "dy");
    if (glae_check_min(r, "r", 1)) return NULL;
    const npy_intp *d = PyArray_DIMS(dy);
    if (d[1] % r != 0 || d[2] % r != 0) {
        PyErr_Format(PyExc_ValueError, "dy: spatial size %zdx%zd not divisible by r = %d",
                     (Py_ssize_t)d[1], (Py_ssize_t)d[2], r);
        return NULL;
    }
    if ((int64_t)d[3] * r * r > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "dy: C*r*r is too large");
        return NULL;
    }
    START();
    npy_intp xd[4] = {d[0], d[1] / r, d[2] / r, d[3] * r * r};
    float *g = glae_job_in(&J, dy), *dx = glae_job_out(&J, 4, xd, NPY_FLOAT32, 0);
    RUN(pixel_shuffle_backward, dx, g, (int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], r);
}

/* ---- softmax / log-softmax over the last axis --------------------------------------- */

static PyObject *softmax_fwd(PyObject *args, PyObject *kw, const char *fmt, int logsm) {
    KW("x");
    PyObject *xo, *ctxo = NULL;
    PARSE(fmt, &xo, &ctxo);
    ARG_F32(x, xo, "x", -1);
    if (glae_check_min_ndim(x, "x", 1)) return NULL;
    ARG_FITS(x, "x");
    START();
    float *i = glae_job_in(&J, x), *y = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0);
    if (logsm) RUN(log_softmax_forward, y, i, glae_rows_of(x), glae_last_dim(x));
    RUN(softmax_forward, y, i, glae_rows_of(x), glae_last_dim(x));
}

static PyObject *softmax_bwd(PyObject *args, PyObject *kw, const char *fmt, int logsm) {
    KW("dy", "y");
    PyObject *dyo, *yo, *ctxo = NULL;
    PARSE(fmt, &dyo, &yo, &ctxo);
    ARG_F32(dy, dyo, "dy", -1);
    ARG_F32(y, yo, "y", -1);
    if (glae_check_min_ndim(y, "y", 1)) return NULL;
    ARG_FITS(y, "y");
    ARG_SAME(dy, "dy", y, "y");
    START();
    float *g = glae_job_in(&J, dy), *o = glae_job_in(&J, y);
    float *dx = glae_job_out(&J, DIMS_OF(y), NPY_FLOAT32, 0);
    if (logsm) RUN(log_softmax_backward, dx, g, o, glae_rows_of(y), glae_last_dim(y));
    RUN(softmax_backward, dx, g, o, glae_rows_of(y), glae_last_dim(y));
}

static PyObject *py_softmax_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return softmax_fwd(args, kw, "O|O:softmax_forward", 0);
}
static PyObject *py_softmax_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return softmax_bwd(args, kw, "OO|O:softmax_backward", 0);
}
static PyObject *py_log_softmax_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return softmax_fwd(args, kw, "O|O:log_softmax_forward", 1);
}
static PyObject *py_log_softmax_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return softmax_bwd(args, kw, "OO|O:log_softmax_backward", 1);
}

/* ---- the model code's small ops (util.c) -------------------------------------------- */

/* normalise_u8(x uint8 (..., 3), norm='glae') -> float32 of the same shape */
static PyObject *py_normalise_u8(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("x", "norm");
    PyObject *xo, *no = NULL, *ctxo = NULL;
    int norm = GLAE_NORM_GLAE;
    PARSE("O|OO:normalise_u8", &xo, &no, &ctxo);
    if (no && no != Py_None && glae_parse_norm(no, "normalise_u8", &norm)) return NULL;
    PyArrayObject *x = glae_arg_array(xo, "x", NPY_UINT8, -1);
    if (!x) return NULL;
    if (PyArray_NDIM(x) < 1 || glae_last_dim(x) != 3) {
        PyErr_SetString(PyExc_ValueError, "x: the last dimension must be 3 (RGB)");
        return NULL;
    }
    START();
    uint8_t *i = glae_job_in(&J, x);
    float *y = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0);
    RUN(normalise_u8, y, i, PyArray_SIZE(x), norm);
}

/* fill(n, value) -> (n,) float32 */
static PyObject *py_fill(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("n", "value");
    PyObject *ctxo = NULL;
    Py_ssize_t n;
    float v;
    PARSE("nf|O:fill", &n, &v, &ctxo);
    if (glae_check_min(n, "n", 0)) return NULL;
    START();
    npy_intp d[1] = {(npy_intp)n};
    float *y = glae_job_out(&J, 1, d, NPY_FLOAT32, 0);
    RUN(fill, y, v, n);
}

/* flatten_nchw_forward(x (N, P, C)) -> (N, C, P), PyTorch's flatten order of an NHWC map;
 * flatten_nchw_backward(dy (N, C, P)) -> (N, P, C) */
static PyObject *flatten(PyObject *args, PyObject *kw, const char *fmt, int fwd) {
    KW("x");
    PyObject *xo, *ctxo = NULL;
    PARSE(fmt, &xo, &ctxo);
    ARG_F32(x, xo, "x", 3);
    ARG_FITS(x, "x");
    const npy_intp *xd = PyArray_DIMS(x);
    npy_intp od[3] = {xd[0], xd[2], xd[1]};
    START();
    float *i = glae_job_in(&J, x), *y = glae_job_out(&J, 3, od, NPY_FLOAT32, 0);
    if (fwd) RUN(flatten_nchw_forward, y, i, (int)xd[0], xd[1], (int)xd[2]);
    RUN(flatten_nchw_backward, y, i, (int)xd[0], xd[2], (int)xd[1]);
}
static PyObject *py_flatten_nchw_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return flatten(args, kw, "O|O:flatten_nchw_forward", 1);
}
static PyObject *py_flatten_nchw_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return flatten(args, kw, "O|O:flatten_nchw_backward", 0);
}

/* avg2_forward(a, b) -> 0.5 * (a + b) */
static PyObject *py_avg2_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    KW("a", "b");
    PyObject *ao, *bo, *ctxo = NULL;
    PARSE("OO|O:avg2_forward", &ao, &bo, &ctxo);
    ARG_F32(a, ao, "a", -1);
    ARG_F32(b, bo, "b", -1);
    ARG_SAME(a, "a", b, "b");
    START();
    float *da = glae_job_in(&J, a), *db = glae_job_in(&J, b);
    float *y = glae_job_out(&J, DIMS_OF(a), NPY_FLOAT32, 0);
    RUN(avg2_forward, y, da, db, PyArray_SIZE(a));
}

#define OP(name, doc) {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, doc}

PyMethodDef glae_ops_methods[] = {
    OP(relu_forward, "relu_forward(x, ctx=None) -> max(x, 0)"),
    OP(relu_backward, "relu_backward(dy, y, ctx=None) -> dx = dy * [y > 0]"),
    OP(add_forward, "add_forward(a, b, ctx=None) -> a + b"),
    OP(add_backward, "add_backward(dy, ctx=None) -> (da, db), both equal to dy"),
    OP(hflip_forward, "hflip_forward(x NHWC, ctx=None) -> x[:, :, ::-1]"),
    OP(silu_forward, "silu_forward(x, ctx=None) -> x * sigmoid(x)"),
    OP(silu_backward, "silu_backward(dy, x, ctx=None) -> dx (from the input x)"),
    OP(sigmoid_forward, "sigmoid_forward(x, ctx=None) -> 1 / (1 + exp(-x))"),
    OP(sigmoid_backward, "sigmoid_backward(dy, y, ctx=None) -> dy * y * (1 - y) (from the output y)"),
    OP(channel_scale_forward,
       "channel_scale_forward(x (N, ..., C), scale (N, C), ctx=None) -> x * scale per sample and "
       "channel (squeeze-and-excitation; C = 1 scales whole samples)"),
    OP(channel_scale_backward,
       "channel_scale_backward(dy, x, scale, ctx=None) -> (dx, dscale (N, C))"),
    OP(prelu_forward, "prelu_forward(x (..., C), weight (C), ctx=None) -> y"),
    OP(prelu_backward, "prelu_backward(dy, x, weight, ctx=None) -> (dx, dweight)"),
    OP(batchnorm_forward,
       "batchnorm_forward(x, gamma, beta, running_mean|None, running_var|None, momentum, eps, "
       "training, ctx=None) -> (y, save_mean, save_invstd); running stats updated in place when "
       "training"),
    OP(batchnorm_backward,
       "batchnorm_backward(dy, x, save_mean, save_invstd, gamma, training, ctx=None) -> (dx, "
       "dgamma, dbeta)"),
    OP(batchnorm_ghost_forward,
       "batchnorm_ghost_forward(x, gamma, beta, running_mean|None, running_var|None, group_rows, "
       "momentum, eps, training, ctx=None) -> (y, save_mean (G, C), save_invstd (G, C)): batch "
       "norm over consecutive groups of group_rows rows; running stats follow group 0"),
    OP(batchnorm_ghost_backward,
       "batchnorm_ghost_backward(dy, x, save_mean, save_invstd, gamma, group_rows, training, "
       "ctx=None) -> (dx, dgamma, dbeta)"),
    OP(maxpool2d_forward,
       "maxpool2d_forward(x NHWC, k, stride, pad, ceil_mode=False, ctx=None) -> (y, argmax int32)"),
    OP(maxpool2d_backward,
       "maxpool2d_backward(dy, argmax, h, w, k, stride, pad, ceil_mode=False, ctx=None) -> dx"),
    OP(avgpool_forward, "avgpool_forward(x NHWC, ctx=None) -> (N, C) mean"),
    OP(avgpool_backward, "avgpool_backward(dy (N, C), h, w, ctx=None) -> dx (N, H, W, C)"),
    OP(linear_forward, "linear_forward(x (N, IN), w (OUT, IN), b|None, ctx=None) -> x w^T + b"),
    OP(linear_backward, "linear_backward(dy, x, w, has_bias, ctx=None) -> (dx, dw, db|None)"),
    OP(pixel_shuffle_forward,
       "pixel_shuffle_forward(x (N, H, W, C*r*r), r, ctx=None) -> (N, H*r, W*r, C), PyTorch order"),
    OP(pixel_shuffle_backward,
       "pixel_shuffle_backward(dy (N, H*r, W*r, C), r, ctx=None) -> dx (N, H, W, C*r*r)"),
    OP(softmax_forward, "softmax_forward(x, ctx=None) -> softmax over the last axis"),
    OP(softmax_backward, "softmax_backward(dy, y, ctx=None) -> dx"),
    OP(log_softmax_forward, "log_softmax_forward(x, ctx=None) -> log-softmax over the last axis"),
    OP(log_softmax_backward, "log_softmax_backward(dy, y, ctx=None) -> dx"),
    OP(normalise_u8,
       "normalise_u8(x uint8 (..., 3), norm='glae'|'imagenet'|'none', ctx=None) -> float32: the "
       "input normalisation the Loader and the model apply to pixels"),
    OP(fill, "fill(n, value, ctx=None) -> (n,) float32 filled with value"),
    OP(flatten_nchw_forward, "flatten_nchw_forward(x (N, P, C), ctx=None) -> (N, C, P)"),
    OP(flatten_nchw_backward, "flatten_nchw_backward(dy (N, C, P), ctx=None) -> (N, P, C)"),
    OP(avg2_forward, "avg2_forward(a, b, ctx=None) -> (a + b) / 2"),
    {NULL, NULL, 0, NULL},
};
