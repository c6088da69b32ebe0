/* The CUDA twin of linear.c: linear through cuBLAS. Same signatures with `_cuda`, same
 * semantics (the CPU file is the definition). */
#include <cublas_v2.h>

#include "ops/kernels.cuh"

/* ---- linear (cuBLAS, row-major through the column-major transpose identity) ------------
 * A row-major (m x n) matrix is the column-major (n x m) one, so C = A B^T becomes
 * C^T = B A^T in cuBLAS terms: no copies, only swapped operands. */

/* The GEMMs are the heads', which run in float32 under bf16 mixed precision too
 * (docs/precision.md, like the CPU definition): only TF32 mode lets them use tensor cores. */
static cublasComputeType_t gemm_compute(const glae_cuda_ctx *c) {
    return c->math == GLAE_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

/* column-major C (m x n) = alpha op(A) op(B) + beta C, all float32 */
static int gemm(glae_cuda_ctx *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                const float *a, int lda, const float *b, int ldb, float beta, float *cm, int ldc) {
    const float alpha = 1.0f;
    GLAE_CUBLAS_CHECK(cublasGemmEx(c->cublas, ta, tb, m, n, k, &alpha, a, CUDA_R_32F, lda, b,
                                   CUDA_R_32F, ldb, &beta, cm, CUDA_R_32F, ldc, gemm_compute(c),
                                   CUBLAS_GEMM_DEFAULT));
    return GLAE_OK;
}

__global__ static void fill_rows_k(float *out, const float *bias, int64_t total, int c) {
    GLAE_FOR(i, total) out[i] = bias ? bias[i % c] : 0.0f;
}

static int linear_sizes(const char *fn, int n, int in_f, int out_f) {
    if (n < 0 || in_f < 0 || out_f < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (n %d, in %d, out %d)", fn, n, in_f, out_f);
    return GLAE_OK;
}

extern "C" int glae_linear_forward_cuda(glae_ctx *ctx, float *out, const float *in,
                                        const float *weight, const float *bias, int n, int in_f,
                                        int out_f) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "linear_forward_cuda");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(linear_sizes("linear_forward_cuda", n, in_f, out_f));
    if (n == 0 || out_f == 0) return GLAE_OK;
    const int64_t total = (int64_t)n * out_f;
    fill_rows_k<<<glae_grid(total), GLAE_BLOCK, 0, c->stream>>>(out, bias, total, out_f);
    GLAE_LAUNCHED();
    if (in_f == 0) return GLAE_OK;
    /* out^T (OUT x N) = W (OUT x IN) in^T (IN x N) + out^T */
    return gemm(c, CUBLAS_OP_T, CUBLAS_OP_N, out_f, n, in_f, weight, in_f, in, in_f, 1.0f, out, out_f);
}

extern "C" int glae_linear_backward_cuda(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                                         const float *dout, const float *in, const float *weight,
                                         int n, int in_f, int out_f) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "linear_backward_cuda");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(linear_sizes("linear_backward_cuda", n, in_f, out_f));
    if (din && n > 0 && in_f > 0) {
        if (out_f == 0)
            GLAE_CUDA_CHECK(cudaMemsetAsync(din, 0, sizeof(float) * (size_t)n * in_f, c->stream));
        else /* din^T (IN x N) = W^T (IN x OUT) dout^T (OUT x N) */
            GLAE_TRY(gemm(c, CUBLAS_OP_N, CUBLAS_OP_N, in_f, n, out_f, weight, in_f, dout, out_f,
                          0.0f, din, in_f));
    }
    if (dweight && n > 0 && in_f > 0 && out_f > 0) /* dW^T (IN x OUT) += in^T (IN x N) dout (N x OUT) */
        GLAE_TRY(gemm(c, CUBLAS_OP_N, CUBLAS_OP_T, in_f, out_f, n, in, in_f, dout, out_f, 1.0f,
                      dweight, in_f));
    if (dbias && n > 0 && out_f > 0) {
        double *part;
        int nch;
        GLAE_TRY(glae_cuda_workspace(ctx, glae_col_bytes(n, out_f), (void **)&part));
        GLAE_TRY(glae_colsum(c->stream, part, &nch, dout, NULL, NULL, n, out_f, GLAE_COL_SUM));
        glae_col_add_kernel<<<(out_f + 255) / 256, 256, 0, c->stream>>>(dbias, part, nch, out_f);
        GLAE_LAUNCHED();
    }
    return GLAE_OK;
}
