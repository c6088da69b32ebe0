/* Errors are values: every fallible function returns a glae_status and, on failure,
 * leaves a message in a thread-local buffer that the Python binding turns into an
 * exception. Library code never calls exit() or abort(). */
#ifndef GLAE_STATUS_H
#define GLAE_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    GLAE_OK = 0,
    GLAE_ERR_VALUE = 1,   /* bad argument value or shape   -> ValueError   */
    GLAE_ERR_TYPE = 2,    /* wrong dtype / kind of object  -> TypeError    */
    GLAE_ERR_MEMORY = 3,  /* allocation failed             -> MemoryError  */
    GLAE_ERR_IO = 4,      /* file missing, truncated, ...  -> OSError      */
    GLAE_ERR_RUNTIME = 5, /* anything else                 -> RuntimeError */
    GLAE_ERR_CUDA = 6     /* CUDA / cuDNN / cuBLAS failure -> RuntimeError */
} glae_status;

/* Record a printf-style message for this thread and return `code` (so callers can
 * write `return glae_fail(GLAE_ERR_VALUE, "...")`). */
int glae_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
const char *glae_last_error(void);
void glae_clear_error(void);

#ifdef __cplusplus
}
#endif

#define GLAE_TRY(expr)                  \
    do {                                \
        int glae_try_s_ = (expr);       \
        if (glae_try_s_) return glae_try_s_; \
    } while (0)

#endif
