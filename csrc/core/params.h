/* One flat buffer per role. A model registers its named tensors (torchvision
 * state_dict names) once; afterwards params, grads and momentum are three contiguous
 * float arrays of the same length, and BN running statistics live in a fourth
 * ("buffers"), so the optimizer is one loop and a checkpoint is one write. */
#ifndef GLAE_PARAMS_H
#define GLAE_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/ctx.h"

#define GLAE_NAME_LEN 96

/* flags */
#define GLAE_P_BUFFER 1u   /* not trained: lives in `buffers` (BN running stats)      */
#define GLAE_P_NO_DECAY 2u /* BN weight/bias and biases: excluded when wd_exclude is on */

/* groups: which part of the model a tensor belongs to (stage 2 freezes the backbone) */
enum { GLAE_G_BACKBONE = 0, GLAE_G_HEAD = 1, GLAE_G_BALANCED = 2, GLAE_G_NUM = 3 };

/* tensor offsets are rounded up to this many floats (64 bytes) */
#define GLAE_PARAM_ALIGN 16

typedef struct {
    char name[GLAE_NAME_LEN];
    int ndim;
    int64_t shape[4];
    int64_t numel;
    size_t offset; /* in floats, into params (or buffers when GLAE_P_BUFFER); a multiple
                    * of GLAE_PARAM_ALIGN */
    unsigned flags;
    int group;
} glae_param_info;

typedef struct {
    glae_param_info *info;
    int count, cap;
    size_t n;         /* trainable floats, with the zero padding between tensors */
    size_t n_buffers; /* buffer floats, likewise */
    float *params, *grads, *momentum, *buffers;
    /* NULL: the four arrays are host memory. A device ctx: they were moved there by
     * glae_params_to_device and every pointer above is a device pointer. */
    glae_ctx *dev;
} glae_params;

/* Register a tensor; returns its index in `info` through *index (may be NULL). */
int glae_params_add(glae_params *p, const char *name, int ndim, const int64_t *shape,
                    unsigned flags, int group, int *index);
/* Allocate the four flat arrays (zeroed) once every tensor is registered. */
int glae_params_alloc(glae_params *p);
int glae_params_find(const glae_params *p, const char *name); /* -1 when absent */
float *glae_params_ptr(const glae_params *p, int index);       /* into params or buffers */
float *glae_params_grad(const glae_params *p, int index);      /* NULL for buffers */
/* Range [begin, end) in floats of one group's trainable tensors; tensors of a group are
 * registered contiguously, so a group is one range. */
int glae_params_group_range(const glae_params *p, int group, size_t *begin, size_t *end);
/* Move the four arrays (initialised on the host) to ctx's device: allocate there, copy,
 * free the host arrays. A no-op for a CPU ctx. On failure the host arrays are kept. */
int glae_params_to_device(glae_params *p, glae_ctx *ctx);
void glae_params_free(glae_params *p);

#endif
