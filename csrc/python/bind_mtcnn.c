/* Bindings for the MTCNN face detector (csrc/nn/mtcnn.h): the model as a capsule built
 * from three state dicts, the three networks, the box helpers and the whole detector. */
#include "python/py.h"  /* Python.h first */
#include <limits.h>
#include <stdio.h>

#include "nn/mtcnn.h"
#include "ops/backend.h"

#define CAPSULE_NAME "glae.mtcnn"

static const char *NET_NAMES[3] = {"pnet", "rnet", "onet"};

static void capsule_free(PyObject *cap) {
    glae_mtcnn_free(PyCapsule_GetPointer(cap, CAPSULE_NAME));
}

static glae_mtcnn *get_model(PyObject *o) {
    if (!PyCapsule_IsValid(o, CAPSULE_NAME)) {
        PyErr_SetString(PyExc_TypeError, "model must be a capsule made by mtcnn_new");
        return NULL;
    }
    return PyCapsule_GetPointer(o, CAPSULE_NAME);
}

/* a tuple of new references, or NULL (all released) on a failed status */
static int all_made(int n, PyArrayObject **outs) {
    for (int i = 0; i < n; i++)
        if (!outs[i]) {
            for (int j = 0; j < n; j++) Py_XDECREF(outs[j]);
            return 0;
        }
    return 1;
}

