/* Activation arena: one allocation per batch shape. A model first "plans" with a
 * measuring arena (base == NULL: allocations only count bytes), then allocates exactly
 * that much and replays the same allocation sequence. */
#ifndef GLAE_ARENA_H
#define GLAE_ARENA_H

#include <stddef.h>

#include "core/ctx.h"

#define GLAE_ALIGN 64

typedef struct {
    char *base;  /* NULL while measuring */
    size_t size; /* capacity in bytes */
    size_t used; /* bytes handed out since the last reset */
    size_t peak; /* largest `used` seen */
    /* a device context (ctx->device == GLAE_CUDA): base comes from ctx->dev->alloc and
     * holds device memory; NULL: host memory. Kept across free/measure. */
    glae_ctx *dev;
} glae_arena;

void glae_arena_measure(glae_arena *a); /* start a measuring pass */
int glae_arena_reserve(glae_arena *a, size_t bytes); /* (re)allocate `bytes`, zeroed */
/* Aligned bump allocation; returns NULL (with an error set) when out of space. While
 * measuring it returns a dummy non-NULL pointer that must not be dereferenced. */
void *glae_arena_alloc(glae_arena *a, size_t bytes);
void glae_arena_reset(glae_arena *a);

/* In a function returning a status with a `glae_arena *a` in scope: ptr = `count` floats
 * from the arena, or return GLAE_ERR_MEMORY (the arena has set the message). */
#define ALLOC_F(ptr, count)                                             \
    do {                                                                \
        (ptr) = glae_arena_alloc(a, (size_t)(count) * sizeof(float));   \
        if (!(ptr)) return GLAE_ERR_MEMORY;                             \
    } while (0)
/* the same for `count` bf16 values */
#define ALLOC_H(ptr, count)                                                 \
    do {                                                                    \
        (ptr) = glae_arena_alloc(a, (size_t)(count) * sizeof(glae_bf16));   \
        if (!(ptr)) return GLAE_ERR_MEMORY;                                 \
    } while (0)
void glae_arena_free(glae_arena *a);

#endif
