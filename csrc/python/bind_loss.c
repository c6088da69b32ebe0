/* Bindings for the loss family: label distributions, the fused LDL loss (forward and
 * backward), the expected age, row-wise KL and Adaptive Routing. Same pattern as
 * bind_ops.c: strict checks, a job on the device `ctx` picks (None: the CPU), fresh
 * (poisoned) outputs, the op through the context's table without the GIL. */
#include "python/job.h" /* Python.h first */
#include <string.h>

#include "ops/amsoftmax.h"
#include "ops/route.h"
#include "ops/loss.h"

static int parse_loss_mode(const char *s, int *mode) {
    if (!strcmp(s, "base")) *mode = GLAE_LOSS_BASE;
    else if (!strcmp(s, "lae_cls")) *mode = GLAE_LOSS_LAE_CLS;
    else if (!strcmp(s, "kl")) *mode = GLAE_LOSS_KL;
    else {
        PyErr_Format(PyExc_ValueError, "mode must be 'base', 'lae_cls' or 'kl', got '%s'", s);
        return -1;
    }
    return 0;
}

static int check_int_dim(npy_intp v, const char *what) {
    if (v > 0x7fffffff) {
        PyErr_Format(PyExc_ValueError, "%s too large (%zd)", what, (Py_ssize_t)v);
        return -1;
    }
    return 0;
}

/* label_distribution(y (n,), sigma (n,) or float, num_classes=101, normalize=True, ctx=None)
 *   -> (n, K) */
static PyObject *py_label_distribution(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"y", "sigma", "num_classes", "normalize", "ctx", NULL};
    PyObject *yo, *so, *ctxo = NULL;
    int k = 101, normalize = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ipO:label_distribution", kwlist, &yo, &so, &k,
                                     &normalize, &ctxo))
        return NULL;
    if (glae_check_min(k, "num_classes", 1)) return NULL;
    ARG_F32(y, yo, "y", 1);
    PyArrayObject *s = NULL;
    float sigma0 = 0.0f;
    if (PyArray_Check(so)) {
        if (!(s = glae_arg_f32(so, "sigma", 1)) || glae_check_dim(s, "sigma", 0, PyArray_DIM(y, 0)))
            return NULL;
    } else {
        double v = PyFloat_AsDouble(so);
        if (v == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "sigma must be a float or a float32 array, got %s",
                         Py_TYPE(so)->tp_name);
            return NULL;
        }
        sigma0 = (float)v;
    }
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp dims[2] = {PyArray_DIM(y, 0), k};
    float *dy = glae_job_in(&J, y), *ds = glae_job_in(&J, s);
    float *z = glae_job_out(&J, 2, dims, NPY_FLOAT32, 0);
    GLAE_JOB_RUN(J, J.ctx->ops->label_distribution(J.ctx, z, dy, ds, sigma0, dims[0], k, normalize));
}

/* Shared argument checks of the forward and backward: a (rows, K) array `a` (logits or
 * prob), z (rows / group, K), y (rows / group). */
static int check_loss_args(PyArrayObject *a, const char *aname, PyArrayObject *z, PyArrayObject *y,
                           int group) {
    if (glae_check_min(group, "group", 1)) return -1;
    npy_intp rows = PyArray_DIM(a, 0), k = PyArray_DIM(a, 1);
    if (k < 1) {
        PyErr_Format(PyExc_ValueError, "%s must have at least one class (column)", aname);
        return -1;
    }
    if (check_int_dim(k, "number of classes")) return -1;
    if (rows % group) {
        PyErr_Format(PyExc_ValueError, "%s rows (%zd) must be divisible by group (%d)", aname,
                     (Py_ssize_t)rows, group);
        return -1;
    }
    npy_intp n = rows / group;
    if (PyArray_DIM(z, 1) != k) {
        PyErr_Format(PyExc_ValueError, "z must have %zd classes like %s, got %zd", (Py_ssize_t)k,
                     aname, (Py_ssize_t)PyArray_DIM(z, 1));
        return -1;
    }
    if (PyArray_DIM(z, 0) != n) {
        PyErr_Format(PyExc_ValueError, "z must have rows / group = %zd rows, got %zd",
                     (Py_ssize_t)n, (Py_ssize_t)PyArray_DIM(z, 0));
        return -1;
    }
    if (PyArray_DIM(y, 0) != n) {
        PyErr_Format(PyExc_ValueError, "y must have rows / group = %zd elements, got %zd",
                     (Py_ssize_t)n, (Py_ssize_t)PyArray_DIM(y, 0));
        return -1;
    }
    return 0;
}

