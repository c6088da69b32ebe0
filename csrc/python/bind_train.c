/* Bindings for the train family: fused SGD, schedules, samplers. Same pattern as
 * bind_ops.c (strict checks, kernel without the GIL, status -> exception). sgd_step is
 * the one binding that writes into its arguments (params, momentum_buf), like
 * torch.optim.SGD.step(): the buffers are the model's, copying them would defeat the
 * point of one flat buffer. */
#include "python/job.h" /* Python.h first */

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/age.h"
#include "ops/optim.h"
#include "train/sampler.h"
#include "train/sched.h"

/* ---- small argument helpers ------------------------------------------------------ */

/* A Python int as int64 (any sign); TypeError for non-ints (bool included). */
static int get_i64(PyObject *o, const char *name, long long *out) {
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (*out == -1 && PyErr_Occurred()) return -1;
    if (overflow) {
        PyErr_Format(PyExc_ValueError, "%s is out of the int64 range: %S", name, o);
        return -1;
    }
    return 0;
}

static int overlap(PyArrayObject *a, PyArrayObject *b) {
    if (!a || !b) return 0;
    const char *pa = PyArray_DATA(a), *pb = PyArray_DATA(b);
    const npy_intp na = PyArray_NBYTES(a), nb = PyArray_NBYTES(b);
    return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

/* ---- optimiser ------------------------------------------------------------------- */

static PyObject *py_sgd_step(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"params", "momentum_buf", "grads", "lr", "momentum", "dampening",
                             "weight_decay", "nesterov", "first_step", "begin", "end",
                             "no_decay_mask", "ctx", NULL};
    PyObject *po, *mo, *go, *endo = Py_None, *masko = Py_None, *begino = NULL, *ctxo = NULL;
    double lr, momentum = 0.9, dampening = 0.0, wd = 5e-4;
    int nesterov = 1, first_step = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOd|dddppOOOO:sgd_step", kwlist, &po, &mo,
                                     &go, &lr, &momentum, &dampening, &wd, &nesterov, &first_step,
                                     &begino, &endo, &masko, &ctxo))
        return NULL;
    PyArrayObject *p = glae_arg_f32(po, "params", -1);
    if (!p || glae_check_writeable(p, "params")) return NULL;
    int ok;
    PyArrayObject *m = glae_arg_array_opt(mo, "momentum_buf", NPY_FLOAT32, -1, &ok);
    if (!ok) return NULL;
    if (m && (glae_check_writeable(m, "momentum_buf") ||
              glae_check_same_shape(p, "params", m, "momentum_buf")))
        return NULL;
    if (!m && momentum != 0.0) {
        PyErr_SetString(PyExc_ValueError, "momentum_buf may be None only when momentum == 0");
        return NULL;
    }
    PyArrayObject *g = glae_arg_f32(go, "grads", -1);
    if (!g || glae_check_same_shape(p, "params", g, "grads")) return NULL;
    PyArrayObject *mask = NULL;
    if (masko != Py_None) {
        if (PyArray_Check(masko) && PyArray_TYPE((PyArrayObject *)masko) == NPY_BOOL)
            mask = glae_arg_array(masko, "no_decay_mask", NPY_BOOL, -1);
        else
            mask = glae_arg_array(masko, "no_decay_mask", NPY_UINT8, -1);
        if (!mask || glae_check_same_shape(p, "params", mask, "no_decay_mask")) return NULL;
    }
    if (overlap(p, m) || overlap(p, g) || overlap(m, g)) {
        PyErr_SetString(PyExc_ValueError,
                        "params, momentum_buf and grads must not share memory");
        return NULL;
    }
    const long long n = (long long)PyArray_SIZE(p);
    long long begin = 0, end = n;
    if (begino && get_i64(begino, "begin", &begin)) return NULL;
    if (endo != Py_None && get_i64(endo, "end", &end)) return NULL;
    if (begin < 0 || end < begin || end > n) {
        PyErr_Format(PyExc_ValueError,
                     "need 0 <= begin <= end <= params.size, got begin=%lld, end=%lld, size=%lld",
                     begin, end, n);
        return NULL;
    }
    glae_job J;
    if (glae_job_begin(&J, ctxo)) return NULL;
    float *dp = glae_job_inout(&J, p), *dm = glae_job_inout(&J, m), *dg = glae_job_in(&J, g);
    const uint8_t *dk = glae_job_in(&J, mask);
    GLAE_JOB_RUN(J, J.ctx->ops->sgd_step(J.ctx, dp, dm, dg, (size_t)begin, (size_t)end, dk,
                                         (float)lr, (float)momentum, (float)dampening, (float)wd,
                                         nesterov, first_step));
}

