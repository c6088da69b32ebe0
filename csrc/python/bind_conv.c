/* Bindings for the conv family: conv2d forward/backward, and a bare sgemm used by
 * bench/conv.py to measure the BLAS rate the convolutions are compared with. */
#include "python/job.h" /* Python.h first */
#include <limits.h>
#include <string.h>

#include "core/blas.h"

static int as_int(PyObject *o, const char *name, int *v) {
    int overflow = 0;
    long x = PyLong_AsLongAndOverflow(o, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (overflow || x < INT_MIN || x > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "conv2d: %s = %S is out of the int range", name, o);
        return -1;
    }
    *v = (int)x;
    return 0;
}

/* An int or a (h, w) pair of ints -> *h, *w. Values are checked by the C shape init. */
static int parse_pair(PyObject *o, const char *name, int *h, int *w) {
    if (PyLong_Check(o)) {
        if (as_int(o, name, h)) return -1;
        *w = *h;
        return 0;
    }
    if (PyTuple_Check(o) && PyTuple_GET_SIZE(o) == 2 && PyLong_Check(PyTuple_GET_ITEM(o, 0)) &&
        PyLong_Check(PyTuple_GET_ITEM(o, 1))) {
        return as_int(PyTuple_GET_ITEM(o, 0), name, h) || as_int(PyTuple_GET_ITEM(o, 1), name, w) ? -1 : 0;
    }
    PyErr_Format(PyExc_TypeError, "%s must be an int or a tuple of two ints, got %R", name, o);
    return -1;
}

/* Checks x (N, H, W, Cin) and w (Cout, KH, KW, Cin), parses stride/pad, fills *s. */
static int conv_setup(PyObject *xo, PyObject *wo, PyObject *so, PyObject *po,
                      PyArrayObject **x, PyArrayObject **w, glae_conv2d_shape *s) {
    int sh, sw, ph, pw;
    *x = glae_arg_f32(xo, "x", 4);
    if (!*x || glae_check_fits_int(*x, "x")) return -1;
    *w = glae_arg_f32(wo, "w", 4);
    if (!*w || glae_check_fits_int(*w, "w")) return -1;
    if (PyArray_DIM(*x, 3) != PyArray_DIM(*w, 3)) {
        PyErr_Format(PyExc_ValueError,
                     "conv2d: x has %zd input channels (axis 3) but w (Cout, KH, KW, Cin) "
                     "expects %zd",
                     (Py_ssize_t)PyArray_DIM(*x, 3), (Py_ssize_t)PyArray_DIM(*w, 3));
        return -1;
    }
    if (parse_pair(so, "stride", &sh, &sw) || parse_pair(po, "pad", &ph, &pw)) return -1;
    if (sh < 1 || sw < 1) {
        PyErr_Format(PyExc_ValueError, "stride must be >= 1, got (%d, %d)", sh, sw);
        return -1;
    }
    if (ph < 0 || pw < 0) {
        PyErr_Format(PyExc_ValueError, "pad must be >= 0, got (%d, %d)", ph, pw);
        return -1;
    }
    npy_intp *xd = PyArray_DIMS(*x), *wd = PyArray_DIMS(*w);
    if (glae_conv2d_shape_init(s, (int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], (int)wd[0],
                               (int)wd[1], (int)wd[2], sh, sw, ph, pw)) {
        glae_raise(GLAE_ERR_VALUE);
        return -1;
    }
    return 0;
}

/* Checks x and w, parses stride/pad, fills *s: conv_setup or dwconv_setup (below). */
typedef int (*setup_fn)(PyObject *, PyObject *, PyObject *, PyObject *, PyArrayObject **,
                        PyArrayObject **, glae_conv2d_shape *);
static int dwconv_setup(PyObject *xo, PyObject *wo, PyObject *so, PyObject *po,
                        PyArrayObject **x, PyArrayObject **w, glae_conv2d_shape *s);

/* the forward of a dense (depthwise = 0) or depthwise convolution: the two ops share a
 * signature, so one binding body serves both */
