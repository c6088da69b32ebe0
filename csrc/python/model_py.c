/* What the model types share (model_py.h). */
#include "python/model_py.h"

#include <stdio.h>
#include <string.h>

#include "core/device.h"
#include "nn/effnet.h"
#include "nn/resnet.h" /* the OIHW <-> OHWI conversions */

int glae_py_parse_backbone(const char *s, int *depth) {
    const glae_effnet_arch *e = glae_effnet_arch_named(s);
    if (!strcmp(s, "resnet18")) *depth = 18;
    else if (!strcmp(s, "resnet50")) *depth = 50;
    else if (e) *depth = e->code;
    else {
        PyErr_Format(PyExc_ValueError, "backbone must be one of 'resnet18', 'resnet50', "
                     "'efficientnet_v2_s', 'efficientnet_v2_m'; got '%s'", s);
        return -1;
    }
    return 0;
}

const char *glae_py_backbone_name(int code) {
    const glae_effnet_arch *e = glae_effnet_arch_of(code);
    return e ? e->name : code == 50 ? "resnet50" : "resnet18";
}

int glae_py_parse_device(const char *s, int *device, int *cuda_device) {
    int idx = 0, used = 0;
    if (!strcmp(s, "cpu")) {
        *device = GLAE_CPU;
        return 0;
    }
    if (!strcmp(s, "cuda") ||
        (sscanf(s, "cuda:%d%n", &idx, &used) == 1 && s[used] == '\0' && idx >= 0)) {
#ifndef GLAE_WITH_CUDA
        PyErr_SetString(PyExc_RuntimeError,
                        "device='cuda': glae was built without CUDA (rebuild with nvcc and cuDNN)");
        return -1;
#endif
        *device = GLAE_CUDA;
        *cuda_device = idx;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "device must be 'cpu', 'cuda' or 'cuda:N', got '%s'", s);
    return -1;
}

int glae_py_parse_math(const char *s, int *math) {
    if (!strcmp(s, "fp32")) *math = 0;
    else if (!strcmp(s, "tf32")) *math = 1;
    else if (!strcmp(s, "bf16")) *math = 2;
    else {
        PyErr_Format(PyExc_ValueError, "math must be 'fp32', 'tf32' or 'bf16', got '%s'", s);
        return -1;
    }
    return 0;
}

PyObject *glae_py_flat_view(PyObject *owner, const glae_params *p, glae_ctx *ctx, float *data,
                            size_t n) {
    npy_intp dims[1] = {(npy_intp)n};
    if (p->dev) {
        /* device buffers: a read-only host copy, so that a write cannot silently miss the
         * model (write_flat / set / sgd_step change a device model) */
        PyArrayObject *c = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT32);
        if (!c) return NULL;
        int st = ctx->dev->copy(ctx, PyArray_DATA(c), data, n * sizeof(float), GLAE_COPY_D2H);
        if (st) {
            Py_DECREF(c);
            return glae_raise(st);
        }
        PyArray_CLEARFLAGS(c, NPY_ARRAY_WRITEABLE);
        return (PyObject *)c;
    }
    PyObject *a = PyArray_SimpleNewFromData(1, dims, NPY_FLOAT32, data);
    if (!a) return NULL;
    Py_INCREF(owner);
    if (PyArray_SetBaseObject((PyArrayObject *)a, owner) < 0) {
        Py_DECREF(a); /* SetBaseObject stole the reference even on failure */
        return NULL;
    }
    return a;
}

/* torchvision's logical shape: OIHW for conv weights (stored OHWI) */
static PyObject *torch_shape(const glae_param_info *t) {
    if (t->ndim == 4)
        return Py_BuildValue("(LLLL)", (long long)t->shape[0], (long long)t->shape[3],
                             (long long)t->shape[1], (long long)t->shape[2]);
    PyObject *s = PyTuple_New(t->ndim);
    if (!s) return NULL;
    for (int i = 0; i < t->ndim; i++) PyTuple_SET_ITEM(s, i, PyLong_FromLongLong(t->shape[i]));
    return s;
}

PyObject *glae_py_param_table(const glae_params *p) {
    PyObject *list = PyList_New(p->count);
    if (!list) return NULL;
    for (int i = 0; i < p->count; i++) {
        const glae_param_info *t = &p->info[i];
        PyObject *shape = torch_shape(t);
        PyObject *row = shape ? Py_BuildValue("(sNnnOiO)", t->name, shape, (Py_ssize_t)t->offset,
                                              (Py_ssize_t)t->numel,
                                              (t->flags & GLAE_P_BUFFER) ? Py_True : Py_False,
                                              t->group,
                                              (t->flags & GLAE_P_NO_DECAY) ? Py_True : Py_False)
                              : NULL;
        if (!row) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, row);
    }
    return list;
}

static int find_param(const glae_params *p, PyObject *args, const char *fmt, const char **name,
                      PyObject **arr) {
    if (arr ? !PyArg_ParseTuple(args, fmt, name, arr) : !PyArg_ParseTuple(args, fmt, name))
        return -1;
    int i = glae_params_find(p, *name);
    /* ValueError (the binding's type for a bad argument value), naming the method */
    if (i < 0)
        PyErr_Format(PyExc_ValueError, "%s: no tensor named '%s' (param_table() lists them)",
                     strchr(fmt, ':') + 1, *name);
    return i;
}

