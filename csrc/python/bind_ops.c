/* Bindings for the element-wise, pooling, linear, shuffle and softmax layers.
 * Pattern for every binding: strict argument checks (glae_arg_*), fresh outputs
 * (glae_new_array: poisoned in tests), the kernel called without the GIL, status ->
 * exception. Borrowed references from glae_arg_* need no DECREF. */
#include "python/py.h"  /* Python.h first */
#include <limits.h>

#include "ops/ops.h"

/* relu_forward(x float32[...]) -> y */
static PyObject *py_relu_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O:relu_forward", &xo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x) return NULL;
    PyArrayObject *y = glae_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32);
    if (!y) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_relu_forward(&ctx, PyArray_DATA(y), PyArray_DATA(x), PyArray_SIZE(x)));
    if (st) {
        Py_DECREF(y);
        return glae_raise(st);
    }
    return (PyObject *)y;
}

/* relu_backward(dy, y) -> dx */
static PyObject *py_relu_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *yo;
    if (!PyArg_ParseTuple(args, "OO:relu_backward", &dyo, &yo)) return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", -1);
    PyArrayObject *y = dy ? glae_arg_f32(yo, "y", -1) : NULL;
    if (!y || glae_check_same_shape(dy, "dy", y, "y")) return NULL;
    PyArrayObject *dx = glae_new_array(PyArray_NDIM(y), PyArray_DIMS(y), NPY_FLOAT32);
    if (!dx) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_relu_backward(&ctx, PyArray_DATA(dx), PyArray_DATA(dy), PyArray_DATA(y),
                                      PyArray_SIZE(y)));
    if (st) {
        Py_DECREF(dx);
        return glae_raise(st);
    }
    return (PyObject *)dx;
}

/* add_forward(a, b) -> a + b */
static PyObject *py_add_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ao, *bo;
    if (!PyArg_ParseTuple(args, "OO:add_forward", &ao, &bo)) return NULL;
    PyArrayObject *a = glae_arg_f32(ao, "a", -1);
    PyArrayObject *b = a ? glae_arg_f32(bo, "b", -1) : NULL;
    if (!b || glae_check_same_shape(a, "a", b, "b")) return NULL;
    PyArrayObject *y = glae_new_array(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32);
    if (!y) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_add_forward(&ctx, PyArray_DATA(y), PyArray_DATA(a), PyArray_DATA(b),
                                    PyArray_SIZE(a)));
    if (st) {
        Py_DECREF(y);
        return glae_raise(st);
    }
    return (PyObject *)y;
}

/* add_backward(dy) -> (da, db): the residual add passes dy to both inputs (the CPU twin
 * of cuda_add_backward(ctx, dy)). */
static PyObject *py_add_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo;
    if (!PyArg_ParseTuple(args, "O:add_backward", &dyo)) return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", -1);
    if (!dy) return NULL;
    PyArrayObject *outs[2] = {glae_new_array(PyArray_NDIM(dy), PyArray_DIMS(dy), NPY_FLOAT32),
                              glae_new_array(PyArray_NDIM(dy), PyArray_DIMS(dy), NPY_FLOAT32)};
    if (!outs[0] || !outs[1]) {
        Py_XDECREF(outs[0]);
        Py_XDECREF(outs[1]);
        return NULL;
    }
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_add_backward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(outs[1]),
                                     PyArray_DATA(dy), PyArray_SIZE(dy)));
    return glae_return_arrays(st, 2, outs);
}

/* ---- helpers for the layers below ------------------------------------------------- */

/* ValueError unless every dimension of a fits the C kernels' int sizes */
static int dims_fit_int(PyArrayObject *a, const char *name) {
    for (int i = 0; i < PyArray_NDIM(a); i++)
        if (PyArray_DIM(a, i) > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "%s: dimension %d is too large (%zd)", name, i,
                         (Py_ssize_t)PyArray_DIM(a, i));
            return -1;
        }
    return 0;
}

