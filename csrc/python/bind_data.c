/* Bindings for the data family: alignment (align.h), augmentations (augment.h) and the
 * Loader type (loader.h). Argument checks are strict (dtype, rank, contiguity, shape);
 * the C work runs without the GIL. */
#include "python/py.h"  /* Python.h first */

#include <string.h>
#include <unistd.h>

#include "core/copy.h"
#include "data/align.h"
#include "data/augment.h"
#include "data/loader.h"
#include "ops/backend.h"

/* ---- argument helpers ---------------------------------------------------------------- */

/* img: uint8 (H, W, 3) C-contiguous */
static PyArrayObject *arg_image(PyObject *o, const char *name) {
    PyArrayObject *a = glae_arg_array(o, name, NPY_UINT8, 3);
    if (!a || glae_check_dim(a, name, 2, 3)) return NULL;
    if (PyArray_DIM(a, 0) == 0 || PyArray_DIM(a, 1) == 0 || PyArray_DIM(a, 0) > INT_MAX ||
        PyArray_DIM(a, 1) > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-empty (H, W, 3) image", name);
        return NULL;
    }
    return a;
}

static int arg_size(long long v, const char *name) {
    if (v <= 0 || v > 1 << 16) {
        PyErr_Format(PyExc_ValueError, "%s must be in [1, 65536], got %lld", name, v);
        return -1;
    }
    return 0;
}

static PyObject *run_u8(int st, PyArrayObject *out) {
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

/* ---- alignment ----------------------------------------------------------------------- */

/* similarity_transform(src float32 (n, 2), dst float32 (n, 2)) -> float64 (2, 3) */
static PyObject *py_similarity_transform(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *so, *dO;
    if (!PyArg_ParseTuple(args, "OO:similarity_transform", &so, &dO)) return NULL;
    PyArrayObject *src = glae_arg_f32(so, "src", 2);
    if (!src || glae_check_dim(src, "src", 1, 2)) return NULL;
    PyArrayObject *dst = glae_arg_f32(dO, "dst", 2);
    if (!dst || glae_check_same_shape(src, "src", dst, "dst")) return NULL;
    if (PyArray_DIM(src, 0) < 2 || PyArray_DIM(src, 0) > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "src must have at least 2 points");
        return NULL;
    }
    npy_intp dims[2] = {2, 3};
    PyArrayObject *M = glae_new_array(2, dims, NPY_FLOAT64);
    if (!M) return NULL;
    int st = glae_similarity_transform(PyArray_DATA(M), PyArray_DATA(src), PyArray_DATA(dst),
                                       (int)PyArray_DIM(src, 0));
    if (st) {
        Py_DECREF(M);
        return glae_raise(st);
    }
    return (PyObject *)M;
}

static int parse_border(const char *b, int *out) {
    if (!strcmp(b, "constant")) *out = GLAE_BORDER_CONSTANT;
    else if (!strcmp(b, "replicate")) *out = GLAE_BORDER_REPLICATE;
    else {
        PyErr_Format(PyExc_ValueError, "border must be 'constant' or 'replicate', got '%s'", b);
        return -1;
    }
    return 0;
}

/* warp_affine(img, M float64 (2, 3) input->output, out_h, out_w, border='constant') */
static PyObject *py_warp_affine(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kws[] = {"img", "M", "out_h", "out_w", "border", NULL};
    PyObject *io, *mo;
    long long oh, ow;
    const char *border = "constant";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLL|s:warp_affine", kws, &io, &mo, &oh, &ow, &border))
        return NULL;
    PyArrayObject *img = arg_image(io, "img");
    if (!img) return NULL;
    PyArrayObject *M = glae_arg_array(mo, "M", NPY_FLOAT64, 2);
    if (!M || glae_check_dim(M, "M", 0, 2) || glae_check_dim(M, "M", 1, 3)) return NULL;
    int b;
    if (arg_size(oh, "out_h") || arg_size(ow, "out_w") || parse_border(border, &b)) return NULL;
    npy_intp dims[3] = {(npy_intp)oh, (npy_intp)ow, 3};
    PyArrayObject *out = glae_new_array(3, dims, NPY_UINT8);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_warp_affine(PyArray_DATA(out), (int)oh, (int)ow, PyArray_DATA(img),
                                    (int)PyArray_DIM(img, 0), (int)PyArray_DIM(img, 1),
                                    PyArray_DATA(M), b));
    return run_u8(st, out);
}

