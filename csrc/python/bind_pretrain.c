/* The _C.PretrainModel type: the identity pre-training model (nn/pretrain.h), a ResNet
 * backbone + embedding + AM-softmax classifier on one flat parameter buffer. Its buffers,
 * parameter table and get / set are those of _C.Model (model_py.h), so the same Python
 * code saves, loads and steps both. Also the verification figures of its embeddings
 * (metrics/verify.h): pair_cosines, verification. */
#include "python/model_py.h" /* Python.h first */
#include <math.h>
#include <string.h>

#include "metrics/verify.h"
#include "nn/model.h" /* GLAE_INPUT_F32 */
#include "nn/pretrain.h"

typedef struct {
    PyObject_HEAD
    glae_pretrain_model m;
    int ready;
    int busy; /* a call is running without the GIL: refuse a second one */
} PretrainObject;

static int ready(PretrainObject *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "PretrainModel is not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "PretrainModel is busy in another thread");
        return 0;
    }
    return 1;
}

static void Pretrain_dealloc(PretrainObject *self) {
    if (self->ready) glae_pretrain_free(&self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Pretrain_init(PretrainObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"num_ids", "backbone", "embed_dim", "s", "m", "seed", "device",
                             "math", NULL};
    const char *backbone = "resnet18", *device = "cpu", *math = "fp32";
    glae_pretrain_config cfg;
    glae_pretrain_config_default(&cfg);
    unsigned long long seed = 0;
    double s = cfg.s, mg = cfg.m;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|siddKss:PretrainModel", kwlist, &cfg.num_ids,
                                     &backbone, &cfg.embed_dim, &s, &mg, &seed, &device, &math))
        return -1;
    if (self->ready || self->busy) { /* its views share the memory a re-init would free */
        PyErr_SetString(PyExc_RuntimeError, "PretrainModel is already built: make a new one "
                                            "instead of calling __init__ again");
        return -1;
    }
    if (strcmp(backbone, "resnet18") && strcmp(backbone, "resnet50")) {
        PyErr_Format(PyExc_ValueError, "backbone must be 'resnet18' or 'resnet50' (identity "
                     "pre-training builds ResNets), got '%s'", backbone);
        return -1;
    }
    if (glae_py_parse_backbone(backbone, &cfg.backbone) ||
        glae_py_parse_device(device, &cfg.device, &cfg.cuda_device) ||
        glae_py_parse_math(math, &cfg.math))
        return -1;
    cfg.s = (float)s;
    cfg.m = (float)mg;
    cfg.seed = seed;
    int st;
    self->busy = 1;
    GLAE_NOGIL(st, glae_pretrain_init(&self->m, &cfg));
    self->busy = 0;
    if (st) {
        glae_pretrain_free(&self->m);
        glae_raise(st);
        return -1;
    }
    self->ready = 1;
    return 0;
}

/* ---- buffers and parameters (model_py.c) ----------------------------------------------- */

static PyObject *flat(PretrainObject *self, float *data, size_t n) {
    if (!ready(self)) return NULL;
    return glae_py_flat_view((PyObject *)self, &self->m.p, &self->m.ctx, data, n);
}
static PyObject *P_params(PretrainObject *self, void *c) {
    (void)c;
    return flat(self, self->m.p.params, self->m.p.n);
}
static PyObject *P_grads(PretrainObject *self, void *c) {
    (void)c;
    return flat(self, self->m.p.grads, self->m.p.n);
}
static PyObject *P_momentum(PretrainObject *self, void *c) {
    (void)c;
    return flat(self, self->m.p.momentum, self->m.p.n);
}
static PyObject *P_buffers(PretrainObject *self, void *c) {
    (void)c;
    return flat(self, self->m.p.buffers, self->m.p.n_buffers);
}
static PyObject *P_arena_bytes(PretrainObject *self, void *c) {
    (void)c;
    if (!ready(self)) return NULL;
    return PyLong_FromSize_t(self->m.peak_bytes);
}
static PyObject *P_device(PretrainObject *self, void *c) {
    (void)c;
    if (!ready(self)) return NULL;
    if (self->m.ctx.device == GLAE_CUDA) return PyUnicode_FromFormat("cuda:%d", self->m.cfg.cuda_device);
    return PyUnicode_FromString("cpu");
}
static PyObject *P_config(PretrainObject *self, void *c) {
    (void)c;
    if (!ready(self)) return NULL;
    const glae_pretrain_config *g = &self->m.cfg;
    static const char *maths[3] = {"fp32", "tf32", "bf16"};
    return Py_BuildValue("{s:s,s:i,s:i,s:d,s:d,s:K,s:s}", "backbone",
                         glae_py_backbone_name(g->backbone), "num_ids", g->num_ids,
                         "embed_dim", g->embed_dim, "s", (double)g->s, "m", (double)g->m, "seed",
                         (unsigned long long)g->seed, "math", maths[g->math]);
}

