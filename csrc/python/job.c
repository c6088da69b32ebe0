/* One op call on either device (job.h). */
#include "python/job.h"

#include <stdatomic.h>
#include <string.h>

/* One CPU context kept across calls, so scratch (im2col columns: <= 16 MB + a chunk) is not
 * allocated and page-faulted again on every call, as a model holding its ctx would not.
 * Calls run without the GIL: a second concurrent call takes a fresh context instead. */
static glae_ctx cached_ctx;
static int cached_init;
static atomic_flag cached_busy = ATOMIC_FLAG_INIT;

static int cpu_acquire(glae_job *j) {
    if (!atomic_flag_test_and_set(&cached_busy)) {
        if (!cached_init && glae_ctx_open(&cached_ctx, GLAE_CPU, 0, 0) == GLAE_OK) cached_init = 1;
        if (cached_init) {
            j->ctx = &cached_ctx;
            return GLAE_OK;
        }
        atomic_flag_clear(&cached_busy);
    }
    GLAE_TRY(glae_ctx_open(&j->cpu, GLAE_CPU, 0, 0));
    j->own_cpu = 1;
    j->ctx = &j->cpu;
    return GLAE_OK;
}

static void cpu_release(glae_job *j) {
    if (j->taken) glae_py_cpu_ctx_give(j->ctx);
    else if (j->ctx == &cached_ctx) atomic_flag_clear(&cached_busy);
    else if (j->own_cpu) glae_ctx_close(&j->cpu);
}

int glae_job_begin(glae_job *j, PyObject *ctxo) {
    memset(j, 0, sizeof *j);
    if (!ctxo || ctxo == Py_None) {
        int st = cpu_acquire(j);
        if (st) {
            glae_raise(st);
            return -1;
        }
        return 0;
    }
    int err;
    if ((j->ctx = glae_py_cpu_ctx_take(ctxo, &err))) {
        j->taken = 1;
        return 0;
    }
    if (err) return -1;
#ifdef GLAE_WITH_CUDA
    j->ctx = glae_py_cuda_ctx(ctxo);
    j->device = 1;
    return j->ctx ? 0 : -1;
#else
    /* no CUDA context can exist in this build */
    PyErr_Format(PyExc_TypeError,
                 "ctx must be None (the CPU), a context from cpu_context() (glae was built "
                 "without CUDA), got %s",
                 Py_TYPE(ctxo)->tp_name);
    return -1;
#endif
}

int glae_job_check(glae_job *j, int st) {
    if (st && !j->failed) {
        glae_raise(st);
        j->failed = 1;
    }
    return j->failed;
}

void *glae_job_tmp(glae_job *j, size_t bytes) {
    if (j->failed) return NULL;
    if (j->ndev == GLAE_JOB_MAX) {
        PyErr_SetString(PyExc_RuntimeError, "op binding: too many buffers");
        j->failed = 1;
        return NULL;
    }
    void *d = NULL;
    if (glae_job_check(j, j->ctx->dev->alloc(j->ctx, &d, bytes ? bytes : 1))) return NULL;
    j->dev[j->ndev++] = d;
    return d;
}

static void track(glae_job *j, PyArrayObject *h, void *d, int ret) {
    j->host[j->nhost] = h;
    j->src[j->nhost] = d;
    j->ret[j->nhost++] = ret;
}

static int room(glae_job *j) {
    if (j->nhost < GLAE_JOB_MAX) return 1;
    PyErr_SetString(PyExc_RuntimeError, "op binding: too many outputs");
    j->failed = 1;
    return 0;
}

/* the device copy of a host array */
static void *copy_in(glae_job *j, PyArrayObject *a) {
    const size_t bytes = (size_t)PyArray_NBYTES(a);
    void *d = glae_job_tmp(j, bytes);
    if (d && bytes)
        glae_job_check(j, j->ctx->dev->copy(j->ctx, d, PyArray_DATA(a), bytes, GLAE_COPY_H2D));
    return j->failed ? NULL : d;
}

