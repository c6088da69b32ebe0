/* Bindings for the data family (to be filled by its owner). */
#include "py.h"

PyMethodDef glae_data_methods[] = {
    {NULL, NULL, 0, NULL},
};

int glae_data_add_types(PyObject *m) {
    (void)m;
    return 0;
}