/* align_face(img, landmarks float32 (5, 2), size=224, margin=0.0) */
static PyObject *py_align_face(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kws[] = {"img", "landmarks", "size", "margin", NULL};
    PyObject *io, *lo;
    long long size = 224;
    double margin = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Ld:align_face", kws, &io, &lo, &size, &margin))
        return NULL;
    PyArrayObject *img = arg_image(io, "img");
    if (!img) return NULL;
    PyArrayObject *lm = glae_arg_f32(lo, "landmarks", 2);
    if (!lm || glae_check_dim(lm, "landmarks", 0, 5) || glae_check_dim(lm, "landmarks", 1, 2)) return NULL;
    if (arg_size(size, "size")) return NULL;
    npy_intp dims[3] = {(npy_intp)size, (npy_intp)size, 3};
    PyArrayObject *out = glae_new_array(3, dims, NPY_UINT8);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_align_face(PyArray_DATA(out), (int)size, PyArray_DATA(img), (int)PyArray_DIM(img, 0),
                                   (int)PyArray_DIM(img, 1), PyArray_DATA(lm), (float)margin));
    return run_u8(st, out);
}

/* center_crop_resize(img, size) */
static PyObject *py_center_crop_resize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *io;
    long long size;
    if (!PyArg_ParseTuple(args, "OL:center_crop_resize", &io, &size)) return NULL;
    PyArrayObject *img = arg_image(io, "img");
    if (!img || arg_size(size, "size")) return NULL;
    npy_intp dims[3] = {(npy_intp)size, (npy_intp)size, 3};
    PyArrayObject *out = glae_new_array(3, dims, NPY_UINT8);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_center_crop_resize(PyArray_DATA(out), (int)size, PyArray_DATA(img),
                                           (int)PyArray_DIM(img, 0), (int)PyArray_DIM(img, 1)));
    return run_u8(st, out);
}

/* resize(img, out_h, out_w, box=None (x0, y0, w, h), flip=False) */
static PyObject *py_resize(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kws[] = {"img", "out_h", "out_w", "box", "flip", NULL};
    PyObject *io, *boxo = Py_None;
    long long oh, ow;
    int flip = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL|Op:resize", kws, &io, &oh, &ow, &boxo, &flip))
        return NULL;
    PyArrayObject *img = arg_image(io, "img");
    if (!img || arg_size(oh, "out_h") || arg_size(ow, "out_w")) return NULL;
    int h = (int)PyArray_DIM(img, 0), w = (int)PyArray_DIM(img, 1);
    double b[4] = {0, 0, w, h};
    if (boxo != Py_None && !PyArg_ParseTuple(boxo, "dddd;box must be (x0, y0, w, h)", &b[0], &b[1], &b[2], &b[3]))
        return NULL;
    if (b[0] < 0 || b[1] < 0 || !(b[2] > 0) || !(b[3] > 0) || b[0] + b[2] > w || b[1] + b[3] > h) {
        PyErr_Format(PyExc_ValueError, "box must lie inside the %d x %d image with w, h > 0", w, h);
        return NULL;
    }
    npy_intp dims[3] = {(npy_intp)oh, (npy_intp)ow, 3};
    PyArrayObject *out = glae_new_array(3, dims, NPY_UINT8);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_resize_box(PyArray_DATA(out), (int)oh, (int)ow, PyArray_DATA(img), h, w,
                                   b[0], b[1], b[2], b[3], flip));
    return run_u8(st, out);
}

/* template_points(size, margin=0.0) -> float32 (5, 2) */
static PyObject *py_template_points(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kws[] = {"size", "margin", NULL};
    long long size;
    double margin = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|d:template_points", kws, &size, &margin)) return NULL;
    if (arg_size(size, "size")) return NULL;
    npy_intp dims[2] = {5, 2};
    PyArrayObject *out = glae_new_array(2, dims, NPY_FLOAT32);
    if (!out) return NULL;
    int st = glae_template_points(PyArray_DATA(out), (int)size, (float)margin);
    if (st) {
        Py_DECREF(out);
        return glae_raise(st);
    }
    return (PyObject *)out;
}

/* ---- augmentation config ------------------------------------------------------------- */

static const char *const config_keys =
    "crop, scale (crop_scale), ratio, flip, jitter (color_jitter), brightness, contrast, saturation, "
    "hue, randaugment, ra_n (randaugment_n), ra_m (randaugment_m), ra_bins, norm (normalization)";

static int get_float(PyObject *v, const char *key, float *out) {
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "augment config: %s must be a number", key);
        return -1;
    }
    *out = (float)d;
    return 0;
}