static PyObject *conv_forward(PyObject *args, PyObject *kw, const char *fmt, int depthwise) {
    static char *kwlist[] = {"x", "w", "b", "stride", "pad", "ctx", NULL};
    PyObject *xo, *wo, *bo = Py_None, *so = NULL, *po = NULL, *ctxo = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwlist, &xo, &wo, &bo, &so, &po, &ctxo))
        return NULL;
    PyArrayObject *x, *w;
    glae_conv2d_shape s;
    setup_fn setup = depthwise ? dwconv_setup : conv_setup;
    if (setup(xo, wo, so, po, &x, &w, &s)) return NULL;
    ARG_F32_OPT(b, bo, "b", 1);
    if (b) ARG_DIM(b, "b", 0, s.c_out);
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp dims[4] = {s.n, s.oh, s.ow, s.c_out};
    float *dx = glae_job_in(&J, x), *dw = glae_job_in(&J, w), *db = glae_job_in(&J, b);
    float *y = glae_job_out(&J, 4, dims, NPY_FLOAT32, 0);
    const glae_backend *ops = J.ctx->ops;
    GLAE_JOB_RUN(J, (depthwise ? ops->dwconv2d_forward : ops->conv2d_forward)(J.ctx, y, dx, dw, db, &s));
}

/* conv2d_forward(x (N,H,W,Cin), w (Cout,KH,KW,Cin), b (Cout) or None, stride, pad, ctx=None)
 *   -> y (N, OH, OW, Cout) */
static PyObject *py_conv2d_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return conv_forward(args, kw, "OOOOO|O:conv2d_forward", 0);
}

/* conv2d_backward(dy, x, w, stride, pad, has_bias, need_dx=True, dw_accumulate=None,
 *                 db_accumulate=None, ctx=None) -> (dx or None, dw, db or None)
 * dw/db are fresh zero arrays into which the kernel accumulates, unless dw_accumulate /
 * db_accumulate are given: then the kernel adds into those arrays (in place) and they
 * are returned, which exposes the += contract of the parameter gradients. */
static PyObject *py_conv2d_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"dy",       "x",       "w",             "stride",        "pad",
                             "has_bias", "need_dx", "dw_accumulate", "db_accumulate", "ctx",
                             NULL};
    PyObject *dyo, *xo, *wo, *so, *po, *dwo = Py_None, *dbo = Py_None, *ctxo = NULL;
    int has_bias, need_dx = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOp|pOOO:conv2d_backward", kwlist, &dyo, &xo,
                                     &wo, &so, &po, &has_bias, &need_dx, &dwo, &dbo, &ctxo))
        return NULL;
    PyArrayObject *x, *w;
    glae_conv2d_shape s;
    if (conv_setup(xo, wo, so, po, &x, &w, &s)) return NULL;
    ARG_F32(dy, dyo, "dy", 4);
    npy_intp od[4] = {s.n, s.oh, s.ow, s.c_out};
    for (int i = 0; i < 4; i++) ARG_DIM(dy, "dy", i, od[i]);
    int ok;
    PyArrayObject *dwa = glae_arg_array_opt(dwo, "dw_accumulate", NPY_FLOAT32, 4, &ok);
    if (!ok || (dwa && glae_check_same_shape(dwa, "dw_accumulate", w, "w")) ||
        glae_check_writeable(dwa, "dw_accumulate"))
        return NULL;
    PyArrayObject *dba = glae_arg_array_opt(dbo, "db_accumulate", NPY_FLOAT32, 1, &ok);
    if (!ok || (dba && glae_check_dim(dba, "db_accumulate", 0, s.c_out)) ||
        glae_check_writeable(dba, "db_accumulate"))
        return NULL;
    if ((dwa && (PyArray_DATA(dwa) == PyArray_DATA(w) || PyArray_DATA(dwa) == PyArray_DATA(x))) ||
        (dba && (PyArray_DATA(dba) == PyArray_DATA(w) || PyArray_DATA(dba) == PyArray_DATA(dy)))) {
        PyErr_SetString(PyExc_ValueError, "dw_accumulate/db_accumulate must not alias x, w or dy");
        return NULL;
    }
    if (dba && !has_bias) {
        PyErr_SetString(PyExc_ValueError, "db_accumulate given but has_bias is False");
        return NULL;
    }
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp bd[1] = {s.c_out};
    float *g = glae_job_in(&J, dy), *dx = glae_job_in(&J, x), *dw = glae_job_in(&J, w);
    float *gx = NULL, *gw, *gb = NULL;
    if (need_dx) gx = glae_job_out(&J, 4, PyArray_DIMS(x), NPY_FLOAT32, 0);
    else glae_job_none(&J);
    gw = dwa ? glae_job_acc(&J, dwa) : glae_job_out(&J, 4, PyArray_DIMS(w), NPY_FLOAT32, 1);
    if (!has_bias) glae_job_none(&J);
    else gb = dba ? glae_job_acc(&J, dba) : glae_job_out(&J, 1, bd, NPY_FLOAT32, 1);
    GLAE_JOB_RUN(J, J.ctx->ops->conv2d_backward(J.ctx, gx, gw, gb, g, dx, dw, &s));
}

