/* Big host copies on several threads (copy.h). */
#include "core/copy.h"

#include <string.h>

void glae_memcpy_big(void *dst, const void *src, size_t bytes) {
    const size_t piece = (size_t)4 << 20;
    const long long n = (long long)((bytes + piece - 1) / piece);
#pragma omp parallel for schedule(static) if (bytes >= ((size_t)32 << 20))
    for (long long i = 0; i < n; i++) {
        const size_t off = (size_t)i * piece, len = bytes - off < piece ? bytes - off : piece;
        memcpy((char *)dst + off, (const char *)src + off, len);
    }
}