static int get_int(PyObject *v, const char *key, int *out) {
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "augment config: %s must be an int", key);
        return -1;
    }
    int overflow = 0;
    long l = PyLong_AsLongAndOverflow(v, &overflow);
    if (l == -1 && PyErr_Occurred()) return -1;
    if (overflow || l < -1000000 || l > 1000000) {
        PyErr_Format(PyExc_ValueError, "augment config: %s out of range", key);
        return -1;
    }
    *out = (int)l;
    return 0;
}

static int get_pair(PyObject *v, const char *key, float *a, float *b) {
    PyObject *seq = PySequence_Fast(v, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != 2) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "augment config: %s must be a pair (min, max)", key);
        return -1;
    }
    int r = get_float(PySequence_Fast_GET_ITEM(seq, 0), key, a) ||
            get_float(PySequence_Fast_GET_ITEM(seq, 1), key, b);
    Py_DECREF(seq);
    return r ? -1 : 0;
}

/* Apply one key; *jitter receives the master switch. */
static int config_item(glae_aug_config *c, PyObject *ko, PyObject *v, int *jitter) {
    if (!PyUnicode_Check(ko)) {
        PyErr_SetString(PyExc_TypeError, "augment config: keys must be strings");
        return -1;
    }
    const char *k = PyUnicode_AsUTF8(ko);
    if (!k) return -1;
    /* the names glae/config.py uses, as aliases */
    static const char *const alias[][2] = {
        {"normalization", "norm"}, {"color_jitter", "jitter"}, {"crop_scale", "scale"},
        {"randaugment_n", "ra_n"}, {"randaugment_m", "ra_m"},
    };
    for (size_t i = 0; i < sizeof alias / sizeof *alias; i++)
        if (!strcmp(k, alias[i][0])) k = alias[i][1];
    int t;
    if (!strcmp(k, "crop") || !strcmp(k, "randaugment") || !strcmp(k, "jitter")) {
        if ((t = PyObject_IsTrue(v)) < 0) return -1;
        if (k[0] == 'c') c->crop = t;
        else if (k[0] == 'r') c->randaug = t;
        else *jitter = t;
        return 0;
    }
    if (!strcmp(k, "flip")) {
        if (PyBool_Check(v)) { /* True: the default p = 0.5 */
            c->flip_p = v == Py_True ? 0.5f : 0.0f;
            return 0;
        }
        return get_float(v, k, &c->flip_p);
    }
    if (!strcmp(k, "scale")) return get_pair(v, k, &c->scale_min, &c->scale_max);
    if (!strcmp(k, "ratio")) return get_pair(v, k, &c->ratio_min, &c->ratio_max);
    if (!strcmp(k, "brightness")) return get_float(v, k, &c->brightness);
    if (!strcmp(k, "contrast")) return get_float(v, k, &c->contrast);
    if (!strcmp(k, "saturation")) return get_float(v, k, &c->saturation);
    if (!strcmp(k, "hue")) return get_float(v, k, &c->hue);
    if (!strcmp(k, "ra_n")) return get_int(v, k, &c->ra_n);
    if (!strcmp(k, "ra_m")) return get_int(v, k, &c->ra_m);
    if (!strcmp(k, "ra_bins")) return get_int(v, k, &c->ra_bins);
    if (!strcmp(k, "norm")) return glae_parse_norm(v, "augment config", &c->norm);
    PyErr_Format(PyExc_ValueError, "augment config: unknown key '%s' (known: %s)", k, config_keys);
    return -1;
}

/* defaults, then the `config` dict (or None), then the remaining keyword arguments */
static int parse_config(glae_aug_config *c, PyObject *config, PyObject *rest) {
    glae_aug_config_default(c);
    int jitter = 1;
    PyObject *dicts[2] = {config, rest};
    for (int d = 0; d < 2; d++) {
        PyObject *D = dicts[d];
        if (!D || D == Py_None) continue;
        if (!PyDict_Check(D)) {
            PyErr_SetString(PyExc_TypeError, "config must be a dict or None");
            return -1;
        }
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(D, &pos, &k, &v))
            if (config_item(c, k, v, &jitter)) return -1;
    }
    if (!jitter) c->brightness = c->contrast = c->saturation = c->hue = 0.0f;
    int st = glae_aug_config_check(c);
    if (st) {
        glae_raise(st);
        return -1;
    }
    return 0;
}

/* Split positional + keyword arguments into the `n` named parameters (NULL when absent)
 * and a new dict `rest` of the other keywords. */
