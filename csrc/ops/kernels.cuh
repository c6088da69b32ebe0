/* Shared by the .cu files of the CUDA twins: launch helpers, warp reductions and the
 * deterministic column reduction used by batch norm, bias gradients and PReLU. Static
 * definitions only (each .cu gets its own copy; there are few). */
#ifndef GLAE_KERNELS_CUH
#define GLAE_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "core/cuda.h"
#include "ops/ops_cuda.h"

#define GLAE_BLOCK 256
/* grid-stride loops: enough blocks to fill any current GPU, never more than needed */
static inline unsigned glae_grid(int64_t n) {
    int64_t g = (n + GLAE_BLOCK - 1) / GLAE_BLOCK;
    if (g < 1) g = 1;
    return (unsigned)(g > 65536 ? 65536 : g);
}
/* one warp per row, 8 warps per block */
static inline unsigned glae_warp_grid(int64_t rows) {
    int64_t g = (rows + 7) / 8;
    if (g < 1) g = 1;
    return (unsigned)(g > 65536 ? 65536 : g);
}

#define GLAE_STREAM(ctx, fn, var)                                    \
    cudaStream_t var;                                                \
    do {                                                             \
        glae_cuda_ctx *c_ = glae_cuda_of((ctx), (fn));               \
        if (!c_) return GLAE_ERR_VALUE;                              \
        var = c_->stream;                                            \
    } while (0)
#define GLAE_LAUNCHED() GLAE_CUDA_CHECK(cudaGetLastError())

#define GLAE_FOR(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)
/* warp-per-row loop: blockDim = (32, 8) */
#define GLAE_FOR_ROWS(r, rows) \
    for (int64_t r = (int64_t)blockIdx.x * 8 + threadIdx.y; r < (rows); r += (int64_t)gridDim.x * 8)

__device__ __forceinline__ double glae_warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v; /* every lane holds the sum, added in the same (butterfly) order */
}
__device__ __forceinline__ float glae_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- column reduction over (rows, C) row-major, two sums per column ------------------
 * Pass 1 (glae_colsum_kernel): block (32 columns x 8 row lanes) over a chunk of rows
 * writes part[(chunk * C + j) * 2 + q]; pass 2 is the consumer's per-column kernel adding
 * the chunks in order (glae_col_total). Fixed chunking: deterministic results. */
enum {
    GLAE_COL_X_X2 = 0,  /* q0: x,  q1: x^2                   (BN forward)   */
    GLAE_COL_DY_DYX = 1, /* q0: dy, q1: dy * (x - mean[j])    (BN backward)  */
    GLAE_COL_SUM = 2,   /* q0: x                              (bias grads)   */
    GLAE_COL_SUM_BF16 = 3, /* q0: x, x bf16                   (bf16 bias)    */
    GLAE_COL_PRELU = 4,  /* q0: x <= 0 ? dy * x : 0           (PReLU slope)  */
    GLAE_COL_X_X2_BF16 = 5, /* GLAE_COL_X_X2 on bf16 x          (bf16 BN forward) */
    /* g = mask ? dy [mask > 0] : dy on bf16 tensors; q0: g, q1: g * (x - mean[j])
     * (the fused bf16 BN + ReLU backward, bf16.cu) */
    GLAE_COL_DY_DYX_BF16 = 6
};

__global__ static void glae_colsum_kernel(double *part, const void *xv, const void *dyv,
                                          const void *maskv, const float *mean, int64_t rows,
                                          int c, int64_t chunk, int what) {
    __shared__ double s0[8][33], s1[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.y * chunk;
    const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
    const float *x = (const float *)xv, *dy = (const float *)dyv;
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)xv, *dyb = (const __nv_bfloat16 *)dyv;
    const __nv_bfloat16 *mb = (const __nv_bfloat16 *)maskv;
    double a = 0.0, b = 0.0;
    if (j < c) {
        const double m =
            what == GLAE_COL_DY_DYX || what == GLAE_COL_DY_DYX_BF16 ? (double)mean[j] : 0.0;
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const int64_t i = r * c + j;
            switch (what) {
            case GLAE_COL_X_X2: {
                const double v = x[i];
                a += v;
                b += v * v;
            } break;
            case GLAE_COL_DY_DYX: {
                const double d = dy[i];
                a += d;
                b += d * ((double)x[i] - m);
            } break;
            case GLAE_COL_SUM: a += x[i]; break;
            case GLAE_COL_SUM_BF16: a += __bfloat162float(xb[i]); break;
            case GLAE_COL_X_X2_BF16: {
                const double v = __bfloat162float(xb[i]);
                a += v;
                b += v * v;
            } break;
            case GLAE_COL_DY_DYX_BF16: {
                const double g = (mb && !(__bfloat162float(mb[i]) > 0.0f)) ? 0.0
                                                                           : (double)__bfloat162float(dyb[i]);
                a += g;
                b += g * ((double)__bfloat162float(xb[i]) - m);
            } break;
            default:
                if (!(x[i] > 0.0f)) a += (double)dy[i] * x[i];
                break;
            }
        }
    }
    s0[threadIdx.y][threadIdx.x] = a;
    s1[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && j < c) {
        for (int t = 1; t < 8; t++) {
            a += s0[t][threadIdx.x];
            b += s1[t][threadIdx.x];
        }
        double *p = part + ((int64_t)blockIdx.y * c + j) * 2;
        p[0] = a;
        p[1] = b;
    }
}