/* ---- schedules ------------------------------------------------------------------- */

static char *onecycle_kw[] = {"step", "total_steps", "max_lr", "pct_start", "div_factor",
                              "final_div_factor", "cycle_momentum", "base_momentum",
                              "max_momentum", "anneal_strategy", "three_phase", NULL};

static int parse_onecycle(PyObject *args, PyObject *kw, const char *fmt, PyObject **stepo,
                          glae_onecycle_cfg *c) {
    PyObject *totalo;
    const char *anneal = "cos";
    double max_lr;
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, onecycle_kw, stepo, &totalo, &max_lr,
                                     &c->pct_start, &c->div_factor, &c->final_div_factor,
                                     &c->cycle_momentum, &c->base_momentum, &c->max_momentum,
                                     &anneal, &c->three_phase))
        return -1;
    long long total;
    if (get_i64(totalo, "total_steps", &total)) return -1;
    if (total <= 0) {
        PyErr_Format(PyExc_ValueError, "total_steps must be a positive int, got %lld", total);
        return -1;
    }
    c->total_steps = total;
    c->max_lr = max_lr;
    if (strcmp(anneal, "cos") == 0) c->anneal = GLAE_ANNEAL_COS;
    else if (strcmp(anneal, "linear") == 0) c->anneal = GLAE_ANNEAL_LINEAR;
    else {
        PyErr_Format(PyExc_ValueError, "anneal_strategy must be 'cos' or 'linear', got '%s'",
                     anneal);
        return -1;
    }
    return 0;
}

static PyObject *py_onecycle(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    glae_onecycle_cfg c = glae_onecycle_defaults(1, 0.0);
    PyObject *stepo;
    if (parse_onecycle(args, kw, "OOd|dddpddsp:onecycle", &stepo, &c)) return NULL;
    long long step;
    if (get_i64(stepo, "step", &step)) return NULL;
    double lr, mom = 0.0;
    int st = glae_onecycle(&c, step, &lr, &mom);
    if (st) return glae_raise(st);
    if (c.cycle_momentum) return Py_BuildValue("(dd)", lr, mom);
    return Py_BuildValue("(dO)", lr, Py_None);
}

static PyObject *py_onecycle_steps(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    glae_onecycle_cfg c = glae_onecycle_defaults(1, 0.0);
    PyObject *stepo;
    if (parse_onecycle(args, kw, "OOd|dddpddsp:onecycle_steps", &stepo, &c)) return NULL;
    PyArrayObject *s = glae_arg_array(stepo, "steps", NPY_INT64, 1);
    if (!s) return NULL;
    npy_intp n = PyArray_SIZE(s);
    PyArrayObject *lr = glae_new_array(1, &n, NPY_FLOAT64);
    PyArrayObject *mom = lr && c.cycle_momentum ? glae_new_array(1, &n, NPY_FLOAT64) : NULL;
    if (!lr || (c.cycle_momentum && !mom)) goto fail;
    const int64_t *sp = PyArray_DATA(s);
    double *lp = PyArray_DATA(lr), *mp = mom ? PyArray_DATA(mom) : NULL;
    for (npy_intp i = 0; i < n; i++) {
        int st = glae_onecycle(&c, sp[i], &lp[i], mp ? &mp[i] : NULL);
        if (st) {
            glae_raise(st);
            goto fail;
        }
    }
    if (mom) return Py_BuildValue("(NN)", lr, mom);
    return Py_BuildValue("(NO)", lr, Py_None);
fail:
    Py_XDECREF(lr);
    Py_XDECREF(mom);
    return NULL;
}

static PyObject *py_multistep(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"epoch", "base_lr", "milestones", "gamma", NULL};
    PyObject *epocho, *mso;
    double base_lr, gamma = 0.1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OdO|d:multistep", kwlist, &epocho, &base_lr, &mso,
                                     &gamma))
        return NULL;
    long long epoch;
    if (get_i64(epocho, "epoch", &epoch)) return NULL;
    if (PyUnicode_Check(mso) || PyBytes_Check(mso) || !PySequence_Check(mso)) {
        PyErr_Format(PyExc_TypeError, "milestones must be a sequence of ints, got %s",
                     Py_TYPE(mso)->tp_name);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(mso, "milestones must be a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    if (k > 1000000) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "milestones: too many");
        return NULL;
    }
    int64_t *ms = PyMem_Malloc((size_t)(k ? k : 1) * sizeof *ms);
    if (!ms) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        long long v;
        /* numpy integer scalars are accepted through __index__ */
        PyObject *idx = PyLong_Check(it) ? (Py_INCREF(it), it) : PyNumber_Index(it);
        if (!idx) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "milestones must hold ints, got %s",
                         Py_TYPE(it)->tp_name);
            goto fail;
        }
        int bad = get_i64(idx, "milestones item", &v);
        Py_DECREF(idx);
        if (bad) goto fail;
        ms[i] = v;
    }
    double lr;
    int st = glae_multistep(&lr, epoch, base_lr, ms, (int)k, gamma);
    PyMem_Free(ms);
    Py_DECREF(seq);
    if (st) return glae_raise(st);
    return PyFloat_FromDouble(lr);