/* Checks x (N, H, W, C) and a depthwise w (C, KH, KW, 1), parses stride/pad, fills *s. */
static int dwconv_setup(PyObject *xo, PyObject *wo, PyObject *so, PyObject *po,
                        PyArrayObject **x, PyArrayObject **w, glae_conv2d_shape *s) {
    int sh, sw, ph, pw;
    *x = glae_arg_f32(xo, "x", 4);
    if (!*x || glae_check_fits_int(*x, "x")) return -1;
    *w = glae_arg_f32(wo, "w", 4);
    if (!*w || glae_check_fits_int(*w, "w")) return -1;
    if (PyArray_DIM(*w, 0) != PyArray_DIM(*x, 3) || PyArray_DIM(*w, 3) != 1) {
        PyErr_Format(PyExc_ValueError,
                     "dwconv2d: w must be (C, KH, KW, 1) with C = %zd, the channels of x; got "
                     "(%zd, %zd, %zd, %zd)",
                     (Py_ssize_t)PyArray_DIM(*x, 3), (Py_ssize_t)PyArray_DIM(*w, 0),
                     (Py_ssize_t)PyArray_DIM(*w, 1), (Py_ssize_t)PyArray_DIM(*w, 2),
                     (Py_ssize_t)PyArray_DIM(*w, 3));
        return -1;
    }
    if (parse_pair(so, "stride", &sh, &sw) || parse_pair(po, "pad", &ph, &pw)) return -1;
    npy_intp *xd = PyArray_DIMS(*x), *wd = PyArray_DIMS(*w);
    int st = glae_conv2d_shape_init(s, (int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], (int)xd[3],
                                    (int)wd[1], (int)wd[2], sh, sw, ph, pw);
    if (st) {
        glae_raise(st);
        return -1;
    }
    return 0;
}

/* dwconv2d_forward(x (N,H,W,C), w (C,KH,KW,1), b (C) or None, stride, pad, ctx=None)
 *   -> y (N, OH, OW, C) */
static PyObject *py_dwconv2d_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return conv_forward(args, kw, "OOOOO|O:dwconv2d_forward", 1);
}

/* dwconv2d_backward(dy, x, w, stride, pad, has_bias, need_dx=True, ctx=None)
 *   -> (dx or None, dw, db or None); dw/db start at zero */