/* mtcnn_spec() -> [[(name, shape), ...] for pnet, rnet, onet] */
static PyObject *py_mtcnn_spec(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *out = PyList_New(3);
    if (!out) return NULL;
    for (int net = 0; net < 3; net++) {
        int cnt = glae_mtcnn_tensor_count(net);
        PyObject *l = PyList_New(cnt);
        if (!l) goto fail;
        PyList_SET_ITEM(out, net, l);
        for (int i = 0; i < cnt; i++) {
            int nd;
            int64_t d[4];
            const char *name = glae_mtcnn_tensor_spec(net, i, &nd, d);
            PyObject *shape = PyTuple_New(nd);
            if (!shape) goto fail;
            for (int k = 0; k < nd; k++) PyTuple_SET_ITEM(shape, k, PyLong_FromLongLong(d[k]));
            PyObject *item = Py_BuildValue("(sN)", name, shape);
            if (!item) goto fail;
            PyList_SET_ITEM(l, i, item);
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* mtcnn_new(pnet, rnet, onet): three mappings name -> float32 array (PyTorch layout) */
static PyObject *py_mtcnn_new(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *sd[3];
    if (!PyArg_ParseTuple(args, "OOO:mtcnn_new", &sd[0], &sd[1], &sd[2])) return NULL;
    enum { MAXT = 32 };
    const float *ptr[3][MAXT];
    PyObject *held[3][MAXT] = {{0}}; /* new references from the mappings */
    PyObject *ret = NULL;
    for (int net = 0; net < 3; net++) {
        if (!PyDict_Check(sd[net])) {
            PyErr_Format(PyExc_TypeError, "%s must be a dict name -> array, got %s",
                         NET_NAMES[net], Py_TYPE(sd[net])->tp_name);
            goto done;
        }
        int cnt = glae_mtcnn_tensor_count(net);
        for (int i = 0; i < cnt && i < MAXT; i++) {
            int nd;
            int64_t d[4];
            const char *name = glae_mtcnn_tensor_spec(net, i, &nd, d);
            char label[96];
            snprintf(label, sizeof label, "%s[%s]", NET_NAMES[net], name);
            PyObject *v = PyMapping_GetItemString(sd[net], name);
            if (!v) {
                PyErr_Format(PyExc_ValueError, "%s: missing tensor %s", NET_NAMES[net], name);
                goto done;
            }
            held[net][i] = v;
            PyArrayObject *a = glae_arg_f32(v, label, nd);
            if (!a) goto done;
            for (int k = 0; k < nd; k++)
                if (glae_check_dim(a, label, k, d[k])) goto done;
            ptr[net][i] = PyArray_DATA(a);
        }
    }
    glae_mtcnn *m = NULL;
    int st;
    GLAE_NOGIL(st, glae_mtcnn_create(&m, ptr[0], ptr[1], ptr[2]));
    if (st) {
        glae_raise(st);
        goto done;
    }
    ret = PyCapsule_New(m, CAPSULE_NAME, capsule_free);
    if (!ret) glae_mtcnn_free(m);
done:
    for (int net = 0; net < 3; net++)
        for (int i = 0; i < MAXT; i++) Py_XDECREF(held[net][i]);
    return ret;
}

/* an image batch (N, H, W, 3) float32, with H == W == size unless size is 0 */
static PyArrayObject *batch_arg(PyObject *o, int size) {
    PyArrayObject *x = glae_arg_f32(o, "x", 4);
    if (!x || glae_check_dim(x, "x", 3, 3)) return NULL;
    if (size && (glae_check_dim(x, "x", 1, size) || glae_check_dim(x, "x", 2, size))) return NULL;
    for (int i = 0; i < 3; i++)
        if (PyArray_DIM(x, i) > INT_MAX / 64) {
            PyErr_SetString(PyExc_ValueError, "x is too large");
            return NULL;
        }
    return x;
}

/* mtcnn_pnet_forward(model, x (N, H, W, 3)) -> (prob (N, OH, OW), reg (N, OH, OW, 4)) */
static PyObject *py_pnet_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *mo, *xo;
    if (!PyArg_ParseTuple(args, "OO:mtcnn_pnet_forward", &mo, &xo)) return NULL;
    glae_mtcnn *m = get_model(mo);
    PyArrayObject *x = m ? batch_arg(xo, 0) : NULL;
    if (!x) return NULL;
    const int n = (int)PyArray_DIM(x, 0), h = (int)PyArray_DIM(x, 1), w = (int)PyArray_DIM(x, 2);
    int oh, ow;
    if (glae_mtcnn_pnet_size(h, w, &oh, &ow)) return glae_raise(GLAE_ERR_VALUE);
    npy_intp pd[3] = {n, oh, ow}, rd[4] = {n, oh, ow, 4};
    PyArrayObject *outs[2] = {glae_new_array(3, pd, NPY_FLOAT32), glae_new_array(4, rd, NPY_FLOAT32)};
    if (!all_made(2, outs)) return NULL;
    int st;
    glae_ctx ctx;
    glae_ctx_open(&ctx, GLAE_CPU, 0, 0);
    GLAE_NOGIL_CTX(st, &ctx, glae_mtcnn_pnet_forward(&ctx, PyArray_DATA(outs[0]),
                                                     PyArray_DATA(outs[1]), PyArray_DATA(x), m,
                                                     n, h, w));
    glae_ctx_close(&ctx);
    return glae_return_arrays(st, 2, outs);
}

/* mtcnn_rnet_forward(model, x (N, 24, 24, 3)) -> (prob (N), reg (N, 4)) */
static PyObject *py_rnet_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *mo, *xo;
    if (!PyArg_ParseTuple(args, "OO:mtcnn_rnet_forward", &mo, &xo)) return NULL;
    glae_mtcnn *m = get_model(mo);
    PyArrayObject *x = m ? batch_arg(xo, 24) : NULL;
    if (!x) return NULL;
    const int n = (int)PyArray_DIM(x, 0);
    npy_intp pd[1] = {n}, rd[2] = {n, 4};
    PyArrayObject *outs[2] = {glae_new_array(1, pd, NPY_FLOAT32), glae_new_array(2, rd, NPY_FLOAT32)};
    if (!all_made(2, outs)) return NULL;
    int st;
    glae_ctx ctx;
    glae_ctx_open(&ctx, GLAE_CPU, 0, 0);
    GLAE_NOGIL_CTX(st, &ctx, glae_mtcnn_rnet_forward(&ctx, PyArray_DATA(outs[0]),
                                                     PyArray_DATA(outs[1]), PyArray_DATA(x), m,
                                                     n));
    glae_ctx_close(&ctx);
    return glae_return_arrays(st, 2, outs);
}

/* mtcnn_onet_forward(model, x (N, 48, 48, 3)) -> (prob (N), reg (N, 4), landmarks (N, 10)) */
static PyObject *py_onet_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *mo, *xo;
    if (!PyArg_ParseTuple(args, "OO:mtcnn_onet_forward", &mo, &xo)) return NULL;
    glae_mtcnn *m = get_model(mo);
    PyArrayObject *x = m ? batch_arg(xo, 48) : NULL;
    if (!x) return NULL;
    const int n = (int)PyArray_DIM(x, 0);
    npy_intp pd[1] = {n}, rd[2] = {n, 4}, ld[2] = {n, 10};
    PyArrayObject *outs[3] = {glae_new_array(1, pd, NPY_FLOAT32), glae_new_array(2, rd, NPY_FLOAT32),
                              glae_new_array(2, ld, NPY_FLOAT32)};
    if (!all_made(3, outs)) return NULL;
    int st;
    glae_ctx ctx;
    glae_ctx_open(&ctx, GLAE_CPU, 0, 0);
    GLAE_NOGIL_CTX(st, &ctx, glae_mtcnn_onet_forward(&ctx, PyArray_DATA(outs[0]),
                                                     PyArray_DATA(outs[1]), PyArray_DATA(outs[2]),
                                                     PyArray_DATA(x), m, n));
    glae_ctx_close(&ctx);
    return glae_return_arrays(st, 3, outs);
}

