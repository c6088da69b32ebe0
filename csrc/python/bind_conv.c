/* Bindings for the conv family (to be filled by its owner). */
#include "py.h"

PyMethodDef glae_conv_methods[] = {
    {NULL, NULL, 0, NULL},
};