fail:
    PyMem_Free(ms);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *py_linear_scaled_lr(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"base", "batch", "reference", NULL};
    double base;
    PyObject *batcho, *refo = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dO|O:linear_scaled_lr", kwlist, &base, &batcho,
                                     &refo))
        return NULL;
    long long batch, ref = 256;
    if (get_i64(batcho, "batch", &batch) || (refo && get_i64(refo, "reference", &ref)))
        return NULL;
    double lr;
    int st = glae_linear_scaled_lr(&lr, base, batch, ref);
    if (st) return glae_raise(st);
    return PyFloat_FromDouble(lr);
}

/* ---- samplers -------------------------------------------------------------------- */

static PyObject *py_sample_instance_balanced(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"n", "seed", "epoch", NULL};
    PyObject *no, *seedo, *epocho;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:sample_instance_balanced", kwlist, &no,
                                     &seedo, &epocho))
        return NULL;
    unsigned long long n, seed, epoch;
    if (glae_arg_uint(no, "n", UINT32_MAX, &n) || glae_arg_uint(seedo, "seed", UINT64_MAX, &seed) ||
        glae_arg_uint(epocho, "epoch", UINT32_MAX, &epoch))
        return NULL;
    npy_intp dim = (npy_intp)n;
    PyArrayObject *out = glae_new_array(1, &dim, NPY_INT64);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_sample_instance_balanced(PyArray_DATA(out), (int64_t)n, seed,
                                                 (uint32_t)epoch));
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

/* sample_class_balanced and sample_class_power: the same labels and arguments; with_power
 * reads power and alpha too (keywords) */
static PyObject *sample_classes(PyObject *args, PyObject *kw, int with_power) {
    static char *kwlist[] = {"labels", "seed", "epoch", "length", NULL};
    static char *kwlist_p[] = {"labels", "seed", "epoch", "length", "power", "alpha", NULL};
    PyObject *lo, *seedo, *epocho, *leno = Py_None;
    double power = 0.0, alpha = 1.0;
    if (with_power ? !PyArg_ParseTupleAndKeywords(args, kw, "OOO|O$dd:sample_class_power",
                                                  kwlist_p, &lo, &seedo, &epocho, &leno, &power,
                                                  &alpha)
                   : !PyArg_ParseTupleAndKeywords(args, kw, "OOO|O:sample_class_balanced", kwlist,
                                                  &lo, &seedo, &epocho, &leno))
        return NULL;
    if (!PyArray_Check(lo)) {
        PyErr_Format(PyExc_TypeError, "labels must be a numpy.ndarray, got %s",
                     Py_TYPE(lo)->tp_name);
        return NULL;
    }
    int t = PyArray_TYPE((PyArrayObject *)lo);
    if (t != NPY_INT32 && t != NPY_INT64 && t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError,
                     "labels must have dtype int32, int64, float32 or float64, got %S",
                     (PyObject *)PyArray_DESCR((PyArrayObject *)lo));
        return NULL;
    }
    PyArrayObject *lab = glae_arg_array(lo, "labels", t, 1);
    if (!lab) return NULL;
    unsigned long long seed, epoch;
    if (glae_arg_uint(seedo, "seed", UINT64_MAX, &seed) ||
        glae_arg_uint(epocho, "epoch", UINT32_MAX, &epoch))
        return NULL;
    npy_intp n = PyArray_SIZE(lab);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "labels must not be empty");
        return NULL;
    }
    unsigned long long length = (unsigned long long)n;
    if (leno != Py_None && glae_arg_uint(leno, "length", UINT32_MAX, &length)) return NULL;

    /* labels as int64; float ages get their whole-year class (core/age.h, half up) */
    int64_t *l64 = PyMem_Malloc((size_t)n * sizeof *l64);
    if (!l64) return PyErr_NoMemory();
    const void *src = PyArray_DATA(lab);
    for (npy_intp i = 0; i < n; i++) {
        double v;
        switch (t) {
        case NPY_INT32: l64[i] = ((const int32_t *)src)[i]; continue;
        case NPY_INT64: l64[i] = ((const int64_t *)src)[i]; continue;
        case NPY_FLOAT32: v = ((const float *)src)[i]; break;
        default: v = ((const double *)src)[i]; break;
        }
        if (!isfinite(v) || v < 0.0) {
            char txt[64];
            snprintf(txt, sizeof txt, "%g", v);
            PyMem_Free(l64);
            PyErr_Format(PyExc_ValueError, "labels[%zd] is not a finite age >= 0: %s",
                         (Py_ssize_t)i, txt);
            return NULL;
        }
        l64[i] = glae_age_class((float)v, INT64_MAX); /* no upper clamp */
    }
    npy_intp dim = (npy_intp)length;
    PyArrayObject *out = glae_new_array(1, &dim, NPY_INT64);
    if (!out) {
        PyMem_Free(l64);
        return NULL;
    }
    int st;
    if (with_power)
        GLAE_NOGIL(st, glae_sample_class_power(PyArray_DATA(out), (int64_t)length, l64,
                                               (int64_t)n, power, alpha, seed, (uint32_t)epoch));
    else
        GLAE_NOGIL(st, glae_sample_class_balanced(PyArray_DATA(out), (int64_t)length, l64,
                                                  (int64_t)n, seed, (uint32_t)epoch));
    PyMem_Free(l64);
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

