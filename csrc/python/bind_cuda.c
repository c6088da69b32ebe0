/* Test bindings for the CUDA twins (ops_cuda.h): each takes NumPy arrays, copies them to
 * the device, runs the CUDA op on a context made by cuda_context(), and copies the results
 * back. They exist for parity tests against the CPU bindings, not for speed. Argument
 * checks mirror the CPU bindings'; sizes the C functions check themselves are left to them.
 * Without the CUDA backend every name exists and raises RuntimeError. */
#include "python/py.h" /* Python.h first */

#define CUDA_NAMES(X)                                                                       \
    X(cuda_context) X(cuda_set_math) X(cuda_set_benchmark) X(cuda_algo_cache_size)          \
    X(cuda_relu_forward) X(cuda_relu_backward) X(cuda_add_forward) X(cuda_add_backward)     \
    X(cuda_hflip_forward) X(cuda_prelu_forward) X(cuda_prelu_backward)                      \
    X(cuda_batchnorm_forward) X(cuda_batchnorm_backward) X(cuda_maxpool2d_forward)          \
    X(cuda_maxpool2d_backward) X(cuda_avgpool_forward) X(cuda_avgpool_backward)             \
    X(cuda_linear_forward) X(cuda_linear_backward) X(cuda_pixel_shuffle_forward)            \
    X(cuda_pixel_shuffle_backward) X(cuda_softmax_forward) X(cuda_softmax_backward)         \
    X(cuda_log_softmax_forward) X(cuda_log_softmax_backward) X(cuda_conv2d_forward)         \
    X(cuda_conv2d_backward) X(cuda_label_distribution) X(cuda_ldl_loss_forward)             \
    X(cuda_ldl_loss_backward) X(cuda_expected_age) X(cuda_kl_rows) X(cuda_adaptive_route)   \
    X(cuda_sgd_step) X(cuda_metrics_mae) X(cuda_metrics_epsilon) X(cuda_fill)               \
    X(cuda_flatten_nchw_forward) X(cuda_flatten_nchw_backward) X(cuda_avg2_forward)         \
    X(cuda_normalise_u8) X(cuda_double_buffer_relu)

#ifndef GLAE_WITH_CUDA

static PyObject *py_no_cuda(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    PyErr_SetString(PyExc_RuntimeError, "glae was built without CUDA");
    return NULL;
}

#define STUB(name) {#name, py_no_cuda, METH_VARARGS, #name ": not available (built without CUDA)"},
PyMethodDef glae_cuda_methods[] = {CUDA_NAMES(STUB){NULL, NULL, 0, NULL}};

#else

#include <limits.h>
#include <string.h>

#include "core/cuda_ctx.h"
#include "ops/ops_cuda.h"

#define CAPSULE "glae.cuda_ctx"

static void ctx_capsule_free(PyObject *cap) {
    glae_ctx *ctx = PyCapsule_GetPointer(cap, CAPSULE);
    if (!ctx) {
        PyErr_Clear();
        return;
    }
    glae_cuda_ctx_destroy(ctx);
    PyMem_RawFree(ctx);
}

static glae_ctx *get_ctx(PyObject *o) {
    if (!PyCapsule_IsValid(o, CAPSULE)) {
        PyErr_SetString(PyExc_TypeError, "ctx must be a CUDA context from cuda_context()");
        return NULL;
    }
    return PyCapsule_GetPointer(o, CAPSULE);
}

/* for bind_bf16.c: the context of a cuda_context() capsule, NULL with TypeError */
glae_ctx *glae_py_cuda_ctx(PyObject *o) { return get_ctx(o); }

/* cuda_context(device=0, math=0) -> context (0 fp32, 1 tf32, 2 bf16) */
static PyObject *py_cuda_context(PyObject *self, PyObject *args) {
    (void)self;
    int device = 0, math = 0, st;
    if (!PyArg_ParseTuple(args, "|ii:cuda_context", &device, &math)) return NULL;
    glae_ctx *ctx = PyMem_RawCalloc(1, sizeof *ctx);
    if (!ctx) return PyErr_NoMemory();
    GLAE_NOGIL(st, glae_cuda_ctx_create(ctx, device, math));
    if (st) {
        PyMem_RawFree(ctx);
        return glae_raise(st);
    }
    PyObject *cap = PyCapsule_New(ctx, CAPSULE, ctx_capsule_free);
    if (!cap) {
        glae_cuda_ctx_destroy(ctx);
        PyMem_RawFree(ctx);
    }
    return cap;
}

static PyObject *ctx_int_setter(PyObject *args, const char *fmt, int which) {
    PyObject *co;
    int v;
    if (!PyArg_ParseTuple(args, fmt, &co, &v)) return NULL;
    glae_ctx *ctx = get_ctx(co);
    if (!ctx) return NULL;
    int st = which ? glae_cuda_set_benchmark(ctx, v) : glae_cuda_set_math(ctx, v);
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}
static PyObject *py_cuda_set_math(PyObject *self, PyObject *args) {
    (void)self;
    return ctx_int_setter(args, "Oi:cuda_set_math", 0);
}
static PyObject *py_cuda_set_benchmark(PyObject *self, PyObject *args) {
    (void)self;
    return ctx_int_setter(args, "Op:cuda_set_benchmark", 1);
}
static PyObject *py_cuda_algo_cache_size(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co;
    if (!PyArg_ParseTuple(args, "O:cuda_algo_cache_size", &co)) return NULL;
    glae_ctx *ctx = get_ctx(co);
    return ctx ? PyLong_FromLong(glae_cuda_algo_cache_size(ctx)) : NULL;
}

/* ---- a job: device copies of the inputs, device outputs copied back at the end --------- */

#define JOB_MAX 24
typedef struct {
    glae_ctx *ctx;
    void *dev[JOB_MAX];
    int ndev;
    /* host arrays receiving device buffers at the end; ret: part of the returned tuple */
    PyArrayObject *host[JOB_MAX];
    void *src[JOB_MAX];
    int ret[JOB_MAX], nhost;
    int failed; /* a Python exception is set */
} job;

static void *job_dev(job *j, size_t bytes) {
    if (j->failed) return NULL;
    if (j->ndev == JOB_MAX) {
        PyErr_SetString(PyExc_RuntimeError, "bind_cuda: too many buffers");
        j->failed = 1;
        return NULL;
    }
    void *d;
    int st = glae_cuda_malloc(&d, bytes);
    if (st) {
        glae_raise(st);
        j->failed = 1;
        return NULL;
    }
    j->dev[j->ndev++] = d;
    return d;
}

static int job_check(job *j, int st) {
    if (st && !j->failed) {
        glae_raise(st);
        j->failed = 1;
    }
    return j->failed;
}

/* device copy of a host array (NULL array -> NULL pointer) */
static void *job_in(job *j, PyArrayObject *a) {
    if (!a || j->failed) return NULL;
    size_t bytes = (size_t)PyArray_NBYTES(a);
    void *d = job_dev(j, bytes);
    if (d) job_check(j, glae_cuda_h2d(j->ctx, d, PyArray_DATA(a), bytes));
    return d;
}

