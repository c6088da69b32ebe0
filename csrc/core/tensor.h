/* A tensor is a view: a pointer plus shape, dtype and device. Activations are NHWC
 * float32; the device tag lets one model description drive the CPU or the CUDA twin. */
#ifndef GLAE_TENSOR_H
#define GLAE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define GLAE_MAX_DIMS 4

typedef enum { GLAE_CPU = 0, GLAE_CUDA = 1 } glae_device;
typedef enum { GLAE_F32 = 0, GLAE_BF16 = 1, GLAE_U8 = 2, GLAE_I32 = 3 } glae_dtype;

typedef struct {
    void *data;
    int ndim;
    int64_t shape[GLAE_MAX_DIMS]; /* activations: (N, H, W, C) */
    glae_dtype dtype;
    glae_device device;
} glae_tensor;

size_t glae_dtype_size(glae_dtype t);
int64_t glae_tensor_numel(const glae_tensor *t);
/* Fill a tensor view; returns GLAE_ERR_VALUE on a bad rank or a negative size. */
int glae_tensor_view(glae_tensor *t, void *data, glae_dtype dtype, glae_device dev, int ndim,
                     const int64_t *shape);

#endif
