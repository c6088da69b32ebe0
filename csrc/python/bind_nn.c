/* The nn family: the _C.Model type (backbone + vanilla head + balanced head). Parameter
 * arrays are views of the model's flat buffers (each holds a reference to the model);
 * conv weights are exchanged in torchvision's OIHW layout and stored OHWI. */
#include "python/model_py.h" /* Python.h first */
#include <string.h>

#include "nn/droppath.h"
#include "nn/model.h"
#ifdef GLAE_WITH_CUDA
#include "core/cuda_ctx.h"
#endif
#include "ops/backend.h"
#include "ops/loss.h"

typedef struct {
    PyObject_HEAD
    glae_model m;
    int ready;
    int busy; /* a call is running without the GIL: refuse a second one */
} ModelObject;

static int model_ready(ModelObject *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Model is not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Model is busy in another thread");
        return 0;
    }
    return 1;
}

static void Model_dealloc(ModelObject *self) {
    if (self->ready) glae_model_free(&self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_head(const char *s, int *kind) {
    if (!strcmp(s, "gap")) *kind = GLAE_HEAD_GAP;
    else if (!strcmp(s, "fr")) *kind = GLAE_HEAD_FR;
    else if (!strcmp(s, "fr+pa")) *kind = GLAE_HEAD_FRPA;
    else {
        PyErr_Format(PyExc_ValueError, "head must be 'gap', 'fr' or 'fr+pa', got '%s'", s);
        return -1;
    }
    return 0;
}

static const char *head_name(int kind) {
    return kind == GLAE_HEAD_GAP ? "gap" : kind == GLAE_HEAD_FR ? "fr" : "fr+pa";
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"backbone", "head", "r", "k", "s", "proj_depth", "proj_width",
                             "num_classes", "lam", "seed", "input_size", "device", "math",
                             "threads", "stochastic_depth", "cpu_backend", NULL};
    const char *backbone = "resnet18", *head = "fr+pa", *device = "cpu", *math = "fp32";
    const char *cpu_backend = "reference";
    glae_model_config cfg;
    glae_model_config_default(&cfg);
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|ssiiiiiifKissifs:Model", kwlist, &backbone,
                                     &head, &cfg.r, &cfg.k, &cfg.s, &cfg.proj_depth,
                                     &cfg.proj_width, &cfg.num_classes, &cfg.lam, &seed,
                                     &cfg.input_size, &device, &math, &cfg.threads,
                                     &cfg.stochastic_depth, &cpu_backend))
        return -1;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Model is busy in another thread");
        return -1;
    }
    if (glae_py_parse_backbone(backbone, &cfg.backbone) || parse_head(head, &cfg.head) ||
        glae_py_parse_device(device, &cfg.device, &cfg.cuda_device) ||
        glae_py_parse_math(math, &cfg.math) || glae_py_cpu_backend(cpu_backend, &cfg.cpu_backend))
        return -1;
    if (glae_check_min(cfg.r, "r", 1) || glae_check_min(cfg.k, "k", 1) ||
        glae_check_min(cfg.s, "s", 1) || glae_check_min(cfg.proj_depth, "proj_depth", 0) ||
        glae_check_min(cfg.proj_width, "proj_width", 1) ||
        glae_check_min(cfg.num_classes, "num_classes", 2) ||
        glae_check_min(cfg.input_size, "input_size", 1) ||
        glae_check_min(cfg.threads, "threads", 0))
        return -1;
    if (cfg.threads > 1024) { /* OpenMP would try to start them all */
        PyErr_Format(PyExc_ValueError, "threads must be at most 1024; got %d", cfg.threads);
        return -1;
    }
    if (cfg.proj_depth > GLAE_PROJ_MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "proj_depth must be 0, 1 or 2, got %d", cfg.proj_depth);
        return -1;
    }
    if (!(cfg.lam == cfg.lam) || cfg.lam > 3.4e38f || cfg.lam < -3.4e38f) {
        PyErr_SetString(PyExc_ValueError, "lam must be finite");
        return -1;
    }
    cfg.seed = seed;
    if (self->ready) { /* its params/grads/... views share the memory a re-init would free */
        PyErr_SetString(PyExc_RuntimeError,
                        "Model is already built: make a new Model instead of calling __init__ again");
        return -1;
    }
    int st;
    self->busy = 1; /* a second __init__ from another thread meanwhile is refused */
    GLAE_NOGIL(st, glae_model_init(&self->m, &cfg)); /* which applies its new ctx's count */
    self->busy = 0;
    if (st) {
        glae_model_free(&self->m);
        glae_raise(st);
        return -1;
    }
    self->ready = 1;
    return 0;
}

/* ---- buffer views ------------------------------------------------------------------ */