static void job_track(job *j, PyArrayObject *h, void *d, int ret) {
    j->host[j->nhost] = h;
    j->src[j->nhost] = d;
    j->ret[j->nhost++] = ret;
}

/* device copy of a host array written back into it at the end (in-place arguments) */
static void *job_inout(job *j, PyArrayObject *a) {
    void *d = job_in(j, a);
    if (d) {
        Py_INCREF(a);
        job_track(j, a, d, 0);
    }
    return d;
}

/* a fresh output: host array + device buffer, poisoned (0xFF: NaN floats, -1 ints) when
 * poisoning is on, zeroed when zero != 0 (accumulated parameter gradients) */
static void *job_out(job *j, int nd, const npy_intp *dims, int typenum, int zero) {
    if (j->failed) return NULL;
    PyArrayObject *h = zero ? glae_zeros(nd, dims, typenum) : glae_new_array(nd, dims, typenum);
    if (!h) {
        j->failed = 1;
        return NULL;
    }
    void *d = job_dev(j, (size_t)PyArray_NBYTES(h));
    if (!d) {
        Py_DECREF(h);
        return NULL;
    }
    job_track(j, h, d, 1);
    if (zero || glae_poison_enabled())
        job_check(j, glae_cuda_memset(j->ctx, d, zero ? 0 : 0xFF, (size_t)PyArray_NBYTES(h)));
    return d;
}

/* a None slot in the returned tuple */
static void job_none(job *j) { job_track(j, NULL, NULL, 1); }

/* run `st` (already computed), sync, copy back, free; returns the outputs (one object or a
 * tuple), None when there are none, or NULL with the exception set */
static PyObject *job_finish(job *j, int st) {
    job_check(j, st);
    if (!j->failed) {
        Py_BEGIN_ALLOW_THREADS;
        st = glae_cuda_sync(j->ctx);
        for (int i = 0; i < j->nhost && !st; i++)
            if (j->host[i])
                st = glae_cuda_d2h(j->ctx, PyArray_DATA(j->host[i]), j->src[i],
                                   (size_t)PyArray_NBYTES(j->host[i]));
        Py_END_ALLOW_THREADS;
        job_check(j, st);
    }
    if (j->ctx) glae_cuda_sync(j->ctx); /* no kernel may still use a buffer freed below */
    for (int i = 0; i < j->ndev; i++) glae_cuda_free(j->dev[i]);
    PyObject *res = NULL;
    int nret = 0;
    for (int i = 0; i < j->nhost; i++) nret += j->ret[i];
    if (!j->failed) {
        if (nret == 0) res = Py_NewRef(Py_None);
        else if (nret > 1) res = PyTuple_New(nret);
    }
    int k = 0;
    for (int i = 0; i < j->nhost; i++) {
        PyObject *h = (PyObject *)j->host[i];
        if (!j->ret[i] || j->failed || (nret > 1 && !res)) {
            Py_XDECREF(h);
            continue;
        }
        if (!h) h = Py_NewRef(Py_None);
        if (nret == 1) res = h;
        else PyTuple_SET_ITEM(res, k++, h);
    }
    return res;
}

#define JOB_START(co)                        \
    job J;                                   \
    memset(&J, 0, sizeof J);                 \
    J.ctx = get_ctx(co);                     \
    if (!J.ctx) return NULL;
#define RUN(call)                            \
    do {                                     \
        int st_ = 0;                         \
        if (!J.failed) GLAE_NOGIL(st_, call); \
        return job_finish(&J, st_);          \
    } while (0)

static int64_t lead_rows(PyArrayObject *a) {
    int64_t r = 1;
    for (int i = 0; i < PyArray_NDIM(a) - 1; i++) r *= PyArray_DIM(a, i);
    return r;
}
static int last_dim(PyArrayObject *a) { return (int)PyArray_DIM(a, PyArray_NDIM(a) - 1); }
static int min_ndim(PyArrayObject *a, const char *name, int lo) {
    if (PyArray_NDIM(a) >= lo) return 0;
    PyErr_Format(PyExc_ValueError, "%s must have at least %d dimension(s), got %d", name, lo,
                 PyArray_NDIM(a));
    return -1;
}
#define F32(var, obj, name, nd)                              \
    PyArrayObject *var = glae_arg_f32((obj), (name), (nd));  \
    if (!var) return NULL;
#define F32_OPT(var, obj, name, nd)                                              \
    int ok_##var;                                                                \
    PyArrayObject *var = glae_arg_array_opt((obj), (name), NPY_FLOAT32, (nd), &ok_##var); \
    if (!ok_##var) return NULL;
#define SAME(a, na, b, nb) \
    if (glae_check_same_shape((a), (na), (b), (nb))) return NULL;
#define DIM(a, name, axis, want) \
    if (glae_check_dim((a), (name), (axis), (want))) return NULL;
#define DIMS(a) PyArray_NDIM(a), PyArray_DIMS(a)

/* ---- the model code's small ops (util.cu) ------------------------------------------------ */

/* cuda_fill(ctx, n, value) -> (n,) float32 */
static PyObject *py_cuda_fill(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co;
    Py_ssize_t n;
    float v;
    if (!PyArg_ParseTuple(args, "Onf:cuda_fill", &co, &n, &v)) return NULL;
    if (glae_check_min(n, "n", 0)) return NULL;
    JOB_START(co);
    npy_intp d[1] = {(npy_intp)n};
    float *o = job_out(&J, 1, d, NPY_FLOAT32, 0);
    RUN(glae_fill_cuda(J.ctx, o, v, n));
}

/* cuda_flatten_nchw_forward(ctx, x (N, P, C)) -> (N, C, P); backward: the inverse */
static PyObject *flatten(PyObject *args, const char *fmt, int fwd) {
    PyObject *co, *xo;
    if (!PyArg_ParseTuple(args, fmt, &co, &xo)) return NULL;
    F32(x, xo, "x", 3);
    const npy_intp *xd = PyArray_DIMS(x);
    npy_intp od[3] = {xd[0], xd[2], xd[1]};
    if (xd[0] > INT_MAX || xd[1] > INT_MAX || xd[2] > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "x: too large");
        return NULL;
    }
    JOB_START(co);
    float *i = job_in(&J, x), *o = job_out(&J, 3, od, NPY_FLOAT32, 0);
    if (fwd) RUN(glae_flatten_nchw_forward_cuda(J.ctx, o, i, (int)xd[0], xd[1], (int)xd[2]));
    RUN(glae_flatten_nchw_backward_cuda(J.ctx, o, i, (int)xd[0], xd[2], (int)xd[1]));
}
static PyObject *py_cuda_flatten_nchw_forward(PyObject *self, PyObject *args) {
    (void)self;
    return flatten(args, "OO:cuda_flatten_nchw_forward", 1);
}
static PyObject *py_cuda_flatten_nchw_backward(PyObject *self, PyObject *args) {
    (void)self;
    return flatten(args, "OO:cuda_flatten_nchw_backward", 0);
}

/* cuda_avg2_forward(ctx, a, b) -> 0.5 * (a + b) */
static PyObject *py_cuda_avg2_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *ao, *bo;
    if (!PyArg_ParseTuple(args, "OOO:cuda_avg2_forward", &co, &ao, &bo)) return NULL;
    F32(a, ao, "a", -1);
    F32(b, bo, "b", -1);
    SAME(a, "a", b, "b");
    JOB_START(co);
    float *da = job_in(&J, a), *db = job_in(&J, b), *o = job_out(&J, DIMS(a), NPY_FLOAT32, 0);
    RUN(glae_avg2_forward_cuda(J.ctx, o, da, db, PyArray_SIZE(a)));
}

