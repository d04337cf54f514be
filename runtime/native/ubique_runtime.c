/*
 * ubique_runtime.c -- the native runtime: thread pool, parallel_for, entry calls, errors.
 * The ABI it implements is documented in ubique_runtime.h.
 */
#define _POSIX_C_SOURCE 200809L

#include "ubique_runtime.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define UBQ_TLS _Thread_local
#else
#define UBQ_TLS __thread
#endif

#define UBQ_ERROR_CAP 1024
#define UBQ_MAX_THREADS 4096
#define UBQ_WORKSPACE_ALIGN 64

/* ---- errors ---------------------------------------------------------------------------- */

static UBQ_TLS char tls_error[UBQ_ERROR_CAP];

const char *ubq_last_error(void) { return tls_error; }

void ubq_set_error(const char *msg) {
    if (msg == NULL) msg = "(null error message)";
    strncpy(tls_error, msg, UBQ_ERROR_CAP - 1);
    tls_error[UBQ_ERROR_CAP - 1] = '\0';
}

/* ---- thread pool ----------------------------------------------------------------------- */

/* Nonzero while this thread runs a task; a parallel_for issued then runs inline, because the
   pool is busy with the outer call and waiting for it would deadlock. */
static UBQ_TLS int tls_in_task;

/* Bumped in a forked child: pools made before the fork have no workers there, so they run
   everything inline and are freed without joining. */
static volatile uint32_t fork_epoch;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { fork_epoch++; }
static void register_fork_handler(void) { pthread_atfork(NULL, NULL, on_fork_child); }

typedef struct worker_arg {
    ubq_pool *pool;
    int32_t index; /* 1..num_threads-1; chunk 0 belongs to the caller */
} worker_arg;

struct ubq_pool {
    int32_t num_threads; /* counting the calling thread */
    uint32_t epoch;      /* fork_epoch at creation */
    pthread_t *threads;
    worker_arg *args;
    int32_t started;        /* workers successfully created */
    pthread_mutex_t submit; /* one parallel_for at a time from any number of callers */
    pthread_mutex_t mu;     /* guards the job fields, shutdown and caller_waiting */
    pthread_cond_t wake;    /* generation changed or shutdown */
    pthread_cond_t done;    /* pending reached 0 */
    /* Bumped once per job under mu. Also read without mu (atomically) by spinning workers,
       which then take mu to read the job. */
    uint64_t generation;
    int32_t pending; /* atomic: worker chunks of the current job not yet finished */
    int shutdown;
    int caller_waiting; /* the caller sleeps on `done` */
    ubq_task_fn fn;
    void *closure;
    int64_t n;
    int32_t chunks;
};

static void chunk_range(int64_t n, int32_t chunks, int32_t k, int64_t *begin, int64_t *end) {
    int64_t q = n / chunks, r = n % chunks;
    *begin = k * q + (k < r ? k : r);
    *end = *begin + q + (k < r ? 1 : 0);
}

static void run_serial(ubq_task_fn fn, void *closure, int64_t n, int32_t chunks) {
    int32_t k;
    for (k = 0; k < chunks; k++) {
        int64_t b, e;
        chunk_range(n, chunks, k, &b, &e);
        fn(b, e, closure);
    }
}

/* Waking a sleeping thread costs tens of microseconds, more than many kernels take, and
   models run kernels back to back. So waiters first spin for up to UBQ_SPIN_NS, then sleep
   on a condition variable. The spin yields the CPU now and then, to stay cheap when there
   are more threads than cores. */
#define UBQ_SPIN_NS 200000

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spins until *p != old (returns 1) or the spin budget is spent (returns 0). */
static int spin_while_u64(const uint64_t *p, uint64_t old) {
    int64_t deadline = now_ns() + UBQ_SPIN_NS;
    for (;;) {
        int i;
        for (i = 0; i < 256; i++) {
            if (__atomic_load_n(p, __ATOMIC_ACQUIRE) != old) return 1;
            cpu_relax();
        }
        if (now_ns() > deadline) return 0;
        sched_yield();
    }
}