static PyObject *P_param_table(PretrainObject *self, PyObject *noargs) {
    (void)noargs;
    if (!ready(self)) return NULL;
    return glae_py_param_table(&self->m.p);
}
static PyObject *P_get(PretrainObject *self, PyObject *args) {
    if (!ready(self)) return NULL;
    return glae_py_param_get(&self->m.p, &self->m.ctx, args);
}
static PyObject *P_set(PretrainObject *self, PyObject *args) {
    if (!ready(self)) return NULL;
    return glae_py_param_set(&self->m.p, &self->m.ctx, args);
}
static PyObject *P_zero_grad(PretrainObject *self, PyObject *noargs) {
    (void)noargs;
    if (!ready(self)) return NULL;
    return glae_py_zero_grad(&self->m.p, &self->m.ctx);
}
static PyObject *P_write_flat(PretrainObject *self, PyObject *args, PyObject *kw) {
    if (!ready(self)) return NULL;
    return glae_py_write_flat(&self->m.p, &self->m.ctx, args, kw);
}

static PyObject *P_group_range(PretrainObject *self, PyObject *arg) {
    if (!ready(self)) return NULL;
    const char *s = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    int g;
    if (s && !strcmp(s, "backbone")) g = GLAE_G_BACKBONE;
    else if (s && !strcmp(s, "head")) g = GLAE_G_HEAD;
    else {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "group must be 'backbone' or 'head' (the embedding "
                                              "and the AM-softmax classifier)");
        return NULL;
    }
    size_t b, e;
    glae_params_group_range(&self->m.p, g, &b, &e);
    return Py_BuildValue("(nn)", (Py_ssize_t)b, (Py_ssize_t)e);
}

static PyObject *P_sgd_step(PretrainObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"lr", "momentum", "dampening", "weight_decay", "nesterov",
                             "first_step", "wd_exclude", NULL};
    double lr, momentum = 0.9, dampening = 0.0, wd = 5e-4;
    int nesterov = 0, first_step = 0, wd_exclude = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "d|dddppp:sgd_step", kwlist, &lr, &momentum,
                                     &dampening, &wd, &nesterov, &first_step, &wd_exclude))
        return NULL;
    if (!ready(self)) return NULL;
    int st;
    self->busy = 1;
    GLAE_NOGIL(st, glae_pretrain_sgd_step(&self->m, (float)lr, (float)momentum, (float)dampening,
                                          (float)wd, nesterov, first_step, wd_exclude));
    self->busy = 0;
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

/* ---- compute ------------------------------------------------------------------------- */

/* x (N, H, W, 3): float32 images already normalised, or uint8 pixels with `norm` */
static PyArrayObject *arg_images(PyObject *xo, PyObject *normo, int *xnorm) {
    const int u8 = PyArray_Check(xo) && PyArray_TYPE((PyArrayObject *)xo) == NPY_UINT8;
    PyArrayObject *x = u8 ? glae_arg_array(xo, "x", NPY_UINT8, 4) : glae_arg_f32(xo, "x", 4);
    if (!x || glae_check_dim(x, "x", 3, 3)) return NULL;
    *xnorm = GLAE_INPUT_F32;
    if (u8) {
        if (!normo || normo == Py_None) {
            PyErr_SetString(PyExc_ValueError, "x is uint8 pixels: give norm='glae', 'imagenet' "
                                              "or 'none'");
            return NULL;
        }
        if (glae_parse_norm(normo, "x uint8", xnorm)) return NULL;
    } else if (normo && normo != Py_None) {
        PyErr_SetString(PyExc_ValueError, "norm applies to uint8 pixels; x is float32, taken as "
                                          "already normalised");
        return NULL;
    }
    if (PyArray_DIM(x, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "x: the batch is empty");
        return NULL;
    }
    if (PyArray_DIM(x, 0) > 1 << 20 || PyArray_DIM(x, 1) > 1 << 15 || PyArray_DIM(x, 2) > 1 << 15) {
        PyErr_SetString(PyExc_ValueError, "x: too large");
        return NULL;
    }
    int fh, fw;
    if (glae_resnet_out_size((int)PyArray_DIM(x, 1), (int)PyArray_DIM(x, 2), &fh, &fw)) {
        PyErr_Format(PyExc_ValueError, "x: %s", glae_last_error());
        return NULL;
    }
    return x;
}

