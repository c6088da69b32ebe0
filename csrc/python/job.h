/* One op call from Python on either device. Every op binding takes an optional `ctx`
 * (None: the CPU; a context from cuda_context(): that GPU) and runs the op through the
 * context's table (ops/backend.h), so one binding serves both devices and the tests
 * compare them with the same call.
 *
 * On the CPU the job hands the kernels the NumPy buffers themselves (no copies: the CPU
 * bindings cost what they cost before); on a GPU it makes device copies of the inputs and
 * copies outputs and in-place arguments back at the end. Outputs come back poisoned (NaN
 * floats, -1 ints) unless asked to start at zero, so an element a kernel forgets to write
 * fails the tests on every device.
 *
 *   glae_job J;
 *   if (glae_job_begin(&J, ctxo)) return NULL;
 *   float *x = glae_job_in(&J, xa), *y = glae_job_out(&J, ndim, dims, NPY_FLOAT32, 0);
 *   GLAE_JOB_RUN(J, J.ctx->ops->relu_forward(J.ctx, y, x, n));
 *
 * Once begun, a job must be finished (glae_job_finish, which GLAE_JOB_RUN calls): it owns
 * the context, the device buffers and the output arrays. After a failed step the other
 * steps return NULL and the finish raises the first error. */
#ifndef GLAE_PY_JOB_H
#define GLAE_PY_JOB_H

#include "python/py.h" /* Python.h first */

#include "ops/backend.h"

#define GLAE_JOB_MAX 24

typedef struct {
    glae_ctx *ctx; /* &cpu, or the caller's CUDA context */
    glae_ctx cpu;
    int own_cpu; /* cpu is this job's (the cached CPU context was busy) */
    int taken;   /* ctx is a cpu_context()'s, held for this call */
    int device;  /* buffers live apart from the NumPy arrays (a GPU) */
    void *dev[GLAE_JOB_MAX];
    int ndev;
    /* arrays receiving results at the end; ret: part of the returned value */
    PyArrayObject *host[GLAE_JOB_MAX];
    void *src[GLAE_JOB_MAX];
    int ret[GLAE_JOB_MAX], nhost;
    int failed; /* a Python exception is set */
} glae_job;

/* The context of `ctxo` (None or NULL: a fresh CPU context). -1 with TypeError for anything
 * else than a context from cuda_context(), or RuntimeError without the CUDA backend. */
int glae_job_begin(glae_job *j, PyObject *ctxo);
/* The kernels' view of a read-only input (NULL array: NULL). */
void *glae_job_in(glae_job *j, PyArrayObject *a);
/* An argument the kernel updates in place (running statistics, parameters). */
void *glae_job_inout(glae_job *j, PyArrayObject *a);
/* A fresh output array, part of the returned value in call order; zero: starts at zero
 * (accumulated gradients), else poisoned. */
void *glae_job_out(glae_job *j, int ndim, const npy_intp *dims, int typenum, int zero);
/* An output given by the caller (an accumulator), added to in place and returned. */
void *glae_job_acc(glae_job *j, PyArrayObject *a);
/* None in the returned tuple (an output that was not asked for). */
void glae_job_none(glae_job *j);
/* Scratch on the job's device, zeroed; freed at the finish. */
void *glae_job_tmp(glae_job *j, size_t bytes);
/* Record a failed status (raise); returns j->failed. */
int glae_job_check(glae_job *j, int st);
/* Wait for the device, copy results back, free everything. Returns the outputs (one
 * object, or a tuple for several, None for none), or NULL with the exception set. */
PyObject *glae_job_finish(glae_job *j, int st);

/* Argument checks shared by the op bindings: each returns NULL from the binding. */
#define ARG_F32(var, obj, name, nd)                          \
    PyArrayObject *var = glae_arg_f32((obj), (name), (nd));  \
    if (!var) return NULL;
#define ARG_F32_OPT(var, obj, name, nd)                                                   \
    int ok_##var;                                                                         \
    PyArrayObject *var = glae_arg_array_opt((obj), (name), NPY_FLOAT32, (nd), &ok_##var); \
    if (!ok_##var) return NULL;
#define ARG_SAME(a, na, b, nb) \
    if (glae_check_same_shape((a), (na), (b), (nb))) return NULL;
#define ARG_DIM(a, name, axis, want) \
    if (glae_check_dim((a), (name), (axis), (want))) return NULL;
#define ARG_FITS(a, name) \
    if (glae_check_fits_int((a), (name))) return NULL;
#define DIMS_OF(a) PyArray_NDIM(a), PyArray_DIMS(a)
/* (rows, C) view of an array: the product of all dimensions but the last, and the last */
static inline int64_t glae_rows_of(PyArrayObject *a) {
    int64_t r = 1;
    for (int i = 0; i < PyArray_NDIM(a) - 1; i++) r *= PyArray_DIM(a, i);
    return r;
}
static inline int glae_last_dim(PyArrayObject *a) { return (int)PyArray_DIM(a, PyArray_NDIM(a) - 1); }
/* ValueError unless a has at least `lo` dimensions */
int glae_check_min_ndim(PyArrayObject *a, const char *name, int lo);
/* ValueError unless every max-pool argmax (int32) indexes an h x w input */
int glae_check_argmax(PyArrayObject *a, int h, int w);

/* The op without the GIL unless a step failed, then the finish. */
#define GLAE_JOB_RUN(J, call)                      \
    do {                                           \
        int st_ = 0;                               \
        if (!(J).failed) GLAE_NOGIL(st_, call);    \
        return glae_job_finish(&(J), st_);         \
    } while (0)

/* the context of a cpu_context() capsule, held for one call (bind_cpu.c): NULL when o is
 * not one; NULL with *err = -1 and RuntimeError when another call holds it */
glae_ctx *glae_py_cpu_ctx_take(PyObject *o, int *err);
void glae_py_cpu_ctx_give(glae_ctx *ctx);
/* 1 when o is a cpu_context() (bindings of functions outside the op table run the CPU code) */
int glae_py_is_cpu_ctx(PyObject *o);

/* the context of a cuda_context() capsule (bind_cuda.c); NULL with TypeError */
glae_ctx *glae_py_cuda_ctx(PyObject *o);

#endif