static int spin_while_positive(const int32_t *p) {
    int64_t deadline = now_ns() + UBQ_SPIN_NS;
    for (;;) {
        int i;
        for (i = 0; i < 256; i++) {
            if (__atomic_load_n(p, __ATOMIC_ACQUIRE) <= 0) return 1;
            cpu_relax();
        }
        if (now_ns() > deadline) return 0;
        sched_yield();
    }
}

static void *worker_main(void *p) {
    worker_arg *arg = (worker_arg *)p;
    ubq_pool *pool = arg->pool;
    uint64_t seen = 0;
    tls_in_task = 1; /* workers only ever run tasks */
    for (;;) {
        ubq_task_fn fn = NULL;
        void *closure = NULL;
        int64_t b = 0, e = 0;

        spin_while_u64(&pool->generation, seen);
        pthread_mutex_lock(&pool->mu);
        while (!pool->shutdown && __atomic_load_n(&pool->generation, __ATOMIC_RELAXED) == seen)
            pthread_cond_wait(&pool->wake, &pool->mu);
        if (pool->shutdown) {
            pthread_mutex_unlock(&pool->mu);
            return NULL;
        }
        /* Reading the job under mu gives this generation's job even if this worker lagged
           behind (it had no chunk in the previous one). */
        seen = pool->generation;
        if (arg->index < pool->chunks) {
            fn = pool->fn;
            closure = pool->closure;
            chunk_range(pool->n, pool->chunks, arg->index, &b, &e);
        }
        pthread_mutex_unlock(&pool->mu);
        if (fn == NULL) continue;

        fn(b, e, closure);
        if (__atomic_sub_fetch(&pool->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool->mu);
            if (pool->caller_waiting) pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mu);
        }
    }
}

static int32_t pool_parallel_for(ubq_ctx *ctx, ubq_task_fn fn, void *closure, int64_t n) {
    ubq_pool *pool = (ubq_pool *)ctx->pool;
    int32_t threads = ctx->num_threads, chunks;
    if (n <= 0) return UBQ_OK;
    if (pool == NULL || threads < 1) threads = 1;
    if (pool != NULL && threads > pool->num_threads) threads = pool->num_threads;
    chunks = n < threads ? (int32_t)n : threads;
    if (chunks == 1) {
        fn(0, n, closure);
        return UBQ_OK;
    }
    if (tls_in_task || pool->epoch != fork_epoch) {
        run_serial(fn, closure, n, chunks);
        return UBQ_OK;
    }

    pthread_mutex_lock(&pool->submit);
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->closure = closure;
    pool->n = n;
    pool->chunks = chunks;
    __atomic_store_n(&pool->pending, chunks - 1, __ATOMIC_RELAXED);
    __atomic_store_n(&pool->generation, pool->generation + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);

    {
        int64_t b, e;
        chunk_range(n, chunks, 0, &b, &e);
        tls_in_task = 1;
        fn(b, e, closure);
        tls_in_task = 0;
    }

    if (!spin_while_positive(&pool->pending)) {
        pthread_mutex_lock(&pool->mu);
        pool->caller_waiting = 1;
        while (__atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE) > 0)
            pthread_cond_wait(&pool->done, &pool->mu);
        pool->caller_waiting = 0;
        pthread_mutex_unlock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->submit);
    return UBQ_OK;
}

static void pool_stop_workers(ubq_pool *pool) {
    int32_t i;
    pthread_mutex_lock(&pool->mu);
    pool->shutdown = 1;
    __atomic_store_n(&pool->generation, pool->generation + 1, __ATOMIC_RELEASE); /* end spins */
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    for (i = 0; i < pool->started; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mu);
    pthread_mutex_destroy(&pool->submit);
}