static PyObject *view(ModelObject *self, float *data, size_t n) {
    if (!model_ready(self)) return NULL;
    return glae_py_flat_view((PyObject *)self, &self->m.p, &self->m.ctx, data, n);
}

static PyObject *Model_params(ModelObject *self, void *c) {
    return view(self, self->m.p.params, self->m.p.n);
}
static PyObject *Model_grads(ModelObject *self, void *c) {
    return view(self, self->m.p.grads, self->m.p.n);
}
static PyObject *Model_momentum(ModelObject *self, void *c) {
    return view(self, self->m.p.momentum, self->m.p.n);
}
static PyObject *Model_buffers(ModelObject *self, void *c) {
    return view(self, self->m.p.buffers, self->m.p.n_buffers);
}
static PyObject *Model_arena_bytes(ModelObject *self, void *c) {
    if (!model_ready(self)) return NULL;
    return PyLong_FromSize_t(self->m.peak_bytes);
}

static PyObject *Model_math(ModelObject *self, void *c) {
    (void)c;
    if (!model_ready(self)) return NULL;
    static const char *names[3] = {"fp32", "tf32", "bf16"};
    return PyUnicode_FromString(names[self->m.cfg.math]);
}

static PyObject *Model_threads(ModelObject *self, void *c) {
    (void)c;
    if (!self->ready) { /* readable while a call runs: only the setter (GIL held) writes it */
        PyErr_SetString(PyExc_RuntimeError, "Model is not initialised");
        return NULL;
    }
    return PyLong_FromLong(glae_ctx_threads(&self->m.ctx));
}

static int Model_set_threads(ModelObject *self, PyObject *v, void *c) {
    (void)c;
    if (!model_ready(self)) return -1;
    if (!v) {
        PyErr_SetString(PyExc_TypeError, "threads cannot be deleted");
        return -1;
    }
    int overflow = 0;
    const long n = PyLong_AsLongAndOverflow(v, &overflow);
    if (n == -1 && PyErr_Occurred()) return -1;
    if (overflow || n < 0 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "threads must be in [0, 1024]; got %S", v);
        return -1;
    }
    const int st = glae_model_set_threads(&self->m, (int)n);
    if (st) glae_raise(st);
    return st ? -1 : 0;
}

/* the stochastic-depth masks' counter (EfficientNetV2): training forwards so far; a resumed
 * run sets it back to draw the masks it would have drawn */
static PyObject *Model_drop_step(ModelObject *self, void *c) {
    (void)c;
    if (!model_ready(self)) return NULL;
    return PyLong_FromUnsignedLongLong(self->m.eff.step);
}

static int Model_set_drop_step(ModelObject *self, PyObject *v, void *c) {
    (void)c;
    if (!model_ready(self)) return -1;
    if (!v) {
        PyErr_SetString(PyExc_TypeError, "drop_step cannot be deleted");
        return -1;
    }
    const unsigned long long n = PyLong_AsUnsignedLongLong(v);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    self->m.eff.step = n;
    return 0;
}

static PyObject *Model_bn_batch(ModelObject *self, void *c) {
    (void)c;
    if (!model_ready(self)) return NULL;
    return PyLong_FromLong(self->m.net.bn_batch);
}

static int Model_set_bn_batch(ModelObject *self, PyObject *v, void *c) {
    (void)c;
    if (!model_ready(self)) return -1;
    if (!v) {
        PyErr_SetString(PyExc_TypeError, "bn_batch cannot be deleted");
        return -1;
    }
    const long n = PyLong_AsLong(v);
    if (n == -1 && PyErr_Occurred()) return -1;
    if (n < 0 || n > 1 << 30) {
        PyErr_Format(PyExc_ValueError, "bn_batch must be >= 0 (0: the whole batch); got %ld", n);
        return -1;
    }
    const int st = glae_model_set_bn_batch(&self->m, (int)n);
    if (st) glae_raise(st);
    return st ? -1 : 0;
}

static PyObject *Model_device(ModelObject *self, void *c) {
    if (!model_ready(self)) return NULL;
    if (self->m.ctx.device == GLAE_CUDA) return PyUnicode_FromFormat("cuda:%d", self->m.cfg.cuda_device);
    return PyUnicode_FromString("cpu");
}

static PyObject *Model_cpu_backend(ModelObject *self, void *c) {
    if (!model_ready(self)) return NULL;
    if (self->m.ctx.device != GLAE_CPU) return PyUnicode_FromString("");
    return PyUnicode_FromString(self->m.cfg.cpu_backend == GLAE_CPU_ONEDNN ? "onednn" : "reference");
}