static int split_args(const char *fn, PyObject *args, PyObject *kw, const char *const *names, int n,
                      int required, PyObject **vals, PyObject **rest) {
    Py_ssize_t np = PyTuple_GET_SIZE(args);
    *rest = NULL;
    if (np > n) {
        PyErr_Format(PyExc_TypeError, "%s takes at most %d positional arguments (%zd given)", fn, n, np);
        return -1;
    }
    for (int i = 0; i < n; i++) vals[i] = i < np ? PyTuple_GET_ITEM(args, i) : NULL;
    *rest = kw ? PyDict_Copy(kw) : PyDict_New();
    if (!*rest) return -1;
    for (int i = 0; i < n; i++) {
        PyObject *v = PyDict_GetItemString(*rest, names[i]); /* borrowed, kept alive by kw */
        if (!v) continue;
        if (vals[i]) {
            PyErr_Format(PyExc_TypeError, "%s got multiple values for argument '%s'", fn, names[i]);
            goto fail;
        }
        vals[i] = PyDict_GetItemString(kw, names[i]);
        if (PyDict_DelItemString(*rest, names[i])) goto fail;
    }
    for (int i = 0; i < required; i++)
        if (!vals[i]) {
            PyErr_Format(PyExc_TypeError, "%s missing required argument '%s'", fn, names[i]);
            goto fail;
        }
    return 0;
fail:
    Py_CLEAR(*rest);
    return -1;
}

static int as_ll(PyObject *o, const char *name, long long lo, long long hi, long long *out) {
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%s must be in [%lld, %lld]", name, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int as_seed(PyObject *o, uint64_t *out) {
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "seed must be an int");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed must be in [0, 2**64)");
        return -1;
    }
    *out = v;
    return 0;
}

/* images: uint8 (N, H, W, 3), a np.memmap works (it is an ndarray) */
static PyArrayObject *arg_images(PyObject *o) {
    PyArrayObject *a = glae_arg_array(o, "images", NPY_UINT8, 4);
    if (!a || glae_check_dim(a, "images", 3, 3)) return NULL;
    if (PyArray_DIM(a, 1) <= 0 || PyArray_DIM(a, 2) <= 0 || PyArray_DIM(a, 1) > 65536 ||
        PyArray_DIM(a, 2) > 65536) {
        PyErr_SetString(PyExc_ValueError, "images must be (N, H, W, 3) with H, W in [1, 65536]");
        return NULL;
    }
    return a;
}

/* dtype='float32' or 'uint8' (any spelling numpy.dtype takes) -> *u8 */
static int parse_out_dtype(PyObject *o, int *u8) {
    PyArray_Descr *d = NULL;
    if (!PyArray_DescrConverter2(o, &d)) return -1;
    int t = d ? d->type_num : NPY_FLOAT32;
    Py_XDECREF(d);
    if (t != NPY_FLOAT32 && t != NPY_UINT8) {
        PyErr_SetString(PyExc_ValueError, "dtype must be float32 (normalised images) or uint8 (pixels)");
        return -1;
    }
    *u8 = t == NPY_UINT8;
    return 0;
}

/* augment_batch(images, indices, out_size, seed, epoch, config=None, threads=0,
 *               dtype='float32', **config) */
static PyObject *py_augment_batch(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static const char *const names[] = {"images", "indices", "out_size", "seed", "epoch", "config",
                                        "threads", "dtype"};
    PyObject *v[8], *rest = NULL, *res = NULL;
    if (split_args("augment_batch", args, kw, names, 8, 5, v, &rest)) return NULL;
    glae_aug_config cfg;
    long long size, epoch, threads = 0;
    uint64_t seed;
    int u8 = 0;
    PyArrayObject *images = arg_images(v[0]);
    PyArrayObject *idx = images ? glae_arg_array(v[1], "indices", NPY_INT64, 1) : NULL;
    if (!idx || as_ll(v[2], "out_size", 1, 65536, &size) || as_seed(v[3], &seed) ||
        as_ll(v[4], "epoch", 0, 0xFFFFFFFFLL, &epoch) ||
        (v[6] && as_ll(v[6], "threads", 0, 1024, &threads)) || parse_config(&cfg, v[5], rest) ||
        (v[7] && parse_out_dtype(v[7], &u8)))
        goto done;
    npy_intp dims[4] = {PyArray_DIM(idx, 0), (npy_intp)size, (npy_intp)size, 3};
    PyArrayObject *out = glae_new_array(4, dims, u8 ? NPY_UINT8 : NPY_FLOAT32);
    if (!out) goto done;
    int st;
    GLAE_NOGIL(st, glae_augment_batch(PyArray_DATA(out), u8, (int)size, PyArray_DATA(images), PyArray_DIM(images, 0),
                                      (int)PyArray_DIM(images, 1), (int)PyArray_DIM(images, 2),
                                      PyArray_DATA(idx), PyArray_DIM(idx, 0), &cfg, seed,
                                      (uint32_t)epoch, (int)threads));
    if (st) {
        Py_DECREF(out);
        glae_raise(st);
        goto done;
    }
    res = (PyObject *)out;
done:
    Py_XDECREF(rest);
    return res;
}

