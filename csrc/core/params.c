#include "core/params.h"

#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/status.h"

int glae_params_add(glae_params *p, const char *name, int ndim, const int64_t *shape,
                    unsigned flags, int group, int *index) {
    if (p->params || p->buffers)
        return glae_fail(GLAE_ERR_RUNTIME, "params: '%s' added after allocation", name);
    if (ndim < 0 || ndim > 4) return glae_fail(GLAE_ERR_VALUE, "params: '%s' rank %d", name, ndim);
    if (strlen(name) >= GLAE_NAME_LEN)
        return glae_fail(GLAE_ERR_VALUE, "params: name too long: '%s'", name);
    if (glae_params_find(p, name) >= 0)
        return glae_fail(GLAE_ERR_VALUE, "params: duplicate name '%s'", name);
    if (p->count == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        glae_param_info *info = realloc(p->info, (size_t)cap * sizeof *info);
        if (!info) return glae_fail(GLAE_ERR_MEMORY, "params: out of memory");
        p->info = info;
        p->cap = cap;
    }
    glae_param_info *t = &p->info[p->count];
    memset(t, 0, sizeof *t);
    strcpy(t->name, name);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return glae_fail(GLAE_ERR_VALUE, "params: '%s' negative dim", name);
        t->shape[i] = shape[i];
        t->numel *= shape[i];
    }
    t->flags = flags;
    t->group = group;
    /* every tensor starts on a GLAE_PARAM_ALIGN boundary: cuDNN and cuBLAS take the
     * weights straight from the flat buffer, and their vectorised (tensor-core) kernels
     * want 16-byte aligned pointers; a 101-float bias would misalign all that follows */
    size_t *end = (flags & GLAE_P_BUFFER) ? &p->n_buffers : &p->n;
    t->offset = (*end + GLAE_PARAM_ALIGN - 1) / GLAE_PARAM_ALIGN * GLAE_PARAM_ALIGN;
    *end = t->offset + (size_t)t->numel;
    if (index) *index = p->count;
    p->count++;
    return GLAE_OK;
}

static float *zalloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

int glae_params_alloc(glae_params *p) {
    p->params = zalloc(p->n);
    p->grads = zalloc(p->n);
    p->momentum = zalloc(p->n);
    p->buffers = zalloc(p->n_buffers);
    if (!p->params || !p->grads || !p->momentum || !p->buffers)
        return glae_fail(GLAE_ERR_MEMORY, "params: cannot allocate %zu floats", 3 * p->n);
    return GLAE_OK;
}

int glae_params_find(const glae_params *p, const char *name) {
    for (int i = 0; i < p->count; i++)
        if (strcmp(p->info[i].name, name) == 0) return i;
    return -1;
}

float *glae_params_ptr(const glae_params *p, int i) {
    const glae_param_info *t = &p->info[i];
    return ((t->flags & GLAE_P_BUFFER) ? p->buffers : p->params) + t->offset;
}

float *glae_params_grad(const glae_params *p, int i) {
    const glae_param_info *t = &p->info[i];
    return (t->flags & GLAE_P_BUFFER) ? NULL : p->grads + t->offset;
}

int glae_params_group_range(const glae_params *p, int group, size_t *begin, size_t *end) {
    size_t b = (size_t)-1, e = 0;
    for (int i = 0; i < p->count; i++) {
        const glae_param_info *t = &p->info[i];
        if (t->group != group || (t->flags & GLAE_P_BUFFER)) continue;
        if (t->offset < b) b = t->offset;
        if (t->offset + (size_t)t->numel > e) e = t->offset + (size_t)t->numel;
    }
    if (b == (size_t)-1) b = e = 0;
    *begin = b;
    *end = e;
    return GLAE_OK;
}

int glae_params_to_device(glae_params *p, glae_ctx *ctx) {
    if (ctx->device == GLAE_CPU || p->dev) return GLAE_OK;
    float **arr[4] = {&p->params, &p->grads, &p->momentum, &p->buffers};
    const size_t len[4] = {p->n, p->n, p->n, p->n_buffers};
    void *d[4] = {NULL, NULL, NULL, NULL};
    int st = GLAE_OK;
    for (int i = 0; i < 4 && !st; i++) {
        st = ctx->dev->alloc(ctx, &d[i], len[i] * sizeof(float));
        if (!st) st = ctx->dev->copy(ctx, d[i], *arr[i], len[i] * sizeof(float), GLAE_COPY_H2D);
    }
    if (!st) st = ctx->dev->sync(ctx); /* the host arrays are freed next */
    if (st) {
        for (int i = 0; i < 4; i++)
            if (d[i]) ctx->dev->free(ctx, d[i]);
        return st;
    }
    for (int i = 0; i < 4; i++) {
        free(*arr[i]);
        *arr[i] = d[i];
    }
    p->dev = ctx;
    return GLAE_OK;
}

void glae_params_free(glae_params *p) {
    free(p->info);
    if (p->dev) {
        float *arr[4] = {p->params, p->grads, p->momentum, p->buffers};
        for (int i = 0; i < 4; i++)
            if (arr[i]) p->dev->dev->free(p->dev, arr[i]);
    } else {
        free(p->params);
        free(p->grads);
        free(p->momentum);
        free(p->buffers);
    }
    memset(p, 0, sizeof *p);
}