ubq_pool *ubq_pool_create(int32_t num_threads) {
    ubq_pool *pool;
    sigset_t all, old;
    int32_t i, workers;
    char msg[128];

    if (num_threads <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        num_threads = online > 0 ? (int32_t)(online < UBQ_MAX_THREADS ? online : UBQ_MAX_THREADS)
                                 : 1;
    }
    if (num_threads > UBQ_MAX_THREADS) {
        snprintf(msg, sizeof msg, "ubq_pool_create: %d threads requested, at most %d allowed",
                 (int)num_threads, UBQ_MAX_THREADS);
        ubq_set_error(msg);
        return NULL;
    }
    pthread_once(&fork_once, register_fork_handler);

    workers = num_threads - 1;
    pool = (ubq_pool *)calloc(1, sizeof *pool);
    if (pool == NULL) goto oom;
    pool->num_threads = num_threads;
    pool->epoch = fork_epoch;
    if (workers > 0) {
        pool->threads = (pthread_t *)calloc((size_t)workers, sizeof *pool->threads);
        pool->args = (worker_arg *)calloc((size_t)workers, sizeof *pool->args);
        if (pool->threads == NULL || pool->args == NULL) goto oom;
    }
    pthread_mutex_init(&pool->submit, NULL);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);

    /* Workers inherit a fully blocked signal mask, so signals (Ctrl-C) reach the host's
       own threads (for Python, the main thread) rather than a pool worker. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (i = 0; i < workers; i++) {
        int rc;
        pool->args[i].pool = pool;
        pool->args[i].index = i + 1;
        rc = pthread_create(&pool->threads[i], NULL, worker_main, &pool->args[i]);
        if (rc != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            snprintf(msg, sizeof msg, "ubq_pool_create: could not start worker %d of %d "
                     "(error %d); try fewer threads", (int)(i + 1), (int)workers, rc);
            pool_stop_workers(pool);
            free(pool->args);
            free(pool->threads);
            free(pool);
            ubq_set_error(msg);
            return NULL;
        }
        pool->started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pool;

oom:
    if (pool != NULL) {
        free(pool->args);
        free(pool->threads);
        free(pool);
    }
    ubq_set_error("ubq_pool_create: out of memory");
    return NULL;
}

void ubq_pool_destroy(ubq_pool *pool) {
    if (pool == NULL) return;
    if (pool->epoch == fork_epoch) pool_stop_workers(pool);
    free(pool->args);
    free(pool->threads);
    free(pool);
}

int32_t ubq_pool_num_threads(const ubq_pool *pool) { return pool ? pool->num_threads : 1; }

/* ---- calling entries ------------------------------------------------------------------- */

void ubq_ctx_init(ubq_ctx *ctx, ubq_pool *pool) {
    ctx->abi_version = UBQ_ABI_VERSION;
    ctx->num_threads = pool ? pool->num_threads : 1;
    ctx->pool = pool;
    ctx->parallel_for = pool_parallel_for;
    ctx->workspace = NULL;
    ctx->workspace_size = 0;
}

/* Each thread keeps one workspace buffer that only grows. A thread-specific key owns it so
   it is freed when the thread exits. `busy` covers an entry that itself calls ubq_call on
   the same thread: the inner call gets a buffer of its own. */
typedef struct workspace_cache {
    void *ptr;
    int64_t capacity;
    int busy;
} workspace_cache;

static UBQ_TLS workspace_cache tls_workspace;
static pthread_key_t workspace_key;
static pthread_once_t workspace_once = PTHREAD_ONCE_INIT;
static void make_workspace_key(void) { pthread_key_create(&workspace_key, free); }

static void *alloc_aligned(int64_t size) {
    void *p = NULL;
    if ((uint64_t)size > (uint64_t)SIZE_MAX) return NULL;
    if (posix_memalign(&p, UBQ_WORKSPACE_ALIGN, (size_t)size) != 0) return NULL;
    return p;
}

static int32_t workspace_oom(int64_t size) {
    char msg[128];
    snprintf(msg, sizeof msg, "ubq_call: cannot allocate a workspace of %lld bytes",
             (long long)size);
    ubq_set_error(msg);
    return UBQ_ERR_OUT_OF_MEMORY;
}