static int parse_op(PyObject *o, int *op) {
    const char *s = PyUnicode_Check(o) ? PyUnicode_AsUTF8(o) : NULL;
    for (int i = 0; s && i < GLAE_OP_COUNT; i++)
        if (!strcmp(s, glae_op_names[i])) {
            *op = i;
            return 0;
        }
    PyErr_SetString(PyExc_ValueError,
                    "op must be one of identity, autocontrast, equalize, rotate, solarize, color, posterize, "
                    "contrast, brightness, sharpness, shear_x, shear_y, translate_x, translate_y, hue, flip");
    return -1;
}

/* augment_op(img uint8 (H, W, 3), op, param=0.0) -> new uint8 image (img unchanged) */
static PyObject *py_augment_op(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kws[] = {"img", "op", "param", NULL};
    PyObject *io, *oo;
    double p = 0.0;
    int op;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|d:augment_op", kws, &io, &oo, &p)) return NULL;
    PyArrayObject *img = arg_image(io, "img");
    if (!img || parse_op(oo, &op)) return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_NewCopy(img, NPY_CORDER);
    if (!out) return NULL;
    int st;
    GLAE_NOGIL(st, glae_augment_op(PyArray_DATA(out), (int)PyArray_DIM(img, 0), (int)PyArray_DIM(img, 1),
                                   op, p, NULL));
    return run_u8(st, out);
}

/* randaug_magnitude(op, m, bins=31, h=224, w=224) -> (param before sign, signed) */
static PyObject *py_randaug_magnitude(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kws[] = {"op", "m", "bins", "h", "w", NULL};
    PyObject *oo;
    int op, m, bins = 31, h = 224, w = 224;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|iii:randaug_magnitude", kws, &oo, &m, &bins, &h, &w))
        return NULL;
    if (parse_op(oo, &op)) return NULL;
    if (op >= GLAE_RANDAUG_OPS || bins < 2 || m < 0 || m >= bins || h <= 0 || w <= 0) {
        PyErr_SetString(PyExc_ValueError, "randaug_magnitude: need a RandAugment op, 0 <= m < bins, h, w > 0");
        return NULL;
    }
    return Py_BuildValue("(dO)", glae_randaug_magnitude(op, m, bins, h, w),
                         glae_randaug_signed(op) ? Py_True : Py_False);
}

/* augment_defaults() -> dict of the default configuration */
static PyObject *py_augment_defaults(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    glae_aug_config c;
    glae_aug_config_default(&c);
    static const char *norms[] = {"glae", "imagenet", "none"};
    return Py_BuildValue("{s:O,s:(dd),s:(dd),s:d,s:O,s:d,s:d,s:d,s:d,s:O,s:i,s:i,s:i,s:s}",
                         "crop", c.crop ? Py_True : Py_False, "scale", (double)c.scale_min,
                         (double)c.scale_max, "ratio", (double)c.ratio_min, (double)c.ratio_max,
                         "flip", (double)c.flip_p, "jitter", Py_True, "brightness", (double)c.brightness,
                         "contrast", (double)c.contrast, "saturation", (double)c.saturation, "hue",
                         (double)c.hue, "randaugment", c.randaug ? Py_True : Py_False, "ra_n", c.ra_n,
                         "ra_m", c.ra_m, "ra_bins", c.ra_bins, "norm", norms[c.norm]);
}

/* ---- Loader -------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    glae_loader *L;
    PyObject *images, *ages, *sigmas; /* kept alive: the workers read them */
    int busy;   /* a next() or a close() is running (partly without the GIL) */
    pid_t pid;  /* the process whose threads are the workers (fork copies no threads) */
    int size, u8; /* u8: the batches are uint8 pixels (dtype='uint8') */
    Py_ssize_t nbatches;
    /* the last two image batches handed out: one whose only reference is this pool is
     * refilled instead of allocating ~20 MB of fresh (page-faulting) memory per batch; a
     * for loop still holds the previous batch, hence two */
    PyObject *pool[2];
    int turn;
    glae_ctx ctx; /* its own count (threads): the hand-over copy in next() runs on it */
} LoaderObject;

static const char BUSY_MSG[] = "Loader is in use by another thread (next() or close())";

/* Join the workers, then drop what they read. busy holds off a second close() from
 * another thread while this one waits without the GIL (it would free the images under
 * the workers). In a forked child the workers do not exist: the loader is left as it is
 * (joining would wait forever), a small leak. */