static PyObject *py_sample_class_balanced(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return sample_classes(args, kw, 0);
}

static PyObject *py_sample_class_power(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return sample_classes(args, kw, 1);
}

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) ((PyCFunction)(void (*)(void))(f))

PyMethodDef glae_train_methods[] = {
    {"sgd_step", FN(py_sgd_step), KW,
     "sgd_step(params, momentum_buf, grads, lr, momentum=0.9, dampening=0.0, "
     "weight_decay=5e-4, nesterov=True, first_step=False, begin=0, end=None, "
     "no_decay_mask=None, ctx=None) -> None\n\n"
     "One torch.optim.SGD step on params[begin:end] (flat indices), IN PLACE on params and "
     "momentum_buf (float32, same shape as grads). first_step: the buffer is set to the "
     "gradient (PyTorch's first step). no_decay_mask: uint8/bool, same shape, nonzero = no "
     "weight decay. momentum_buf may be None when momentum == 0."},
    {"onecycle", FN(py_onecycle), KW,
     "onecycle(step, total_steps, max_lr, pct_start=0.3, div_factor=25.0, "
     "final_div_factor=1e4, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95, "
     "anneal_strategy='cos', three_phase=False) -> (lr, momentum or None)\n\n"
     "torch.optim.lr_scheduler.OneCycleLR at scheduler step `step` in [0, total_steps]."},
    {"onecycle_steps", FN(py_onecycle_steps), KW,
     "onecycle_steps(steps int64[n], total_steps, max_lr, ...) -> (lr float64[n], "
     "momentum float64[n] or None): onecycle over an array of steps."},
    {"multistep", FN(py_multistep), KW,
     "multistep(epoch, base_lr, milestones, gamma=0.1) -> lr = base_lr * gamma ** "
     "(number of milestones <= epoch) (torch MultiStepLR's closed form)."},
    {"linear_scaled_lr", FN(py_linear_scaled_lr), KW,
     "linear_scaled_lr(base, batch, reference=256) -> base * batch / reference (LAE 3.3)."},
    {"sample_instance_balanced", FN(py_sample_instance_balanced), KW,
     "sample_instance_balanced(n, seed, epoch) -> int64[n]: a permutation of range(n), a "
     "pure function of (seed, epoch)."},
    {"sample_class_balanced", FN(py_sample_class_balanced), KW,
     "sample_class_balanced(labels, seed, epoch, length=None) -> int64[length]: each draw "
     "picks a class uniformly among the labels present, then an instance of it uniformly. "
     "labels: 1-D int32/int64 (or float ages >= 0, classed by age_class: half up); length "
     "defaults to len(labels)."},
    {"sample_class_power", FN(py_sample_class_power), KW,
     "sample_class_power(labels, seed, epoch, length=None, *, power=0.0, alpha=1.0) -> "
     "int64[length]: class c (n_c members) drawn with probability (1 - alpha) n_c / n + "
     "alpha n_c^power / sum n_j^power, then an instance of it uniformly (Kang et al. 2020): "
     "power 0.5 = square-root sampling; power 0 with alpha rising from 0 to 1 over the "
     "epochs = progressively balanced. labels as for sample_class_balanced."},
    {NULL, NULL, 0, NULL},
};