/* ldl_loss_forward(logits (rows, K), z (rows/group, K), y (rows/group), group=1,
 *                  mode='base', lambda_=1.0, mae=0.0, ctx=None) -> (loss (rows,), prob (rows, K)) */
static PyObject *py_ldl_loss_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"logits", "z", "y", "group", "mode", "lambda_", "mae", "ctx", NULL};
    PyObject *xo, *zo, *yo, *ctxo = NULL;
    int group = 1, mode;
    const char *ms = "base";
    float lambda = 1.0f, mae = 0.0f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|isffO:ldl_loss_forward", kwlist, &xo, &zo,
                                     &yo, &group, &ms, &lambda, &mae, &ctxo))
        return NULL;
    if (parse_loss_mode(ms, &mode)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "logits", 2);
    PyArrayObject *z = x ? glae_arg_f32(zo, "z", 2) : NULL;
    PyArrayObject *y = z ? glae_arg_f32(yo, "y", 1) : NULL;
    if (!y || check_loss_args(x, "logits", z, y, group)) return NULL;
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp rows = PyArray_DIM(x, 0);
    float *dx = glae_job_in(&J, x), *dz = glae_job_in(&J, z), *dy = glae_job_in(&J, y);
    float *loss = glae_job_out(&J, 1, &rows, NPY_FLOAT32, 0),
          *prob = glae_job_out(&J, 2, PyArray_DIMS(x), NPY_FLOAT32, 0);
    GLAE_JOB_RUN(J, J.ctx->ops->ldl_loss_forward(J.ctx, loss, prob, dx, dz, dy, rows, group,
                                                 (int)PyArray_DIM(x, 1), mode, lambda, mae));
}

/* ldl_loss_backward(dloss (rows,), prob (rows, K), z, y, group=1, mode='base',
 *                   lambda_=1.0, mae=0.0, ctx=None) -> dlogits (rows, K) */
static PyObject *py_ldl_loss_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"dloss", "prob", "z", "y", "group", "mode", "lambda_", "mae", "ctx",
                             NULL};
    PyObject *dlo, *po, *zo, *yo, *ctxo = NULL;
    int group = 1, mode;
    const char *ms = "base";
    float lambda = 1.0f, mae = 0.0f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|isffO:ldl_loss_backward", kwlist, &dlo, &po,
                                     &zo, &yo, &group, &ms, &lambda, &mae, &ctxo))
        return NULL;
    if (parse_loss_mode(ms, &mode)) return NULL;
    PyArrayObject *dl = glae_arg_f32(dlo, "dloss", 1);
    PyArrayObject *p = dl ? glae_arg_f32(po, "prob", 2) : NULL;
    PyArrayObject *z = p ? glae_arg_f32(zo, "z", 2) : NULL;
    PyArrayObject *y = z ? glae_arg_f32(yo, "y", 1) : NULL;
    if (!y || check_loss_args(p, "prob", z, y, group) ||
        glae_check_dim(dl, "dloss", 0, PyArray_DIM(p, 0)))
        return NULL;
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    float *ddl = glae_job_in(&J, dl), *dp = glae_job_in(&J, p), *dz = glae_job_in(&J, z),
          *dy = glae_job_in(&J, y);
    float *dx = glae_job_out(&J, 2, PyArray_DIMS(p), NPY_FLOAT32, 0);
    GLAE_JOB_RUN(J, J.ctx->ops->ldl_loss_backward(J.ctx, dx, ddl, dp, dz, dy, PyArray_DIM(p, 0),
                                                  group, (int)PyArray_DIM(p, 1), mode, lambda,
                                                  mae));
}

/* (rows, K) probability argument */
static PyArrayObject *arg_prob(PyObject *o, const char *name) {
    PyArrayObject *a = glae_arg_f32(o, name, 2);
    if (!a) return NULL;
    if (PyArray_DIM(a, 1) < 1) {
        PyErr_Format(PyExc_ValueError, "%s must have at least one class (column)", name);
        return NULL;
    }
    if (check_int_dim(PyArray_DIM(a, 1), "number of classes")) return NULL;
    return a;
}

