#define GLAE_PARSE_NO_REDIRECT /* this file defines the redirected parsers */
#include "python/py.h"

#include <limits.h>  /* Python.h first */
#include <math.h>
#include <stdarg.h>
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

/* ---- argument parsing that names the argument of an out-of-range integer ---------------- */

static const char *unit_ctype(char c) {
    switch (c) {
    case 'b': return "unsigned char, 0..255";
    case 'B': return "unsigned char";
    case 'h': return "short, 16 bits";
    case 'H': return "unsigned short";
    case 'i': return "int, 32 bits";
    case 'I': return "unsigned int, 32 bits";
    case 'l': return "long, 64 bits";
    case 'k': return "unsigned long";
    case 'L': return "long long, 64 bits";
    case 'K': return "unsigned long long, 64 bits";
    case 'n': return "Py_ssize_t, 64 bits";
    case 'c': return "char";
    case 'C': return "char";
    case 'f': return "float";
    case 'd': return "double";
    default: return NULL;
    }
}

/* Walks a format string one argument at a time: *c = the unit's letter, *simple = 0 for
 * a nested tuple or a unit with #, *, !, & (not converted again here). Returns the next
 * position, or NULL at the end (':' or ';' ends the units). */
static const char *next_unit(const char *p, char *c, int *simple) {
    while (*p == '|' || *p == '$') p++;
    if (!*p || *p == ':' || *p == ';') return NULL;
    *c = *p;
    *simple = 1;
    if (*p == '(') { /* a nested tuple counts as one argument */
        int depth = 0;
        do {
            depth += *p == '(';
            depth -= *p == ')';
            p++;
        } while (*p && depth > 0);
        *simple = 0;
        return p;
    }
    p++;
    if (*c == 'e' && *p) p++; /* es, et */
    while (*p == '#' || *p == '*' || *p == '!' || *p == '&') {
        *simple = 0;
        p++;
    }
    return p;
}

/* The object given for argument i (positional or by its keyword), borrowed, or NULL. */
static PyObject *arg_at(PyObject *args, PyObject *kw, char *const *kwlist, Py_ssize_t i,
                        const char **kname) {
    *kname = NULL;
    if (kwlist) {
        for (Py_ssize_t j = 0; j <= i; j++)
            if (!kwlist[j]) return NULL;
        if (kwlist[i][0]) *kname = kwlist[i];
    }
    if (args && PyTuple_Check(args) && i < PyTuple_GET_SIZE(args)) return PyTuple_GET_ITEM(args, i);
    if (*kname && kw && PyDict_Check(kw)) return PyDict_GetItemString(kw, *kname);
    return NULL;
}

static void raise_named(const char *fmt, const char *kname, Py_ssize_t i, PyObject *o,
                        const char *ctype) {
    const char *fname = strchr(fmt, ':');
    fname = fname ? fname + 1 : "";
    const char *sep = *fname ? ": " : "";
    if (kname)
        PyErr_Format(PyExc_ValueError, "%s%sargument '%s' = %S does not fit its C type (%s)",
                     fname, sep, kname, o, ctype);
    else
        PyErr_Format(PyExc_ValueError, "%s%sargument %zd = %S does not fit its C type (%s)",
                     fname, sep, i + 1, o, ctype);
}

/* After a failed parse with OverflowError set: convert each integer argument alone with
 * its own unit, and replace the error by a ValueError naming the first that overflows.
 * If none can be named (one inside a nested tuple), CPython's message is kept, prefixed
 * with the function's name. */
static void name_overflow(PyObject *args, PyObject *kw, const char *fmt, char *const *kwlist) {
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    char c;
    int simple;
    Py_ssize_t i = 0;
    for (const char *p = next_unit(fmt, &c, &simple); p; p = next_unit(p, &c, &simple), i++) {
        const char *ctype = simple ? unit_ctype(c) : NULL;
        const char *kname;
        PyObject *o = arg_at(args, kw, kwlist, i, &kname);
        if (!ctype || !o || !PyLong_Check(o)) continue;
        PyObject *one = PyTuple_Pack(1, o);
        if (!one) break;
        char unit[2] = {c, 0};
        union {
            long long ll;
            double d;
            char buf[32];
        } tmp;
        const int ok = PyArg_ParseTuple(one, unit, &tmp);
        Py_DECREF(one);
        if (ok) continue;
        const int overflow = PyErr_ExceptionMatches(PyExc_OverflowError);
        PyErr_Clear();
        if (!overflow) continue;
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        raise_named(fmt, kname, i, o, ctype);
        return;
    }
    const char *fname = strchr(fmt, ':');
    if (fname && fname[1]) { /* not found: at least say which function */
        PyErr_Format(PyExc_ValueError, "%s: an integer argument is out of range: %S", fname + 1,
                     ev ? ev : Py_None);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        return;
    }
    PyErr_Restore(et, ev, tb);
}

/* After a successful parse: CPython's unsigned units k, K, I, H, B convert without any
 * range check (seed=2**64 would silently become 0): refuse a negative value or one above
 * the type's maximum, naming the argument. 0, or -1 with the ValueError set. */
static int check_unsigned(PyObject *args, PyObject *kw, const char *fmt, char *const *kwlist) {
    const char *end = strpbrk(fmt, ":;");
    const size_t n = end ? (size_t)(end - fmt) : strlen(fmt);
    int any = 0;
    for (size_t j = 0; j < n; j++) any |= strchr("kKIHB", fmt[j]) != NULL && fmt[j];
    if (!any) return 0;
    char c;
    int simple;
    Py_ssize_t i = 0;
    for (const char *p = next_unit(fmt, &c, &simple); p; p = next_unit(p, &c, &simple), i++) {
        if (!simple || !strchr("kKIHB", c)) continue;
        const char *kname;
        PyObject *o = arg_at(args, kw, kwlist, i, &kname);
        if (!o || !PyLong_Check(o)) continue;
        const unsigned long long max = c == 'B'   ? 0xFFull
                                       : c == 'H' ? 0xFFFFull
                                       : c == 'I' ? 0xFFFFFFFFull
                                       : c == 'k' ? (unsigned long long)ULONG_MAX
                                                  : 0xFFFFFFFFFFFFFFFFull;
        unsigned long long v = PyLong_AsUnsignedLongLong(o);
        const int bad = (v == (unsigned long long)-1 && PyErr_Occurred()) || v > max;
        PyErr_Clear();
        if (bad) {
            raise_named(fmt, kname, i, o, unit_ctype(c));
            return -1;
        }
    }
    return 0;
}

int glae_parse_tuple(PyObject *args, const char *fmt, ...) {
    va_list va;
    va_start(va, fmt);
    const int ok = PyArg_VaParse(args, fmt, va);
    va_end(va);
    if (!ok) name_overflow(args, NULL, fmt, NULL);
    return ok && !check_unsigned(args, NULL, fmt, NULL);
}

int glae_parse_tuple_kw(PyObject *args, PyObject *kw, const char *fmt, char *const *kwlist, ...) {
    va_list va;
    va_start(va, kwlist);
    const int ok = PyArg_VaParseTupleAndKeywords(args, kw, fmt, (char **)kwlist, va);
    va_end(va);
    if (!ok) name_overflow(args, kw, fmt, kwlist);
    return ok && !check_unsigned(args, kw, fmt, kwlist);
}
