/* Bindings for the loss family (to be filled by its owner). */
#include "py.h"

PyMethodDef glae_loss_methods[] = {
    {NULL, NULL, 0, NULL},
};