/* expected_age(p (rows, K), ctx=None) -> (rows,) */
static PyObject *py_expected_age(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"p", "ctx", NULL};
    PyObject *po, *ctxo = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:expected_age", kwlist, &po, &ctxo)) return NULL;
    PyArrayObject *p = arg_prob(po, "p");
    if (!p) return NULL;
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp rows = PyArray_DIM(p, 0);
    float *dp = glae_job_in(&J, p), *age = glae_job_out(&J, 1, &rows, NPY_FLOAT32, 0);
    GLAE_JOB_RUN(J, J.ctx->ops->expected_age(J.ctx, age, dp, rows, (int)PyArray_DIM(p, 1)));
}

/* kl_rows(p (rows, K), q (rows, K), ctx=None) -> KL(p_i || q_i) (rows,) */
static PyObject *py_kl_rows(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"p", "q", "ctx", NULL};
    PyObject *po, *qo, *ctxo = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:kl_rows", kwlist, &po, &qo, &ctxo)) return NULL;
    PyArrayObject *p = arg_prob(po, "p");
    PyArrayObject *q = p ? glae_arg_f32(qo, "q", 2) : NULL;
    if (!q || glae_check_same_shape(p, "p", q, "q")) return NULL;
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp rows = PyArray_DIM(p, 0);
    float *dp = glae_job_in(&J, p), *dq = glae_job_in(&J, q);
    float *out = glae_job_out(&J, 1, &rows, NPY_FLOAT32, 0);
    GLAE_JOB_RUN(J, J.ctx->ops->kl_rows(J.ctx, out, dp, dq, rows, (int)PyArray_DIM(p, 1)));
}

/* adaptive_route(p_van, p_van_flip, p_bal, p_bal_flip, mode='smaller', flip_average=True,
 *                ctx=None)
 * -> dict(prob (n, K), age (n,), choice (n,) int32 [0 vanilla, 1 balanced], upsilon (n, 2)) */
static PyObject *py_adaptive_route(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"p_van", "p_van_flip", "p_bal", "p_bal_flip", "mode", "flip_average",
                             "ctx", NULL};
    PyObject *o[4], *ctxo = NULL;
    const char *ms = "smaller";
    int flip_average = 1, mode;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|spO:adaptive_route", kwlist, &o[0], &o[1],
                                     &o[2], &o[3], &ms, &flip_average, &ctxo))
        return NULL;
    if (!strcmp(ms, "smaller")) mode = GLAE_ROUTE_SMALLER;
    else if (!strcmp(ms, "bigger")) mode = GLAE_ROUTE_BIGGER;
    else {
        PyErr_Format(PyExc_ValueError, "mode must be 'smaller' or 'bigger', got '%s'", ms);
        return NULL;
    }
    static const char *names[4] = {"p_van", "p_van_flip", "p_bal", "p_bal_flip"};
    PyArrayObject *p[4];
    for (int i = 0; i < 4; i++) {
        if (!(p[i] = arg_prob(o[i], names[i]))) return NULL;
        if (i && glae_check_same_shape(p[0], names[0], p[i], names[i])) return NULL;
    }
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp n = PyArray_DIM(p[0], 0), d2[2] = {n, 2};
    float *d[4];
    for (int i = 0; i < 4; i++) d[i] = glae_job_in(&J, p[i]);
    float *prob = glae_job_out(&J, 2, PyArray_DIMS(p[0]), NPY_FLOAT32, 0),
          *age = glae_job_out(&J, 1, &n, NPY_FLOAT32, 0);
    int32_t *choice = glae_job_out(&J, 1, &n, NPY_INT32, 0);
    float *ups = glae_job_out(&J, 2, d2, NPY_FLOAT32, 0);
    int st = 0;
    if (!J.failed)
        GLAE_NOGIL(st, J.ctx->ops->adaptive_route(J.ctx, prob, age, choice, ups, d[0], d[1], d[2],
                                                  d[3], n, (int)PyArray_DIM(p[0], 1), mode,
                                                  flip_average));
    PyObject *t = glae_job_finish(&J, st);
    if (!t) return NULL;
    PyObject *res = Py_BuildValue("{sOsOsOsO}", "prob", PyTuple_GET_ITEM(t, 0), "age",
                                  PyTuple_GET_ITEM(t, 1), "choice", PyTuple_GET_ITEM(t, 2),
                                  "upsilon", PyTuple_GET_ITEM(t, 3));
    Py_DECREF(t);
    return res;
}