static void loader_close_now(LoaderObject *o) {
    glae_loader *L = o->L;
    o->L = NULL;
    if (L && o->pid == getpid()) {
        o->busy = 1;
        Py_BEGIN_ALLOW_THREADS;
        glae_loader_destroy(L); /* joins the workers */
        Py_END_ALLOW_THREADS;
        o->busy = 0;
    }
    Py_CLEAR(o->images);
    Py_CLEAR(o->ages);
    Py_CLEAR(o->sigmas);
    Py_CLEAR(o->pool[0]);
    Py_CLEAR(o->pool[1]);
}

/* An image batch (count, size, size, 3) for next(): the pool entry of this turn when
 * nobody else references it (no user variable, view or exported buffer) and its shape
 * fits, else a new array that takes its place in the pool. New reference. */
static PyObject *loader_batch_array(LoaderObject *o, int count) {
    PyObject **slot = &o->pool[o->turn];
    o->turn ^= 1;
    PyArrayObject *p = (PyArrayObject *)*slot;
    if (p && Py_REFCNT(p) == 1 && PyArray_DIM(p, 0) == count && PyArray_FLAGS(p) & NPY_ARRAY_WRITEABLE) {
        Py_INCREF(p);
        return (PyObject *)p;
    }
    npy_intp d4[4] = {count, o->size, o->size, 3};
    PyObject *X = PyArray_SimpleNew(4, d4, o->u8 ? NPY_UINT8 : NPY_FLOAT32);
    if (!X) return NULL;
    Py_XSETREF(*slot, X);
    Py_INCREF(X);
    return X;
}

static void loader_dealloc(LoaderObject *o) {
    loader_close_now(o);
    glae_ctx_close(&o->ctx);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyArrayObject *arg_labels(PyObject *o, const char *name, npy_intp n) {
    if (o == Py_None) return NULL;
    PyArrayObject *a = glae_arg_f32(o, name, 1);
    if (a && glae_check_dim(a, name, 0, n)) return NULL;
    return a;
}

/* Loader(images, ages, sigmas, indices, batch_size, out_size=224, seed=0, epoch=0,
 *        threads=1, prefetch=0, drop_last=False, config=None, dtype='float32', **config) */
static PyObject *loader_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static const char *const names[] = {"images", "ages", "sigmas", "indices", "batch_size", "out_size",
                                        "seed", "epoch", "threads", "prefetch", "drop_last", "config",
                                        "dtype", "shard"};
    PyObject *v[14], *rest = NULL;
    LoaderObject *self = NULL;
    int u8 = 0, shard_rank = 0, shard_world = 1;
    if (split_args("Loader", args, kw, names, 14, 5, v, &rest)) return NULL;
    if (v[13] && v[13] != Py_None && !PyArg_ParseTuple(v[13], "ii;shard must be (rank, world_size)",
                                                       &shard_rank, &shard_world))
        return NULL;
    long long batch, size = 224, epoch = 0, threads = 1, prefetch = 0;
    uint64_t seed = 0;
    int drop_last = 0;
    glae_aug_config cfg;
    PyArrayObject *images = arg_images(v[0]);
    if (!images) goto fail;
    npy_intp n = PyArray_DIM(images, 0);
    PyArrayObject *ages = arg_labels(v[1], "ages", n);
    if (!ages && v[1] != Py_None) goto fail;
    PyArrayObject *sig = arg_labels(v[2], "sigmas", n);
    if (!sig && v[2] != Py_None) goto fail;
    PyArrayObject *idx = glae_arg_array(v[3], "indices", NPY_INT64, 1);
    if (!idx || as_ll(v[4], "batch_size", 1, 1 << 20, &batch) ||
        (v[5] && as_ll(v[5], "out_size", 1, 65536, &size)) || (v[6] && as_seed(v[6], &seed)) ||
        (v[7] && as_ll(v[7], "epoch", 0, 0xFFFFFFFFLL, &epoch)) ||
        (v[8] && as_ll(v[8], "threads", 1, 256, &threads)) ||
        (v[9] && as_ll(v[9], "prefetch", 0, 1024, &prefetch)) ||
        (v[10] && (drop_last = PyObject_IsTrue(v[10])) < 0) || parse_config(&cfg, v[11], rest) ||
        (v[12] && parse_out_dtype(v[12], &u8)))
        goto fail;
    if (prefetch == 0) prefetch = threads + 1;
    self = (LoaderObject *)type->tp_alloc(type, 0);
    if (!self) goto fail;
    self->size = (int)size;
    self->u8 = u8;
    int st = glae_ctx_open(&self->ctx, GLAE_CPU, 0, 0);
    if (st) {
        glae_raise(st);
        goto fail;
    }
    glae_ctx_set_threads(&self->ctx, (int)threads);
    glae_loader *L = NULL;
    GLAE_NOGIL(st, glae_loader_create(&L, PyArray_DATA(images), n, (int)PyArray_DIM(images, 1),
                                      (int)PyArray_DIM(images, 2), ages ? PyArray_DATA(ages) : NULL,
                                      sig ? PyArray_DATA(sig) : NULL, PyArray_DATA(idx), PyArray_DIM(idx, 0),
                                      (int)batch, drop_last, (int)size, &cfg, seed, (uint32_t)epoch,
                                      (int)threads, (int)prefetch, u8, shard_rank, shard_world));
    if (st) {
        glae_raise(st);
        goto fail;
    }
    self->L = L;
    self->pid = getpid();
    self->nbatches = (Py_ssize_t)glae_loader_num_batches(L);
    Py_INCREF(v[0]); self->images = v[0];
    Py_XINCREF(ages); self->ages = (PyObject *)ages;
    Py_XINCREF(sig); self->sigmas = (PyObject *)sig;
    Py_XDECREF(rest);
    return (PyObject *)self;
fail:
    Py_XDECREF(rest);
    Py_XDECREF(self);
    return NULL;
}