static PyObject *Model_config(ModelObject *self, void *c) {
    if (!model_ready(self)) return NULL;
    const glae_model_config *g = &self->m.cfg;
    return Py_BuildValue("{s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:d,s:K,s:i,s:d}", "backbone",
                         glae_py_backbone_name(g->backbone), "head", head_name(g->head),
                         "r", g->r, "k", g->k, "s", g->s, "proj_depth", g->proj_depth,
                         "proj_width", g->proj_width, "num_classes", g->num_classes, "lam",
                         (double)g->lam, "seed", (unsigned long long)g->seed, "input_size",
                         g->input_size, "stochastic_depth", (double)g->stochastic_depth);
}

/* ---- parameter table, get / set ----------------------------------------------------- */

static PyObject *Model_param_table(ModelObject *self, PyObject *noargs) {
    if (!model_ready(self)) return NULL;
    return glae_py_param_table(&self->m.p);
}

static PyObject *Model_get(ModelObject *self, PyObject *args) {
    if (!model_ready(self)) return NULL;
    return glae_py_param_get(&self->m.p, &self->m.ctx, args);
}

static PyObject *Model_set(ModelObject *self, PyObject *args) {
    if (!model_ready(self)) return NULL;
    return glae_py_param_set(&self->m.p, &self->m.ctx, args);
}

static PyObject *Model_zero_grad(ModelObject *self, PyObject *noargs) {
    if (!model_ready(self)) return NULL;
    return glae_py_zero_grad(&self->m.p, &self->m.ctx);
}

static PyObject *Model_write_flat(ModelObject *self, PyObject *args, PyObject *kw) {
    if (!model_ready(self)) return NULL;
    return glae_py_write_flat(&self->m.p, &self->m.ctx, args, kw);
}

static PyObject *Model_sgd_step(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"lr", "momentum", "dampening", "weight_decay", "nesterov",
                             "first_step", "begin", "end", "wd_exclude", NULL};
    double lr, momentum = 0.9, dampening = 0.0, wd = 5e-4;
    int nesterov = 1, first_step = 0, wd_exclude = 0;
    Py_ssize_t begin = 0, end = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "d|dddppnnp:sgd_step", kwlist, &lr, &momentum,
                                     &dampening, &wd, &nesterov, &first_step, &begin, &end,
                                     &wd_exclude))
        return NULL;
    if (!model_ready(self)) return NULL;
    if (end < 0) end = (Py_ssize_t)self->m.p.n;
    if (begin < 0) {
        PyErr_Format(PyExc_ValueError, "sgd_step: begin must be >= 0, got %zd", begin);
        return NULL;
    }
    int st;
    self->busy = 1;
    /* the same float conversions as _C.sgd_step, so both give the same bits on the CPU */
    GLAE_NOGIL_CTX(st, &self->m.ctx,
                   glae_model_sgd_step(&self->m, (float)lr, (float)momentum, (float)dampening,
                                       (float)wd, nesterov, first_step, (size_t)begin,
                                       (size_t)end, wd_exclude));
    self->busy = 0;
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Model_copy_head(ModelObject *self, PyObject *noargs) {
    if (!model_ready(self)) return NULL;
    int st = glae_model_copy_head_to_balanced(&self->m);
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

static int parse_group(PyObject *o, int *g) {
    if (PyUnicode_Check(o)) {
        const char *s = PyUnicode_AsUTF8(o);
        if (!s) return -1;
        if (!strcmp(s, "backbone")) *g = GLAE_G_BACKBONE;
        else if (!strcmp(s, "head")) *g = GLAE_G_HEAD;
        else if (!strcmp(s, "balanced")) *g = GLAE_G_BALANCED;
        else {
            PyErr_Format(PyExc_ValueError,
                         "group must be 'backbone', 'head', 'balanced' or 0..2, got '%s'", s);
            return -1;
        }
        return 0;
    }
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "group must be a str or an int, got %s", Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long v = PyLong_AsLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < 0 || v >= GLAE_G_NUM) {
        PyErr_Format(PyExc_ValueError, "group must be in 0..%d, got %S", GLAE_G_NUM - 1, o);
        return -1;
    }
    *g = (int)v;
    return 0;
}

static PyObject *Model_group_range(ModelObject *self, PyObject *arg) {
    if (!model_ready(self)) return NULL;
    int g;
    if (parse_group(arg, &g)) return NULL;
    size_t b, e;
    glae_params_group_range(&self->m.p, g, &b, &e);
    return Py_BuildValue("(nn)", (Py_ssize_t)b, (Py_ssize_t)e);
}

/* ---- compute ------------------------------------------------------------------------ */

/* x: float32 (N, H, W, 3), N >= 1, H and W big enough for the model */
/* x (N, H, W, 3): float32 images already normalised, or uint8 pixels the model
 * normalises with `norm` (required: the model does not know the data's normalisation;
 * an error for float32 input) -> *xnorm */