/* cuda_normalise_u8(ctx, x uint8 (..., 3), norm='glae') -> float32 */
static PyObject *py_cuda_normalise_u8(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo, *no = NULL;
    int norm = GLAE_NORM_GLAE;
    if (!PyArg_ParseTuple(args, "OO|O:cuda_normalise_u8", &co, &xo, &no)) return NULL;
    if (no && no != Py_None && glae_parse_norm(no, "cuda_normalise_u8", &norm)) return NULL;
    PyArrayObject *x = glae_arg_array(xo, "x", NPY_UINT8, -1);
    if (!x) return NULL;
    JOB_START(co);
    uint8_t *i = job_in(&J, x);
    float *o = job_out(&J, DIMS(x), NPY_FLOAT32, 0);
    RUN(glae_normalise_u8_cuda(J.ctx, o, i, PyArray_SIZE(x), norm));
}

/* ---- element-wise ----------------------------------------------------------------------- */

static PyObject *py_cuda_relu_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo;
    if (!PyArg_ParseTuple(args, "OO:cuda_relu_forward", &co, &xo)) return NULL;
    F32(x, xo, "x", -1);
    JOB_START(co);
    float *dx = job_in(&J, x), *dy = job_out(&J, DIMS(x), NPY_FLOAT32, 0);
    RUN(glae_relu_forward_cuda(J.ctx, dy, dx, PyArray_SIZE(x)));
}

static PyObject *py_cuda_relu_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo, *yo;
    if (!PyArg_ParseTuple(args, "OOO:cuda_relu_backward", &co, &dyo, &yo)) return NULL;
    F32(dy, dyo, "dy", -1);
    F32(y, yo, "y", -1);
    SAME(dy, "dy", y, "y");
    JOB_START(co);
    float *g = job_in(&J, dy), *o = job_in(&J, y), *d = job_out(&J, DIMS(y), NPY_FLOAT32, 0);
    RUN(glae_relu_backward_cuda(J.ctx, d, g, o, PyArray_SIZE(y)));
}

static PyObject *py_cuda_add_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *ao, *bo;
    if (!PyArg_ParseTuple(args, "OOO:cuda_add_forward", &co, &ao, &bo)) return NULL;
    F32(a, ao, "a", -1);
    F32(b, bo, "b", -1);
    SAME(a, "a", b, "b");
    JOB_START(co);
    float *da = job_in(&J, a), *db = job_in(&J, b), *dy = job_out(&J, DIMS(a), NPY_FLOAT32, 0);
    RUN(glae_add_forward_cuda(J.ctx, dy, da, db, PyArray_SIZE(a)));
}

/* cuda_add_backward(ctx, dy) -> (da, db) */
static PyObject *py_cuda_add_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo;
    if (!PyArg_ParseTuple(args, "OO:cuda_add_backward", &co, &dyo)) return NULL;
    F32(dy, dyo, "dy", -1);
    JOB_START(co);
    float *g = job_in(&J, dy), *da = job_out(&J, DIMS(dy), NPY_FLOAT32, 0),
          *db = job_out(&J, DIMS(dy), NPY_FLOAT32, 0);
    RUN(glae_add_backward_cuda(J.ctx, da, db, g, PyArray_SIZE(dy)));
}

static PyObject *py_cuda_hflip_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo;
    if (!PyArg_ParseTuple(args, "OO:cuda_hflip_forward", &co, &xo)) return NULL;
    F32(x, xo, "x", 4);
    if (glae_check_fits_int(x, "x")) return NULL;
    JOB_START(co);
    npy_intp *d = PyArray_DIMS(x);
    float *dx = job_in(&J, x), *dy = job_out(&J, DIMS(x), NPY_FLOAT32, 0);
    RUN(glae_hflip_forward_cuda(J.ctx, dy, dx, (int)d[0], (int)d[1], (int)d[2], (int)d[3]));
}

static PyObject *py_cuda_prelu_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo, *wo;
    if (!PyArg_ParseTuple(args, "OOO:cuda_prelu_forward", &co, &xo, &wo)) return NULL;
    F32(x, xo, "x", -1);
    if (min_ndim(x, "x", 1) || glae_check_fits_int(x, "x")) return NULL;
    F32(w, wo, "weight", 1);
    DIM(w, "weight", 0, last_dim(x));
    JOB_START(co);
    float *dx = job_in(&J, x), *dw = job_in(&J, w), *dy = job_out(&J, DIMS(x), NPY_FLOAT32, 0);
    RUN(glae_prelu_forward_cuda(J.ctx, dy, dx, dw, lead_rows(x), last_dim(x)));
}

/* cuda_prelu_backward(ctx, dy, x, weight) -> (dx, dweight) */
static PyObject *py_cuda_prelu_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo, *xo, *wo;
    if (!PyArg_ParseTuple(args, "OOOO:cuda_prelu_backward", &co, &dyo, &xo, &wo)) return NULL;
    F32(dy, dyo, "dy", -1);
    F32(x, xo, "x", -1);
    if (min_ndim(x, "x", 1) || glae_check_fits_int(x, "x")) return NULL;
    SAME(dy, "dy", x, "x");
    F32(w, wo, "weight", 1);
    DIM(w, "weight", 0, last_dim(x));
    JOB_START(co);
    float *g = job_in(&J, dy), *dx = job_in(&J, x), *dw = job_in(&J, w);
    float *gx = job_out(&J, DIMS(x), NPY_FLOAT32, 0), *gw = job_out(&J, DIMS(w), NPY_FLOAT32, 1);
    RUN(glae_prelu_backward_cuda(J.ctx, gx, gw, g, dx, dw, lead_rows(x), last_dim(x)));
}

/* ---- batch norm --------------------------------------------------------------------------- */

/* cuda_batchnorm_forward(ctx, x, gamma, beta, running_mean|None, running_var|None, momentum,
 *                        eps, training) -> (y, save_mean, save_invstd); running stats in place */
