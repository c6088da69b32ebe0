#include "core/arena.h"

#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "core/device.h"
#include "core/status.h"

static size_t round_up(size_t x) { return (x + GLAE_ALIGN - 1) / GLAE_ALIGN * GLAE_ALIGN; }

void glae_arena_measure(glae_arena *a) {
    glae_arena_free(a);
    a->base = NULL;
    a->size = (size_t)-1;
}

int glae_arena_reserve(glae_arena *a, size_t bytes) {
    glae_arena_free(a);
    bytes = round_up(bytes ? bytes : GLAE_ALIGN);
    if (a->dev) { /* device memory: cudaMalloc aligns to 256 bytes, the table zeroes it */
        void *p = NULL;
        GLAE_TRY(a->dev->dev->alloc(a->dev, &p, bytes));
        a->base = p;
        a->size = bytes;
        return GLAE_OK;
    }
    a->base = aligned_alloc(GLAE_ALIGN, bytes);
    if (!a->base) return glae_fail(GLAE_ERR_MEMORY, "arena: cannot allocate %zu bytes", bytes);
    memset(a->base, 0, bytes);
    a->size = bytes;
    return GLAE_OK;
}

void *glae_arena_alloc(glae_arena *a, size_t bytes) {
    size_t need = round_up(bytes);
    if (a->used + need > a->size) {
        glae_fail(GLAE_ERR_MEMORY, "arena: %zu bytes requested, %zu of %zu used", bytes, a->used,
                  a->size);
        return NULL;
    }
    void *p = a->base ? a->base + a->used : (void *)(uintptr_t)GLAE_ALIGN;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

void glae_arena_reset(glae_arena *a) { a->used = 0; }

void glae_arena_free(glae_arena *a) {
    if (a->dev) {
        if (a->base) a->dev->dev->free(a->dev, a->base);
    } else {
        free(a->base);
    }
    a->base = NULL;
    a->size = 0;
    a->used = 0;
    a->peak = 0;
}
