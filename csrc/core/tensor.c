#include "tensor.h"

#include "status.h"

size_t glae_dtype_size(glae_dtype t) {
    switch (t) {
    case GLAE_F32: return 4;
    case GLAE_BF16: return 2;
    case GLAE_U8: return 1;
    case GLAE_I32: return 4;
    }
    return 0;
}

int64_t glae_tensor_numel(const glae_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int glae_tensor_view(glae_tensor *t, void *data, glae_dtype dtype, glae_device dev, int ndim,
                     const int64_t *shape) {
    if (ndim < 0 || ndim > GLAE_MAX_DIMS)
        return glae_fail(GLAE_ERR_VALUE, "tensor rank %d outside 0..%d", ndim, GLAE_MAX_DIMS);
    t->data = data;
    t->dtype = dtype;
    t->device = dev;
    t->ndim = ndim;
    for (int i = 0; i < GLAE_MAX_DIMS; i++) {
        if (i < ndim && shape[i] < 0)
            return glae_fail(GLAE_ERR_VALUE, "tensor dimension %d is negative (%lld)", i,
                             (long long)shape[i]);
        t->shape[i] = i < ndim ? shape[i] : 1;
    }
    return GLAE_OK;
}