static PyObject *py_cuda_batchnorm_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo, *go, *bo, *rmo, *rvo;
    float momentum, eps;
    int training;
    if (!PyArg_ParseTuple(args, "OOOOOOffp:cuda_batchnorm_forward", &co, &xo, &go, &bo, &rmo,
                          &rvo, &momentum, &eps, &training))
        return NULL;
    F32(x, xo, "x", -1);
    if (min_ndim(x, "x", 2) || glae_check_fits_int(x, "x")) return NULL;
    const int c = last_dim(x);
    F32(g, go, "gamma", 1);
    DIM(g, "gamma", 0, c);
    F32(b, bo, "beta", 1);
    DIM(b, "beta", 0, c);
    F32_OPT(rm, rmo, "running_mean", 1);
    if (rm) DIM(rm, "running_mean", 0, c);
    F32_OPT(rv, rvo, "running_var", 1);
    if (rv) DIM(rv, "running_var", 0, c);
    if (glae_check_writeable(rm, "running_mean") || glae_check_writeable(rv, "running_var"))
        return NULL;
    JOB_START(co);
    npy_intp cd[1] = {c};
    float *dx = job_in(&J, x), *dg = job_in(&J, g), *db = job_in(&J, b);
    float *drm = job_inout(&J, rm), *drv = job_inout(&J, rv);
    float *y = job_out(&J, DIMS(x), NPY_FLOAT32, 0), *m = job_out(&J, 1, cd, NPY_FLOAT32, 0),
          *is = job_out(&J, 1, cd, NPY_FLOAT32, 0);
    RUN(glae_batchnorm_forward_cuda(J.ctx, y, m, is, dx, dg, db, drm, drv, lead_rows(x), c,
                                    momentum, eps, training));
}

/* cuda_batchnorm_backward(ctx, dy, x, save_mean, save_invstd, gamma, training)
 *   -> (dx, dgamma, dbeta) */
static PyObject *py_cuda_batchnorm_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo, *xo, *mo, *io, *go;
    int training;
    if (!PyArg_ParseTuple(args, "OOOOOOp:cuda_batchnorm_backward", &co, &dyo, &xo, &mo, &io, &go,
                          &training))
        return NULL;
    F32(dy, dyo, "dy", -1);
    F32(x, xo, "x", -1);
    if (min_ndim(x, "x", 2) || glae_check_fits_int(x, "x")) return NULL;
    SAME(dy, "dy", x, "x");
    const int c = last_dim(x);
    F32(m, mo, "save_mean", 1);
    DIM(m, "save_mean", 0, c);
    F32(is, io, "save_invstd", 1);
    DIM(is, "save_invstd", 0, c);
    F32(g, go, "gamma", 1);
    DIM(g, "gamma", 0, c);
    JOB_START(co);
    npy_intp cd[1] = {c};
    float *ddy = job_in(&J, dy), *dx = job_in(&J, x), *dm = job_in(&J, m), *dis = job_in(&J, is),
          *dg = job_in(&J, g);
    float *gx = job_out(&J, DIMS(x), NPY_FLOAT32, 0), *gg = job_out(&J, 1, cd, NPY_FLOAT32, 1),
          *gb = job_out(&J, 1, cd, NPY_FLOAT32, 1);
    RUN(glae_batchnorm_backward_cuda(J.ctx, gx, gg, gb, ddy, dx, dm, dis, dg, lead_rows(x), c,
                                     training));
}

/* ---- pooling ------------------------------------------------------------------------------ */

/* cuda_maxpool2d_forward(ctx, x NHWC, k, stride, pad, ceil_mode=False) -> (y, argmax int32) */
static PyObject *py_cuda_maxpool2d_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo;
    int k, stride, pad, ceil_mode = 0;
    if (!PyArg_ParseTuple(args, "OOiii|p:cuda_maxpool2d_forward", &co, &xo, &k, &stride, &pad,
                          &ceil_mode))
        return NULL;
    F32(x, xo, "x", 4);
    if (glae_check_fits_int(x, "x")) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)d[0], (int)d[1], (int)d[2], (int)d[3], k, stride, pad,
                                  ceil_mode);
    if (st) return glae_raise(st);
    JOB_START(co);
    npy_intp od[4] = {s.n, s.oh, s.ow, s.c};
    float *dx = job_in(&J, x), *dy = job_out(&J, 4, od, NPY_FLOAT32, 0);
    int32_t *am = job_out(&J, 4, od, NPY_INT32, 0);
    RUN(glae_maxpool2d_forward_cuda(J.ctx, dy, am, dx, &s));
}

/* cuda_maxpool2d_backward(ctx, dy, argmax, h, w, k, stride, pad, ceil_mode=False) -> dx */
static PyObject *py_cuda_maxpool2d_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo, *ao;
    int h, w, k, stride, pad, ceil_mode = 0;
    if (!PyArg_ParseTuple(args, "OOOiiiii|p:cuda_maxpool2d_backward", &co, &dyo, &ao, &h, &w, &k,
                          &stride, &pad, &ceil_mode))
        return NULL;
    F32(dy, dyo, "dy", 4);
    if (glae_check_fits_int(dy, "dy")) return NULL;
    PyArrayObject *a = glae_arg_array(ao, "argmax", NPY_INT32, 4);
    if (!a) return NULL;
    SAME(dy, "dy", a, "argmax");
    npy_intp *d = PyArray_DIMS(dy);
    glae_pool_shape s;
    int st = glae_pool_shape_init(&s, (int)d[0], h, w, (int)d[3], k, stride, pad, ceil_mode);
    if (st) return glae_raise(st);
    if (s.oh != d[1] || s.ow != d[2]) {
        PyErr_Format(PyExc_ValueError, "dy: spatial size must be %dx%d for input %dx%d, got %zdx%zd",
                     s.oh, s.ow, h, w, (Py_ssize_t)d[1], (Py_ssize_t)d[2]);
        return NULL;
    }
    JOB_START(co);
    npy_intp id[4] = {s.n, h, w, s.c};
    float *g = job_in(&J, dy), *gx = job_out(&J, 4, id, NPY_FLOAT32, 0);
    int32_t *am = job_in(&J, a);
    RUN(glae_maxpool2d_backward_cuda(J.ctx, gx, g, am, &s));
}

static PyObject *py_cuda_avgpool_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo;
    if (!PyArg_ParseTuple(args, "OO:cuda_avgpool_forward", &co, &xo)) return NULL;
    F32(x, xo, "x", 4);
    if (glae_check_fits_int(x, "x")) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    if ((int64_t)d[1] * d[2] > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "x: H*W is too large");
        return NULL;
    }
    JOB_START(co);
    npy_intp od[2] = {d[0], d[3]};
    float *dx = job_in(&J, x), *dy = job_out(&J, 2, od, NPY_FLOAT32, 0);
    RUN(glae_avgpool_forward_cuda(J.ctx, dy, dx, (int)d[0], (int)(d[1] * d[2]), (int)d[3]));
}

/* cuda_avgpool_backward(ctx, dy (N, C), h, w) -> dx (N, H, W, C) */
static PyObject *py_cuda_avgpool_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo;
    int h, w;
    if (!PyArg_ParseTuple(args, "OOii:cuda_avgpool_backward", &co, &dyo, &h, &w)) return NULL;
    F32(dy, dyo, "dy", 2);
    if (glae_check_fits_int(dy, "dy") || glae_check_min(h, "h", 0) || glae_check_min(w, "w", 0)) return NULL;
    if ((int64_t)h * w > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "h*w is too large");
        return NULL;
    }
    JOB_START(co);
    npy_intp id[4] = {PyArray_DIM(dy, 0), h, w, PyArray_DIM(dy, 1)};
    float *g = job_in(&J, dy), *gx = job_out(&J, 4, id, NPY_FLOAT32, 0);
    RUN(glae_avgpool_backward_cuda(J.ctx, gx, g, (int)id[0], h * w, (int)id[3]));
}