static PyObject *loader_iter(PyObject *o) {
    Py_INCREF(o);
    return o;
}

/* next(): wait for the next batch without the GIL (checking for Ctrl-C every 100 ms), copy
 * it out of the ring into arrays the caller owns (an image array the caller has dropped
 * is refilled: loader_batch_array), hand the slot back. */
static PyObject *loader_next(LoaderObject *o) {
    if (!o->L) return NULL; /* closed: StopIteration */
    if (o->busy) {
        PyErr_SetString(PyExc_RuntimeError, BUSY_MSG);
        return NULL;
    }
    if (o->pid != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "Loader used after fork: its worker threads are in "
                                            "the parent process; make a new Loader in this one");
        return NULL;
    }
    /* busy until the slot is handed back: a close() from another thread (or from a
     * __del__ run by a garbage collection in between) must not free L under us */
    o->busy = 1;
    glae_loader *L = o->L;
    int r, count = 0;
    const void *x = NULL;
    const float *ages = NULL, *sig = NULL;
    const int64_t *ids = NULL;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS;
        r = glae_loader_take(L, 100, &count, &x, &ages, &sig, &ids);
        Py_END_ALLOW_THREADS;
        if (r != 2) break;
        if (PyErr_CheckSignals()) {
            o->busy = 0;
            return NULL;
        }
    }
    if (r <= 0) {
        o->busy = 0;
        return r == 0 ? NULL : glae_raise(-r);
    }
    npy_intp d1[1] = {count};
    PyObject *X = loader_batch_array(o, count);
    PyObject *A = PyArray_SimpleNew(1, d1, NPY_FLOAT32);
    PyObject *S = PyArray_SimpleNew(1, d1, NPY_FLOAT32);
    PyObject *res = NULL;
    if (X && A && S) {
        size_t nx = (size_t)count * o->size * o->size * 3;
        void *px = PyArray_DATA((PyArrayObject *)X);
        glae_ctx_apply_threads(&o->ctx);
        Py_BEGIN_ALLOW_THREADS;
        glae_memcpy_big(px, x, nx * (o->u8 ? 1 : sizeof(float)));
        Py_END_ALLOW_THREADS;
        memcpy(PyArray_DATA((PyArrayObject *)A), ages, (size_t)count * sizeof(float));
        memcpy(PyArray_DATA((PyArrayObject *)S), sig, (size_t)count * sizeof(float));
        res = PyTuple_Pack(3, X, A, S);
    }
    glae_loader_release(L);
    o->busy = 0;
    Py_XDECREF(X);
    Py_XDECREF(A);
    Py_XDECREF(S);
    return res;
}

static PyObject *loader_close(LoaderObject *o, PyObject *noargs) {
    (void)noargs;
    if (o->busy) {
        PyErr_SetString(PyExc_RuntimeError, BUSY_MSG);
        return NULL;
    }
    loader_close_now(o);
    Py_RETURN_NONE;
}

static Py_ssize_t loader_len(LoaderObject *o) { return o->nbatches; }