/* ValueError unless a has at least `lo` dimensions */
static int check_min_ndim(PyArrayObject *a, const char *name, int lo) {
    if (PyArray_NDIM(a) < lo) {
        PyErr_Format(PyExc_ValueError, "%s must have at least %d dimension(s), got %d", name, lo,
                     PyArray_NDIM(a));
        return -1;
    }
    return 0;
}

/* product of all dimensions but the last (the "rows" of a (rows, C) view) */
static int64_t leading_rows(PyArrayObject *a) {
    int64_t r = 1;
    for (int i = 0; i < PyArray_NDIM(a) - 1; i++) r *= PyArray_DIM(a, i);
    return r;
}

static int last_dim(PyArrayObject *a) { return (int)PyArray_DIM(a, PyArray_NDIM(a) - 1); }

/* a tuple of new references, or NULL (all released) on a failed status */
static void release(int n, PyArrayObject **outs) {
    for (int i = 0; i < n; i++) Py_XDECREF(outs[i]);
}

/* ---- batch norm --------------------------------------------------------------------- */

/* batchnorm_forward(x (..., C), gamma (C), beta (C), running_mean (C) | None,
 *                   running_var (C) | None, momentum, eps, training) -> (y, save_mean, save_invstd)
 * running_mean / running_var are updated IN PLACE in training mode. */
static PyObject *py_batchnorm_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *go, *bo, *rmo, *rvo;
    float momentum, eps;
    int training;
    if (!PyArg_ParseTuple(args, "OOOOOffp:batchnorm_forward", &xo, &go, &bo, &rmo, &rvo,
                          &momentum, &eps, &training))
        return NULL;
    int ok1, ok2;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x || check_min_ndim(x, "x", 2) || dims_fit_int(x, "x")) return NULL;
    const int c = last_dim(x);
    PyArrayObject *g = glae_arg_f32(go, "gamma", 1);
    if (!g || glae_check_dim(g, "gamma", 0, c)) return NULL;
    PyArrayObject *b = glae_arg_f32(bo, "beta", 1);
    if (!b || glae_check_dim(b, "beta", 0, c)) return NULL;
    PyArrayObject *rm = glae_arg_array_opt(rmo, "running_mean", NPY_FLOAT32, 1, &ok1);
    if (!ok1 || (rm && glae_check_dim(rm, "running_mean", 0, c))) return NULL;
    PyArrayObject *rv = glae_arg_array_opt(rvo, "running_var", NPY_FLOAT32, 1, &ok2);
    if (!ok2 || (rv && glae_check_dim(rv, "running_var", 0, c))) return NULL;
    if (glae_check_writeable(rm, "running_mean") || glae_check_writeable(rv, "running_var"))
        return NULL;
    if (!training && (!rm || !rv)) {
        PyErr_SetString(PyExc_ValueError,
                        "running_mean and running_var are required in eval mode (training=False)");
        return NULL;
    }
    npy_intp cd[1] = {c};
    PyArrayObject *outs[3] = {glae_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32),
                              glae_new_array(1, cd, NPY_FLOAT32), glae_new_array(1, cd, NPY_FLOAT32)};
    if (!outs[0] || !outs[1] || !outs[2]) {
        release(3, outs);
        return NULL;
    }
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_batchnorm_forward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(outs[1]),
                                          PyArray_DATA(outs[2]), PyArray_DATA(x), PyArray_DATA(g),
                                          PyArray_DATA(b), rm ? PyArray_DATA(rm) : NULL,
                                          rv ? PyArray_DATA(rv) : NULL, leading_rows(x), c,
                                          momentum, eps, training));
    return glae_return_arrays(st, 3, outs);
}

