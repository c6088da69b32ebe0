/* Bindings for the train family (to be filled by its owner). */
#include "py.h"

PyMethodDef glae_train_methods[] = {
    {NULL, NULL, 0, NULL},
};
