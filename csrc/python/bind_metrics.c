/* Bindings for the metrics family (to be filled by its owner). */
#include "py.h"

PyMethodDef glae_metrics_methods[] = {
    {NULL, NULL, 0, NULL},
};