static PyObject *P_train_step(PretrainObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "labels", "norm", NULL};
    PyObject *xo, *lo, *no = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:train_step", kwlist, &xo, &lo, &no))
        return NULL;
    if (!ready(self)) return NULL;
    int xnorm;
    PyArrayObject *x = arg_images(xo, no, &xnorm);
    if (!x) return NULL;
    PyArrayObject *labels = glae_arg_array(lo, "labels", NPY_INT32, 1);
    if (!labels || glae_check_dim(labels, "labels", 0, PyArray_DIM(x, 0))) return NULL;
    float loss = 0.0f;
    int st;
    self->busy = 1;
    GLAE_NOGIL(st, glae_pretrain_train_step(&self->m, &loss, PyArray_DATA(x), xnorm,
                                            (int)PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1),
                                            (int)PyArray_DIM(x, 2), PyArray_DATA(labels)));
    self->busy = 0;
    if (st) return glae_raise(st);
    return PyFloat_FromDouble((double)loss);
}

static PyObject *P_embed(PretrainObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "norm", NULL};
    PyObject *xo, *no = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:embed", kwlist, &xo, &no)) return NULL;
    if (!ready(self)) return NULL;
    int xnorm;
    PyArrayObject *x = arg_images(xo, no, &xnorm);
    if (!x) return NULL;
    npy_intp dims[2] = {PyArray_DIM(x, 0), self->m.cfg.embed_dim};
    PyArrayObject *out = glae_new_array(2, dims, NPY_FLOAT32);
    if (!out) return NULL;
    int st;
    self->busy = 1;
    GLAE_NOGIL(st, glae_pretrain_embed(&self->m, PyArray_DATA(out), PyArray_DATA(x), xnorm,
                                       (int)dims[0], (int)PyArray_DIM(x, 1),
                                       (int)PyArray_DIM(x, 2)));
    self->busy = 0;
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