/* number of row chunks for (rows, c): about 2048 blocks in all, at least 64 rows each */
static inline int glae_col_chunks(int64_t rows, int c, int64_t *chunk) {
    int64_t tiles = (c + 31) / 32;
    int64_t nch = (2048 + tiles - 1) / tiles;
    int64_t most = (rows + 63) / 64;
    if (nch > most) nch = most;
    if (nch < 1) nch = 1;
    if (nch > 65535) nch = 65535;
    *chunk = (rows + nch - 1) / nch;
    if (*chunk < 1) *chunk = 1;
    return (int)((rows + *chunk - 1) / *chunk);
}

/* bytes of `part` glae_colsum needs */
static inline size_t glae_col_bytes(int64_t rows, int c) {
    int64_t chunk;
    return (size_t)glae_col_chunks(rows, c, &chunk) * (size_t)c * 2 * sizeof(double);
}

/* pass 1; *nchunks for the consumer. mask: the bf16 ReLU mask of GLAE_COL_DY_DYX_BF16 */
static inline int glae_colsum_masked(cudaStream_t st, double *part, int *nchunks, const void *x,
                                     const void *dy, const void *mask, const float *mean,
                                     int64_t rows, int c, int what) {
    int64_t chunk;
    const int nch = glae_col_chunks(rows, c, &chunk);
    *nchunks = nch;
    dim3 grid((unsigned)((c + 31) / 32), (unsigned)nch), block(32, 8);
    glae_colsum_kernel<<<grid, block, 0, st>>>(part, x, dy, mask, mean, rows, c, chunk, what);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

static inline int glae_colsum(cudaStream_t st, double *part, int *nchunks, const void *x,
                              const float *dy, const float *mean, int64_t rows, int c, int what) {
    return glae_colsum_masked(st, part, nchunks, x, dy, NULL, mean, rows, c, what);
}

__device__ __forceinline__ double glae_col_total(const double *part, int nchunks, int c, int j,
                                                 int q) {
    double s = 0.0;
    for (int b = 0; b < nchunks; b++) s += part[((int64_t)b * c + j) * 2 + q];
    return s;
}

/* dst[j] += sum of column j (q0) */
__global__ static void glae_col_add_kernel(float *dst, const double *part, int nchunks, int c) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < c) dst[j] += (float)glae_col_total(part, nchunks, c, j, 0);
}

/* ---- batch-norm per-channel kernels (norm.cu, bf16.cu): after a column reduction --- */

__global__ static void glae_bn_stats_k(float *save_mean, float *save_invstd, float *rm, float *rv,
                                  const double *part, int nch, int c, int64_t rows,
                                  float momentum, float eps) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    const double s = glae_col_total(part, nch, c, j, 0), s2 = glae_col_total(part, nch, c, j, 1);
    const double mean = s / (double)rows;
    double ss = s2 - s * mean; /* centred sum of squares */
    if (ss < 0.0) ss = 0.0;
    const double biased = ss / (double)rows;
    /* PyTorch: running_var is fed the UNBIASED variance */
    if (rm) rm[j] = (float)((1.0 - momentum) * rm[j] + momentum * mean);
    if (rv) rv[j] = (float)((1.0 - momentum) * rv[j] + momentum * (ss / (double)(rows - 1)));
    save_mean[j] = (float)mean;
    save_invstd[j] = (float)(1.0 / sqrt(biased + (double)eps));
}

__global__ static void glae_bn_eval_stats_k(float *save_mean, float *save_invstd, const float *rm,
                                       const float *rv, int c, float eps) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    save_mean[j] = rm[j];
    save_invstd[j] = (float)(1.0 / sqrt((double)rv[j] + (double)eps));
}

/* The BN forwards' statistics (float32 and bf16 twins): from the column sums `part`
 * (nch chunks) in training, else from the running statistics (part NULL). */
static inline int glae_bn_stats(cudaStream_t st, float *save_mean, float *save_invstd,
                                float *running_mean, float *running_var, const double *part,
                                int nch, int c, int64_t rows, float momentum, float eps) {
    const unsigned cb = (unsigned)((c + 255) / 256);
    if (part)
        glae_bn_stats_k<<<cb, 256, 0, st>>>(save_mean, save_invstd, running_mean, running_var,
                                            part, nch, c, rows, momentum, eps);
    else
        glae_bn_eval_stats_k<<<cb, 256, 0, st>>>(save_mean, save_invstd, running_mean,
                                                 running_var, c, eps);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* coef[j] = (a, k1, k2) with dx = dy * a + (x - mean) * k1 + k2 (see norm.c) */
__global__ static void glae_bn_bwd_coef_k(float *coef, float *dgamma, float *dbeta, const double *part,
                                     int nch, int c, int64_t rows, const float *invstd,
                                     const float *gamma, int training) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    const double sdy = glae_col_total(part, nch, c, j, 0), sdyx = glae_col_total(part, nch, c, j, 1);
    const double inv = invstd[j], g = gamma ? gamma[j] : 1.0, a = g * inv;
    if (dgamma) dgamma[j] += (float)(sdyx * inv);
    if (dbeta) dbeta[j] += (float)sdy;
    coef[3 * j] = (float)a;
    coef[3 * j + 1] = training ? (float)(-a * inv * inv * sdyx / (double)rows) : 0.0f;
    coef[3 * j + 2] = training ? (float)(-a * sdy / (double)rows) : 0.0f;
}

static inline size_t glae_align256(size_t b) { return (b + 255) & ~(size_t)255; }
/* 128-bit vector loads and stores need it */
static inline int glae_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

#endif