PyObject *glae_py_param_get(glae_params *p, glae_ctx *ctx, PyObject *args) {
    const char *name;
    int i = find_param(p, args, "s:get", &name, NULL);
    if (i < 0) return NULL;
    const glae_param_info *t = &p->info[i];
    npy_intp dims[4];
    PyObject *shape = torch_shape(t);
    if (!shape) return NULL;
    for (int d = 0; d < t->ndim; d++) dims[d] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, d));
    Py_DECREF(shape);
    PyArrayObject *out = glae_new_array(t->ndim, dims, NPY_FLOAT32);
    if (!out) return NULL;
    const size_t bytes = (size_t)t->numel * sizeof(float);
    float *src = PyMem_Malloc(bytes ? bytes : 1); /* host staging: the tensor may be on the device */
    if (!src) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    int st = ctx->dev->copy(ctx, src, glae_params_ptr(p, i), bytes, GLAE_COPY_D2H);
    if (!st) {
        if (t->ndim == 4)
            glae_ohwi_to_oihw(PyArray_DATA(out), src, (int)t->shape[0], (int)t->shape[3],
                              (int)t->shape[1], (int)t->shape[2]);
        else
            memcpy(PyArray_DATA(out), src, bytes);
    }
    PyMem_Free(src);
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

PyObject *glae_py_param_set(glae_params *p, glae_ctx *ctx, PyObject *args) {
    const char *name;
    PyObject *ao;
    int i = find_param(p, args, "sO:set", &name, &ao);
    if (i < 0) return NULL;
    const glae_param_info *t = &p->info[i];
    PyArrayObject *a = glae_arg_f32(ao, "value", t->ndim);
    if (!a) return NULL;
    PyObject *shape = torch_shape(t);
    if (!shape) return NULL;
    for (int d = 0; d < t->ndim; d++) {
        if (PyArray_DIM(a, d) != PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, d))) {
            PyObject *got = PyObject_GetAttrString(ao, "shape");
            PyErr_Format(PyExc_ValueError, "value for '%s' must have shape %S%s, got %S", name,
                         shape, t->ndim == 4 ? " (torchvision OIHW)" : "", got);
            Py_XDECREF(got);
            Py_DECREF(shape);
            return NULL;
        }
    }
    Py_DECREF(shape);
    const size_t bytes = (size_t)t->numel * sizeof(float);
    float *tmp = PyMem_Malloc(bytes ? bytes : 1); /* host staging, then one copy in */
    if (!tmp) return PyErr_NoMemory();
    if (t->ndim == 4)
        glae_oihw_to_ohwi(tmp, PyArray_DATA(a), (int)t->shape[0], (int)t->shape[3],
                          (int)t->shape[1], (int)t->shape[2]);
    else
        memcpy(tmp, PyArray_DATA(a), bytes);
    int st = ctx->dev->copy(ctx, glae_params_ptr(p, i), tmp, bytes, GLAE_COPY_H2D);
    if (!st) st = ctx->dev->sync(ctx); /* tmp is freed next */
    PyMem_Free(tmp);
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

PyObject *glae_py_zero_grad(glae_params *p, glae_ctx *ctx) {
    int st = ctx->dev->memset(ctx, p->grads, 0, p->n * sizeof(float));
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

/* the flat buffer called `role`, and its length */
static float *flat_role(glae_params *p, const char *role, size_t *n) {
    *n = p->n;
    if (!strcmp(role, "params")) return p->params;
    if (!strcmp(role, "grads")) return p->grads;
    if (!strcmp(role, "momentum")) return p->momentum;
    if (!strcmp(role, "buffers")) {
        *n = p->n_buffers;
        return p->buffers;
    }
    PyErr_Format(PyExc_ValueError,
                 "role must be 'params', 'grads', 'momentum' or 'buffers', got '%s'", role);
    return NULL;
}

PyObject *glae_py_write_flat(glae_params *p, glae_ctx *ctx, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"role", "value", "offset", NULL};
    const char *role;
    PyObject *vo;
    Py_ssize_t off = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sO|n:write_flat", kwlist, &role, &vo, &off))
        return NULL;
    size_t n;
    float *dst = flat_role(p, role, &n);
    if (!dst) return NULL;
    PyArrayObject *a = glae_arg_f32(vo, "value", 1);
    if (!a) return NULL;
    const npy_intp len = PyArray_DIM(a, 0);
    if (off < 0 || (size_t)off > n || (size_t)len > n - (size_t)off) {
        PyErr_Format(PyExc_ValueError, "write_flat: %zd values at offset %zd do not fit in %s (%zu)",
                     (Py_ssize_t)len, off, role, n);
        return NULL;
    }
    const size_t nb = (size_t)len * sizeof(float);
    const char *src = PyArray_DATA(a), *d = (const char *)(dst + off);
    void *stage = NULL;
    if (src < d + nb && d < src + nb) { /* a view of this buffer (CPU): copy it aside first */
        stage = PyMem_Malloc(nb ? nb : 1);
        if (!stage) return PyErr_NoMemory();
        memcpy(stage, src, nb);
        src = stage;
    }
    int st = ctx->dev->copy(ctx, dst + off, src, nb, GLAE_COPY_H2D);
    if (!st) st = ctx->dev->sync(ctx); /* the array may be released right after */
    PyMem_Free(stage);
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}