/* boxes (n, k) float32 with k >= kmin */
static PyArrayObject *boxes_arg(PyObject *o, int kmin) {
    PyArrayObject *b = glae_arg_f32(o, "boxes", 2);
    if (!b) return NULL;
    if (PyArray_DIM(b, 1) < kmin || PyArray_DIM(b, 1) > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "boxes must have at least %d columns, got %zd", kmin,
                     (Py_ssize_t)PyArray_DIM(b, 1));
        return NULL;
    }
    return b;
}

/* mtcnn_nms(boxes (n, >=5) float32 [x1 y1 x2 y2 score], thresh, mode "union"|"min") -> int64 keep */
static PyObject *py_nms(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *bo;
    float thresh;
    const char *mode;
    if (!PyArg_ParseTuple(args, "Ofs:mtcnn_nms", &bo, &thresh, &mode)) return NULL;
    PyArrayObject *b = boxes_arg(bo, 5);
    if (!b) return NULL;
    int md;
    if (!strcmp(mode, "union")) md = GLAE_NMS_UNION;
    else if (!strcmp(mode, "min")) md = GLAE_NMS_MIN;
    else {
        PyErr_Format(PyExc_ValueError, "mode must be 'union' or 'min', got %R", PyTuple_GET_ITEM(args, 2));
        return NULL;
    }
    const int64_t n = PyArray_DIM(b, 0);
    npy_intp d[1] = {n};
    PyArrayObject *keep = glae_new_array(1, d, NPY_INT64);
    if (!keep) return NULL;
    int64_t k = 0;
    int st;
    GLAE_NOGIL(st, glae_mtcnn_nms(PyArray_DATA(keep), &k, PyArray_DATA(b), n,
                                  (int)PyArray_DIM(b, 1), thresh, md));
    if (st) {
        Py_DECREF(keep);
        return glae_raise(st);
    }
    PyObject *res = PySequence_GetSlice((PyObject *)keep, 0, k);
    Py_DECREF(keep);
    if (!res) return NULL;
    PyObject *copy = (PyObject *)PyArray_NewCopy((PyArrayObject *)res, NPY_CORDER);
    Py_DECREF(res);
    return copy;
}