static PyObject *py_dwconv2d_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"dy", "x", "w", "stride", "pad", "has_bias", "need_dx", "ctx", NULL};
    PyObject *dyo, *xo, *wo, *so, *po, *ctxo = NULL;
    int has_bias, need_dx = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOp|pO:dwconv2d_backward", kwlist, &dyo, &xo,
                                     &wo, &so, &po, &has_bias, &need_dx, &ctxo))
        return NULL;
    PyArrayObject *x, *w;
    glae_conv2d_shape s;
    if (dwconv_setup(xo, wo, so, po, &x, &w, &s)) return NULL;
    ARG_F32(dy, dyo, "dy", 4);
    npy_intp od[4] = {s.n, s.oh, s.ow, s.c_out};
    for (int i = 0; i < 4; i++) ARG_DIM(dy, "dy", i, od[i]);
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp bd[1] = {s.c_out};
    float *g = glae_job_in(&J, dy), *dx = glae_job_in(&J, x), *dw = glae_job_in(&J, w);
    float *gx = NULL, *gb = NULL;
    if (need_dx) gx = glae_job_out(&J, 4, PyArray_DIMS(x), NPY_FLOAT32, 0);
    else glae_job_none(&J);
    float *gw = glae_job_out(&J, 4, PyArray_DIMS(w), NPY_FLOAT32, 1);
    if (has_bias) gb = glae_job_out(&J, 1, bd, NPY_FLOAT32, 1);
    else glae_job_none(&J);
    GLAE_JOB_RUN(J, J.ctx->ops->dwconv2d_backward(J.ctx, gx, gw, gb, g, dx, dw, &s));
}

/* sgemm(a, b, trans_a=False, trans_b=False) -> op(a) @ op(b) through glae_sgemm
 * (OpenBLAS), for benchmarks; op(x) = x.T when trans_x (no copy: BLAS reads x transposed) */
static PyObject *py_sgemm(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"a", "b", "trans_a", "trans_b", NULL};
    PyObject *ao, *bo;
    int ta = 0, tb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|pp:sgemm", kwlist, &ao, &bo, &ta, &tb))
        return NULL;
    PyArrayObject *a = glae_arg_f32(ao, "a", 2);
    if (!a || glae_check_fits_int(a, "a")) return NULL;
    PyArrayObject *b = glae_arg_f32(bo, "b", 2);
    if (!b || glae_check_fits_int(b, "b")) return NULL;
    int m = (int)PyArray_DIM(a, ta ? 1 : 0), k = (int)PyArray_DIM(a, ta ? 0 : 1);
    int n = (int)PyArray_DIM(b, tb ? 0 : 1);
    if (glae_check_dim(b, "b", tb ? 1 : 0, k)) return NULL;
    npy_intp dims[2] = {m, n};
    PyArrayObject *c = glae_new_array(2, dims, NPY_FLOAT32);
    if (!c) return NULL;
    if ((npy_intp)m * n == 0) return (PyObject *)c;
    if (k == 0) {
        memset(PyArray_DATA(c), 0, (size_t)PyArray_NBYTES(c));
        return (PyObject *)c;
    }
    const float *pa = PyArray_DATA(a), *pb = PyArray_DATA(b);
    float *pc = PyArray_DATA(c);
    int lda = (int)PyArray_DIM(a, 1), ldb = (int)PyArray_DIM(b, 1);
    glae_apply_num_threads();
    Py_BEGIN_ALLOW_THREADS;
    glae_sgemm(ta, tb, m, n, k, 1.0f, pa, lda, pb, ldb, 0.0f, pc, n);
    Py_END_ALLOW_THREADS;
    return (PyObject *)c;
}

/* conv2d_bn_act_forward(x, w, b, gamma, beta, running_mean, running_var, eps, stride, pad,
 *                       residual=None, relu=True, ctx=None) -> (y, save_mean, save_invstd):
 * inference conv + eval batch norm (+ residual) (+ ReLU), ops/fused.h */
