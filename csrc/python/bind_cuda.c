/* The CUDA context as a Python object, and what only a CUDA context has: its math mode,
 * cuDNN's benchmark mode and algorithm cache, and the double-buffered input slots. The
 * ops themselves take the context as their `ctx` argument (job.h). Without the CUDA
 * backend every name exists and raises RuntimeError. */
#include "python/py.h" /* Python.h first */

#define CUDA_NAMES(X)                                                              \
    X(cuda_context) X(cuda_set_math) X(cuda_set_benchmark) X(cuda_algo_cache_size) \
    X(cuda_double_buffer_relu)

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
#include "ops/backend.h"
#include "ops/ops_cuda.h"

#define CAPSULE "glae.cuda_ctx"

static void ctx_capsule_free(PyObject *cap) {
    glae_ctx *ctx = PyCapsule_GetPointer(cap, CAPSULE);
    if (!ctx) {
        PyErr_Clear();
        return;
    }
    glae_ctx_close(ctx);
    PyMem_RawFree(ctx);
}

static glae_ctx *get_ctx(PyObject *o) {
    if (!PyCapsule_IsValid(o, CAPSULE)) {
        PyErr_Format(PyExc_TypeError,
                     "ctx must be None (the CPU), a context from cpu_context() or cuda_context(), got %s",
                     Py_TYPE(o)->tp_name);
        return NULL;
    }
    return PyCapsule_GetPointer(o, CAPSULE);
}

/* for job.c: the context of a cuda_context() capsule, NULL with TypeError */
glae_ctx *glae_py_cuda_ctx(PyObject *o) { return get_ctx(o); }

/* cuda_context(device=0, math=0) -> context (0 fp32, 1 tf32, 2 bf16) */
static PyObject *py_cuda_context(PyObject *self, PyObject *args) {
    (void)self;
    int device = 0, math = 0, st;
    if (!PyArg_ParseTuple(args, "|ii:cuda_context", &device, &math)) return NULL;
    glae_ctx *ctx = PyMem_RawCalloc(1, sizeof *ctx);
    if (!ctx) return PyErr_NoMemory();
    GLAE_NOGIL(st, glae_ctx_open(ctx, GLAE_CUDA, device, math));
    if (st) {
        PyMem_RawFree(ctx);
        return glae_raise(st);
    }
    PyObject *cap = PyCapsule_New(ctx, CAPSULE, ctx_capsule_free);
    if (!cap) {
        glae_ctx_close(ctx);
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
    PyArrayObject *x = glae_arg_f32(xo, "x", 2);
    if (!x) return NULL;
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

#define ENTRY(name) {#name, py_##name, METH_VARARGS, #name ": see docs/cuda.md"},
PyMethodDef glae_cuda_methods[] = {CUDA_NAMES(ENTRY){NULL, NULL, 0, NULL}};

#endif
