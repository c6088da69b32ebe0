/* Loader: worker threads fill a ring of batches in order; see loader.h. */
#define _POSIX_C_SOURCE 200809L
#include "data/loader.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/status.h"

enum { SLOT_FREE = 0, SLOT_BUSY, SLOT_READY };

typedef struct {
    void *x; /* float32 or (out_u8) uint8 images */
    float *ages, *sigmas;
    int64_t *idx;
    int64_t batch; /* which batch the slot holds */
    int state, count, status;
    char msg[512];
} slot_t;

struct glae_loader {
    const uint8_t *images;
    int64_t n;
    int h, w;
    const float *ages, *sigmas;
    int64_t *order;
    uint32_t *rep;
    int64_t total, nbatches;
    int batch, size, out_u8;
    glae_aug_config cfg;
    uint64_t seed;
    uint32_t epoch;

    int nslots;
    slot_t *slots;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_ready;
    int64_t next_claim, next_take;
    int stop, failed;

    int nthreads, started;
    pthread_t *th;
};

static int fill(glae_loader *L, slot_t *s, int64_t b, glae_aug_scratch *scr) {
    int64_t first = b * L->batch;
    int count = (int)(L->total - first < L->batch ? L->total - first : L->batch);
    const size_t img_sz = (size_t)L->h * L->w * 3;
    const size_t out_bytes = (size_t)L->size * L->size * 3 * (L->out_u8 ? 1 : sizeof(float));
    s->count = count;
    for (int i = 0; i < count; i++) {
        if (__atomic_load_n(&L->stop, __ATOMIC_RELAXED)) return GLAE_OK; /* being torn down */
        int64_t idx = L->order[first + i];
        if (idx < 0 || idx >= L->n)
            return glae_fail(GLAE_ERR_VALUE, "Loader: index %lld at position %lld outside [0, %lld)",
                             (long long)idx, (long long)(first + i), (long long)L->n);
        GLAE_TRY(glae_augment_sample((char *)s->x + (size_t)i * out_bytes, L->out_u8, L->size,
                                     L->images + (size_t)idx * img_sz,
                                     L->h, L->w, &L->cfg, L->seed, L->epoch, idx, L->rep[first + i], scr));
        s->ages[i] = L->ages ? L->ages[idx] : 0.0f;
        s->sigmas[i] = L->sigmas ? L->sigmas[idx] : 0.0f;
        s->idx[i] = idx;
    }
    return GLAE_OK;
}

static void *worker(void *arg) {
    glae_loader *L = arg;
    glae_aug_scratch scr = {0};
    pthread_mutex_lock(&L->mu);
    for (;;) {
        if (__atomic_load_n(&L->stop, __ATOMIC_RELAXED)) break;
        int64_t b = L->next_claim;
        if (b >= L->nbatches) break;
        if (b >= L->next_take + L->nslots) { /* its slot still holds an untaken batch */
            pthread_cond_wait(&L->cv_work, &L->mu);
            continue;
        }
        L->next_claim++;
        slot_t *s = &L->slots[b % L->nslots];
        s->state = SLOT_BUSY;
        s->batch = b;
        pthread_mutex_unlock(&L->mu);

        glae_clear_error();
        int st = fill(L, s, b, &scr);
        s->status = st;
        if (st) {
            strncpy(s->msg, glae_last_error(), sizeof s->msg - 1);
            s->msg[sizeof s->msg - 1] = '\0';
        }

        pthread_mutex_lock(&L->mu);
        s->state = SLOT_READY;
        pthread_cond_broadcast(&L->cv_ready);
    }
    pthread_mutex_unlock(&L->mu);
    glae_aug_scratch_free(&scr);
    return NULL;
}

void glae_loader_destroy(glae_loader *L) {
    if (!L) return;
    if (L->started) {
        pthread_mutex_lock(&L->mu);
        __atomic_store_n(&L->stop, 1, __ATOMIC_RELAXED);
        pthread_cond_broadcast(&L->cv_work);
        pthread_cond_broadcast(&L->cv_ready);
        pthread_mutex_unlock(&L->mu);
        for (int t = 0; t < L->started; t++) pthread_join(L->th[t], NULL);
    }
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->cv_work);
    pthread_cond_destroy(&L->cv_ready);
    if (L->slots)
        for (int k = 0; k < L->nslots; k++) {
            free(L->slots[k].x);
            free(L->slots[k].ages);
            free(L->slots[k].sigmas);
            free(L->slots[k].idx);
        }
    free(L->slots);
    free(L->th);
    free(L->order);
    free(L->rep);
    free(L);
}

