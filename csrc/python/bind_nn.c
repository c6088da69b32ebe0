/* Bindings for the nn family (to be filled by its owner). */
#include "py.h"

PyMethodDef glae_nn_methods[] = {
    {NULL, NULL, 0, NULL},
};

int glae_nn_add_types(PyObject *m) {
    (void)m;
    return 0;
}