static PyObject *py_conv2d_bn_act_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "w", "b", "gamma", "beta", "running_mean", "running_var", "eps",
                             "stride", "pad", "residual", "relu", "ctx", NULL};
    PyObject *xo, *wo, *bo, *go, *beo, *rmo, *rvo, *so, *po, *ro = Py_None, *ctxo = NULL;
    float eps;
    int relu = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOfOO|OpO:conv2d_bn_act_forward", kwlist,
                                     &xo, &wo, &bo, &go, &beo, &rmo, &rvo, &eps, &so, &po, &ro,
                                     &relu, &ctxo))
        return NULL;
    PyArrayObject *x, *w;
    glae_conv2d_shape s;
    if (conv_setup(xo, wo, so, po, &x, &w, &s)) return NULL;
    ARG_F32_OPT(b, bo, "b", 1);
    if (b) ARG_DIM(b, "b", 0, s.c_out);
    ARG_F32(g, go, "gamma", 1);
    ARG_DIM(g, "gamma", 0, s.c_out);
    ARG_F32(be, beo, "beta", 1);
    ARG_DIM(be, "beta", 0, s.c_out);
    ARG_F32(rm, rmo, "running_mean", 1);
    ARG_DIM(rm, "running_mean", 0, s.c_out);
    ARG_F32(rv, rvo, "running_var", 1);
    ARG_DIM(rv, "running_var", 0, s.c_out);
    if (!(eps > 0.0f)) {
        PyErr_Format(PyExc_ValueError, "eps must be > 0, got %g", (double)eps);
        return NULL;
    }
    ARG_F32_OPT(r, ro, "residual", 4);
    npy_intp dims[4] = {s.n, s.oh, s.ow, s.c_out}, cd[1] = {s.c_out};
    if (r)
        for (int i = 0; i < 4; i++) ARG_DIM(r, "residual", i, dims[i]);
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    float *dx = glae_job_in(&J, x), *dw = glae_job_in(&J, w), *db = glae_job_in(&J, b);
    float *dg = glae_job_in(&J, g), *dbe = glae_job_in(&J, be), *drm = glae_job_in(&J, rm);
    float *drv = glae_job_in(&J, rv), *dr = glae_job_in(&J, r);
    float *y = glae_job_out(&J, 4, dims, NPY_FLOAT32, 0);
    float *sm = glae_job_out(&J, 1, cd, NPY_FLOAT32, 0), *si = glae_job_out(&J, 1, cd, NPY_FLOAT32, 0);
    GLAE_JOB_RUN(J, J.ctx->ops->conv2d_bn_act_forward(J.ctx, y, sm, si, dx, dr, dw, db, dg, dbe,
                                                      drm, drv, eps, relu, &s));
}

PyMethodDef glae_conv_methods[] = {
    {"conv2d_bn_act_forward", (PyCFunction)(void (*)(void))py_conv2d_bn_act_forward,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_bn_act_forward(x, w, b, gamma, beta, running_mean, running_var, eps, stride, pad,\n"
     "                      residual=None, relu=True, ctx=None) -> (y, save_mean, save_invstd)\n"
     "inference: relu(BN_eval(conv(x, w) + b) + residual) (ops/fused.h)"},
    {"conv2d_forward", (PyCFunction)(void (*)(void))py_conv2d_forward,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_forward(x, w, b, stride, pad, ctx=None) -> y\n"
     "x (N, H, W, Cin), w (Cout, KH, KW, Cin), b (Cout,) or None; stride/pad: int or (h, w)."},
    {"conv2d_backward", (PyCFunction)(void (*)(void))py_conv2d_backward,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward(dy, x, w, stride, pad, has_bias, need_dx=True, dw_accumulate=None,\n"
     "                db_accumulate=None, ctx=None) -> (dx or None, dw, db or None)\n"
     "dw/db start from zero, or are the given *_accumulate arrays, added to in place."},
    {"dwconv2d_forward", (PyCFunction)(void (*)(void))py_dwconv2d_forward,
     METH_VARARGS | METH_KEYWORDS,
     "dwconv2d_forward(x, w, b, stride, pad, ctx=None) -> y: depthwise convolution\n"
     "x (N, H, W, C), w (C, KH, KW, 1) (torchvision's (C, 1, KH, KW), singleton last), b (C,) or None."},
    {"dwconv2d_backward", (PyCFunction)(void (*)(void))py_dwconv2d_backward,
     METH_VARARGS | METH_KEYWORDS,
     "dwconv2d_backward(dy, x, w, stride, pad, has_bias, need_dx=True, ctx=None)\n"
     "-> (dx or None, dw, db or None); dw/db accumulated from zero."},
    {"sgemm", (PyCFunction)(void (*)(void))py_sgemm, METH_VARARGS | METH_KEYWORDS,
     "sgemm(a, b, trans_a=False, trans_b=False) -> op(a) @ op(b) via glae_sgemm (float32, 2-D)"},
    {NULL, NULL, 0, NULL},
};