/* batchnorm_backward(dy, x, save_mean, save_invstd, gamma, training) -> (dx, dgamma, dbeta) */
static PyObject *py_batchnorm_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *xo, *mo, *io, *go;
    int training;
    if (!PyArg_ParseTuple(args, "OOOOOp:batchnorm_backward", &dyo, &xo, &mo, &io, &go, &training))
        return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", -1);
    if (!dy) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x || check_min_ndim(x, "x", 2) || dims_fit_int(x, "x") ||
        glae_check_same_shape(dy, "dy", x, "x"))
        return NULL;
    const int c = last_dim(x);
    PyArrayObject *m = glae_arg_f32(mo, "save_mean", 1);
    if (!m || glae_check_dim(m, "save_mean", 0, c)) return NULL;
    PyArrayObject *is = glae_arg_f32(io, "save_invstd", 1);
    if (!is || glae_check_dim(is, "save_invstd", 0, c)) return NULL;
    PyArrayObject *g = glae_arg_f32(go, "gamma", 1);
    if (!g || glae_check_dim(g, "gamma", 0, c)) return NULL;
    npy_intp cd[1] = {c};
    PyArrayObject *outs[3] = {glae_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32),
                              glae_zeros(1, cd, NPY_FLOAT32), glae_zeros(1, cd, NPY_FLOAT32)};
    if (!outs[0] || !outs[1] || !outs[2]) {
        release(3, outs);
        return NULL;
    }
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_batchnorm_backward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(outs[1]),
                                           PyArray_DATA(outs[2]), PyArray_DATA(dy), PyArray_DATA(x),
                                           PyArray_DATA(m), PyArray_DATA(is), PyArray_DATA(g),
                                           leading_rows(x), c, training));
    return glae_return_arrays(st, 3, outs);
}

/* ---- pooling ------------------------------------------------------------------------ */

/* maxpool2d_forward(x (N, H, W, C), k, stride, pad, ceil_mode=False) -> (y, argmax int32) */
static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    int k, stride, pad, ceil_mode = 0;
    if (!PyArg_ParseTuple(args, "Oiii|p:maxpool2d_forward", &xo, &k, &stride, &pad, &ceil_mode))
        return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", 4);
    if (!x || dims_fit_int(x, "x")) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)d[0], (int)d[1], (int)d[2], (int)d[3], k, stride, pad,
                                  ceil_mode);
    if (st) return glae_raise(st);
    npy_intp od[4] = {s.n, s.oh, s.ow, s.c};
    PyArrayObject *outs[2] = {glae_new_array(4, od, NPY_FLOAT32), glae_new_array(4, od, NPY_INT32)};
    if (!outs[0] || !outs[1]) {
        release(2, outs);
        return NULL;
    }
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_maxpool2d_forward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(outs[1]),
                                          PyArray_DATA(x), &s));
    return glae_return_arrays(st, 2, outs);
}

/* maxpool2d_backward(dy (N, OH, OW, C), argmax (N, OH, OW, C) int32, h, w, k, stride, pad,
 *                    ceil_mode=False) -> dx (N, H, W, C) */
static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *ao;
    int h, w, k, stride, pad, ceil_mode = 0;
    if (!PyArg_ParseTuple(args, "OOiiiii|p:maxpool2d_backward", &dyo, &ao, &h, &w, &k, &stride,
                          &pad, &ceil_mode))
        return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", 4);
    if (!dy || dims_fit_int(dy, "dy")) return NULL;
    PyArrayObject *a = glae_arg_array(ao, "argmax", NPY_INT32, 4);
    if (!a || glae_check_same_shape(dy, "dy", a, "argmax")) return NULL;
    if (glae_check_min(h, "h", 0) || glae_check_min(w, "w", 0)) return NULL;
    npy_intp *d = PyArray_DIMS(dy);
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)d[0], h, w, (int)d[3], k, stride, pad, ceil_mode);
    if (st) return glae_raise(st);
    if (glae_check_dim(dy, "dy", 1, s.oh) || glae_check_dim(dy, "dy", 2, s.ow)) return NULL;
    npy_intp xd[4] = {s.n, h, w, s.c};
    PyArrayObject *outs[1] = {glae_new_array(4, xd, NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_maxpool2d_backward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(dy),
                                           PyArray_DATA(a), &s));
    return glae_return_arrays(st, 1, outs);
}