static PyMethodDef loader_methods[] = {
    {"close", (PyCFunction)loader_close, METH_NOARGS,
     "close(): stop and join the worker threads now (also done when the Loader is dropped)"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods loader_seq = {.sq_length = (lenfunc)loader_len};

static PyTypeObject LoaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "glae._C.Loader",
    .tp_basicsize = sizeof(LoaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Loader(images, ages, sigmas, indices, batch_size, out_size=224, seed=0, epoch=0,\n"
              "       threads=1, prefetch=threads+1, drop_last=False, config=None, dtype='float32',\n"
              "       shard=None, **config)\n\n"
              "One epoch over `indices` (int64, positions into images (N, H, W, 3) uint8, a\n"
              "np.memmap works): `threads` C threads augment batches ahead into `prefetch` ring\n"
              "slots (and as many OpenMP threads copy a batch out: the Loader's own count);\n"
              "iterating yields (x float32 (B, S, S, 3), ages float32 (B,), sigmas float32 (B,)),\n"
              "fresh arrays copied out of the ring, identical for any thread count. ages/sigmas\n"
              "may be None (zeros). A bad index raises when its batch is reached.\n"
              "dtype='uint8' yields the augmented pixels before the normalisation instead\n"
              "(a quarter of the bytes; Model.train_step(x_uint8, ..., norm=) normalises them\n"
              "on its device to the same float32 values, bit for bit).\n"
              "shard=(rank, world_size): `indices` is the whole epoch in global batches of\n"
              "batch_size * world_size; this rank gets its consecutive batch_size samples of\n"
              "each, augmented as the one-process Loader augments them (data parallelism).",
    .tp_new = loader_new,
    .tp_dealloc = (destructor)loader_dealloc,
    .tp_iter = loader_iter,
    .tp_iternext = (iternextfunc)loader_next,
    .tp_methods = loader_methods,
    .tp_as_sequence = &loader_seq,
};

PyMethodDef glae_data_methods[] = {
    {"similarity_transform", py_similarity_transform, METH_VARARGS,
     "similarity_transform(src float32 (n, 2), dst float32 (n, 2)) -> float64 (2, 3) M with dst ~ M [src; 1]"},
    {"warp_affine", (PyCFunction)(void (*)(void))py_warp_affine, METH_VARARGS | METH_KEYWORDS,
     "warp_affine(img uint8 (H, W, 3), M float64 (2, 3) input->output, out_h, out_w, border='constant'|'replicate')"},
    {"align_face", (PyCFunction)(void (*)(void))py_align_face, METH_VARARGS | METH_KEYWORDS,
     "align_face(img uint8 (H, W, 3), landmarks float32 (5, 2), size=224, margin=0.0) -> uint8 (size, size, 3)"},
    {"center_crop_resize", py_center_crop_resize, METH_VARARGS,
     "center_crop_resize(img uint8 (H, W, 3), size) -> uint8 (size, size, 3)"},
    {"resize", (PyCFunction)(void (*)(void))py_resize, METH_VARARGS | METH_KEYWORDS,
     "resize(img uint8 (H, W, 3), out_h, out_w, box=None (x0, y0, w, h), flip=False): antialiased bilinear"},
    {"template_points", (PyCFunction)(void (*)(void))py_template_points, METH_VARARGS | METH_KEYWORDS,
     "template_points(size, margin=0.0) -> float32 (5, 2): the ArcFace 5-point template for size x size"},
    {"augment_batch", (PyCFunction)(void (*)(void))py_augment_batch, METH_VARARGS | METH_KEYWORDS,
     "augment_batch(images uint8 (N, H, W, 3), indices int64 (B,), out_size, seed, epoch, config=None,\n"
     "              threads=0, dtype='float32', **config) -> float32 (B, out_size, out_size, 3),\n"
     "or with dtype='uint8' the pixels before the normalisation (as the Loader's)"},
    {"augment_op", (PyCFunction)(void (*)(void))py_augment_op, METH_VARARGS | METH_KEYWORDS,
     "augment_op(img uint8 (H, W, 3), op, param=0.0) -> uint8: one augmentation with its raw parameter"},
    {"randaug_magnitude", (PyCFunction)(void (*)(void))py_randaug_magnitude, METH_VARARGS | METH_KEYWORDS,
     "randaug_magnitude(op, m, bins=31, h=224, w=224) -> (param, signed)"},
    {"augment_defaults", py_augment_defaults, METH_NOARGS, "augment_defaults() -> dict"},
    {NULL, NULL, 0, NULL},
};

int glae_data_add_types(PyObject *m) {
    if (PyType_Ready(&LoaderType) < 0) return -1;
    Py_INCREF(&LoaderType);
    if (PyModule_AddObject(m, "Loader", (PyObject *)&LoaderType) < 0) {
        Py_DECREF(&LoaderType);
        return -1;
    }
    return 0;
}
