/* The batch loader: C worker threads (pthreads) augment one epoch's index sequence into a
 * ring of preallocated batches (docs/data-pipeline.md, "Loader").
 *
 * Workers claim batches in order (batch k goes to ring slot k % nslots and may start once
 * batch k - nslots has been taken); each worker fills its batch sample by sample with
 * glae_augment_sample, whose randomness is keyed by (seed, epoch, index, repeat), so the
 * batches do not depend on the number of threads. The consumer takes batches strictly in
 * order; glae_loader_take waits without any lock the caller holds. */
#ifndef GLAE_LOADER_H
#define GLAE_LOADER_H

#include <stdint.h>

#include "data/augment.h"

typedef struct glae_loader glae_loader;

/* images (n, h, w, 3) uint8, ages and sigmas (n,) float32 (either may be NULL: zeros);
 * they must outlive the loader. order (total,) is copied. The batches hold float32 images
 * normalised with cfg->norm, or (out_u8) the augmented uint8 pixels before it, a quarter of
 * the bytes to hand over and send to a GPU (the model normalises: glae_normalise_u8). */
/* shard_world > 1 (data parallelism): `order` is the whole epoch in global batches of
 * batch * shard_world samples (total a multiple of it); this loader delivers rank
 * shard_rank's consecutive `batch` samples of each, augmented exactly as a one-process
 * loader would (the repeat counts are those of the whole epoch). shard_world 1: all. */
int glae_loader_create(glae_loader **out, const uint8_t *images, int64_t n, int h, int w,
                       const float *ages, const float *sigmas, const int64_t *order,
                       int64_t total, int batch, int drop_last, int size,
                       const glae_aug_config *cfg, uint64_t seed, uint32_t epoch, int nthreads,
                       int nslots, int out_u8, int shard_rank, int shard_world);
int64_t glae_loader_num_batches(const glae_loader *L);

/* Wait up to timeout_ms (< 0: forever) for the next batch. Returns 1 when a batch is ready
 * (then *count, and pointers into the ring valid until glae_loader_release), 0 at the
 * end of the epoch, 2 on timeout, or -status when the worker failed on this batch (the
 * message is in glae_last_error of the calling thread). */
int glae_loader_take(glae_loader *L, int timeout_ms, int *count, const void **x,
                     const float **ages, const float **sigmas, const int64_t **indices);
/* Hand the slot of the batch just taken back to the workers. */
void glae_loader_release(glae_loader *L);

/* Stop and join the workers, free everything (NULL is fine). */
void glae_loader_destroy(glae_loader *L);

#endif