int glae_loader_create(glae_loader **out, const uint8_t *images, int64_t n, int h, int w,
                       const float *ages, const float *sigmas, const int64_t *order,
                       int64_t total, int batch, int drop_last, int size,
                       const glae_aug_config *cfg, uint64_t seed, uint32_t epoch, int nthreads,
                       int nslots, int out_u8, int shard_rank, int shard_world) {
    *out = NULL;
    if (shard_world < 1 || shard_rank < 0 || shard_rank >= shard_world)
        return glae_fail(GLAE_ERR_VALUE, "Loader: shard rank %d of %d", shard_rank, shard_world);
    if (shard_world > 1 && batch > 0 && total % ((int64_t)batch * shard_world))
        return glae_fail(GLAE_ERR_VALUE,
                         "Loader: %lld indices are not whole global batches of %d x %d ranks",
                         (long long)total, batch, shard_world);
    if (n < 0 || total < 0) return glae_fail(GLAE_ERR_VALUE, "Loader: negative size");
    if (h <= 0 || w <= 0) return glae_fail(GLAE_ERR_VALUE, "Loader: empty images (%d x %d)", h, w);
    if (batch <= 0) return glae_fail(GLAE_ERR_VALUE, "Loader: batch_size must be > 0, got %d", batch);
    if (size <= 0) return glae_fail(GLAE_ERR_VALUE, "Loader: out_size must be > 0, got %d", size);
    if (nthreads < 1 || nthreads > 256)
        return glae_fail(GLAE_ERR_VALUE, "Loader: threads must be in [1, 256], got %d", nthreads);
    if (nslots < 1 || nslots > 1024)
        return glae_fail(GLAE_ERR_VALUE, "Loader: prefetch must be in [1, 1024], got %d", nslots);
    GLAE_TRY(glae_aug_config_check(cfg));
    glae_loader *L = calloc(1, sizeof *L);
    if (!L) return glae_fail(GLAE_ERR_MEMORY, "Loader: out of memory");
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv_work, NULL);
    pthread_cond_init(&L->cv_ready, NULL);
    L->images = images; L->n = n; L->h = h; L->w = w;
    L->ages = ages; L->sigmas = sigmas;
    L->total = total; L->batch = batch; L->size = size; L->out_u8 = out_u8 != 0;
    L->cfg = *cfg; L->seed = seed; L->epoch = epoch;
    L->nbatches = drop_last ? total / batch : (total + batch - 1) / batch;
    L->nslots = nslots;
    L->nthreads = nthreads;
    const size_t out_bytes = (size_t)size * size * 3 * (out_u8 ? 1 : sizeof(float));
    L->order = malloc(sizeof(int64_t) * (size_t)(total ? total : 1));
    L->rep = calloc((size_t)(total ? total : 1), sizeof(uint32_t));
    uint32_t *cnt = calloc((size_t)(n ? n : 1), sizeof(uint32_t));
    L->slots = calloc((size_t)nslots, sizeof(slot_t));
    L->th = calloc((size_t)nthreads, sizeof(pthread_t));
    int ok = L->order && L->rep && cnt && L->slots && L->th;
    for (int k = 0; ok && k < nslots; k++) {
        slot_t *s = &L->slots[k];
        s->x = malloc(out_bytes * (size_t)batch);
        s->ages = malloc(sizeof(float) * (size_t)batch);
        s->sigmas = malloc(sizeof(float) * (size_t)batch);
        s->idx = malloc(sizeof(int64_t) * (size_t)batch);
        s->batch = -1;
        ok = s->x && s->ages && s->sigmas && s->idx;
    }
    if (!ok) {
        free(cnt);
        glae_loader_destroy(L);
        return glae_fail(GLAE_ERR_MEMORY, "Loader: out of memory for %d batches of %d x %d x %d x 3",
                         nslots, batch, size, size);
    }
    memcpy(L->order, order, sizeof(int64_t) * (size_t)total);
    /* k-th occurrence of each index in the epoch (a bad index is reported by the worker
     * that reaches it, so batches before it are still delivered) */
    for (int64_t i = 0; i < total; i++)
        if (order[i] >= 0 && order[i] < n) L->rep[i] = cnt[order[i]]++;
    free(cnt);
    if (shard_world > 1) { /* keep this rank's part of every global batch, in order */
        const int64_t gb = (int64_t)batch * shard_world;
        int64_t k = 0;
        for (int64_t i = 0; i < total; i++)
            if ((i % gb) / batch == shard_rank) {
                L->order[k] = L->order[i];
                L->rep[k++] = L->rep[i];
            }
        L->total = total = k;
        L->nbatches = drop_last ? total / batch : (total + batch - 1) / batch;
    }
    for (int t = 0; t < nthreads; t++) {
        if (pthread_create(&L->th[t], NULL, worker, L) != 0) {
            glae_loader_destroy(L);
            return glae_fail(GLAE_ERR_RUNTIME, "Loader: could not start thread %d", t);
        }
        L->started = t + 1;
    }
    *out = L;
    return GLAE_OK;
}

int64_t glae_loader_num_batches(const glae_loader *L) { return L->nbatches; }

int glae_loader_take(glae_loader *L, int timeout_ms, int *count, const void **x,
                     const float **ages, const float **sigmas, const int64_t **indices) {
    struct timespec until;
    if (timeout_ms >= 0) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&L->mu);
    if (L->failed || L->next_take >= L->nbatches) {
        pthread_mutex_unlock(&L->mu);
        return 0;
    }
    slot_t *s = &L->slots[L->next_take % L->nslots];
    while (!(s->state == SLOT_READY && s->batch == L->next_take)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&L->cv_ready, &L->mu);
        } else if (pthread_cond_timedwait(&L->cv_ready, &L->mu, &until) == ETIMEDOUT) {
            pthread_mutex_unlock(&L->mu);
            return 2;
        }
    }
    if (s->status) {
        /* the epoch ends at the first failed batch */
        int st = s->status;
        L->failed = 1;
        __atomic_store_n(&L->stop, 1, __ATOMIC_RELAXED);
        pthread_cond_broadcast(&L->cv_work);
        pthread_mutex_unlock(&L->mu);
        glae_fail(st, "%s", s->msg);
        return -st;
    }
    pthread_mutex_unlock(&L->mu);
    *count = s->count;
    *x = s->x;
    *ages = s->ages;
    *sigmas = s->sigmas;
    *indices = s->idx;
    return 1;
}

void glae_loader_release(glae_loader *L) {
    pthread_mutex_lock(&L->mu);
    L->slots[L->next_take % L->nslots].state = SLOT_FREE;
    L->next_take++;
    pthread_cond_broadcast(&L->cv_work);
    pthread_mutex_unlock(&L->mu);
}