/* ---- linear ------------------------------------------------------------------------------- */

static PyObject *py_cuda_linear_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo, *wo, *bo = Py_None;
    if (!PyArg_ParseTuple(args, "OOO|O:cuda_linear_forward", &co, &xo, &wo, &bo)) return NULL;
    F32(x, xo, "x", 2);
    F32(w, wo, "w", 2);
    if (glae_check_fits_int(x, "x") || glae_check_fits_int(w, "w")) return NULL;
    DIM(w, "w", 1, PyArray_DIM(x, 1));
    F32_OPT(b, bo, "b", 1);
    if (b) DIM(b, "b", 0, PyArray_DIM(w, 0));
    JOB_START(co);
    npy_intp od[2] = {PyArray_DIM(x, 0), PyArray_DIM(w, 0)};
    float *dx = job_in(&J, x), *dw = job_in(&J, w), *db = job_in(&J, b),
          *dy = job_out(&J, 2, od, NPY_FLOAT32, 0);
    RUN(glae_linear_forward_cuda(J.ctx, dy, dx, dw, db, (int)od[0], (int)PyArray_DIM(x, 1),
                                 (int)od[1]));
}

/* cuda_linear_backward(ctx, dy, x, w, has_bias) -> (dx, dw, db | None) */
static PyObject *py_cuda_linear_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo, *xo, *wo;
    int has_bias;
    if (!PyArg_ParseTuple(args, "OOOOp:cuda_linear_backward", &co, &dyo, &xo, &wo, &has_bias))
        return NULL;
    F32(dy, dyo, "dy", 2);
    F32(x, xo, "x", 2);
    F32(w, wo, "w", 2);
    if (glae_check_fits_int(x, "x") || glae_check_fits_int(w, "w")) return NULL;
    DIM(w, "w", 1, PyArray_DIM(x, 1));
    DIM(dy, "dy", 0, PyArray_DIM(x, 0));
    DIM(dy, "dy", 1, PyArray_DIM(w, 0));
    JOB_START(co);
    npy_intp bd[1] = {PyArray_DIM(w, 0)};
    float *g = job_in(&J, dy), *dx = job_in(&J, x), *dw = job_in(&J, w);
    float *gx = job_out(&J, DIMS(x), NPY_FLOAT32, 0), *gw = job_out(&J, DIMS(w), NPY_FLOAT32, 1);
    float *gb = NULL;
    if (has_bias) gb = job_out(&J, 1, bd, NPY_FLOAT32, 1);
    else job_none(&J);
    RUN(glae_linear_backward_cuda(J.ctx, gx, gw, gb, g, dx, dw, (int)PyArray_DIM(x, 0),
                                  (int)PyArray_DIM(x, 1), (int)bd[0]));
}

/* ---- pixel shuffle ------------------------------------------------------------------------ */

static PyObject *py_cuda_pixel_shuffle_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo;
    int r;
    if (!PyArg_ParseTuple(args, "OOi:cuda_pixel_shuffle_forward", &co, &xo, &r)) return NULL;
    F32(x, xo, "x", 4);
    if (glae_check_fits_int(x, "x") || glae_check_min(r, "r", 1)) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    if (d[3] % ((npy_intp)r * r)) {
        PyErr_Format(PyExc_ValueError, "x: channels %zd not divisible by r*r = %lld", (Py_ssize_t)d[3],
                     (long long)r * r);
        return NULL;
    }
    JOB_START(co);
    npy_intp od[4] = {d[0], d[1] * r, d[2] * r, d[3] / ((npy_intp)r * r)};
    float *dx = job_in(&J, x), *dy = job_out(&J, 4, od, NPY_FLOAT32, 0);
    RUN(glae_pixel_shuffle_forward_cuda(J.ctx, dy, dx, (int)d[0], (int)d[1], (int)d[2], (int)d[3], r));
}

static PyObject *py_cuda_pixel_shuffle_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo;
    int r;
    if (!PyArg_ParseTuple(args, "OOi:cuda_pixel_shuffle_backward", &co, &dyo, &r)) return NULL;
    F32(dy, dyo, "dy", 4);
    if (glae_check_fits_int(dy, "dy") || glae_check_min(r, "r", 1)) return NULL;
    npy_intp *d = PyArray_DIMS(dy);
    if (d[1] % r || d[2] % r) {
        PyErr_Format(PyExc_ValueError, "dy: spatial size %zdx%zd not divisible by r = %d",
                     (Py_ssize_t)d[1], (Py_ssize_t)d[2], r);
        return NULL;
    }
    JOB_START(co);
    npy_intp id[4] = {d[0], d[1] / r, d[2] / r, d[3] * r * r};
    float *g = job_in(&J, dy), *gx = job_out(&J, 4, id, NPY_FLOAT32, 0);
    RUN(glae_pixel_shuffle_backward_cuda(J.ctx, gx, g, (int)id[0], (int)id[1], (int)id[2],
                                         (int)id[3], r));
}

/* ---- softmax ------------------------------------------------------------------------------ */

static PyObject *softmax_fwd(PyObject *args, const char *fmt, int logsm) {
    PyObject *co, *xo;
    if (!PyArg_ParseTuple(args, fmt, &co, &xo)) return NULL;
    F32(x, xo, "x", -1);
    if (min_ndim(x, "x", 1) || glae_check_fits_int(x, "x")) return NULL;
    JOB_START(co);
    float *dx = job_in(&J, x), *dy = job_out(&J, DIMS(x), NPY_FLOAT32, 0);
    if (logsm) RUN(glae_log_softmax_forward_cuda(J.ctx, dy, dx, lead_rows(x), last_dim(x)));
    RUN(glae_softmax_forward_cuda(J.ctx, dy, dx, lead_rows(x), last_dim(x)));
}

static PyObject *softmax_bwd(PyObject *args, const char *fmt, int logsm) {
    PyObject *co, *dyo, *yo;
    if (!PyArg_ParseTuple(args, fmt, &co, &dyo, &yo)) return NULL;
    F32(dy, dyo, "dy", -1);
    F32(y, yo, "y", -1);
    if (min_ndim(y, "y", 1) || glae_check_fits_int(y, "y")) return NULL;
    SAME(dy, "dy", y, "y");
    JOB_START(co);
    float *g = job_in(&J, dy), *o = job_in(&J, y), *gx = job_out(&J, DIMS(y), NPY_FLOAT32, 0);
    if (logsm) RUN(glae_log_softmax_backward_cuda(J.ctx, gx, g, o, lead_rows(y), last_dim(y)));
    RUN(glae_softmax_backward_cuda(J.ctx, gx, g, o, lead_rows(y), last_dim(y)));
}

