/* Bindings for the core: threads, poisoning, the counter-based RNG, CUDA devices. */
#include "python/py.h"  /* Python.h first */
#include "core/ctx.h"
#include "core/cuda.h"
#include "core/rng.h"
#ifdef _OPENMP
#include <omp.h>
#endif

PyObject *glae_py_set_poison(PyObject *self, PyObject *arg);

static PyObject *py_set_num_threads(PyObject *self, PyObject *args) {
    (void)self;
    int n;
    if (!PyArg_ParseTuple(args, "i:set_num_threads", &n)) return NULL;
    if (glae_check_min(n, "n", 1)) return NULL;
    if (n > 1024) { /* OpenMP would try to start them all at the next parallel loop */
        PyErr_Format(PyExc_ValueError, "set_num_threads: n must be at most 1024; got %d", n);
        return NULL;
    }
    glae_set_num_threads(n);
    Py_RETURN_NONE;
}

/* OpenMP's thread count as the calling thread sees it now, without applying any: for the
 * tests that a call ran on the count it should (the default, or its context's) */
static PyObject *py_omp_threads_here(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef _OPENMP
    return PyLong_FromLong(omp_get_max_threads());
#else
    return PyLong_FromLong(1);
#endif
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(glae_get_num_threads());
}

/* philox4x32(key (2,) uint32, ctr (4,) uint32) -> (4,) uint32, for known-answer tests */
static PyObject *py_philox4x32(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ko, *co;
    if (!PyArg_ParseTuple(args, "OO:philox4x32", &ko, &co)) return NULL;
    PyArrayObject *k = glae_arg_array(ko, "key", NPY_UINT32, 1);
    if (!k || glae_check_dim(k, "key", 0, 2)) return NULL;
    PyArrayObject *c = glae_arg_array(co, "ctr", NPY_UINT32, 1);
    if (!c || glae_check_dim(c, "ctr", 0, 4)) return NULL;
    npy_intp dims[1] = {4};
    PyArrayObject *out = glae_new_array(1, dims, NPY_UINT32);
    if (!out) return NULL;
    glae_philox4x32(PyArray_DATA(k), PyArray_DATA(c), PyArray_DATA(out));
    return (PyObject *)out;
}

/* rng_uniform(seed, a, b, c, n) / rng_normal(...): n draws of the stream (seed; a, b, c) */
static PyObject *rng_draw(PyObject *args, const char *fmt, int normal) {
    unsigned long long seed;
    unsigned int a, b, c;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, fmt, &seed, &a, &b, &c, &n)) return NULL;
    if (glae_check_min(n, "n", 0)) return NULL;
    npy_intp dims[1] = {n};
    PyArrayObject *out = glae_new_array(1, dims, NPY_FLOAT64);
    if (!out) return NULL;
    double *p = PyArray_DATA(out);
    glae_rng r;
    glae_rng_init(&r, seed, a, b, c);
    for (Py_ssize_t i = 0; i < n; i++) p[i] = normal ? glae_rng_normal(&r) : glae_rng_uniform(&r);
    return (PyObject *)out;
}

static PyObject *py_rng_uniform(PyObject *self, PyObject *args) {
    (void)self;
    return rng_draw(args, "KIIIn:rng_uniform", 0);
}

static PyObject *py_rng_normal(PyObject *self, PyObject *args) {
    (void)self;
    return rng_draw(args, "KIIIn:rng_normal", 1);
}

/* rng_permutation(n, seed, stream=0) -> int64[n]: glae_rng_permutation (core/rng.h) */
static PyObject *py_rng_permutation(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"n", "seed", "stream", NULL};
    PyObject *no, *seedo, *streamo = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:rng_permutation", kwlist, &no, &seedo,
                                     &streamo))
        return NULL;
    unsigned long long n, seed, stream = 0;
    if (glae_arg_uint(no, "n", UINT32_MAX, &n) || glae_arg_uint(seedo, "seed", UINT64_MAX, &seed) ||
        (streamo && glae_arg_uint(streamo, "stream", UINT32_MAX, &stream)))
        return NULL;
    npy_intp dim = (npy_intp)n;
    PyArrayObject *out = glae_new_array(1, &dim, NPY_INT64);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_rng_permutation(PyArray_DATA(out), (int64_t)n, seed, (uint32_t)stream));
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

