/* Bindings for the metrics family (csrc/metrics/metrics.h). Ages are float32 1-D arrays of
 * one length; group tables are int32 1-D arrays; results are Python floats or fresh
 * float64/int64 arrays (NaN in a float64 entry only where its count is 0). glae/metrics.py
 * turns these into the dicts users see. */
#include "python/job.h" /* Python.h first */

#include "core/age.h"
#include "metrics/metrics.h"

#include <math.h>

/* y and yhat: float32, 1-D, C-contiguous, same length. Borrowed references. */
static int get_pair(PyObject *yo, PyObject *ho, PyArrayObject **y, PyArrayObject **yhat) {
    *y = glae_arg_f32(yo, "y", 1);
    *yhat = *y ? glae_arg_f32(ho, "yhat", 1) : NULL;
    if (!*yhat || glae_check_same_shape(*y, "y", *yhat, "yhat")) return -1;
    return 0;
}

/* lo, hi: int32 1-D of one length; *groups receives it. */
static int get_ranges(PyObject *lo_o, PyObject *hi_o, PyArrayObject **lo, PyArrayObject **hi,
                      int *groups) {
    *lo = glae_arg_array(lo_o, "lo", NPY_INT32, 1);
    *hi = *lo ? glae_arg_array(hi_o, "hi", NPY_INT32, 1) : NULL;
    if (!*hi || glae_check_same_shape(*lo, "lo", *hi, "hi")) return -1;
    if (PyArray_DIM(*lo, 0) > 1000000) {
        PyErr_SetString(PyExc_ValueError, "lo/hi: too many groups");
        return -1;
    }
    *groups = (int)PyArray_DIM(*lo, 0);
    return 0;
}

#define F32(a) ((const float *)PyArray_DATA(a))
#define I32(a) ((const int32_t *)PyArray_DATA(a))
#define N(a) ((int64_t)PyArray_DIM(a, 0))

/* Fresh 1-D arrays; on failure everything made so far is released. */
static int new_vecs(npy_intp len, int count, PyArrayObject **out, const int *types) {
    for (int i = 0; i < count; i++) out[i] = NULL;
    for (int i = 0; i < count; i++) {
        out[i] = glae_new_array(1, &len, types[i]);
        if (!out[i]) {
            for (int j = 0; j < i; j++) Py_CLEAR(out[j]);
            return -1;
        }
    }
    return 0;
}

static void drop_vecs(PyArrayObject **out, int count) {
    for (int i = 0; i < count; i++) Py_CLEAR(out[i]);
}

/* The per-sample means, MAE and epsilon-error, on the device `ctx` picks (None: the CPU,
 * with the data checks of metrics.c; the GPU sums are metrics.cu). */
static PyObject *mean_metric(PyObject *args, PyObject *kw, const char *fmt, int eps) {
    static char *kw_mae[] = {"y", "yhat", "ctx", NULL}, *kw_eps[] = {"y", "yhat", "sigma", "ctx", NULL};
    PyObject *yo, *ho, *so = NULL, *ctxo = NULL;
    PyArrayObject *y, *h, *s = NULL;
    int ok = eps ? PyArg_ParseTupleAndKeywords(args, kw, fmt, kw_eps, &yo, &ho, &so, &ctxo)
                 : PyArg_ParseTupleAndKeywords(args, kw, fmt, kw_mae, &yo, &ho, &ctxo);
    if (!ok || get_pair(yo, ho, &y, &h)) return NULL;
    if (eps && (!(s = glae_arg_f32(so, "sigma", 1)) || glae_check_same_shape(y, "y", s, "sigma")))
        return NULL;
    double v = 0.0;
    int st;
    if (!ctxo || ctxo == Py_None || glae_py_is_cpu_ctx(ctxo)) { /* every CPU backend sums alike */
        GLAE_NOGIL(st, eps ? glae_metric_epsilon(&v, F32(y), F32(h), F32(s), N(y))
                           : glae_metric_mae(&v, F32(y), F32(h), N(y)));
        return st ? glae_raise(st) : PyFloat_FromDouble(v);
    }
#ifdef GLAE_WITH_CUDA
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    float *dy = glae_job_in(&J, y), *dh = glae_job_in(&J, h), *ds = glae_job_in(&J, s);
    st = 0;
    if (!J.failed)
        GLAE_NOGIL(st, eps ? glae_metric_epsilon_cuda(J.ctx, &v, dy, dh, ds, N(y))
                           : glae_metric_mae_cuda(J.ctx, &v, dy, dh, N(y)));
    PyObject *none = glae_job_finish(&J, st);
    if (!none) return NULL;
    Py_DECREF(none);
    return PyFloat_FromDouble(v);
#else
    glae_job J;
    return glae_job_begin(&J, ctxo) ? NULL : glae_job_finish(&J, GLAE_OK); /* raises */
#endif
}

