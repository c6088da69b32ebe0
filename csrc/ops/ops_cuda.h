/* The CUDA twins of the CPU layers (ops.h, loss.h, route.h, optim.h): the same
 * signatures with a `_cuda` suffix, every pointer a device pointer, ctx a CUDA context
 * (core/cuda_ctx.h). They validate sizes and arguments like the CPU versions, queue their
 * work on ctx's compute stream and return without waiting; values that only the data
 * can reveal (a NaN age, a negative probability, an argmax outside the image) are not
 * checked on the GPU, where a check would cost a device-to-host round trip.
 * Only built with the CUDA backend (GLAE_WITH_CUDA). See docs/cuda.md. */
#ifndef GLAE_OPS_CUDA_H
#define GLAE_OPS_CUDA_H

#include "core/cuda_ctx.h" /* first: under nvcc it includes the C++-aware CUDA headers */

#ifdef __cplusplus
extern "C" { /* the CPU headers below have no extern "C" of their own */
#endif

#include "ops/backend.h"

/* glae_<op>_cuda for every op of the table, declared with the type of its CPU reference:
 * a twin whose definition differs from the CPU signature does not compile */
#define GLAE_DECLARE_TWIN_(op) GLAE_TYPEOF(glae_##op) glae_##op##_cuda;
GLAE_OPS(GLAE_DECLARE_TWIN_)
#undef GLAE_DECLARE_TWIN_

#ifdef __cplusplus
}
#endif

#endif