/* cuda_devices() -> list of (name, major, minor); [] without a GPU, a driver or the CUDA
 * backend; RuntimeError when a driver is present but unusable (cuda_device_status says
 * why without raising) */
static PyObject *py_cuda_devices(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *list = PyList_New(0);
#ifdef GLAE_WITH_CUDA
    int n = 0, st;
    GLAE_NOGIL(st, glae_cuda_device_count(&n));
    if (st) {
        Py_DECREF(list);
        return glae_raise(st);
    }
    for (int i = 0; i < n && list; i++) {
        char name[256];
        int major = 0, minor = 0;
        if ((st = glae_cuda_device_info(i, name, sizeof name, &major, &minor))) {
            Py_DECREF(list);
            return glae_raise(st);
        }
        PyObject *t = Py_BuildValue("(sii)", name, major, minor);
        if (!t || PyList_Append(list, t) < 0) Py_CLEAR(list);
        Py_XDECREF(t);
    }
#endif
    return list;
}

/* cuda_device_status() -> {"state", "count", "message", "driver_version",
 * "runtime_version"}; never raises for a missing or broken driver. state is "ready",
 * "no_device", "no_driver", "driver_error" (a driver that cannot be used: too old for
 * this build, an init failure) or "not_built". */
static PyObject *py_cuda_device_status(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef GLAE_WITH_CUDA
    static const char *const names[] = {"ready", "no_device", "no_driver", "driver_error"};
    char msg[512];
    int n = 0, drv = 0, rt = 0, state;
    Py_BEGIN_ALLOW_THREADS
    state = glae_cuda_probe(&n, &drv, &rt, msg, (int)sizeof msg);
    Py_END_ALLOW_THREADS
    if (state < 0 || state > 3) state = 3;
    return Py_BuildValue("{s:s,s:i,s:s,s:i,s:i}", "state", names[state], "count", n, "message", msg,
                         "driver_version", drv, "runtime_version", rt);
#else
    return Py_BuildValue("{s:s,s:i,s:s,s:i,s:i}", "state", "not_built", "count", 0, "message",
                         "glae was built without CUDA (see glae._C.BUILD_INFO['reason'])",
                         "driver_version", 0, "runtime_version", 0);
#endif
}

PyMethodDef glae_core_methods[] = {
    {"cuda_device_status", py_cuda_device_status, METH_NOARGS,
     "cuda_device_status() -> {state, count, message, driver_version, runtime_version}; "
     "state: ready, no_device, no_driver, driver_error, not_built"},
    {"cuda_devices", py_cuda_devices, METH_NOARGS, "cuda_devices() -> [(name, major, minor)]"},
    {"set_num_threads", py_set_num_threads, METH_VARARGS,
     "set_num_threads(n): the default CPU threads (OpenMP and BLAS), in every thread, of the work "
     "without a count of its own (a Model made without threads=, the op functions)"},
    {"_omp_threads_here", py_omp_threads_here, METH_NOARGS,
     "OpenMP's thread count in the calling thread (tests)"},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"set_poison", glae_py_set_poison, METH_O, "set_poison(flag): fill new outputs with NaN/0xA5 before kernels run (testing)."},
    {"philox4x32", py_philox4x32, METH_VARARGS, "philox4x32(key uint32[2], ctr uint32[4]) -> uint32[4]"},
    {"rng_uniform", py_rng_uniform, METH_VARARGS, "rng_uniform(seed, a, b, c, n) -> float64[n] in [0, 1)"},
    {"rng_normal", py_rng_normal, METH_VARARGS, "rng_normal(seed, a, b, c, n) -> float64[n] ~ N(0, 1)"},
    {"rng_permutation", (PyCFunction)(void (*)(void))py_rng_permutation, METH_VARARGS | METH_KEYWORDS,
     "rng_permutation(n, seed, stream=0) -> int64[n]: a permutation of range(n) (n < 2^32), "
     "Fisher-Yates whose swap at position i is drawn from the Philox stream (seed; stream, "
     "'PRM1', i): the same on every machine and NumPy version."},
    {NULL, NULL, 0, NULL},
};
