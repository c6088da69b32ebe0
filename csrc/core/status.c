#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char glae_msg[1024];

int glae_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(glae_msg, sizeof glae_msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *glae_last_error(void) { return glae_msg[0] ? glae_msg : "unknown error"; }

void glae_clear_error(void) { glae_msg[0] = '\0'; }