void *glae_job_in(glae_job *j, PyArrayObject *a) {
    if (!a || j->failed) return NULL;
    return j->device ? copy_in(j, a) : PyArray_DATA(a);
}

static void *inout(glae_job *j, PyArrayObject *a, int ret) {
    if (!a || j->failed) return NULL;
    if (!j->device && !ret) return PyArray_DATA(a);
    if (!room(j)) return NULL;
    void *d = j->device ? copy_in(j, a) : PyArray_DATA(a);
    if (d) {
        Py_INCREF(a);
        track(j, a, j->device ? d : NULL, ret);
    }
    return d;
}

void *glae_job_inout(glae_job *j, PyArrayObject *a) { return inout(j, a, 0); }
void *glae_job_acc(glae_job *j, PyArrayObject *a) { return inout(j, a, 1); }

void *glae_job_out(glae_job *j, int ndim, const npy_intp *dims, int typenum, int zero) {
    if (j->failed || !room(j)) return NULL;
    PyArrayObject *h = zero ? glae_zeros(ndim, dims, typenum) : glae_new_array(ndim, dims, typenum);
    if (!h) {
        j->failed = 1;
        return NULL;
    }
    if (!j->device) {
        track(j, h, NULL, 1);
        return PyArray_DATA(h);
    }
    /* the device buffer starts as the host array does: poisoned or zero */
    void *d = copy_in(j, h);
    track(j, h, d, 1);
    return d;
}

void glae_job_none(glae_job *j) {
    if (room(j)) track(j, NULL, NULL, 1);
}

PyObject *glae_job_finish(glae_job *j, int st) {
    glae_job_check(j, st);
    glae_ctx *ctx = j->ctx;
    if (j->device && !j->failed) {
        Py_BEGIN_ALLOW_THREADS;
        st = ctx->dev->sync(ctx);
        for (int i = 0; i < j->nhost && !st; i++)
            if (j->host[i] && j->src[i])
                st = ctx->dev->copy(ctx, PyArray_DATA(j->host[i]), j->src[i],
                                    (size_t)PyArray_NBYTES(j->host[i]), GLAE_COPY_D2H);
        Py_END_ALLOW_THREADS;
        glae_job_check(j, st);
    }
    if (j->device && ctx) ctx->dev->sync(ctx); /* no kernel may still use a buffer freed below */
    for (int i = 0; i < j->ndev; i++) ctx->dev->free(ctx, j->dev[i]);
    if (!j->device) cpu_release(j);
    PyObject *res = NULL;
    int nret = 0;
    for (int i = 0; i < j->nhost; i++) nret += j->ret[i];
    if (!j->failed) {
        if (nret == 0) res = Py_NewRef(Py_None);
        else if (nret > 1) res = PyTuple_New(nret);
    }
    for (int i = 0, k = 0; i < j->nhost; i++) {
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

int glae_check_min_ndim(PyArrayObject *a, const char *name, int lo) {
    if (PyArray_NDIM(a) >= lo) return 0;
    PyErr_Format(PyExc_ValueError, "%s must have at least %d dimension(s), got %d", name, lo,
                 PyArray_NDIM(a));
    return -1;
}

int glae_check_argmax(PyArrayObject *a, int h, int w) {
    /* argmax values index the input: checked here, the GPU kernels do not check them */
    const int32_t *v = PyArray_DATA(a);
    for (int64_t i = 0; i < PyArray_SIZE(a); i++)
        if (v[i] < 0 || (int64_t)v[i] >= (int64_t)h * w) {
            PyErr_Format(PyExc_ValueError,
                         "argmax holds an index outside [0, H*W): argmax[%lld] = %d for a "
                         "%dx%d input", (long long)i, v[i], h, w);
            return -1;
        }
    return 0;
}