/* metrics_mae(y, yhat, ctx=None) -> float */
static PyObject *py_mae(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return mean_metric(args, kw, "OO|O:metrics_mae", 0);
}

/* metrics_cmae(y, yhat) -> (cmae, ages present) */
static PyObject *py_cmae(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *yo, *ho;
    PyArrayObject *y, *h;
    if (!PyArg_ParseTuple(args, "OO:metrics_cmae", &yo, &ho) || get_pair(yo, ho, &y, &h)) return NULL;
    double v;
    int64_t m;
    int st;
    GLAE_NOGIL(st, glae_metric_cmae(&v, &m, F32(y), F32(h), N(y)));
    return st ? glae_raise(st) : Py_BuildValue("(dL)", v, (long long)m);
}

/* metrics_per_age(y, yhat, num_classes) -> (mae float64[K], count int64[K]) */
static PyObject *py_per_age(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *yo, *ho;
    PyArrayObject *y, *h, *o[2];
    int k;
    if (!PyArg_ParseTuple(args, "OOi:metrics_per_age", &yo, &ho, &k) || get_pair(yo, ho, &y, &h))
        return NULL;
    if (glae_check_min(k, "num_classes", 1)) return NULL;
    const int types[2] = {NPY_FLOAT64, NPY_INT64};
    if (new_vecs(k, 2, o, types)) return NULL;
    int st;
    GLAE_NOGIL(st, glae_metric_per_age(PyArray_DATA(o[0]), PyArray_DATA(o[1]), k, F32(y), F32(h), N(y)));
    if (st) {
        drop_vecs(o, 2);
        return glae_raise(st);
    }
    return Py_BuildValue("(NN)", o[0], o[1]);
}

/* metrics_group_mae(y, yhat, lo, hi) -> (mae, cmae, count, n_ages), each of length G */
static PyObject *py_group_mae(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *yo, *ho, *loo, *hio;
    PyArrayObject *y, *h, *lo, *hi, *o[4];
    int g;
    if (!PyArg_ParseTuple(args, "OOOO:metrics_group_mae", &yo, &ho, &loo, &hio) ||
        get_pair(yo, ho, &y, &h) || get_ranges(loo, hio, &lo, &hi, &g))
        return NULL;
    const int types[4] = {NPY_FLOAT64, NPY_FLOAT64, NPY_INT64, NPY_INT64};
    if (new_vecs(g, 4, o, types)) return NULL;
    int st;
    GLAE_NOGIL(st, glae_metric_group_mae(PyArray_DATA(o[0]), PyArray_DATA(o[1]), PyArray_DATA(o[2]),
                                         PyArray_DATA(o[3]), I32(lo), I32(hi), g, F32(y), F32(h), N(y)));
    if (st) {
        drop_vecs(o, 4);
        return glae_raise(st);
    }
    return Py_BuildValue("(NNNN)", o[0], o[1], o[2], o[3]);
}