/* avgpool_forward(x (N, H, W, C)) -> (N, C) */
static PyObject *py_avgpool_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O:avgpool_forward", &xo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", 4);
    if (!x || dims_fit_int(x, "x")) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    if ((int64_t)d[1] * d[2] > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "x: H*W is too large");
        return NULL;
    }
    if (d[1] * d[2] == 0 && d[0] * d[3] > 0) {
        PyErr_SetString(PyExc_ValueError, "x: cannot average over H*W = 0 positions");
        return NULL;
    }
    npy_intp od[2] = {d[0], d[3]};
    PyArrayObject *outs[1] = {glae_new_array(2, od, NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_avgpool_forward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(x), (int)d[0],
                                        (int)(d[1] * d[2]), (int)d[3]));
    return glae_return_arrays(st, 1, outs);
}

/* avgpool_backward(dy (N, C), h, w) -> dx (N, H, W, C) */
static PyObject *py_avgpool_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo;
    int h, w;
    if (!PyArg_ParseTuple(args, "Oii:avgpool_backward", &dyo, &h, &w)) return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", 2);
    if (!dy || dims_fit_int(dy, "dy")) return NULL;
    if (glae_check_min(h, "h", 1) || glae_check_min(w, "w", 1)) return NULL;
    if ((int64_t)h * w > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "h*w is too large");
        return NULL;
    }
    npy_intp xd[4] = {PyArray_DIM(dy, 0), h, w, PyArray_DIM(dy, 1)};
    PyArrayObject *outs[1] = {glae_new_array(4, xd, NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_avgpool_backward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(dy),
                                         (int)xd[0], h * w, (int)xd[3]));
    return glae_return_arrays(st, 1, outs);
}

/* ---- linear ------------------------------------------------------------------------- */

/* linear_forward(x (N, IN), w (OUT, IN), b (OUT) | None) -> (N, OUT) */
static PyObject *py_linear_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *bo;
    if (!PyArg_ParseTuple(args, "OOO:linear_forward", &xo, &wo, &bo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", 2);
    if (!x || dims_fit_int(x, "x")) return NULL;
    PyArrayObject *w = glae_arg_f32(wo, "w", 2);
    if (!w || dims_fit_int(w, "w") || glae_check_dim(w, "w", 1, PyArray_DIM(x, 1))) return NULL;
    int ok;
    PyArrayObject *b = glae_arg_array_opt(bo, "b", NPY_FLOAT32, 1, &ok);
    if (!ok || (b && glae_check_dim(b, "b", 0, PyArray_DIM(w, 0)))) return NULL;
    npy_intp od[2] = {PyArray_DIM(x, 0), PyArray_DIM(w, 0)};
    PyArrayObject *outs[1] = {glae_new_array(2, od, NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_linear_forward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(x), PyArray_DATA(w),
                                       b ? PyArray_DATA(b) : NULL, (int)od[0],
                                       (int)PyArray_DIM(x, 1), (int)od[1]));
    return glae_return_arrays(st, 1, outs);
}

/* linear_backward(dy (N, OUT), x (N, IN), w (OUT, IN), has_bias) -> (dx, dw, db | None) */
static PyObject *py_linear_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *xo, *wo;
    int has_bias;
    if (!PyArg_ParseTuple(args, "OOOp:linear_backward", &dyo, &xo, &wo, &has_bias)) return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", 2);
    if (!dy || dims_fit_int(dy, "dy")) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", 2);
    if (!x || dims_fit_int(x, "x") || glae_check_dim(x, "x", 0, PyArray_DIM(dy, 0))) return NULL;
    PyArrayObject *w = glae_arg_f32(wo, "w", 2);
    if (!w || glae_check_dim(w, "w", 0, PyArray_DIM(dy, 1)) ||
        glae_check_dim(w, "w", 1, PyArray_DIM(x, 1)))
        return NULL;
    npy_intp bd[1] = {PyArray_DIM(w, 0)};
    PyArrayObject *outs[3] = {glae_new_array(2, PyArray_DIMS(x), NPY_FLOAT32),
                              glae_zeros(2, PyArray_DIMS(w), NPY_FLOAT32),
                              has_bias ? glae_zeros(1, bd, NPY_FLOAT32) : NULL};
    if (!outs[0] || !outs[1] || (has_bias && !outs[2])) {
        release(3, outs);
        return NULL;
    }
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_linear_backward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(outs[1]),
                                        outs[2] ? PyArray_DATA(outs[2]) : NULL, PyArray_DATA(dy),
                                        PyArray_DATA(x), PyArray_DATA(w), (int)PyArray_DIM(x, 0),
                                        (int)PyArray_DIM(x, 1), (int)PyArray_DIM(w, 0)));
    return glae_return_arrays(st, 3, outs);
}

