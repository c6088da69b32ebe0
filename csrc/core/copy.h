/* Big host copies on several threads: a float32 batch of 256 images at 224 px is 154 MB,
 * ~15 ms for one core, a sizeable part of a GPU training step (the Loader's hand-over and
 * the async step's copy into pinned memory each make one). */
#ifndef GLAE_COPY_H
#define GLAE_COPY_H

#include <stddef.h>

/* memcpy; from 32 MB on, in 4 MB pieces over the OpenMP threads */
void glae_memcpy_big(void *dst, const void *src, size_t bytes);

#endif