static PyObject *py_cuda_softmax_forward(PyObject *self, PyObject *args) {
    (void)self;
    return softmax_fwd(args, "OO:cuda_softmax_forward", 0);
}
static PyObject *py_cuda_log_softmax_forward(PyObject *self, PyObject *args) {
    (void)self;
    return softmax_fwd(args, "OO:cuda_log_softmax_forward", 1);
}
static PyObject *py_cuda_softmax_backward(PyObject *self, PyObject *args) {
    (void)self;
    return softmax_bwd(args, "OOO:cuda_softmax_backward", 0);
}
static PyObject *py_cuda_log_softmax_backward(PyObject *self, PyObject *args) {
    (void)self;
    return softmax_bwd(args, "OOO:cuda_log_softmax_backward", 1);
}

/* ---- conv2d ------------------------------------------------------------------------------- */

static int conv_shape(PyArrayObject *x, PyArrayObject *w, int stride, int pad, glae_conv2d_shape *s) {
    if (glae_check_fits_int(x, "x") || glae_check_fits_int(w, "w")) return -1;
    if (PyArray_DIM(x, 3) != PyArray_DIM(w, 3)) {
        PyErr_Format(PyExc_ValueError, "conv2d: x has %zd input channels (axis 3) but w expects %zd",
                     (Py_ssize_t)PyArray_DIM(x, 3), (Py_ssize_t)PyArray_DIM(w, 3));
        return -1;
    }
    npy_intp *xd = PyArray_DIMS(x), *wd = PyArray_DIMS(w);
    int st = glae_conv2d_shape_init(s, (int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], (int)wd[0],
                                    (int)wd[1], (int)wd[2], stride, stride, pad, pad);
    if (st) {
        glae_raise(st);
        return -1;
    }
    return 0;
}

/* float32 host array -> bf16 device buffer (a job buffer) */
static glae_bf16 *job_in_bf16(job *j, PyArrayObject *a) {
    float *f = job_in(j, a);
    glae_bf16 *h = f ? job_dev(j, (size_t)PyArray_SIZE(a) * 2) : NULL;
    if (h) job_check(j, glae_f32_to_bf16_cuda(j->ctx, h, f, PyArray_SIZE(a)));
    return j->failed ? NULL : h;
}

/* cuda_conv2d_forward(ctx, x (N,H,W,Cin), w (Cout,KH,KW,Cin), b | None, stride, pad,
 *                     bf16=False) -> y (N, OH, OW, Cout) float32. bf16: x goes to the
 * device as bf16, y comes back from bf16. */
static PyObject *py_cuda_conv2d_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo, *wo, *bo;
    int stride, pad, bf16 = 0;
    if (!PyArg_ParseTuple(args, "OOOOii|p:cuda_conv2d_forward", &co, &xo, &wo, &bo, &stride, &pad,
                          &bf16))
        return NULL;
    F32(x, xo, "x", 4);
    F32(w, wo, "w", 4);
    glae_conv2d_shape s;
    if (conv_shape(x, w, stride, pad, &s)) return NULL;
    F32_OPT(b, bo, "b", 1);
    if (b) DIM(b, "b", 0, s.c_out);
    JOB_START(co);
    npy_intp od[4] = {s.n, s.oh, s.ow, s.c_out};
    const int64_t on = (int64_t)s.n * s.oh * s.ow * s.c_out;
    float *dw = job_in(&J, w), *db = job_in(&J, b), *dy = job_out(&J, 4, od, NPY_FLOAT32, 0);
    if (!bf16) {
        float *dx = job_in(&J, x);
        RUN(glae_conv2d_forward_cuda(J.ctx, dy, dx, dw, db, &s));
    }
    glae_bf16 *hx = job_in_bf16(&J, x), *hy = job_dev(&J, (size_t)on * 2 + 2);
    int st = 0;
    if (!J.failed) {
        GLAE_NOGIL(st, glae_conv2d_forward_bf16_cuda(J.ctx, hy, hx, dw, db, &s));
        if (!st) st = glae_bf16_to_f32_cuda(J.ctx, dy, hy, on);
    }
    return job_finish(&J, st);
}

/* cuda_conv2d_backward(ctx, dy, x, w, stride, pad, has_bias, bf16=False)
 *   -> (dx, dw, db | None); dw / db start at zero (the kernels accumulate) */
static PyObject *py_cuda_conv2d_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dyo, *xo, *wo;
    int stride, pad, has_bias, bf16 = 0;
    if (!PyArg_ParseTuple(args, "OOOOiip|p:cuda_conv2d_backward", &co, &dyo, &xo, &wo, &stride,
                          &pad, &has_bias, &bf16))
        return NULL;
    F32(dy, dyo, "dy", 4);
    F32(x, xo, "x", 4);
    F32(w, wo, "w", 4);
    glae_conv2d_shape s;
    if (conv_shape(x, w, stride, pad, &s)) return NULL;
    npy_intp od[4] = {s.n, s.oh, s.ow, s.c_out};
    for (int i = 0; i < 4; i++) DIM(dy, "dy", i, od[i]);
    JOB_START(co);
    npy_intp bd[1] = {s.c_out};
    float *dw = job_in(&J, w);
    float *gx = job_out(&J, DIMS(x), NPY_FLOAT32, 0), *gw = job_out(&J, DIMS(w), NPY_FLOAT32, 1);
    float *gb = NULL;
    if (has_bias) gb = job_out(&J, 1, bd, NPY_FLOAT32, 1);
    else job_none(&J);
    if (!bf16) {
        float *g = job_in(&J, dy), *dx = job_in(&J, x);
        RUN(glae_conv2d_backward_cuda(J.ctx, gx, gw, gb, g, dx, dw, &s));
    }
    glae_bf16 *hg = job_in_bf16(&J, dy), *hx = job_in_bf16(&J, x);
    glae_bf16 *hgx = job_dev(&J, (size_t)PyArray_SIZE(x) * 2 + 2);
    int st = 0;
    if (!J.failed) {
        GLAE_NOGIL(st, glae_conv2d_backward_bf16_cuda(J.ctx, hgx, gw, gb, hg, hx, dw, &s));
        if (!st) st = glae_bf16_to_f32_cuda(J.ctx, gx, hgx, PyArray_SIZE(x));
    }
    return job_finish(&J, st);
}

/* ---- loss and routing --------------------------------------------------------------------- */

/* cuda_label_distribution(ctx, y (n,), sigma (n,) | None, sigma0, num_classes, normalize) */
static PyObject *py_cuda_label_distribution(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *yo, *so;
    float sigma0;
    int k, normalize;
    if (!PyArg_ParseTuple(args, "OOOfip:cuda_label_distribution", &co, &yo, &so, &sigma0, &k,
                          &normalize))
        return NULL;
    F32(y, yo, "y", 1);
    F32_OPT(sg, so, "sigma", 1);
    if (sg) DIM(sg, "sigma", 0, PyArray_DIM(y, 0));
    if (glae_check_min(k, "num_classes", 1)) return NULL;
    JOB_START(co);
    npy_intp zd[2] = {PyArray_DIM(y, 0), k};
    float *dy = job_in(&J, y), *ds = job_in(&J, sg), *dz = job_out(&J, 2, zd, NPY_FLOAT32, 0);
    RUN(glae_label_distribution_cuda(J.ctx, dz, dy, ds, sigma0, zd[0], k, normalize));
}