static PyMethodDef P_methods[] = {
    {"param_table", (PyCFunction)P_param_table, METH_NOARGS,
     "param_table() -> [(name, shape, offset, numel, is_buffer, group, no_decay)] as Model's"},
    {"get", (PyCFunction)P_get, METH_VARARGS,
     "get(name) -> a copy of the tensor in torchvision's layout (conv weights OIHW)"},
    {"set", (PyCFunction)P_set, METH_VARARGS,
     "set(name, value float32) -- value in torchvision's layout and shape"},
    {"zero_grad", (PyCFunction)P_zero_grad, METH_NOARGS, "zero_grad(): grads[:] = 0"},
    {"write_flat", (PyCFunction)(void (*)(void))P_write_flat, METH_VARARGS | METH_KEYWORDS,
     "write_flat(role 'params'|'grads'|'momentum'|'buffers', value (n,) f32, offset=0)"},
    {"group_range", (PyCFunction)P_group_range, METH_O,
     "group_range('backbone'|'head') -> (begin, end) in floats of params"},
    {"sgd_step", (PyCFunction)(void (*)(void))P_sgd_step, METH_VARARGS | METH_KEYWORDS,
     "sgd_step(lr, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=False, "
     "first_step=False, wd_exclude=False): one SGD step (torch.optim.SGD's rule) on every "
     "parameter, on the model's device"},
    {"train_step", (PyCFunction)(void (*)(void))P_train_step, METH_VARARGS | METH_KEYWORDS,
     "train_step(x (N,H,W,3), labels (N,) int32, norm=None) -> the batch-mean AM-softmax loss; "
     "gradients accumulate into grads. x float32 (normalised) or uint8 with norm; N >= 2"},
    {"embed", (PyCFunction)(void (*)(void))P_embed, METH_VARARGS | METH_KEYWORDS,
     "embed(x, norm=None) -> (N, embed_dim) float32: the embeddings (BN in eval mode), not "
     "normalised"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef P_getset[] = {
    {"params", (getter)P_params, NULL, "trainable parameters (1-D view)", NULL},
    {"grads", (getter)P_grads, NULL, "gradients (1-D view)", NULL},
    {"momentum", (getter)P_momentum, NULL, "optimiser momentum (1-D view)", NULL},
    {"buffers", (getter)P_buffers, NULL, "BN running statistics (1-D view)", NULL},
    {"arena_bytes", (getter)P_arena_bytes, NULL, "peak activation arena size in bytes", NULL},
    {"config", (getter)P_config, NULL, "the constructor's arguments", NULL},
    {"device", (getter)P_device, NULL, "'cpu' or 'cuda:N'", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PretrainType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "glae._C.PretrainModel",
    .tp_basicsize = sizeof(PretrainObject),
    .tp_dealloc = (destructor)Pretrain_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "PretrainModel(num_ids, backbone='resnet18', embed_dim=512, s=30.0, m=0.35, "
              "seed=0, device='cpu', math='fp32'): identity pre-training (LAE sec. 2.3): the "
              "age model's ResNet backbone, pooled features -> embedding.0 Linear(C, d, no "
              "bias) -> embedding.1 BatchNorm1d(d) -> AM-softmax over num_ids identities",
    .tp_methods = P_methods,
    .tp_getset = P_getset,
    .tp_init = (initproc)Pretrain_init,
    .tp_new = PyType_GenericNew,
};

/* ---- verification figures (metrics/verify.h) ------------------------------------------- */

/* pair_cosines(emb float32 (n, d), a int64 (p,), b int64 (p,)) -> float32 (p,) */
static PyObject *py_pair_cosines(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"emb", "a", "b", NULL};
    PyObject *eo, *ao, *bo;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:pair_cosines", kwlist, &eo, &ao, &bo))
        return NULL;
    PyArrayObject *e = glae_arg_f32(eo, "emb", 2);
    PyArrayObject *a = e ? glae_arg_array(ao, "a", NPY_INT64, 1) : NULL;
    PyArrayObject *b = a ? glae_arg_array(bo, "b", NPY_INT64, 1) : NULL;
    if (!b || glae_check_same_shape(a, "a", b, "b")) return NULL;
    if (PyArray_DIM(e, 1) < 1 || PyArray_DIM(e, 1) > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "emb must have between 1 and 2**31-1 columns");
        return NULL;
    }
    npy_intp np_ = PyArray_DIM(a, 0);
    PyArrayObject *out = glae_new_array(1, &np_, NPY_FLOAT32);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_pair_cosines(PyArray_DATA(out), PyArray_DATA(e), PyArray_DIM(e, 0),
                                     (int)PyArray_DIM(e, 1), PyArray_DATA(a), PyArray_DATA(b), np_));
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

static PyObject *nan_or(double v) {
    if (isnan(v)) Py_RETURN_NONE;
    return PyFloat_FromDouble(v);
}

/* verification(scores float32 (n,), same bool (n,), far=1e-3) -> dict */
static PyObject *py_verification(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"scores", "same", "far", NULL};
    PyObject *so, *yo;
    double far = 1e-3;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|d:verification", kwlist, &so, &yo, &far))
        return NULL;
    PyArrayObject *s = glae_arg_f32(so, "scores", 1);
    PyArrayObject *y = s ? glae_arg_array(yo, "same", NPY_BOOL, 1) : NULL;
    if (!y || glae_check_same_shape(s, "scores", y, "same")) return NULL;
    glae_verification v;
    int st;
    GLAE_NOGIL(st, glae_verification_figures(&v, PyArray_DATA(s), PyArray_DATA(y),
                                             PyArray_DIM(s, 0), far));
    if (st) return glae_raise(st);
    return Py_BuildValue("{s:L,s:L,s:N,s:N,s:N,s:d,s:N,s:N}", "n_same", (long long)v.n_same,
                         "n_diff", (long long)v.n_diff, "accuracy", nan_or(v.accuracy),
                         "threshold", nan_or(v.threshold), "tar_at_far", nan_or(v.tar_at_far),
                         "far", far, "mean_same", nan_or(v.mean_same), "mean_diff",
                         nan_or(v.mean_diff));
}

PyMethodDef glae_pretrain_methods[] = {
    {"pair_cosines", (PyCFunction)(void (*)(void))py_pair_cosines, METH_VARARGS | METH_KEYWORDS,
     "pair_cosines(emb float32 (n, d), a int64 (p,), b int64 (p,)) -> float32 (p,): "
     "cos(emb[a], emb[b]) (0 for a zero row)"},
    {"verification", (PyCFunction)(void (*)(void))py_verification, METH_VARARGS | METH_KEYWORDS,
     "verification(scores float32 (n,), same bool (n,), far=1e-3) -> {n_same, n_diff, "
     "accuracy, threshold, tar_at_far, far, mean_same, mean_diff}: the accuracy at the best "
     "threshold (mean of the same-pair and different-pair accuracies), the true-accept rate "
     "at false-accept rate far (None with fewer than 1/far different pairs); None where "
     "undefined. See docs/pretraining.md."},
    {NULL, NULL, 0, NULL},
};

int glae_pretrain_add_types(PyObject *m) {
    if (PyType_Ready(&PretrainType) < 0) return -1;
    Py_INCREF(&PretrainType);
    if (PyModule_AddObject(m, "PretrainModel", (PyObject *)&PretrainType) < 0) {
        Py_DECREF(&PretrainType);
        return -1;
    }
    return 0;
}