int32_t ubq_call(ubq_entry_fn fn, void *const *args, const int64_t *dims, ubq_pool *pool,
                 int64_t workspace_size) {
    ubq_ctx ctx;
    int32_t status;
    void *own = NULL; /* a nested call's private workspace */

    tls_error[0] = '\0';
    if (fn == NULL) {
        ubq_set_error("ubq_call: entry function pointer is NULL");
        return UBQ_ERR_INVALID_ARGUMENT;
    }
    if (workspace_size < 0) {
        ubq_set_error("ubq_call: workspace_size is negative");
        return UBQ_ERR_INVALID_ARGUMENT;
    }
    ubq_ctx_init(&ctx, pool);
    if (workspace_size == 0) return fn(args, dims, &ctx);

    if (tls_workspace.busy) {
        own = alloc_aligned(workspace_size);
        if (own == NULL) return workspace_oom(workspace_size);
        ctx.workspace = own;
    } else {
        if (tls_workspace.capacity < workspace_size) {
            void *grown = alloc_aligned(workspace_size);
            if (grown == NULL) return workspace_oom(workspace_size);
            pthread_once(&workspace_once, make_workspace_key);
            free(tls_workspace.ptr);
            tls_workspace.ptr = grown;
            tls_workspace.capacity = workspace_size;
            pthread_setspecific(workspace_key, grown);
        }
        tls_workspace.busy = 1;
        ctx.workspace = tls_workspace.ptr;
    }
    ctx.workspace_size = workspace_size;

    status = fn(args, dims, &ctx);

    if (own != NULL)
        free(own);
    else
        tls_workspace.busy = 0;
    return status;
}


/* ---- run-time memory planning ------------------------------------------------------------ */
typedef struct plan_item {
    int64_t raw;  /* bytes asked for: the sort key */
    int64_t size; /* rounded up to the alignment: the space taken */
    int32_t first, last;
    int64_t index;
} plan_item;

static int plan_order(const void *pa, const void *pb) {
    const plan_item *a = pa, *b = pb;
    if (a->raw != b->raw) return a->raw > b->raw ? -1 : 1;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    return a->index < b->index ? -1 : (a->index > b->index);
}

static int span_order(const void *pa, const void *pb) {
    const int64_t *a = pa, *b = pb; /* (offset, end) pairs by offset, then end */
    if (a[0] != b[0]) return a[0] < b[0] ? -1 : 1;
    return a[1] < b[1] ? -1 : (a[1] > b[1]);
}

int64_t ubq_plan_memory(int64_t n, const int64_t *sizes, const int32_t *first, const int32_t *last,
                        int64_t *offsets) {
    plan_item *items;
    int64_t *placed, *clash, total = 0;
    int64_t k, j, count = 0;
    if (n <= 0) return 0;
    items = malloc((size_t)n * sizeof *items);
    placed = malloc((size_t)n * 4 * sizeof *placed); /* (offset, end, first, last) per placed */
    clash = malloc((size_t)n * 2 * sizeof *clash);
    if (!items || !placed || !clash) {
        free(items); free(placed); free(clash);
        ubq_set_error("ubq_plan_memory: out of memory");
        return -1;
    }
    for (k = 0; k < n; k++) {
        if (sizes[k] < 0 || first[k] < 0 || last[k] < first[k]) {
            free(items); free(placed); free(clash);
            ubq_set_error("ubq_plan_memory: negative size or lifetime (are the dims in range?)");
            return -1;
        }
        items[k].raw = sizes[k];
        items[k].size = sizes[k] > 0 ? sizes[k] : 1;
        items[k].size = (items[k].size + UBQ_WORKSPACE_ALIGN - 1) / UBQ_WORKSPACE_ALIGN * UBQ_WORKSPACE_ALIGN;
        items[k].first = first[k];
        items[k].last = last[k];
        items[k].index = k;
    }
    qsort(items, (size_t)n, sizeof *items, plan_order);
    for (k = 0; k < n; k++) {
        const plan_item *it = &items[k];
        int64_t m = 0, offset = 0;
        for (j = 0; j < count; j++) {
            const int64_t *p = &placed[4 * j];
            if (!(p[3] < it->first || it->last < p[2])) {
                clash[2 * m] = p[0];
                clash[2 * m + 1] = p[1];
                m++;
            }
        }
        qsort(clash, (size_t)m, 2 * sizeof *clash, span_order);
        for (j = 0; j < m; j++) {
            if (offset + it->size <= clash[2 * j]) break;
            if (clash[2 * j + 1] > offset) offset = clash[2 * j + 1];
        }
        offsets[it->index] = offset;
        placed[4 * count] = offset;
        placed[4 * count + 1] = offset + it->size;
        placed[4 * count + 2] = it->first;
        placed[4 * count + 3] = it->last;
        count++;
        if (offset + it->size > total) total = offset + it->size;
    }
    free(items); free(placed); free(clash);
    return total;
}