static PyArrayObject *arg_images(ModelObject *self, PyObject *xo, PyObject *normo, int *xnorm,
                                 int *fh, int *fw, int *hp, int *wp) {
    const int u8 = PyArray_Check(xo) && PyArray_TYPE((PyArrayObject *)xo) == NPY_UINT8;
    PyArrayObject *x = u8 ? glae_arg_array(xo, "x", NPY_UINT8, 4) : glae_arg_f32(xo, "x", 4);
    if (!x || glae_check_dim(x, "x", 3, 3)) return NULL;
    *xnorm = GLAE_INPUT_F32;
    if (u8) {
        if (!normo || normo == Py_None) {
            PyErr_SetString(PyExc_ValueError, "x is uint8 pixels: give norm='glae', 'imagenet' "
                                              "or 'none' (the normalisation the model was "
                                              "trained with, Config.normalization)");
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
    if (glae_model_shapes(&self->m, (int)PyArray_DIM(x, 1), (int)PyArray_DIM(x, 2), fh, fw, hp,
                          wp)) {
        PyErr_Format(PyExc_ValueError, "x: %s", glae_last_error());
        return NULL;
    }
    return x;
}

static int parse_loss(const char *s, int *mode) {
    if (!strcmp(s, "base")) *mode = GLAE_LOSS_BASE;
    else if (!strcmp(s, "kl")) *mode = GLAE_LOSS_KL;
    else if (!strcmp(s, "lae_cls")) *mode = GLAE_LOSS_LAE_CLS;
    else {
        PyErr_Format(PyExc_ValueError, "loss must be 'base', 'kl' or 'lae_cls', got '%s'", s);
        return -1;
    }
    return 0;
}

/* train_step and train_step_async: the same arguments; async returns None */
static PyObject *train_step(ModelObject *self, PyObject *args, PyObject *kw, int async) {
    static char *kwlist[] = {"x", "ages", "sigma", "stage", "loss", "mae", "norm", NULL};
    PyObject *xo, *ao, *so = Py_None, *no = NULL;
    int stage = 1, mode;
    const char *loss = "base";
    float mae = 0.0f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, async ? "OO|OisfO:train_step_async" : "OO|OisfO:train_step",
                                     kwlist, &xo, &ao, &so, &stage, &loss, &mae, &no))
        return NULL;
    if (!model_ready(self)) return NULL;
    int fh, fw, hp, wp, ok, xnorm;
    PyArrayObject *x = arg_images(self, xo, no, &xnorm, &fh, &fw, &hp, &wp);
    if (!x) return NULL;
    const npy_intp n = PyArray_DIM(x, 0);
    PyArrayObject *ages = glae_arg_f32(ao, "ages", 1);
    if (!ages || glae_check_dim(ages, "ages", 0, n)) return NULL;
    PyArrayObject *sigma = glae_arg_array_opt(so, "sigma", NPY_FLOAT32, 1, &ok);
    if (!ok || (sigma && glae_check_dim(sigma, "sigma", 0, n))) return NULL;
    if (stage != 1 && stage != 2) {
        PyErr_Format(PyExc_ValueError, "stage must be 1 or 2, got %d", stage);
        return NULL;
    }
    if (parse_loss(loss, &mode)) return NULL;
    if (!(mae == mae) || mae > 3.4e38f || mae < -3.4e38f) {
        PyErr_SetString(PyExc_ValueError, "mae must be finite");
        return NULL;
    }
    float losses[3];
    int st;
    self->busy = 1;
    const int h = (int)PyArray_DIM(x, 1), w = (int)PyArray_DIM(x, 2);
    const float *sp = sigma ? PyArray_DATA(sigma) : NULL;
    if (async)
        GLAE_NOGIL_CTX(st, &self->m.ctx,
                       glae_model_train_step_async(&self->m, PyArray_DATA(x), xnorm, (int)n, h, w,
                                                   PyArray_DATA(ages), sp, stage, mode, mae));
    else
        GLAE_NOGIL_CTX(st, &self->m.ctx,
                       glae_model_train_step(&self->m, losses, PyArray_DATA(x), xnorm, (int)n, h,
                                             w, PyArray_DATA(ages), sp, stage, mode, mae));
    self->busy = 0;
    if (st) return glae_raise(st);
    if (async) Py_RETURN_NONE;
    return Py_BuildValue("{s:d,s:d,s:d}", "total", (double)losses[0], "local", (double)losses[1],
                         "holistic", (double)losses[2]);
}

static PyObject *Model_train_step(ModelObject *self, PyObject *args, PyObject *kw) {
    return train_step(self, args, kw, 0);
}

