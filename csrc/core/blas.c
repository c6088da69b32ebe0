#include "core/blas.h"

#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* below this many multiply-adds a product is not worth splitting */
#define SPLIT_MIN_WORK (1 << 20)
/* a thread's share must keep OpenBLAS's micro-kernels busy */
#define SPLIT_MIN_ROWS 32
#define SPLIT_MIN_COLS 64

void glae_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                const float *b, int ldb, float beta, float *c, int ldc) {
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) nt = omp_get_max_threads(); /* the applied ctx->nthreads */
#endif
    if (nt <= 1 || (int64_t)m * n * k < SPLIT_MIN_WORK) {
        glae_sgemm_serial(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    const int by_rows = m >= nt * SPLIT_MIN_ROWS || m >= n;
    const int extent = by_rows ? m : n;
    const int min_part = by_rows ? SPLIT_MIN_ROWS : SPLIT_MIN_COLS;
    if (extent < 2 * min_part) {
        glae_sgemm_serial(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    if (nt > extent / min_part) nt = extent / min_part;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), parts = omp_get_num_threads();
#else
        const int t = 0, parts = 1;
#endif
        /* contiguous, near-equal shares; the same split for a given size and thread count */
        const int lo = (int)((int64_t)extent * t / parts), hi = (int)((int64_t)extent * (t + 1) / parts);
        if (hi > lo) {
            if (by_rows) /* rows of C = rows of op(A) */
                glae_sgemm_serial(ta, tb, hi - lo, n, k, alpha,
                                  ta ? a + lo : a + (int64_t)lo * lda, lda, b, ldb, beta,
                                  c + (int64_t)lo * ldc, ldc);
            else /* columns of C = columns of op(B) */
                glae_sgemm_serial(ta, tb, m, hi - lo, k, alpha, a, lda,
                                  tb ? b + (int64_t)lo * ldb : b + lo, ldb, beta, c + lo, ldc);
        }
    }
}
