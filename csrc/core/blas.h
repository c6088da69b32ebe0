/* The BLAS we link: OpenBLAS from the scipy-openblas32 wheel, whose symbols carry a
 * `scipy_` prefix. Everything else calls these wrappers, so a different BLAS is a
 * change to this header only. Row-major throughout. */
#ifndef GLAE_BLAS_H
#define GLAE_BLAS_H

#include <cblas.h>

/* C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C */
static inline void glae_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
                              const float *a, int lda, const float *b, int ldb, float beta,
                              float *c, int ldc) {
    scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                      trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta,
                      c, ldc);
}

static inline void glae_blas_set_num_threads(int n) { scipy_openblas_set_num_threads(n); }

#endif