static PyObject *Model_train_step_async(ModelObject *self, PyObject *args, PyObject *kw) {
    return train_step(self, args, kw, 1);
}

static PyObject *Model_use_cuda_graph(ModelObject *self, PyObject *args) {
    int on = 1;
    if (!PyArg_ParseTuple(args, "|p:use_cuda_graph", &on)) return NULL;
    if (!model_ready(self)) return NULL;
    int st = glae_model_use_graph(&self->m, on);
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Model_cudnn_benchmark(ModelObject *self, PyObject *args) {
    int on = 1;
    if (!PyArg_ParseTuple(args, "|p:cudnn_benchmark", &on)) return NULL;
    if (!model_ready(self)) return NULL;
    if (self->m.ctx.device != GLAE_CUDA) {
        PyErr_SetString(PyExc_ValueError, "cudnn_benchmark: needs a CUDA model (device='cuda')");
        return NULL;
    }
#ifdef GLAE_WITH_CUDA
    int st = glae_cuda_set_benchmark(&self->m.ctx, on);
    if (st) return glae_raise(st);
#endif
    Py_RETURN_NONE;
}

static PyObject *Model_keep_activations(ModelObject *self, PyObject *args) {
    int on = 1;
    if (!PyArg_ParseTuple(args, "|p:keep_activations", &on)) return NULL;
    if (!model_ready(self)) return NULL;
    glae_model_keep_activations(&self->m, on);
    Py_RETURN_NONE;
}

static PyObject *Model_graph_state(ModelObject *self, void *c) {
    (void)c;
    if (!model_ready(self)) return NULL;
    return PyUnicode_FromString(glae_model_graph_state(&self->m));
}

static PyObject *Model_async_losses(ModelObject *self, PyObject *args) {
    int back = 0;
    if (!PyArg_ParseTuple(args, "|i:async_losses", &back)) return NULL;
    if (!model_ready(self)) return NULL;
    float losses[3];
    int st;
    self->busy = 1;
    GLAE_NOGIL_CTX(st, &self->m.ctx, glae_model_async_losses(&self->m, losses, back));
    self->busy = 0;
    if (st) return glae_raise(st);
    return Py_BuildValue("{s:d,s:d,s:d}", "total", (double)losses[0], "local", (double)losses[1],
                         "holistic", (double)losses[2]);
}

static int dict_steal(PyObject *d, const char *key, PyArrayObject *a) {
    int r = PyDict_SetItemString(d, key, (PyObject *)a);
    Py_DECREF(a);
    return r;
}

static PyObject *Model_forward(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "training", "norm", NULL};
    PyObject *xo, *no = NULL;
    int training = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pO:forward", kwlist, &xo, &training, &no))
        return NULL;
    if (!model_ready(self)) return NULL;
    int fh, fw, hp, wp, xnorm;
    PyArrayObject *x = arg_images(self, xo, no, &xnorm, &fh, &fw, &hp, &wp);
    if (!x) return NULL;
    const npy_intp n = PyArray_DIM(x, 0), K = self->m.cfg.num_classes;
    const int kind = self->m.cfg.head;
    npy_intp dfeat[4] = {n, fh, fw, glae_model_feat_channels(&self->m)}, dp[2] = {n, K}, dmap[4] = {n, hp, wp, K};
    PyArrayObject *feat = glae_new_array(4, dfeat, NPY_FLOAT32);
    PyArrayObject *pv = glae_new_array(2, dp, NPY_FLOAT32);
    PyArrayObject *pb = glae_new_array(2, dp, NPY_FLOAT32);
    PyArrayObject *mv = NULL, *mb = NULL, *lv = NULL;
    if (kind != GLAE_HEAD_GAP) {
        mv = glae_new_array(4, dmap, NPY_FLOAT32);
        mb = glae_new_array(4, dmap, NPY_FLOAT32);
    }
    if (kind == GLAE_HEAD_FRPA) lv = glae_new_array(4, dmap, NPY_FLOAT32);
    PyObject *d = NULL;
    if (!feat || !pv || !pb || (kind != GLAE_HEAD_GAP && (!mv || !mb)) ||
        (kind == GLAE_HEAD_FRPA && !lv))
        goto fail;
#define DATA_OR_NULL(a) ((a) ? (float *)PyArray_DATA(a) : NULL)
    int st;
    self->busy = 1;
    GLAE_NOGIL_CTX(st, &self->m.ctx,
                   glae_model_forward(&self->m, PyArray_DATA(x), xnorm, (int)n, (int)PyArray_DIM(x, 1),
                                      (int)PyArray_DIM(x, 2), training, PyArray_DATA(feat),
                                      PyArray_DATA(pv), PyArray_DATA(pb), DATA_OR_NULL(mv),
                                      DATA_OR_NULL(mb), DATA_OR_NULL(lv)));
    self->busy = 0;
    if (st) {
        glae_raise(st);
        goto fail;
    }
    d = PyDict_New();
    if (!d) goto fail;
    int r = dict_steal(d, "feature", feat) | dict_steal(d, "vanilla", pv) |
            dict_steal(d, "balanced", pb);
    feat = pv = pb = NULL;
    if (mv) r |= dict_steal(d, "vanilla_map", mv) | dict_steal(d, "balanced_map", mb);
    if (lv) r |= dict_steal(d, "vanilla_local", lv);
    mv = mb = lv = NULL;
    if (r) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
fail:
    Py_XDECREF(feat);
    Py_XDECREF(pv);
    Py_XDECREF(pb);
    Py_XDECREF(mv);
    Py_XDECREF(mb);
    Py_XDECREF(lv);
    return NULL;
}

