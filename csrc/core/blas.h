/* The BLAS we link: OpenBLAS from the scipy-openblas32 wheel, whose symbols carry a
 * `scipy_` prefix. Everything else calls these wrappers, so a different BLAS is a change
 * here only. Row-major throughout.
 *
 * One thread pool: OpenBLAS runs single-threaded and glae_sgemm splits the product across
 * the OpenMP threads itself. Two pools (OpenMP for our loops, OpenBLAS's own for GEMM)
 * spun against each other on a 2-core machine: ~19% of a ResNet-18 step went to
 * OpenBLAS's thread server, and far more when another process held a core. */
#ifndef GLAE_BLAS_H
#define GLAE_BLAS_H

#include <cblas.h>

/* C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, split over the rows of C
 * (or its columns when there are few rows) across the calling thread's OpenMP count: the
 * ctx->nthreads its caller's entry applied (ctx.h), the count of the op's own loops, so
 * it takes no context. Safe to call inside an OpenMP parallel region (it then runs on the
 * calling thread). */
void glae_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* The same product on the calling thread only. */
static inline void glae_sgemm_serial(int trans_a, int trans_b, int m, int n, int k, float alpha,
                                     const float *a, int lda, const float *b, int ldb, float beta,
                                     float *c, int ldc) {
    scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                      trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta,
                      c, ldc);
}

static inline void glae_blas_set_num_threads(int n) { scipy_openblas_set_num_threads(n); }

#endif