/* mtcnn_bbreg(boxes (n, >=4), reg (n, 4)) -> regressed copy of boxes */
static PyObject *py_bbreg(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *bo, *ro;
    if (!PyArg_ParseTuple(args, "OO:mtcnn_bbreg", &bo, &ro)) return NULL;
    PyArrayObject *b = boxes_arg(bo, 4);
    PyArrayObject *r = b ? glae_arg_f32(ro, "reg", 2) : NULL;
    if (!r || glae_check_dim(r, "reg", 0, PyArray_DIM(b, 0)) || glae_check_dim(r, "reg", 1, 4))
        return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_NewCopy(b, NPY_CORDER);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_mtcnn_bbreg(PyArray_DATA(out), PyArray_DIM(b, 0), (int)PyArray_DIM(b, 1),
                                    PyArray_DATA(r)));
    PyArrayObject *outs[1] = {out};
    return glae_return_arrays(st, 1, outs);
}

/* mtcnn_rerec(boxes (n, >=4)) -> squared copy */
static PyObject *py_rerec(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *bo;
    if (!PyArg_ParseTuple(args, "O:mtcnn_rerec", &bo)) return NULL;
    PyArrayObject *b = boxes_arg(bo, 4);
    if (!b) return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_NewCopy(b, NPY_CORDER);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_mtcnn_rerec(PyArray_DATA(out), PyArray_DIM(b, 0), (int)PyArray_DIM(b, 1)));
    PyArrayObject *outs[1] = {out};
    return glae_return_arrays(st, 1, outs);
}

/* mtcnn_resize_area(img (H, W, C) float32, oh, ow) -> (oh, ow, C) */
static PyObject *py_resize_area(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *io;
    int oh, ow;
    if (!PyArg_ParseTuple(args, "Oii:mtcnn_resize_area", &io, &oh, &ow)) return NULL;
    PyArrayObject *im = glae_arg_f32(io, "img", 3);
    if (!im || glae_check_min(oh, "oh", 1) || glae_check_min(ow, "ow", 1)) return NULL;
    for (int i = 0; i < 3; i++)
        if (glae_check_min(PyArray_DIM(im, i), "img dimension", 1)) return NULL;
    if (PyArray_DIM(im, 0) > INT_MAX / 4 || PyArray_DIM(im, 1) > INT_MAX / 4 ||
        PyArray_DIM(im, 2) > 4096) {
        PyErr_SetString(PyExc_ValueError, "img is too large");
        return NULL;
    }
    const int h = (int)PyArray_DIM(im, 0), w = (int)PyArray_DIM(im, 1), c = (int)PyArray_DIM(im, 2);
    npy_intp d[3] = {oh, ow, c};
    PyArrayObject *outs[1] = {glae_new_array(3, d, NPY_FLOAT32)};
    if (!outs[0]) return NULL;
    int st;
    GLAE_NOGIL(st, glae_mtcnn_resize_area(PyArray_DATA(outs[0]), oh, ow, PyArray_DATA(im), h, w,
                                          c, (int64_t)w * c));
    return glae_return_arrays(st, 1, outs);
}

/* mtcnn_detect(model, img (H, W, 3) uint8, min_face, factor, (t1, t2, t3), nms_scale,
 *              (n1, n2, n3), threads=0) -> (boxes (n, 4), scores (n), landmarks (n, 5, 2)) */