/* route_select(p_van, p_van_flip, p_bal, p_bal_flip, criterion, a=0.0, b=0.0,
 *              flip_average=True, ctx=None)
 * -> dict(prob (n, K), age (n,), choice (n,) int32, score (n,)); criteria in ops/route.h */
static PyObject *py_route_select(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"p_van", "p_van_flip", "p_bal", "p_bal_flip", "criterion", "a", "b",
                             "flip_average", "ctx", NULL};
    static const char *crit_names[] = {"kl_margin", "confidence", "entropy", "age", "blend"};
    PyObject *o[4], *ctxo = NULL;
    const char *cs;
    float a = 0.0f, b = 0.0f;
    int flip_average = 1, crit = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOs|ffpO:route_select", kwlist, &o[0], &o[1],
                                     &o[2], &o[3], &cs, &a, &b, &flip_average, &ctxo))
        return NULL;
    for (int c = 0; c < 5; c++)
        if (!strcmp(cs, crit_names[c])) crit = c;
    if (crit < 0) {
        PyErr_Format(PyExc_ValueError, "criterion must be 'kl_margin', 'confidence', 'entropy', "
                     "'age' or 'blend', got '%s'", cs);
        return NULL;
    }
    static const char *names[4] = {"p_van", "p_van_flip", "p_bal", "p_bal_flip"};
    PyArrayObject *p[4];
    for (int i = 0; i < 4; i++) {
        if (!(p[i] = arg_prob(o[i], names[i]))) return NULL;
        if (i && glae_check_same_shape(p[0], names[0], p[i], names[i])) return NULL;
    }
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    npy_intp n = PyArray_DIM(p[0], 0);
    float *d[4];
    for (int i = 0; i < 4; i++) d[i] = glae_job_in(&J, p[i]);
    float *prob = glae_job_out(&J, 2, PyArray_DIMS(p[0]), NPY_FLOAT32, 0),
          *age = glae_job_out(&J, 1, &n, NPY_FLOAT32, 0);
    int32_t *choice = glae_job_out(&J, 1, &n, NPY_INT32, 0);
    float *score = glae_job_out(&J, 1, &n, NPY_FLOAT32, 0);
    int st = 0;
    if (!J.failed)
        GLAE_NOGIL(st, J.ctx->ops->route_select(J.ctx, prob, age, choice, score, d[0], d[1], d[2],
                                                d[3], n, (int)PyArray_DIM(p[0], 1), crit, a, b,
                                                flip_average));
    PyObject *t = glae_job_finish(&J, st);
    if (!t) return NULL;
    PyObject *res = Py_BuildValue("{sOsOsOsO}", "prob", PyTuple_GET_ITEM(t, 0), "age",
                                  PyTuple_GET_ITEM(t, 1), "choice", PyTuple_GET_ITEM(t, 2),
                                  "score", PyTuple_GET_ITEM(t, 3));
    Py_DECREF(t);
    return res;
}

/* ---- AM-softmax (CosFace) --------------------------------------------------------------- */

/* x (n, d) float32, labels (n,) int32 in [0, k), w (k, d) float32: the shapes and every
 * label checked here, on the host, so a bad label is a ValueError on every device */
static int check_amsoftmax_args(PyArrayObject *x, PyArrayObject *labels, PyArrayObject *w) {
    if (glae_check_dim(labels, "labels", 0, PyArray_DIM(x, 0))) return -1;
    if (PyArray_DIM(w, 1) != PyArray_DIM(x, 1)) {
        PyErr_Format(PyExc_ValueError,
                     "w must have the embedding's %zd columns (w is (classes, d)), got %zd",
                     (Py_ssize_t)PyArray_DIM(x, 1), (Py_ssize_t)PyArray_DIM(w, 1));
        return -1;
    }
    const npy_intp k = PyArray_DIM(w, 0);
    if (k < 1) {
        PyErr_SetString(PyExc_ValueError, "w must have at least one class (row)");
        return -1;
    }
    if (check_int_dim(k, "number of classes") || check_int_dim(PyArray_DIM(x, 1), "d") ||
        check_int_dim(PyArray_DIM(x, 0), "n"))
        return -1;
    const int32_t *y = PyArray_DATA(labels);
    for (npy_intp i = 0; i < PyArray_DIM(labels, 0); i++)
        if (y[i] < 0 || y[i] >= k) {
            PyErr_Format(PyExc_ValueError, "labels[%zd] = %d is outside [0, %zd) (w has %zd classes)",
                         (Py_ssize_t)i, (int)y[i], (Py_ssize_t)k, (Py_ssize_t)k);
            return -1;
        }
    return 0;
}