/* ---- pixel shuffle ------------------------------------------------------------------ */

/* pixel_shuffle_forward(x (N, H, W, C*r*r), r) -> (N, H*r, W*r, C) */
static PyObject *py_pixel_shuffle_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    int r;
    if (!PyArg_ParseTuple(args, "Oi:pixel_shuffle_forward", &xo, &r)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", 4);
    if (!x || dims_fit_int(x, "x") || glae_check_min(r, "r", 1)) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    if (d[3] % ((npy_intp)r * r) != 0) {
        PyErr_Format(PyExc_ValueError, "x: channels %zd not divisible by r*r = %lld",
                     (Py_ssize_t)d[3], (long long)r * r);
        return NULL;
    }
    if ((int64_t)d[1] * r > INT_MAX || (int64_t)d[2] * r > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "x: H*r or W*r is too large");
        return NULL;
    }
    npy_intp od[4] = {d[0], d[1] * r, d[2] * r, d[3] / ((npy_intp)r * r)};
    PyArrayObject *outs[1] = {glae_new_array(4, od, NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_pixel_shuffle_forward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(x),
                                              (int)d[0], (int)d[1], (int)d[2], (int)d[3], r));
    return glae_return_arrays(st, 1, outs);
}

/* pixel_shuffle_backward(dy (N, H*r, W*r, C), r) -> dx (N, H, W, C*r*r) */
static PyObject *py_pixel_shuffle_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo;
    int r;
    if (!PyArg_ParseTuple(args, "Oi:pixel_shuffle_backward", &dyo, &r)) return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", 4);
    if (!dy || dims_fit_int(dy, "dy") || glae_check_min(r, "r", 1)) return NULL;
    npy_intp *d = PyArray_DIMS(dy);
    if (d[1] % r != 0 || d[2] % r != 0) {
        PyErr_Format(PyExc_ValueError, "dy: spatial size %zdx%zd not divisible by r = %d",
                     (Py_ssize_t)d[1], (Py_ssize_t)d[2], r);
        return NULL;
    }
    if ((int64_t)d[3] * r * r > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "dy: C*r*r is too large");
        return NULL;
    }
    npy_intp xd[4] = {d[0], d[1] / r, d[2] / r, d[3] * r * r};
    PyArrayObject *outs[1] = {glae_new_array(4, xd, NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_pixel_shuffle_backward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(dy),
                                               (int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], r));
    return glae_return_arrays(st, 1, outs);
}

/* ---- softmax / log-softmax over the last axis --------------------------------------- */

typedef int (*rowwise_fwd)(glae_ctx *, float *, const float *, int64_t, int);
typedef int (*rowwise_bwd)(glae_ctx *, float *, const float *, const float *, int64_t, int);