/* metrics_aar(y, yhat, starts) -> (aar, mae, sigma, group_mae[G], group_count[G]) */
static PyObject *py_aar(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *yo, *ho, *so;
    PyArrayObject *y, *h, *s, *o[2];
    if (!PyArg_ParseTuple(args, "OOO:metrics_aar", &yo, &ho, &so) || get_pair(yo, ho, &y, &h))
        return NULL;
    if (!(s = glae_arg_array(so, "starts", NPY_INT32, 1))) return NULL;
    if (PyArray_DIM(s, 0) > 1000000) {
        PyErr_SetString(PyExc_ValueError, "starts: too many groups");
        return NULL;
    }
    const int g = (int)PyArray_DIM(s, 0);
    const int types[2] = {NPY_FLOAT64, NPY_INT64};
    if (new_vecs(g, 2, o, types)) return NULL;
    double aar, mae, sigma;
    int st;
    GLAE_NOGIL(st, glae_metric_aar(&aar, &mae, &sigma, PyArray_DATA(o[0]), PyArray_DATA(o[1]), I32(s),
                                   g, F32(y), F32(h), N(y)));
    if (st) {
        drop_vecs(o, 2);
        return glae_raise(st);
    }
    return Py_BuildValue("(dddNN)", aar, mae, sigma, o[0], o[1]);
}

/* metrics_epsilon(y, yhat, sigma) -> float */
static PyObject *py_epsilon(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return mean_metric(args, kw, "OOO|O:metrics_epsilon", 1);
}

/* metrics_cs(y, yhat, theta float64[T]) -> float64[T] */
static PyObject *py_cs(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *yo, *ho, *to;
    PyArrayObject *y, *h, *t, *o;
    if (!PyArg_ParseTuple(args, "OOO:metrics_cs", &yo, &ho, &to) || get_pair(yo, ho, &y, &h)) return NULL;
    if (!(t = glae_arg_array(to, "theta", NPY_FLOAT64, 1))) return NULL;
    const int type = NPY_FLOAT64;
    if (new_vecs(PyArray_DIM(t, 0), 1, &o, &type)) return NULL;
    int st;
    GLAE_NOGIL(st, glae_metric_cs(PyArray_DATA(o), PyArray_DATA(t), N(t), F32(y), F32(h), N(y)));
    if (st) {
        Py_DECREF(o);
        return glae_raise(st);
    }
    return (PyObject *)o;
}

/* metrics_shot(y, yhat, train_ages, many_thr, few_thr) -> (mae[3], cmae[3], count[3], n_ages[3])
 * indexed many, medium, few */
static PyObject *py_shot(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *yo, *ho, *to;
    PyArrayObject *y, *h, *t, *o[4];
    long long many, few;
    if (!PyArg_ParseTuple(args, "OOOLL:metrics_shot", &yo, &ho, &to, &many, &few) ||
        get_pair(yo, ho, &y, &h))
        return NULL;
    if (!(t = glae_arg_f32(to, "train_ages", 1))) return NULL;
    const int types[4] = {NPY_FLOAT64, NPY_FLOAT64, NPY_INT64, NPY_INT64};
    if (new_vecs(3, 4, o, types)) return NULL;
    int st;
    GLAE_NOGIL(st, glae_metric_shot(PyArray_DATA(o[0]), PyArray_DATA(o[1]), PyArray_DATA(o[2]),
                                    PyArray_DATA(o[3]), F32(y), F32(h), N(y), F32(t), N(t), many, few));
    if (st) {
        drop_vecs(o, 4);
        return glae_raise(st);
    }
    return Py_BuildValue("(NNNN)", o[0], o[1], o[2], o[3]);
}

/* metrics_routing(y, choice int32, lo, hi) -> (frac_vanilla, frac_balanced, count) */
static PyObject *py_routing(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *yo, *co, *loo, *hio;
    PyArrayObject *y, *c, *lo, *hi, *o[3];
    int g;
    if (!PyArg_ParseTuple(args, "OOOO:metrics_routing", &yo, &co, &loo, &hio)) return NULL;
    if (!(y = glae_arg_f32(yo, "y", 1)) || !(c = glae_arg_array(co, "choice", NPY_INT32, 1)) ||
        glae_check_same_shape(y, "y", c, "choice") || get_ranges(loo, hio, &lo, &hi, &g))
        return NULL;
    const int types[3] = {NPY_FLOAT64, NPY_FLOAT64, NPY_INT64};
    if (new_vecs(g, 3, o, types)) return NULL;
    int st;
    GLAE_NOGIL(st, glae_metric_routing(PyArray_DATA(o[0]), PyArray_DATA(o[1]), PyArray_DATA(o[2]),
                                       I32(lo), I32(hi), g, F32(y), I32(c), N(y)));
    if (st) {
        drop_vecs(o, 3);
        return glae_raise(st);
    }
    return Py_BuildValue("(NNN)", o[0], o[1], o[2]);
}