/* amsoftmax_forward(x (n, d), labels (n,) int32, w (k, d), s=30.0, m=0.35, ctx=None)
 *   -> (loss (n,), prob (n, k), cos (n, k)) */
static PyObject *py_amsoftmax_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "labels", "w", "s", "m", "ctx", NULL};
    PyObject *xo, *yo, *wo, *ctxo = NULL;
    double s = GLAE_AMSOFTMAX_S, m = GLAE_AMSOFTMAX_M;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|ddO:amsoftmax_forward", kwlist, &xo, &yo, &wo,
                                     &s, &m, &ctxo))
        return NULL;
    ARG_F32(x, xo, "x", 2);
    PyArrayObject *y = glae_arg_array(yo, "labels", NPY_INT32, 1);
    if (!y) return NULL;
    ARG_F32(w, wo, "w", 2);
    if (check_amsoftmax_args(x, y, w)) return NULL;
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    const npy_intp n = PyArray_DIM(x, 0), k = PyArray_DIM(w, 0), nk[2] = {n, k};
    float *dx = glae_job_in(&J, x), *dw = glae_job_in(&J, w);
    int32_t *dy = glae_job_in(&J, y);
    float *loss = glae_job_out(&J, 1, &n, NPY_FLOAT32, 0),
          *prob = glae_job_out(&J, 2, nk, NPY_FLOAT32, 0),
          *cos = glae_job_out(&J, 2, nk, NPY_FLOAT32, 0);
    GLAE_JOB_RUN(J, J.ctx->ops->amsoftmax_forward(J.ctx, loss, prob, cos, dx, dy, dw, n,
                                                  (int)PyArray_DIM(x, 1), (int)k, (float)s,
                                                  (float)m));
}

/* amsoftmax_backward(dloss (n,), prob (n, k), cos (n, k), x (n, d), labels (n,), w (k, d),
 *                    s=30.0, ctx=None) -> (dx (n, d), dw (k, d)) */