static PyObject *softmax_fwd(PyObject *args, const char *fmt, rowwise_fwd fn) {
    PyObject *xo;
    if (!PyArg_ParseTuple(args, fmt, &xo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x || check_min_ndim(x, "x", 1) || dims_fit_int(x, "x")) return NULL;
    PyArrayObject *outs[1] = {glae_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, fn(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(x), leading_rows(x), last_dim(x)));
    return glae_return_arrays(st, 1, outs);
}

static PyObject *softmax_bwd(PyObject *args, const char *fmt, rowwise_bwd fn) {
    PyObject *dyo, *yo;
    if (!PyArg_ParseTuple(args, fmt, &dyo, &yo)) return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", -1);
    if (!dy) return NULL;
    PyArrayObject *y = glae_arg_f32(yo, "y", -1);
    if (!y || check_min_ndim(y, "y", 1) || dims_fit_int(y, "y") ||
        glae_check_same_shape(dy, "dy", y, "y"))
        return NULL;
    PyArrayObject *outs[1] = {glae_new_array(PyArray_NDIM(y), PyArray_DIMS(y), NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, fn(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(dy), PyArray_DATA(y),
                      leading_rows(y), last_dim(y)));
    return glae_return_arrays(st, 1, outs);
}

static PyObject *py_softmax_forward(PyObject *self, PyObject *args) {
    (void)self;
    return softmax_fwd(args, "O:softmax_forward", glae_softmax_forward);
}
static PyObject *py_softmax_backward(PyObject *self, PyObject *args) {
    (void)self;
    return softmax_bwd(args, "OO:softmax_backward", glae_softmax_backward);
}
static PyObject *py_log_softmax_forward(PyObject *self, PyObject *args) {
    (void)self;
    return softmax_fwd(args, "O:log_softmax_forward", glae_log_softmax_forward);
}
static PyObject *py_log_softmax_backward(PyObject *self, PyObject *args) {
    (void)self;
    return softmax_bwd(args, "OO:log_softmax_backward", glae_log_softmax_backward);
}

/* ---- PReLU -------------------------------------------------------------------------- */

/* prelu_forward(x (..., C), weight (C)) -> y */
static PyObject *py_prelu_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo;
    if (!PyArg_ParseTuple(args, "OO:prelu_forward", &xo, &wo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x || check_min_ndim(x, "x", 1) || dims_fit_int(x, "x")) return NULL;
    PyArrayObject *w = glae_arg_f32(wo, "weight", 1);
    if (!w || glae_check_dim(w, "weight", 0, last_dim(x))) return NULL;
    PyArrayObject *outs[1] = {glae_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_prelu_forward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(x), PyArray_DATA(w),
                                      leading_rows(x), last_dim(x)));
    return glae_return_arrays(st, 1, outs);
}

/* prelu_backward(dy, x, weight) -> (dx, dweight) */
static PyObject *py_prelu_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *xo, *wo;
    if (!PyArg_ParseTuple(args, "OOO:prelu_backward", &dyo, &xo, &wo)) return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", -1);
    if (!dy) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x || check_min_ndim(x, "x", 1) || dims_fit_int(x, "x") ||
        glae_check_same_shape(dy, "dy", x, "x"))
        return NULL;
    PyArrayObject *w = glae_arg_f32(wo, "weight", 1);
    if (!w || glae_check_dim(w, "weight", 0, last_dim(x))) return NULL;
    PyArrayObject *outs[2] = {glae_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32),
                              glae_zeros(1, PyArray_DIMS(w), NPY_FLOAT32)};
    if (!outs[0] || !outs[1]) {
        release(2, outs);
        return NULL;
    }
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_prelu_backward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(outs[1]),
                                       PyArray_DATA(dy), PyArray_DATA(x), PyArray_DATA(w),
                                       leading_rows(x), last_dim(x)));
    return glae_return_arrays(st, 2, outs);
}

/* ---- horizontal flip ---------------------------------------------------------------- */

/* hflip_forward(x (N, H, W, C)) -> x[:, :, ::-1, :] */
static PyObject *py_hflip_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O:hflip_forward", &xo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", 4);
    if (!x || dims_fit_int(x, "x")) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    PyArrayObject *outs[1] = {glae_new_array(4, d, NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_hflip_forward(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(x), (int)d[0],
                                      (int)d[1], (int)d[2], (int)d[3]));
    return glae_return_arrays(st, 1, outs);
}

/* normalise_u8(x uint8 (..., 3), norm='glae') -> float32 of the same shape */
static PyObject *py_normalise_u8(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kws[] = {"x", "norm", NULL};
    PyObject *xo, *no = NULL;
    int norm = GLAE_NORM_GLAE;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:normalise_u8", kws, &xo, &no)) return NULL;
    if (no && no != Py_None && glae_parse_norm(no, "normalise_u8", &norm)) return NULL;
    PyArrayObject *x = glae_arg_array(xo, "x", NPY_UINT8, -1);
    if (!x) return NULL;
    if (PyArray_NDIM(x) < 1 || PyArray_DIM(x, PyArray_NDIM(x) - 1) != 3) {
        PyErr_SetString(PyExc_ValueError, "x: the last dimension must be 3 (RGB)");
        return NULL;
    }
    PyArrayObject *outs[1] = {glae_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_normalise_u8(&ctx, PyArray_DATA(outs[0]), PyArray_DATA(x), PyArray_SIZE(x), norm));
    return glae_return_arrays(st, 1, outs);
}