static PyObject *Model_predict(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "route", "flip", "return_upsilon", "norm", "head_ages", NULL};
    PyObject *xo, *no = NULL;
    const char *route = "smaller";
    int flip = 1, want_ups = 0, want_ha = 0, r;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|sppOp:predict", kwlist, &xo, &route, &flip,
                                     &want_ups, &no, &want_ha))
        return NULL;
    if (!model_ready(self)) return NULL;
    if (!strcmp(route, "smaller")) r = GLAE_PRED_SMALLER;
    else if (!strcmp(route, "bigger")) r = GLAE_PRED_BIGGER;
    else if (!strcmp(route, "vanilla")) r = GLAE_PRED_VANILLA;
    else if (!strcmp(route, "balanced")) r = GLAE_PRED_BALANCED;
    else {
        PyErr_Format(PyExc_ValueError,
                     "route must be 'smaller', 'bigger', 'vanilla' or 'balanced', got '%s'", route);
        return NULL;
    }
    int fh, fw, hp, wp, xnorm;
    PyArrayObject *x = arg_images(self, xo, no, &xnorm, &fh, &fw, &hp, &wp);
    if (!x) return NULL;
    const npy_intp n = PyArray_DIM(x, 0), K = self->m.cfg.num_classes;
    npy_intp d1[1] = {n}, d2[2] = {n, K}, du[2] = {n, 2}, dh[2] = {2, n};
    PyArrayObject *age = glae_new_array(1, d1, NPY_FLOAT32);
    PyArrayObject *prob = glae_new_array(2, d2, NPY_FLOAT32);
    PyArrayObject *head = glae_new_array(1, d1, NPY_INT32);
    PyArrayObject *ups = glae_new_array(2, du, NPY_FLOAT32);
    PyArrayObject *ha = want_ha ? glae_new_array(2, dh, NPY_FLOAT32) : NULL;
    if (!age || !prob || !head || !ups || (want_ha && !ha)) goto fail;
    int st;
    self->busy = 1;
    GLAE_NOGIL_CTX(st, &self->m.ctx,
                   glae_model_predict(&self->m, PyArray_DATA(age), PyArray_DATA(prob),
                                      PyArray_DATA(head), PyArray_DATA(ups), DATA_OR_NULL(ha),
                                      PyArray_DATA(x), xnorm, (int)n, (int)PyArray_DIM(x, 1),
                                      (int)PyArray_DIM(x, 2), r, flip));
    self->busy = 0;
    if (st) {
        glae_raise(st);
        goto fail;
    }
    if (!want_ups) Py_CLEAR(ups);
    if (ups && ha) return Py_BuildValue("(NNNNN)", age, prob, head, ups, ha);
    if (ups) return Py_BuildValue("(NNNN)", age, prob, head, ups);
    if (ha) return Py_BuildValue("(NNNN)", age, prob, head, ha);
    return Py_BuildValue("(NNN)", age, prob, head);
fail:
    Py_XDECREF(age);
    Py_XDECREF(prob);
    Py_XDECREF(head);
    Py_XDECREF(ups);
    Py_XDECREF(ha);
    return NULL;
}

