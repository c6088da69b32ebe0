#include "python/py.h"

#include <limits.h>  /* Python.h first */
#include <math.h>
#include <string.h>

static int poison = 0;

int glae_poison_enabled(void) { return poison; }

PyArrayObject *glae_arg_array(PyObject *obj, const char *name, int typenum, int ndim) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum) {
        PyArray_Descr *want = PyArray_DescrFromType(typenum);
        PyErr_Format(PyExc_TypeError, "%s must have dtype %S, got %S", name, (PyObject *)want,
                     (PyObject *)PyArray_DESCR(a));
        Py_XDECREF(want);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim,
                     PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be C-contiguous (use numpy.ascontiguousarray)", name);
        return NULL;
    }
    if (!PyArray_ISNOTSWAPPED(a) || !PyArray_ISALIGNED(a)) { /* C reads native, aligned values */
        PyErr_Format(PyExc_ValueError,
                     "%s must be aligned and in this machine's byte order, got %S (use "
                     "numpy.ascontiguousarray(%s, dtype=...) with a native dtype)",
                     name, (PyObject *)PyArray_DESCR(a), name);
        return NULL;
    }
    return a;
}

PyArrayObject *glae_arg_array_opt(PyObject *obj, const char *name, int typenum, int ndim, int *ok) {
    *ok = 1;
    if (obj == NULL || obj == Py_None) return NULL;
    PyArrayObject *a = glae_arg_array(obj, name, typenum, ndim);
    if (!a) *ok = 0;
    return a;
}

int glae_check_writeable(PyArrayObject *a, const char *name) {
    if (!a || PyArray_ISWRITEABLE(a)) return 0;
    PyErr_Format(PyExc_ValueError, "%s must be writeable (it is updated in place)", name);
    return -1;
}

int glae_check_dim(PyArrayObject *a, const char *name, int axis, npy_intp want) {
    if (PyArray_DIM(a, axis) != want) {
        PyErr_Format(PyExc_ValueError, "%s: dimension %d must be %zd, got %zd", name, axis,
                     (Py_ssize_t)want, (Py_ssize_t)PyArray_DIM(a, axis));
        return -1;
    }
    return 0;
}

int glae_check_same_shape(PyArrayObject *a, const char *na, PyArrayObject *b, const char *nb) {
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        memcmp(PyArray_DIMS(a), PyArray_DIMS(b), (size_t)PyArray_NDIM(a) * sizeof(npy_intp)) == 0)
        return 0;
    PyObject *sa = PyObject_GetAttrString((PyObject *)a, "shape");
    PyObject *sb = PyObject_GetAttrString((PyObject *)b, "shape");
    PyErr_Format(PyExc_ValueError, "%s and %s must have the same shape, got %S and %S", na, nb,
                 sa, sb);
    Py_XDECREF(sa);
    Py_XDECREF(sb);
    return -1;
}

int glae_arg_uint(PyObject *o, const char *name, unsigned long long max, unsigned long long *out) {
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow < 0 || (!overflow && v < 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0, got %S", name, o);
        return -1;
    }
    unsigned long long u = (unsigned long long)v;
    int too_big = 0;
    if (overflow > 0) { /* above LLONG_MAX: may still fit 64 unsigned bits */
        u = PyLong_AsUnsignedLongLong(o);
        too_big = u == (unsigned long long)-1 && PyErr_Occurred();
        if (too_big) PyErr_Clear();
    }
    if (too_big || u > max) {
        PyErr_Format(PyExc_ValueError, "%s must be <= %llu, got %S", name, max, o);
        return -1;
    }
    *out = u;
    return 0;
}

int glae_check_min(long long v, const char *name, long long lo) {
    if (v < lo) {
        PyErr_Format(PyExc_ValueError, "%s must be >= %lld, got %lld", name, lo, v);
        return -1;
    }
    return 0;
}

PyArrayObject *glae_new_array(int ndim, const npy_intp *dims, int typenum) {
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(ndim, (npy_intp *)dims, typenum);
    if (!a || !poison) return a;
    size_t bytes = (size_t)PyArray_NBYTES(a);
    if (typenum == NPY_FLOAT32) {
        float *p = PyArray_DATA(a);
        for (size_t i = 0; i < bytes / sizeof(float); i++) p[i] = NAN;
    } else if (typenum == NPY_FLOAT64) {
        double *p = PyArray_DATA(a);
        for (size_t i = 0; i < bytes / sizeof(double); i++) p[i] = NAN;
    } else {
        memset(PyArray_DATA(a), 0xA5, bytes);
    }
    return a;
}

PyArrayObject *glae_zeros(int ndim, const npy_intp *dims, int typenum) {
    return (PyArrayObject *)PyArray_ZEROS(ndim, (npy_intp *)dims, typenum, 0);
}

/* Return the outputs of a binding: on a failed status release them and raise; one array
 * is returned as is, several as a tuple (a NULL entry becomes None). Steals `outs`. */
PyObject *glae_return_arrays(int st, int n, PyArrayObject **outs) {
    if (st) {
        for (int i = 0; i < n; i++) Py_XDECREF(outs[i]);
        return glae_raise(st);
    }
    if (n == 1) return (PyObject *)outs[0];
    PyObject *t = PyTuple_New(n);
    if (!t) {
        for (int i = 0; i < n; i++) Py_XDECREF(outs[i]);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *o = outs[i] ? (PyObject *)outs[i] : Py_NewRef(Py_None);
        PyTuple_SET_ITEM(t, i, o);
    }
    return t;
}

/* ValueError unless every dimension of `a` fits a C int (the kernels' size type). */
int glae_check_fits_int(PyArrayObject *a, const char *name) {
    for (int i = 0; i < PyArray_NDIM(a); i++)
        if (PyArray_DIM(a, i) > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "%s: dimension %d is too large", name, i);
            return -1;
        }
    return 0;
}

int glae_parse_norm(PyObject *o, const char *what, int *norm) {
    static const char *const names[] = {"glae", "imagenet", "none"}; /* GLAE_NORM_* order */
    const char *s = PyUnicode_Check(o) ? PyUnicode_AsUTF8(o) : NULL;
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, names[i])) {
            *norm = i;
            return 0;
        }
    PyErr_Clear(); /* a failed UTF-8 conversion becomes the message below */
    PyErr_Format(PyExc_ValueError, "%s: norm must be 'glae', 'imagenet' or 'none'", what);
    return -1;
}

PyObject *glae_raise(int status) {
    PyObject *exc;
    switch (status) {
    case GLAE_ERR_VALUE: exc = PyExc_ValueError; break;
    case GLAE_ERR_TYPE: exc = PyExc_TypeError; break;
    case GLAE_ERR_MEMORY: exc = PyExc_MemoryError; break;
    case GLAE_ERR_IO: exc = PyExc_OSError; break;
    default: exc = PyExc_RuntimeError; break;
    }
    PyErr_SetString(exc, glae_last_error());
    return NULL;
}

static PyObject *set_poison(PyObject *self, PyObject *arg) {
    (void)self;
    int v = PyObject_IsTrue(arg);
    if (v < 0) return NULL;
    poison = v;
    Py_RETURN_NONE;
}

/* exported through bind_core.c's table */
PyObject *glae_py_set_poison(PyObject *self, PyObject *arg) { return set_poison(self, arg); }