/* age_class(ages float32[n], num_classes=101) -> int64[n]: glae_age_class of each age */
static PyObject *py_age_class(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"ages", "num_classes", NULL};
    PyObject *ao;
    long long k = 101;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|L:age_class", kwlist, &ao, &k)) return NULL;
    PyArrayObject *a = glae_arg_f32(ao, "ages", 1);
    if (!a || glae_check_min(k, "num_classes", 1)) return NULL;
    const float *x = F32(a);
    const npy_intp n = PyArray_DIM(a, 0);
    PyArrayObject *out = glae_new_array(1, &n, NPY_INT64);
    if (!out) return NULL;
    int64_t *c = PyArray_DATA(out);
    for (npy_intp i = 0; i < n; i++) {
        if (!isfinite(x[i])) { /* NaN would become class 0 silently */
            char txt[32];
            snprintf(txt, sizeof txt, "%g", (double)x[i]);
            Py_DECREF(out);
            PyErr_Format(PyExc_ValueError, "ages[%zd] is not a finite age: %s", (Py_ssize_t)i, txt);
            return NULL;
        }
        c[i] = glae_age_class(x[i], k);
    }
    return (PyObject *)out;
}

PyMethodDef glae_metrics_methods[] = {
    {"age_class", (PyCFunction)(void (*)(void))py_age_class, METH_VARARGS | METH_KEYWORDS,
     "age_class(ages float32[n], num_classes=101) -> int64[n]: the whole-year class of each "
     "age, floor(age + 0.5) (half up) clamped to 0..num_classes-1 (core/age.h), the rule of "
     "every metric, the training-age histogram, the sampler's labels and the protocols. "
     "A NaN or infinite age raises ValueError."},
    {"metrics_mae", (PyCFunction)(void (*)(void))py_mae, METH_VARARGS | METH_KEYWORDS,
     "metrics_mae(y, yhat, ctx=None) -> MAE (GLAE eq. 12)"},
    {"metrics_cmae", py_cmae, METH_VARARGS,
     "metrics_cmae(y, yhat) -> (CMAE, ages present) (GLAE eq. 13)"},
    {"metrics_per_age", py_per_age, METH_VARARGS,
     "metrics_per_age(y, yhat, num_classes) -> (mae float64[K] (NaN where count 0), count int64[K])"},
    {"metrics_group_mae", py_group_mae, METH_VARARGS,
     "metrics_group_mae(y, yhat, lo int32[G], hi int32[G]) -> (mae, cmae, count, n_ages)"},
    {"metrics_aar", py_aar, METH_VARARGS,
     "metrics_aar(y, yhat, starts int32[G]) -> (aar, mae, sigma, group_mae, group_count) (LAE eq. 6-7)"},
    {"metrics_epsilon", (PyCFunction)(void (*)(void))py_epsilon, METH_VARARGS | METH_KEYWORDS,
     "metrics_epsilon(y, yhat, sigma, ctx=None) -> epsilon-error (GLAE eq. 14, averaged)"},
    {"metrics_cs", py_cs, METH_VARARGS, "metrics_cs(y, yhat, theta float64[T]) -> CS(theta) float64[T]"},
    {"metrics_shot", py_shot, METH_VARARGS,
     "metrics_shot(y, yhat, train_ages, many_thr, few_thr) -> (mae, cmae, count, n_ages), each [many, medium, few]"},
    {"metrics_routing", py_routing, METH_VARARGS,
     "metrics_routing(y, choice int32, lo, hi) -> (frac_vanilla, frac_balanced, count)"},
    {NULL, NULL, 0, NULL},
};