static PyObject *py_amsoftmax_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"dloss", "prob", "cos", "x", "labels", "w", "s", "ctx", NULL};
    PyObject *dlo, *po, *co, *xo, *yo, *wo, *ctxo = NULL;
    double s = GLAE_AMSOFTMAX_S;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO|dO:amsoftmax_backward", kwlist, &dlo, &po,
                                     &co, &xo, &yo, &wo, &s, &ctxo))
        return NULL;
    ARG_F32(dl, dlo, "dloss", 1);
    ARG_F32(p, po, "prob", 2);
    ARG_F32(c, co, "cos", 2);
    ARG_F32(x, xo, "x", 2);
    PyArrayObject *y = glae_arg_array(yo, "labels", NPY_INT32, 1);
    if (!y) return NULL;
    ARG_F32(w, wo, "w", 2);
    if (check_amsoftmax_args(x, y, w)) return NULL;
    ARG_DIM(dl, "dloss", 0, PyArray_DIM(x, 0));
    ARG_DIM(p, "prob", 0, PyArray_DIM(x, 0));
    ARG_DIM(p, "prob", 1, PyArray_DIM(w, 0));
    ARG_SAME(p, "prob", c, "cos");
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    float *ddl = glae_job_in(&J, dl), *dp = glae_job_in(&J, p), *dc = glae_job_in(&J, c),
          *dxi = glae_job_in(&J, x), *dwi = glae_job_in(&J, w);
    int32_t *dy = glae_job_in(&J, y);
    float *gx = glae_job_out(&J, DIMS_OF(x), NPY_FLOAT32, 0),
          *gw = glae_job_out(&J, DIMS_OF(w), NPY_FLOAT32, 1); /* accumulated: starts at 0 */
    GLAE_JOB_RUN(J, J.ctx->ops->amsoftmax_backward(J.ctx, gx, gw, ddl, dp, dc, dxi, dy, dwi,
                                                   PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1),
                                                   (int)PyArray_DIM(w, 0), (float)s));
}
PyMethodDef glae_loss_methods[] = {
    {"label_distribution", (PyCFunction)(void (*)(void))py_label_distribution,
     METH_VARARGS | METH_KEYWORDS,
     "label_distribution(y, sigma, num_classes=101, normalize=True, ctx=None) -> z (n, K)\n"
     "Gaussian label distribution (LAE 2.1, GLAE eq. 1); y float32 (n,), sigma float32 (n,) or a float."},
    {"ldl_loss_forward", (PyCFunction)(void (*)(void))py_ldl_loss_forward,
     METH_VARARGS | METH_KEYWORDS,
     "ldl_loss_forward(logits, z, y, group=1, mode='base', lambda_=1.0, mae=0.0, ctx=None) -> (loss, prob)\n"
     "Per-row softmax + KL(z || p) [+ lambda |y - E[p]| ('base') | + (|y - E[p]| - mae)^2 ('lae_cls')].\n"
     "Row r uses z[r // group], y[r // group]."},
    {"ldl_loss_backward", (PyCFunction)(void (*)(void))py_ldl_loss_backward,
     METH_VARARGS | METH_KEYWORDS,
     "ldl_loss_backward(dloss, prob, z, y, group=1, mode='base', lambda_=1.0, mae=0.0, ctx=None) -> dlogits"},
    {"expected_age", (PyCFunction)(void (*)(void))py_expected_age, METH_VARARGS | METH_KEYWORDS,
     "expected_age(p (rows, K), ctx=None) -> sum_k k p[:, k] (GLAE eq. 3)"},
    {"kl_rows", (PyCFunction)(void (*)(void))py_kl_rows, METH_VARARGS | METH_KEYWORDS,
     "kl_rows(p, q, ctx=None) -> KL(p_i || q_i) per row, 0 log 0 = 0"},
    {"route_select", (PyCFunction)(void (*)(void))py_route_select, METH_VARARGS | METH_KEYWORDS,
     "route_select(p_van, p_van_flip, p_bal, p_bal_flip, criterion, a=0.0, b=0.0, "
     "flip_average=True, ctx=None) -> {'prob', 'age', 'choice', 'score'}: the vanilla head "
     "answers unless the criterion sends the image to the balanced head: 'kl_margin' "
     "(Upsilon_1 >= Upsilon_2 + a; a=0 is eq. 11), 'confidence' (max of the vanilla "
     "distribution < a), 'entropy' (its entropy > a nats), 'age' (its expected age < a or "
     "> b); 'blend' answers (1 - a) q_van + a q_bal. score: the value compared."},
    {"adaptive_route", (PyCFunction)(void (*)(void))py_adaptive_route,
     METH_VARARGS | METH_KEYWORDS,
     "adaptive_route(p_van, p_van_flip, p_bal, p_bal_flip, mode='smaller', flip_average=True, ctx=None)\n"
     "-> dict(prob, age, choice (0 vanilla, 1 balanced), upsilon (n, 2)) (GLAE eq. 11)"},
    {"amsoftmax_forward", (PyCFunction)(void (*)(void))py_amsoftmax_forward,
     METH_VARARGS | METH_KEYWORDS,
     "amsoftmax_forward(x, labels, w, s=30.0, m=0.35, ctx=None) -> (loss, prob, cos)\n"
     "AM-softmax (CosFace): per-row -log softmax(s (cos(x_i, w_j) - m [j == y_i]))[y_i].\n"
     "x float32 (n, d) embeddings, labels int32 (n,) in [0, k), w float32 (k, d) class weights;\n"
     "prob (n, k) the margined softmax and cos (n, k) the plain cosines (the backward's inputs)."},
    {"amsoftmax_backward", (PyCFunction)(void (*)(void))py_amsoftmax_backward,
     METH_VARARGS | METH_KEYWORDS,
     "amsoftmax_backward(dloss, prob, cos, x, labels, w, s=30.0, ctx=None) -> (dx, dw)\n"
     "Gradients through both L2 normalisations; dloss (n,) weights each row's loss."},
    {NULL, NULL, 0, NULL},
};
