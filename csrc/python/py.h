/* Shared by every binding file: one NumPy API table for the whole module. */
#ifndef GLAE_PY_H
#define GLAE_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_20_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL glae_ARRAY_API
#ifndef GLAE_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "core/ctx.h"
#include "core/status.h"

/* Every binding parses its arguments through these (the macros below redirect the
 * CPython names, so no call site changes): the same parsing, but an integer out of the
 * range of its C type is a ValueError naming the function and the argument
 * ("align_face: argument 'size' = 1180591620717411303424 does not fit its C type (long
 * long, 64 bits)") instead of
 * CPython's OverflowError, which names neither. */
int glae_parse_tuple(PyObject *args, const char *fmt, ...);
int glae_parse_tuple_kw(PyObject *args, PyObject *kw, const char *fmt, char *const *kwlist, ...);
#ifndef GLAE_PARSE_NO_REDIRECT
#undef PyArg_ParseTuple /* PY_SSIZE_T_CLEAN maps them to the _SizeT variants */
#undef PyArg_ParseTupleAndKeywords
#define PyArg_ParseTuple glae_parse_tuple
#define PyArg_ParseTupleAndKeywords glae_parse_tuple_kw
#endif

/* Strict argument conversion (NumPy/bottleneck style): the object must already be a
 * C-contiguous ndarray of `typenum` with `ndim` dimensions (ndim < 0: any). Returns a
 * BORROWED reference, or NULL with TypeError (not an array, wrong dtype) or ValueError
 * (wrong rank, not contiguous) naming `name`. Nothing is copied or cast. */
PyArrayObject *glae_arg_array(PyObject *obj, const char *name, int typenum, int ndim);
#define glae_arg_f32(obj, name, ndim) glae_arg_array((obj), (name), NPY_FLOAT32, (ndim))

/* Same, but None is allowed and gives NULL without an error (*ok stays 1). */
PyArrayObject *glae_arg_array_opt(PyObject *obj, const char *name, int typenum, int ndim, int *ok);

/* ValueError unless PyArray_DIM(a, axis) == want. Returns 0 on success, -1 on error. */
int glae_check_dim(PyArrayObject *a, const char *name, int axis, npy_intp want);
/* ValueError unless a and b have identical shapes. */
int glae_check_same_shape(PyArrayObject *a, const char *na, PyArrayObject *b, const char *nb);
/* -1 with a ValueError when `a` (not NULL) is read-only: an argument updated in place */
int glae_check_writeable(PyArrayObject *a, const char *name);
/* A Python int (not bool) in [0, max]: TypeError naming `name` for other objects,
 * ValueError (not OverflowError) out of range. 0 on success, -1 on error. */
int glae_arg_uint(PyObject *o, const char *name, unsigned long long max, unsigned long long *out);
/* ValueError unless v >= lo (v > 0 when lo == 1 and so on). */
int glae_check_min(long long v, const char *name, long long lo);

/* New C-contiguous array (a NEW reference), filled with a poison pattern (NaN for
 * floats, 0xA5 bytes otherwise) when poisoning is on, so an element a kernel forgets to
 * write fails the tests. */
PyArrayObject *glae_new_array(int ndim, const npy_intp *dims, int typenum);
PyArrayObject *glae_zeros(int ndim, const npy_intp *dims, int typenum);
int glae_poison_enabled(void);

/* Outputs of a binding: raise on a failed status (releasing them), else the one array or a
 * tuple (NULL entries -> None). Steals the references in `outs`. */
PyObject *glae_return_arrays(int st, int n, PyArrayObject **outs);
/* ValueError unless every dimension of `a` fits a C int. 0 on success, -1 on error. */
int glae_check_fits_int(PyArrayObject *a, const char *name);
/* 'glae' | 'imagenet' | 'none' -> GLAE_NORM_* (ops.h). 0, or -1 with ValueError naming `what`. */
int glae_parse_norm(PyObject *o, const char *what, int *norm);

/* Raise the Python exception for a failed glae_status using the thread's message. */
PyObject *glae_raise(int status);

/* Run a C call without the GIL; `st` receives its status. GLAE_NOGIL runs it on the
 * process-wide default thread count (a call without a context, or with one made by
 * glae_ctx_open for this call); GLAE_NOGIL_CTX on the count of `ctx`, the context the
 * call works with (a Model's, a detector's), whatever other threads run meanwhile. */
#define GLAE_NOGIL(st, call)        \
    do {                            \
        glae_apply_num_threads();   \
        Py_BEGIN_ALLOW_THREADS;     \
        (st) = (call);              \
        Py_END_ALLOW_THREADS;       \
    } while (0)
#define GLAE_NOGIL_CTX(st, ctx, call)   \
    do {                                \
        glae_ctx_apply_threads(ctx);    \
        Py_BEGIN_ALLOW_THREADS;         \
        (st) = (call);                  \
        Py_END_ALLOW_THREADS;           \
    } while (0)

/* Method tables, one per family (bind_<family>.c), each ending with {NULL}. */
extern PyMethodDef glae_core_methods[];
extern PyMethodDef glae_ops_methods[];
extern PyMethodDef glae_conv_methods[];
extern PyMethodDef glae_loss_methods[];
extern PyMethodDef glae_metrics_methods[];
extern PyMethodDef glae_train_methods[];
extern PyMethodDef glae_data_methods[];
extern PyMethodDef glae_nn_methods[];
extern PyMethodDef glae_mtcnn_methods[];
extern PyMethodDef glae_bf16_methods[]; /* mixed-precision layers, CPU or a CUDA ctx */
extern PyMethodDef glae_cuda_methods[]; /* raise RuntimeError when built without CUDA */
extern PyMethodDef glae_pretrain_methods[]; /* verification figures (bind_pretrain.c) */
extern PyMethodDef glae_cpu_methods[]; /* CPU contexts: the reference or oneDNN (bind_cpu.c) */
/* "reference" / "onednn" -> GLAE_CPU_REFERENCE / GLAE_CPU_ONEDNN; -1 with ValueError, or
 * RuntimeError for "onednn" in a build without it (bind_cpu.c) */
int glae_py_cpu_backend(const char *s, int *backend);
extern PyMethodDef glae_dist_methods[]; /* data parallelism (bind_dist.c) */
/* Types a family adds to the module (Model, Loader, ...); 0 on success. */
int glae_nn_add_types(PyObject *m);
int glae_data_add_types(PyObject *m);
int glae_pretrain_add_types(PyObject *m); /* bind_pretrain.c */
int glae_dist_add_types(PyObject *m);     /* bind_dist.c */

#endif
