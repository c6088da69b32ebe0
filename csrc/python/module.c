/* The glae._C extension module: the method tables of every family merged into one. */
#define GLAE_IMPORT_ARRAY
#include "py.h"

#include "../core/ctx.h"

static PyMethodDef *const families[] = {
    glae_core_methods, glae_ops_methods,   glae_conv_methods, glae_loss_methods,
    glae_metrics_methods, glae_train_methods, glae_data_methods, glae_nn_methods,
    glae_mtcnn_methods, glae_cuda_methods,
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
    if (PyModule_AddIntConstant(m, "HAS_CUDA", has_cuda) < 0 ||
        PyModule_AddStringConstant(m, "__version__", GLAE_VERSION) < 0 ||
        glae_nn_add_types(m) < 0 || glae_data_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
