#include "core/ctx.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/device.h"
#include "core/blas.h"
#include "core/status.h"

int glae_ctx_init(glae_ctx *ctx, glae_device device) {
    memset(ctx, 0, sizeof *ctx);
    if (device != GLAE_CPU) return glae_fail(GLAE_ERR_VALUE, "ctx: only the CPU device is built");
    ctx->device = device;
    ctx->dev = &glae_device_cpu;
    return GLAE_OK; /* nthreads 0: the process default */
}

void glae_ctx_free(glae_ctx *ctx) {
    free(ctx->scratch);
    memset(ctx, 0, sizeof *ctx);
}

float *glae_ctx_scratch(glae_ctx *ctx, size_t nfloat) {
    if (nfloat <= ctx->scratch_size) return ctx->scratch;
    free(ctx->scratch);
    size_t bytes = (nfloat * sizeof(float) + 63) / 64 * 64;
    ctx->scratch = aligned_alloc(64, bytes);
    if (!ctx->scratch) {
        ctx->scratch_size = 0;
        glae_fail(GLAE_ERR_MEMORY, "scratch: cannot allocate %zu bytes", bytes);
        return NULL;
    }
    ctx->scratch_size = nfloat;
    return ctx->scratch;
}

/* the calling thread's OpenMP count; n < 1 leaves OpenMP's default */
static void use_threads(int n) {
#ifdef _OPENMP
    if (n > 0 && omp_get_max_threads() != n) omp_set_num_threads(n);
#else
    (void)n;
#endif
}

void glae_ctx_set_threads(glae_ctx *ctx, int n) { ctx->nthreads = n >= 1 ? n : 0; }

int glae_ctx_threads(const glae_ctx *ctx) {
    return ctx->nthreads >= 1 ? ctx->nthreads : glae_get_num_threads();
}

void glae_ctx_apply_threads(const glae_ctx *ctx) { use_threads(glae_ctx_threads(ctx)); }

static _Atomic int g_threads; /* the default; 0 until set: OpenMP's default */

void glae_set_num_threads(int n) {
    if (n < 1) n = 1;
    atomic_store(&g_threads, n);
    use_threads(n);
    glae_blas_set_num_threads(1); /* glae_sgemm does the splitting: see blas.h */
}

int glae_get_num_threads(void) {
    const int n = atomic_load(&g_threads);
#ifdef _OPENMP
    return n ? n : omp_get_max_threads();
#else
    return n ? n : 1;
#endif
}

void glae_apply_num_threads(void) { use_threads(atomic_load(&g_threads)); }
