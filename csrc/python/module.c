/* The glae._C extension module: the method tables of every family merged into one. */
#define GLAE_IMPORT_ARRAY
#include "python/py.h"

#include "core/ctx.h"
#include "nn/effnet.h"
#include "nn/resnet.h"
#include "ops/backend.h"

/* setup.py writes glae_build_info.h (GLAE_BUILD_INFO_ITEMS: X(key, value) pairs) into the
 * build folder: how this module was built, for diagnostics and tests/test_build.py. */
#if defined(__has_include)
#if __has_include("glae_build_info.h")
#include "glae_build_info.h"
#endif
#endif
#ifndef GLAE_BUILD_INFO_ITEMS
#define GLAE_BUILD_INFO_ITEMS X("reason", "built without setup.py (no build information)")
#endif

/* _C.BUILD_INFO: {key: str}, e.g. cuda, reason, nvcc_version, cuda_arch, cudnn_lib */
static PyObject *build_info(void) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
#define X(k, v)                                                                          \
    do {                                                                                 \
        PyObject *s_ = PyUnicode_DecodeUTF8((v), (Py_ssize_t)strlen(v), "replace");       \
        int bad_ = !s_ || PyDict_SetItemString(d, (k), s_) < 0;                          \
        Py_XDECREF(s_);                                                                  \
        if (bad_) {                                                                      \
            Py_DECREF(d);                                                                \
            return NULL;                                                                 \
        }                                                                                \
    } while (0);
    GLAE_BUILD_INFO_ITEMS
#undef X
    return d;
}

/* _C.RESNET_STAGES: {"resnet18": ((blocks, width, out_channels), ...4 stages), ...} from
 * the table glae_resnet_build walks; out_channels = width * 4 in a Bottleneck */
static PyObject *resnet_stages(void) {
    int n;
    const glae_resnet_arch *archs = glae_resnet_archs(&n);
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < n; i++) {
        const glae_resnet_arch *a = &archs[i];
        const int e = a->bottleneck ? 4 : 1;
        PyObject *t = Py_BuildValue("((iii)(iii)(iii)(iii))", a->blocks[0], a->width[0],
                                    a->width[0] * e, a->blocks[1], a->width[1], a->width[1] * e,
                                    a->blocks[2], a->width[2], a->width[2] * e, a->blocks[3],
                                    a->width[3], a->width[3] * e);
        char name[32];
        snprintf(name, sizeof name, "resnet%d", a->depth);
        if (!t || PyDict_SetItemString(d, name, t) < 0) Py_CLEAR(d);
        Py_XDECREF(t);
    }
    return d;
}

/* _C.EFFNET_STAGES: {"efficientnet_v2_s": ((fused, expand, kernel, stride, c_in, c_out,
 * layers), ...), ...} from the tables glae_effnet_build walks */
static PyObject *effnet_stages(void) {
    int n;
    const glae_effnet_arch *archs = glae_effnet_archs(&n);
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < n; i++) {
        const glae_effnet_arch *a = &archs[i];
        PyObject *t = PyTuple_New(a->nstages);
        for (int s = 0; t && s < a->nstages; s++) {
            const glae_effnet_stage *st = &a->stage[s];
            PyObject *row = Py_BuildValue("(iiiiiii)", st->fused, st->expand, st->kernel,
                                          st->stride, st->c_in, st->c_out, st->layers);
            if (!row) Py_CLEAR(t);
            else PyTuple_SET_ITEM(t, s, row);
        }
        if (!t || PyDict_SetItemString(d, a->name, t) < 0) Py_CLEAR(d);
        Py_XDECREF(t);
    }
    return d;
}

static PyMethodDef *const families[] = {
    glae_core_methods, glae_ops_methods,   glae_conv_methods, glae_loss_methods,
    glae_metrics_methods, glae_train_methods, glae_data_methods, glae_nn_methods,
    glae_mtcnn_methods, glae_bf16_methods, glae_cuda_methods, glae_pretrain_methods,
    glae_cpu_methods,
    glae_dist_methods,
};

static PyMethodDef *all_methods; /* lives as long as the process (the module may be re-imported) */

static PyMethodDef *merge_tables(void) {
    size_t n = 0;
    for (size_t f = 0; f < sizeof families / sizeof *families; f++)
        for (PyMethodDef *d = families[f]; d->ml_name; d++) n++;
    PyMethodDef *all = PyMem_RawCalloc(n + 1, sizeof *all);
    if (!all) return NULL;
    size_t i = 0;
    for (size_t f = 0; f < sizeof families / sizeof *families; f++)
        for (PyMethodDef *d = families[f]; d->ml_name; d++) all[i++] = *d;
    return all;
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "glae._C",
    "glae's C engine: layers, losses, metrics, optimiser, samplers, data pipeline.", -1, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    /* one thread pool (OpenMP); OpenBLAS would otherwise start one thread per core */
    glae_set_num_threads(glae_get_num_threads());
    if (!all_methods && !(all_methods = merge_tables())) return PyErr_NoMemory();
    module.m_methods = all_methods;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
#ifdef GLAE_WITH_CUDA
    const int has_cuda = 1;
#else
    const int has_cuda = 0;
#endif
    PyObject *info = build_info();
    if (!info || PyModule_AddObject(m, "BUILD_INFO", info) < 0) {
        Py_XDECREF(info);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *stages = resnet_stages();
    if (!stages || PyModule_AddObject(m, "RESNET_STAGES", stages) < 0) {
        Py_XDECREF(stages);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *estages = effnet_stages();
    if (!estages || PyModule_AddObject(m, "EFFNET_STAGES", estages) < 0) {
        Py_XDECREF(estages);
        Py_DECREF(m);
        return NULL;
    }
    /* the float the batch norms use (GLAE_BN_EPS, a float32 constant), as a Python float */
    PyObject *eps = PyFloat_FromDouble((double)GLAE_BN_EPS);
    if (!eps || PyModule_AddObject(m, "BN_EPS", eps) < 0) {
        Py_XDECREF(eps);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "HAS_CUDA", has_cuda) < 0 ||
        PyModule_AddIntConstant(m, "HAS_ONEDNN", glae_onednn_built()) < 0 ||
        PyModule_AddStringConstant(m, "__version__", GLAE_VERSION) < 0 ||
        glae_nn_add_types(m) < 0 || glae_data_add_types(m) < 0 ||
        glae_pretrain_add_types(m) < 0 || glae_dist_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
