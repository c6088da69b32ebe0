/* The backend op table: one function pointer per op, typed from its CPU declaration (a
 * leading ctx everywhere). The slots, both tables (backend.c) and the twins' declarations
 * (ops_cuda.h) are generated from the families' op lists, so an op is named once. Model code
 * (nn/resnet.c, head.c, model.c) calls every op through ctx->ops, so the same
 * orchestration runs on the CPU table (the readable reference kernels) or on the CUDA
 * table (the `_cuda` twins, device pointers). Host code in the model never loops over
 * activations itself: such loops are ops here (fill, flatten_nchw, avg2). */
#ifndef GLAE_BACKEND_H
#define GLAE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/ctx.h"
#include "core/device.h"
#include "ops/amsoftmax.h"
#include "ops/dwconv.h"
#include "ops/fused.h"
#include "ops/loss.h"
#include "ops/ops.h"
#include "ops/optim.h"
#include "ops/route.h"

/* the type of an expression: the table's slots take their types from the CPU declarations */
#ifdef __cplusplus
#define GLAE_TYPEOF(x) decltype(x)
#else
#define GLAE_TYPEOF(x) __typeof__(x)
#endif

/* every op of the table, family by family (each family header lists its own) */
#define GLAE_OPS(X)                                                                       \
    GLAE_OPS_LAYERS(X) GLAE_OPS_DWCONV(X) GLAE_OPS_LOSS(X) GLAE_OPS_ROUTE(X) GLAE_OPS_OPTIM(X) \
    GLAE_OPS_AMSOFTMAX(X) GLAE_OPS_FUSED(X)

typedef struct glae_backend {
    const char *name; /* "cpu" or "cuda" */
#define GLAE_OP_SLOT_(op) GLAE_TYPEOF(glae_##op) *op;
    GLAE_OPS(GLAE_OP_SLOT_)
#undef GLAE_OP_SLOT_
} glae_backend;

extern const glae_backend glae_backend_cpu;
#ifdef GLAE_WITH_CUDA
extern const glae_backend glae_backend_cuda;
#endif
#ifdef GLAE_WITH_ONEDNN
/* the reference table with oneDNN primitives where they pay (ops/onednn.h) */
extern const glae_backend glae_backend_onednn;
#endif

/* The CPU's backends: the readable reference kernels (the definition every backend is
 * tested against) or oneDNN's primitives (built when setup.py finds oneDNN). */
enum { GLAE_CPU_REFERENCE = 0, GLAE_CPU_ONEDNN = 1 };
/* 1 when the build has the oneDNN backend */
int glae_onednn_built(void);

/* The one initialiser of a context for the layers above ops: the core context of `device`
 * (its memory table, threads; for GLAE_CUDA the streams and handles on GPU `cuda_device`
 * with math mode `math`) and the op table of that device. Close with glae_ctx_close. */
int glae_ctx_open(glae_ctx *ctx, glae_device device, int cuda_device, int math);
/* The same with the CPU backend chosen (GLAE_CPU_REFERENCE or GLAE_CPU_ONEDNN; ignored for
 * CUDA); glae_ctx_open is this with the reference. */
int glae_ctx_open_backend(glae_ctx *ctx, glae_device device, int cuda_device, int math,
                          int cpu_backend);
void glae_ctx_close(glae_ctx *ctx);

#endif