static PyObject *py_detect(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *mo, *io;
    glae_mtcnn_opts o;
    glae_mtcnn_default_opts(&o);
    int threads = 0;
    if (!PyArg_ParseTuple(args, "OOff(fff)f(fff)|i:mtcnn_detect", &mo, &io, &o.min_face, &o.factor,
                          &o.thresh[0], &o.thresh[1], &o.thresh[2], &o.nms_scale, &o.nms[0],
                          &o.nms[1], &o.nms[2], &threads))
        return NULL;
    if (threads < 0 || threads > 1024) {
        PyErr_Format(PyExc_ValueError, "mtcnn_detect: threads must be in [0, 1024]; got %d", threads);
        return NULL;
    }
    glae_mtcnn *m = get_model(mo);
    if (!m) return NULL;
    PyArrayObject *im = glae_arg_array(io, "img", NPY_UINT8, 3);
    if (!im || glae_check_dim(im, "img", 2, 3)) return NULL;
    if (PyArray_DIM(im, 0) > INT_MAX / 8 || PyArray_DIM(im, 1) > INT_MAX / 8) {
        PyErr_SetString(PyExc_ValueError, "img is too large");
        return NULL;
    }
    const int h = (int)PyArray_DIM(im, 0), w = (int)PyArray_DIM(im, 1);
    glae_mtcnn_result res;
    int st;
    glae_ctx ctx;
    glae_ctx_open(&ctx, GLAE_CPU, 0, 0);
    glae_ctx_set_threads(&ctx, threads); /* its own count: a training thread keeps its own */
    GLAE_NOGIL_CTX(st, &ctx,
                   glae_mtcnn_detect(&ctx, &res, PyArray_DATA(im), h, w, (int64_t)w * 3, m, &o));
    glae_ctx_close(&ctx);
    if (st) return glae_raise(st);
    npy_intp bd[2] = {res.n, 4}, sd[1] = {res.n}, pd[3] = {res.n, 5, 2};
    PyArrayObject *outs[3] = {glae_new_array(2, bd, NPY_FLOAT32), glae_new_array(1, sd, NPY_FLOAT32),
                              glae_new_array(3, pd, NPY_FLOAT32)};
    if (!all_made(3, outs)) {
        glae_mtcnn_result_free(&res);
        return NULL;
    }
    float *b = PyArray_DATA(outs[0]), *s = PyArray_DATA(outs[1]), *p = PyArray_DATA(outs[2]);
    for (int64_t i = 0; i < res.n; i++) {
        for (int k = 0; k < 4; k++) b[4 * i + k] = res.boxes[5 * i + k];
        s[i] = res.boxes[5 * i + 4];
        for (int k = 0; k < 10; k++) p[10 * i + k] = res.points[10 * i + k];
    }
    glae_mtcnn_result_free(&res);
    return glae_return_arrays(GLAE_OK, 3, outs);
}

PyMethodDef glae_mtcnn_methods[] = {
    {"mtcnn_spec", py_mtcnn_spec, METH_NOARGS, "weight tensors (name, shape) of P-, R-, O-Net"},
    {"mtcnn_new", py_mtcnn_new, METH_VARARGS, "mtcnn_new(pnet, rnet, onet) -> model capsule"},
    {"mtcnn_pnet_forward", py_pnet_forward, METH_VARARGS, "P-Net on (N, H, W, 3) -> (prob, reg)"},
    {"mtcnn_rnet_forward", py_rnet_forward, METH_VARARGS, "R-Net on (N, 24, 24, 3) -> (prob, reg)"},
    {"mtcnn_onet_forward", py_onet_forward, METH_VARARGS,
     "O-Net on (N, 48, 48, 3) -> (prob, reg, landmarks)"},
    {"mtcnn_nms", py_nms, METH_VARARGS, "mtcnn_nms(boxes, thresh, 'union'|'min') -> kept indices"},
    {"mtcnn_bbreg", py_bbreg, METH_VARARGS, "box regression (+1 widths) -> new boxes"},
    {"mtcnn_rerec", py_rerec, METH_VARARGS, "square boxes about their centre -> new boxes"},
    {"mtcnn_resize_area", py_resize_area, METH_VARARGS, "area (adaptive average) resize"},
    {"mtcnn_detect", py_detect, METH_VARARGS,
     "mtcnn_detect(model, img, min_face, factor, (t1, t2, t3), nms_scale, (n1, n2, n3), "
     "threads=0): the whole detector on one uint8 RGB image, on `threads` CPU threads "
     "(0: the process default)"},
    {NULL, NULL, 0, NULL},
};