PyMethodDef glae_ops_methods[] = {
    {"normalise_u8", (PyCFunction)(void (*)(void))py_normalise_u8, METH_VARARGS | METH_KEYWORDS,
     "normalise_u8(x uint8 (..., 3), norm='glae'|'imagenet'|'none') -> float32: the input "
     "normalisation the Loader and the model apply to pixels"},
    {"relu_forward", py_relu_forward, METH_VARARGS, "relu_forward(x) -> max(x, 0)"},
    {"relu_backward", py_relu_backward, METH_VARARGS, "relu_backward(dy, y) -> dx = dy * [y > 0]"},
    {"add_forward", py_add_forward, METH_VARARGS, "add_forward(a, b) -> a + b"},
    {"add_backward", py_add_backward, METH_VARARGS, "add_backward(dy) -> (da, db), both equal to dy"},
    {"batchnorm_forward", py_batchnorm_forward, METH_VARARGS,
     "batchnorm_forward(x, gamma, beta, running_mean|None, running_var|None, momentum, eps, "
     "training) -> (y, save_mean, save_invstd); running stats updated in place when training"},
    {"batchnorm_backward", py_batchnorm_backward, METH_VARARGS,
     "batchnorm_backward(dy, x, save_mean, save_invstd, gamma, training) -> (dx, dgamma, dbeta)"},
    {"maxpool2d_forward", py_maxpool2d_forward, METH_VARARGS,
     "maxpool2d_forward(x NHWC, k, stride, pad, ceil_mode=False) -> (y, argmax int32)"},
    {"maxpool2d_backward", py_maxpool2d_backward, METH_VARARGS,
     "maxpool2d_backward(dy, argmax, h, w, k, stride, pad, ceil_mode=False) -> dx"},
    {"avgpool_forward", py_avgpool_forward, METH_VARARGS, "avgpool_forward(x NHWC) -> (N, C) mean"},
    {"avgpool_backward", py_avgpool_backward, METH_VARARGS,
     "avgpool_backward(dy (N, C), h, w) -> dx (N, H, W, C)"},
    {"linear_forward", py_linear_forward, METH_VARARGS,
     "linear_forward(x (N, IN), w (OUT, IN), b|None) -> x w^T + b"},
    {"linear_backward", py_linear_backward, METH_VARARGS,
     "linear_backward(dy, x, w, has_bias) -> (dx, dw, db|None)"},
    {"pixel_shuffle_forward", py_pixel_shuffle_forward, METH_VARARGS,
     "pixel_shuffle_forward(x (N, H, W, C*r*r), r) -> (N, H*r, W*r, C), PyTorch order"},
    {"pixel_shuffle_backward", py_pixel_shuffle_backward, METH_VARARGS,
     "pixel_shuffle_backward(dy (N, H*r, W*r, C), r) -> dx (N, H, W, C*r*r)"},
    {"softmax_forward", py_softmax_forward, METH_VARARGS, "softmax_forward(x) -> softmax over the last axis"},
    {"softmax_backward", py_softmax_backward, METH_VARARGS, "softmax_backward(dy, y) -> dx"},
    {"log_softmax_forward", py_log_softmax_forward, METH_VARARGS,
     "log_softmax_forward(x) -> log-softmax over the last axis"},
    {"log_softmax_backward", py_log_softmax_backward, METH_VARARGS, "log_softmax_backward(dy, y) -> dx"},
    {"prelu_forward", py_prelu_forward, METH_VARARGS, "prelu_forward(x (..., C), weight (C)) -> y"},
    {"prelu_backward", py_prelu_backward, METH_VARARGS,
     "prelu_backward(dy, x, weight) -> (dx, dweight)"},
    {"hflip_forward", py_hflip_forward, METH_VARARGS, "hflip_forward(x NHWC) -> x[:, :, ::-1]"},
    {NULL, NULL, 0, NULL},
};