static int loss_args(PyArrayObject *x, const char *nx, PyArrayObject *z, PyArrayObject *y, int group) {
    if (glae_check_min(group, "group", 1)) return -1;
    if (PyArray_DIM(x, 0) % group) {
        PyErr_Format(PyExc_ValueError, "%s: rows (%zd) must be divisible by group (%d)", nx,
                     (Py_ssize_t)PyArray_DIM(x, 0), group);
        return -1;
    }
    if (PyArray_DIM(x, 1) > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: too many classes", nx);
        return -1;
    }
    return glae_check_dim(z, "z", 0, PyArray_DIM(x, 0) / group) ||
                   glae_check_dim(z, "z", 1, PyArray_DIM(x, 1)) ||
                   glae_check_dim(y, "y", 0, PyArray_DIM(x, 0) / group)
               ? -1
               : 0;
}

/* cuda_ldl_loss_forward(ctx, logits, z, y, group, mode, lambda_, mae) -> (loss, prob);
 * mode: 0 base, 1 lae_cls, 2 kl */
static PyObject *py_cuda_ldl_loss_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo, *zo, *yo;
    int group, mode;
    float lambda, mae;
    if (!PyArg_ParseTuple(args, "OOOOiiff:cuda_ldl_loss_forward", &co, &xo, &zo, &yo, &group,
                          &mode, &lambda, &mae))
        return NULL;
    F32(x, xo, "logits", 2);
    F32(z, zo, "z", 2);
    F32(y, yo, "y", 1);
    if (loss_args(x, "logits", z, y, group)) return NULL;
    JOB_START(co);
    npy_intp rows = PyArray_DIM(x, 0);
    float *dx = job_in(&J, x), *dz = job_in(&J, z), *dy = job_in(&J, y);
    float *l = job_out(&J, 1, &rows, NPY_FLOAT32, 0), *p = job_out(&J, DIMS(x), NPY_FLOAT32, 0);
    RUN(glae_ldl_loss_forward_cuda(J.ctx, l, p, dx, dz, dy, rows, group, (int)PyArray_DIM(x, 1),
                                   mode, lambda, mae));
}

/* cuda_ldl_loss_backward(ctx, dloss, prob, z, y, group, mode, lambda_, mae) -> dlogits */
static PyObject *py_cuda_ldl_loss_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *dlo, *po, *zo, *yo;
    int group, mode;
    float lambda, mae;
    if (!PyArg_ParseTuple(args, "OOOOOiiff:cuda_ldl_loss_backward", &co, &dlo, &po, &zo, &yo,
                          &group, &mode, &lambda, &mae))
        return NULL;
    F32(dl, dlo, "dloss", 1);
    F32(p, po, "prob", 2);
    F32(z, zo, "z", 2);
    F32(y, yo, "y", 1);
    if (loss_args(p, "prob", z, y, group)) return NULL;
    DIM(dl, "dloss", 0, PyArray_DIM(p, 0));
    JOB_START(co);
    float *ddl = job_in(&J, dl), *dp = job_in(&J, p), *dz = job_in(&J, z), *dy = job_in(&J, y);
    float *g = job_out(&J, DIMS(p), NPY_FLOAT32, 0);
    RUN(glae_ldl_loss_backward_cuda(J.ctx, g, ddl, dp, dz, dy, PyArray_DIM(p, 0), group,
                                    (int)PyArray_DIM(p, 1), mode, lambda, mae));
}

static PyObject *py_cuda_expected_age(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *po;
    if (!PyArg_ParseTuple(args, "OO:cuda_expected_age", &co, &po)) return NULL;
    F32(p, po, "p", 2);
    if (glae_check_fits_int(p, "p")) return NULL;
    JOB_START(co);
    npy_intp rows = PyArray_DIM(p, 0);
    float *dp = job_in(&J, p), *a = job_out(&J, 1, &rows, NPY_FLOAT32, 0);
    RUN(glae_expected_age_cuda(J.ctx, a, dp, rows, (int)PyArray_DIM(p, 1)));
}

static PyObject *py_cuda_kl_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *po, *qo;
    if (!PyArg_ParseTuple(args, "OOO:cuda_kl_rows", &co, &po, &qo)) return NULL;
    F32(p, po, "p", 2);
    F32(q, qo, "q", 2);
    if (glae_check_fits_int(p, "p")) return NULL;
    SAME(p, "p", q, "q");
    JOB_START(co);
    npy_intp rows = PyArray_DIM(p, 0);
    float *dp = job_in(&J, p), *dq = job_in(&J, q), *o = job_out(&J, 1, &rows, NPY_FLOAT32, 0);
    RUN(glae_kl_rows_cuda(J.ctx, o, dp, dq, rows, (int)PyArray_DIM(p, 1)));
}

/* cuda_adaptive_route(ctx, p_van, p_van_flip, p_bal, p_bal_flip, mode, flip_average)
 *   -> (prob, age, choice int32, ups (n, 2)); mode 0 smaller, 1 bigger */
static PyObject *py_cuda_adaptive_route(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *o[4];
    int mode, flip;
    if (!PyArg_ParseTuple(args, "OOOOOip:cuda_adaptive_route", &co, &o[0], &o[1], &o[2], &o[3],
                          &mode, &flip))
        return NULL;
    static const char *names[4] = {"p_van", "p_van_flip", "p_bal", "p_bal_flip"};
    PyArrayObject *p[4];
    for (int i = 0; i < 4; i++) {
        if (!(p[i] = glae_arg_f32(o[i], names[i], 2))) return NULL;
        if (i && glae_check_same_shape(p[0], names[0], p[i], names[i])) return NULL;
    }
    if (glae_check_fits_int(p[0], "p_van")) return NULL;
    JOB_START(co);
    npy_intp n = PyArray_DIM(p[0], 0), ud[2] = {n, 2};
    float *d[4];
    for (int i = 0; i < 4; i++) d[i] = job_in(&J, p[i]);
    float *prob = job_out(&J, DIMS(p[0]), NPY_FLOAT32, 0), *age = job_out(&J, 1, &n, NPY_FLOAT32, 0);
    int32_t *ch = job_out(&J, 1, &n, NPY_INT32, 0);
    float *ups = job_out(&J, 2, ud, NPY_FLOAT32, 0);
    RUN(glae_adaptive_route_cuda(J.ctx, prob, age, ch, ups, d[0], d[1], d[2], d[3], n,
                                 (int)PyArray_DIM(p[0], 1), mode, flip));
}

/* ---- SGD and metrics ---------------------------------------------------------------------- */

/* cuda_sgd_step(ctx, params, momentum_buf | None, grads, no_decay_mask uint8 | None, lr,
 *               momentum, dampening, weight_decay, nesterov, first_step, begin, end)
 * updates params and momentum_buf in place */
