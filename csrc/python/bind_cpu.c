/* CPU contexts as Python objects: cpu_context(backend) gives a context with the reference
 * kernels or the oneDNN backend's table (ops/backend.h), which every op binding takes as
 * its `ctx`, as it takes a CUDA context (job.c). The tests' `dev` fixture runs each op on
 * the oneDNN context against ctx=None (the reference). */
#include "python/py.h" /* Python.h first */

#include <stdatomic.h>
#include <string.h>

#include "ops/backend.h"
#include "ops/onednn.h"
#include "python/job.h"

#define CAPSULE "glae.cpu_ctx"

typedef struct {
    glae_ctx ctx;
    atomic_flag busy; /* one op call at a time: the context's scratch and primitives */
} cpu_ctx_box;

static void box_free(PyObject *cap) {
    cpu_ctx_box *b = PyCapsule_GetPointer(cap, CAPSULE);
    if (!b) {
        PyErr_Clear();
        return;
    }
    glae_ctx_close(&b->ctx);
    PyMem_RawFree(b);
}

int glae_py_cpu_backend(const char *s, int *backend) {
    if (!strcmp(s, "reference")) *backend = GLAE_CPU_REFERENCE;
    else if (!strcmp(s, "onednn")) *backend = GLAE_CPU_ONEDNN;
    else {
        PyErr_Format(PyExc_ValueError, "cpu_backend must be 'reference' or 'onednn', got '%s'", s);
        return -1;
    }
    if (*backend == GLAE_CPU_ONEDNN && !glae_onednn_built()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cpu_backend='onednn': glae was built without oneDNN (pip install "
                        "onednn-devel-cpu-gomp, then rebuild glae)");
        return -1;
    }
    return 0;
}

/* cpu_context(backend="reference") -> context */
static PyObject *py_cpu_context(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"backend", NULL};
    const char *name = "reference";
    int backend, st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|s:cpu_context", kwlist, &name)) return NULL;
    if (glae_py_cpu_backend(name, &backend)) return NULL;
    cpu_ctx_box *b = PyMem_RawCalloc(1, sizeof *b);
    if (!b) return PyErr_NoMemory();
    atomic_flag_clear(&b->busy);
    GLAE_NOGIL(st, glae_ctx_open_backend(&b->ctx, GLAE_CPU, 0, 0, backend));
    if (st) {
        PyMem_RawFree(b);
        return glae_raise(st);
    }
    PyObject *cap = PyCapsule_New(b, CAPSULE, box_free);
    if (!cap) {
        glae_ctx_close(&b->ctx);
        PyMem_RawFree(b);
    }
    return cap;
}

/* for job.c: the context of a cpu_context() capsule, taken for one call (NULL: not one;
 * -1 in *err with RuntimeError when another thread is using it) */
glae_ctx *glae_py_cpu_ctx_take(PyObject *o, int *err) {
    *err = 0;
    if (!PyCapsule_IsValid(o, CAPSULE)) return NULL;
    cpu_ctx_box *b = PyCapsule_GetPointer(o, CAPSULE);
    if (atomic_flag_test_and_set(&b->busy)) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU context is busy in another thread");
        *err = -1;
        return NULL;
    }
    return &b->ctx;
}

int glae_py_is_cpu_ctx(PyObject *o) { return PyCapsule_IsValid(o, CAPSULE); }

void glae_py_cpu_ctx_give(glae_ctx *ctx) {
    cpu_ctx_box *b = (cpu_ctx_box *)((char *)ctx - offsetof(cpu_ctx_box, ctx));
    atomic_flag_clear(&b->busy);
}

static glae_ctx *ctx_arg(PyObject *o) {
    if (!PyCapsule_IsValid(o, CAPSULE)) {
        PyErr_Format(PyExc_TypeError, "ctx must be a context from cpu_context(), got %s",
                     Py_TYPE(o)->tp_name);
        return NULL;
    }
    return &((cpu_ctx_box *)PyCapsule_GetPointer(o, CAPSULE))->ctx;
}

/* cpu_backend_name(ctx) -> "cpu" (the reference) or "onednn": the table the context runs */
static PyObject *py_cpu_backend_name(PyObject *self, PyObject *o) {
    (void)self;
    glae_ctx *ctx = ctx_arg(o);
    return ctx ? PyUnicode_FromString(ctx->ops->name) : NULL;
}

/* onednn_cache_size(ctx) -> primitives the context has built (0 for the reference) */
static PyObject *py_onednn_cache_size(PyObject *self, PyObject *o) {
    (void)self;
    glae_ctx *ctx = ctx_arg(o);
    if (!ctx) return NULL;
#ifdef GLAE_WITH_ONEDNN
    return PyLong_FromLong(glae_onednn_cache_size(ctx));
#else
    return PyLong_FromLong(0);
#endif
}

PyMethodDef glae_cpu_methods[] = {
    {"cpu_context", (PyCFunction)(void (*)(void))py_cpu_context, METH_VARARGS | METH_KEYWORDS,
     "cpu_context(backend='reference') -> a CPU context: 'reference' (the readable kernels) "
     "or 'onednn' (oneDNN primitives where they pay); pass it as any op's ctx"},
    {"cpu_backend_name", py_cpu_backend_name, METH_O,
     "cpu_backend_name(ctx) -> the name of the op table a CPU context runs ('cpu', 'onednn')"},
    {"onednn_cache_size", py_onednn_cache_size, METH_O,
     "onednn_cache_size(ctx) -> oneDNN primitives cached in a CPU context"},
    {NULL, NULL, 0, NULL},
};