static PyMethodDef Model_methods[] = {
    {"param_table", (PyCFunction)Model_param_table, METH_NOARGS,
     "param_table() -> [(name, shape, offset, numel, is_buffer, group, no_decay)]; shape is "
     "torchvision's (OIHW for conv weights, stored OHWI); offset in floats into params "
     "(or buffers when is_buffer)"},
    {"get", (PyCFunction)Model_get, METH_VARARGS,
     "get(name) -> a copy of the tensor in torchvision's layout (conv weights OIHW)"},
    {"set", (PyCFunction)Model_set, METH_VARARGS,
     "set(name, value float32) -- value in torchvision's layout and shape"},
    {"zero_grad", (PyCFunction)Model_zero_grad, METH_NOARGS, "zero_grad(): grads[:] = 0"},
    {"write_flat", (PyCFunction)(void (*)(void))Model_write_flat, METH_VARARGS | METH_KEYWORDS,
     "write_flat(role 'params'|'grads'|'momentum'|'buffers', value (n,) f32, offset=0): "
     "role[offset:offset+n] = value, on the model's device"},
    {"sgd_step", (PyCFunction)(void (*)(void))Model_sgd_step, METH_VARARGS | METH_KEYWORDS,
     "sgd_step(lr, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=True, "
     "first_step=False, begin=0, end=-1 (all), wd_exclude=False): _C.sgd_step on the model's "
     "own buffers and device; wd_exclude: no decay on BN weights/biases and biases"},
    {"copy_head_to_balanced", (PyCFunction)Model_copy_head, METH_NOARGS,
     "copy_head_to_balanced(): balanced head := vanilla head (stage 2 start)"},
    {"group_range", (PyCFunction)Model_group_range, METH_O,
     "group_range(group: 'backbone'|'head'|'balanced'|0..2) -> (begin, end) in floats"},
    {"train_step", (PyCFunction)(void (*)(void))Model_train_step, METH_VARARGS | METH_KEYWORDS,
     "train_step(x (N,H,W,3), ages (N,) f32, sigma=None, stage=1, loss='base', mae=0.0, "
     "norm=None) -> {'total', 'local', 'holistic'}; gradients accumulate into grads. x: float32 "
     "images already normalised, or uint8 pixels normalised on the model's device with norm "
     "('glae', 'imagenet', 'none': required with uint8; Loader(dtype='uint8') gives such "
     "batches)"},
    {"train_step_async", (PyCFunction)(void (*)(void))Model_train_step_async,
     METH_VARARGS | METH_KEYWORDS,
     "train_step_async(x, ages, sigma=None, stage=1, loss='base', mae=0.0, norm=None) -> None: the same "
     "step queued on the GPU without waiting (pinned, double-buffered input; the arrays may "
     "be reused at once); on the CPU it is train_step. Read the losses with async_losses()"},
    {"cudnn_benchmark", (PyCFunction)Model_cudnn_benchmark, METH_VARARGS,
     "cudnn_benchmark(on=True): choose each convolution's algorithm by timing them "
     "(cudnnFind, PyTorch's cudnn.benchmark) instead of cuDNN's heuristics (CUDA models)"},
    {"use_cuda_graph", (PyCFunction)Model_use_cuda_graph, METH_VARARGS,
     "use_cuda_graph(on=True): train_step_async as one CUDA graph launch per step (CUDA "
     "models): the first step of a shape runs plainly, the second is captured, the rest "
     "replay; see cuda_graph for the state"},
    {"keep_activations", (PyCFunction)Model_keep_activations, METH_VARARGS,
     "keep_activations(on=True): predict, forward and stage-2 steps keep every backbone "
     "activation instead of letting four slots take turns (more memory, never faster: "
     "what the slot sharing is checked against); the next call re-plans"},
    {"async_losses", (PyCFunction)Model_async_losses, METH_VARARGS,
     "async_losses(back=0) -> {'total', 'local', 'holistic'} of the last train_step_async "
     "(back=1: the one before); waits for that step only"},
    {"forward", (PyCFunction)(void (*)(void))Model_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(x, training=False, norm=None) -> {'feature', 'vanilla', 'balanced', ['vanilla_map', "
     "'balanced_map'], ['vanilla_local']}"},
    {"predict", (PyCFunction)(void (*)(void))Model_predict, METH_VARARGS | METH_KEYWORDS,
     "predict(x, route='smaller'|'bigger'|'vanilla'|'balanced', flip=True, "
     "return_upsilon=False, norm=None, head_ages=False) -> (age (N,), prob (N,K), head (N,) "
     "int32[, upsilon (N,2)][, head_ages (2,N): the vanilla and balanced heads' ages, "
     "flip-averaged with flip]); x float32 or uint8 as in train_step"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Model_getset[] = {
    {"params", (getter)Model_params, NULL, "trainable parameters (1-D view)", NULL},
    {"grads", (getter)Model_grads, NULL, "gradients (1-D view)", NULL},
    {"momentum", (getter)Model_momentum, NULL, "optimiser momentum (1-D view)", NULL},
    {"buffers", (getter)Model_buffers, NULL, "BN running statistics (1-D view)", NULL},
    {"arena_bytes", (getter)Model_arena_bytes, NULL, "peak activation arena size in bytes", NULL},
    {"config", (getter)Model_config, NULL, "the constructor's arguments", NULL},
    {"cuda_graph", (getter)Model_graph_state, NULL,
     "'off', 'warming up', 'captured' or 'failed: <why>' (use_cuda_graph)", NULL},
    {"math", (getter)Model_math, NULL,
     "'fp32', 'tf32' or 'bf16' (mixed precision: the backbone's activations in bf16)", NULL},
    {"threads", (getter)Model_threads, (setter)Model_set_threads,
     "CPU threads of this model's kernels: its own count, which other threads' work (a "
     "detector, another model) neither sees nor changes; set it (or Model(threads=)) to n >= 1, "
     "or to 0 to follow the process default (glae.set_num_threads)", NULL},
    {"drop_step", (getter)Model_drop_step, (setter)Model_set_drop_step,
     "EfficientNetV2: the stochastic-depth masks' counter (training forwards so far); the "
     "masks are a pure function of (seed, drop_step, block, sample)", NULL},
    {"cpu_backend", (getter)Model_cpu_backend, NULL,
     "'reference' or 'onednn': the op table of a CPU model ('' on a GPU)", NULL},
    {"bn_batch", (getter)Model_bn_batch, (setter)Model_set_bn_batch,
     "ghost batch norm: the backbone's BN statistics over consecutive groups of this many "
     "images of a training batch (the papers' 32 per GPU); 0: the whole batch", NULL},
    {"device", (getter)Model_device, NULL,
     "'cpu' or 'cuda:N': where parameters and activations live (on a CUDA model, params, "
     "grads, momentum and buffers are read-only host copies)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "glae._C.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Model(backbone='resnet18', head='fr+pa', r=16, k=16, s=16, proj_depth=0, "
              "proj_width=512, num_classes=101, lam=1.0, seed=0, input_size=224, device='cpu', "
              "math='fp32', threads=0 (0: the process default, glae.set_num_threads), "
              "stochastic_depth=0.2 (EfficientNetV2's stochastic_depth_prob; 0: off), cpu_backend='reference' (or 'onednn')); backbone "
              "'resnet18', 'resnet50', 'efficientnet_v2_s' or 'efficientnet_v2_m'",
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
    .tp_init = (initproc)Model_init,
    .tp_new = PyType_GenericNew,
};

/* drop_path_scales(n, p, seed, step, block) -> float32 (n,): 0 (dropped) or 1/(1-p) (kept) */
static PyObject *py_drop_path_scales(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"n", "p", "seed", "step", "block", NULL};
    PyObject *no, *seedo, *stepo, *blocko;
    double p;
    unsigned long long n, seed, step, block;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OdOOO:drop_path_scales", kwlist, &no, &p, &seedo,
                                     &stepo, &blocko))
        return NULL;
    if (glae_arg_uint(no, "n", INT32_MAX, &n) || glae_arg_uint(seedo, "seed", UINT64_MAX, &seed) ||
        glae_arg_uint(stepo, "step", UINT64_MAX, &step) ||
        glae_arg_uint(blocko, "block", UINT32_MAX, &block))
        return NULL;
    npy_intp d[1] = {(npy_intp)n};
    PyArrayObject *out = glae_new_array(1, d, NPY_FLOAT32);
    if (!out) return NULL;
    int st = glae_drop_path_scales(PyArray_DATA(out), (int)n, (float)p, seed, step, (uint32_t)block);
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

PyMethodDef glae_nn_methods[] = {
    {"drop_path_scales", (PyCFunction)(void (*)(void))py_drop_path_scales,
     METH_VARARGS | METH_KEYWORDS,
     "drop_path_scales(n, p, seed, step, block) -> float32 (n,): stochastic depth's per-sample "
     "scale, 0 (dropped, probability p) or 1/(1-p) (kept), a pure function of (seed, step, "
     "block, sample); apply it with channel_scale_forward(x.reshape(n, -1, 1), s[:, None])"},
    {NULL, NULL, 0, NULL},
};

/* model_py.h: a _C.Model's flat buffers and context for the communicator (bind_dist.c) */
int glae_py_model_acquire(PyObject *o, glae_params **p, glae_ctx **ctx) {
    if (!PyObject_TypeCheck(o, &ModelType)) {
        PyErr_Format(PyExc_TypeError, "expected a glae._C.Model, got %s", Py_TYPE(o)->tp_name);
        return -1;
    }
    ModelObject *self = (ModelObject *)o;
    if (!model_ready(self)) return -1;
    self->busy = 1;
    *p = &self->m.p;
    *ctx = &self->m.ctx;
    return 0;
}

void glae_py_model_release(PyObject *o) { ((ModelObject *)o)->busy = 0; }

int glae_nn_add_types(PyObject *m) {
    if (PyType_Ready(&ModelType) < 0) return -1;
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(&ModelType);
        return -1;
    }
    return 0;
}