static PyObject *py_cuda_sgd_step(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *po, *mo, *go, *ko;
    float lr, momentum, dampening, wd;
    int nesterov, first;
    Py_ssize_t begin, end;
    if (!PyArg_ParseTuple(args, "OOOOOffffppnn:cuda_sgd_step", &co, &po, &mo, &go, &ko, &lr,
                          &momentum, &dampening, &wd, &nesterov, &first, &begin, &end))
        return NULL;
    F32(p, po, "params", 1);
    F32(g, go, "grads", 1);
    SAME(p, "params", g, "grads");
    F32_OPT(m, mo, "momentum_buf", 1);
    if (m) SAME(p, "params", m, "momentum_buf");
    int ok;
    PyArrayObject *k = glae_arg_array_opt(ko, "no_decay_mask", NPY_UINT8, 1, &ok);
    if (!ok) return NULL;
    if (k) SAME(p, "params", k, "no_decay_mask");
    if (glae_check_writeable(p, "params") || glae_check_writeable(m, "momentum_buf")) return NULL;
    if (begin < 0 || end < begin || end > PyArray_DIM(p, 0)) {
        PyErr_Format(PyExc_ValueError, "need 0 <= begin <= end <= %zd, got [%zd, %zd)",
                     (Py_ssize_t)PyArray_DIM(p, 0), begin, end);
        return NULL;
    }
    JOB_START(co);
    float *dp = job_inout(&J, p), *dm = job_inout(&J, m), *dg = job_in(&J, g);
    uint8_t *dk = job_in(&J, k);
    RUN(glae_sgd_step_cuda(J.ctx, dp, dm, dg, (size_t)begin, (size_t)end, dk, lr, momentum,
                           dampening, wd, nesterov, first));
}

static PyObject *metric(PyObject *args, const char *fmt, int eps) {
    PyObject *co, *yo, *ho, *so = NULL;
    if (!PyArg_ParseTuple(args, fmt, &co, &yo, &ho, &so)) return NULL;
    F32(y, yo, "y", 1);
    F32(h, ho, "yhat", 1);
    SAME(y, "y", h, "yhat");
    PyArrayObject *s = NULL;
    if (eps) {
        if (!(s = glae_arg_f32(so, "sigma", 1))) return NULL;
        SAME(y, "y", s, "sigma");
    }
    JOB_START(co);
    float *dy = job_in(&J, y), *dh = job_in(&J, h), *ds = job_in(&J, s);
    double v = 0.0;
    int st = 0;
    if (!J.failed)
        GLAE_NOGIL(st, eps ? glae_metric_epsilon_cuda(J.ctx, &v, dy, dh, ds, PyArray_SIZE(y))
                           : glae_metric_mae_cuda(J.ctx, &v, dy, dh, PyArray_SIZE(y)));
    PyObject *none = job_finish(&J, st);
    if (!none) return NULL;
    Py_DECREF(none);
    return PyFloat_FromDouble(v);
}

static PyObject *py_cuda_metrics_mae(PyObject *self, PyObject *args) {
    (void)self;
    return metric(args, "OOO:cuda_metrics_mae", 0);
}
static PyObject *py_cuda_metrics_epsilon(PyObject *self, PyObject *args) {
    (void)self;
    return metric(args, "OOOO:cuda_metrics_epsilon", 1);
}

/* ---- double-buffered input (glae_cuda_slot_*) ------------------------------------------ */

/* rows of x through two pinned and two device buffers, as a training loop would feed
 * batches: the host refills pinned[i] once the slot's copy is done, the copy stream
 * overwrites dev[i] once the compute stream released it, ReLU reads dev[i] after the copy */
static int double_buffer_relu(glae_ctx *ctx, const float *x, float *y, int64_t steps, int64_t n) {
    const size_t bytes = (size_t)n * sizeof(float);
    void *pinned[2] = {NULL, NULL}, *dev[2] = {NULL, NULL}, *out = NULL;
    glae_cuda_slot *slot[2] = {NULL, NULL};
    int st = GLAE_OK;
    for (int k = 0; k < 2 && !st; k++) {
        st = glae_cuda_host_alloc(&pinned[k], bytes);
        if (!st) st = glae_cuda_malloc(&dev[k], bytes);
        if (!st) st = glae_cuda_slot_create(ctx, &slot[k]);
    }
    if (!st) st = glae_cuda_malloc(&out, (size_t)steps * bytes);
    for (int64_t s = 0; s < steps && !st; s++) {
        const int i = (int)(s & 1);
        int ready = 0;
        st = glae_cuda_slot_host_query(slot[i], &ready);
        if (!st && !ready) st = glae_cuda_slot_host_sync(slot[i]);
        if (st) break;
        memcpy(pinned[i], x + s * n, bytes); /* the slot's previous copy has read it */
        if ((st = glae_cuda_slot_h2d(ctx, slot[i], dev[i], pinned[i], bytes))) break;
        if ((st = glae_cuda_slot_wait_copy(ctx, slot[i]))) break;
        if ((st = glae_relu_forward_cuda(ctx, (float *)out + s * n, (const float *)dev[i], n))) break;
        st = glae_cuda_slot_compute_done(ctx, slot[i]);
    }
    if (!st) st = glae_cuda_d2h(ctx, y, out, (size_t)steps * bytes);
    int synced = glae_cuda_sync(ctx); /* nothing may still use the buffers freed below */
    if (!st) st = synced;
    for (int k = 0; k < 2; k++) {
        glae_cuda_slot_destroy(slot[k]);
        glae_cuda_free(dev[k]);
        glae_cuda_host_free(pinned[k]);
    }
    glae_cuda_free(out);
    return st;
}

/* cuda_double_buffer_relu(ctx, x (steps, n) float32) -> relu(x): a test of the slot events */
static PyObject *py_cuda_double_buffer_relu(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *xo;
    if (!PyArg_ParseTuple(args, "OO:cuda_double_buffer_relu", &co, &xo)) return NULL;
    glae_ctx *ctx = get_ctx(co);
    if (!ctx) return NULL;
    F32(x, xo, "x", 2);
    if (PyArray_DIM(x, 0) < 1 || PyArray_DIM(x, 1) < 1) {
        PyErr_SetString(PyExc_ValueError, "x must have at least one row and one column");
        return NULL;
    }
    PyArrayObject *y = glae_new_array(2, PyArray_DIMS(x), NPY_FLOAT32);
    if (!y) return NULL;
    int st;
    GLAE_NOGIL(st, double_buffer_relu(ctx, PyArray_DATA(x), PyArray_DATA(y), PyArray_DIM(x, 0),
                                      PyArray_DIM(x, 1)));
    if (st) {
        Py_DECREF(y);
        return glae_raise(st);
    }
    return (PyObject *)y;
}

#define ENTRY(name) {#name, py_##name, METH_VARARGS, #name ": CUDA twin for parity tests (see docs/cuda.md)"},
PyMethodDef glae_cuda_methods[] = {CUDA_NAMES(ENTRY){NULL, NULL, 0, NULL}};

#endif
