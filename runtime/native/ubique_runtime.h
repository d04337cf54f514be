/*
 * ubique_runtime.h -- the ubique kernel ABI and the native runtime (thread pool, entry calls).
 *
 * THE KERNEL ABI (version UBQ_ABI_VERSION)
 * ========================================
 * This comment is the one place the ABI is documented. Every emitted kernel and every model
 * entry, on every target, is a C function of type ubq_entry_fn:
 *
 *     int32_t fn(void *const *args, const int64_t *dims, ubq_ctx *ctx);
 *
 *   args  Array of buffer pointers, one per tensor parameter, in the order of the entry's
 *         signature (recorded by the compiler next to the code). Buffers are dense, row-major,
 *         of the signature's element type. Buffers the runtime allocates are 64-byte aligned;
 *         buffers handed in by a user are only guaranteed the alignment of their element type.
 *         On GPU targets the entry is the host-side launcher with this same type and args
 *         holds device pointers.
 *   dims  Values of the signature's symbolic dimensions (named sizes such as "batch"), in
 *         the order the compiler records (its DimContract: sorted names); may be NULL when
 *         the signature has none. Every kernel of a model receives the model's whole array.
 *         Model entries whose intermediate buffers have symbolic sizes take one extra
 *         trailing args entry: an int64_t table of byte offsets into ctx->workspace, one per
 *         intermediate, planned by the runtime for the call's dims (workspace_size likewise).
 *   ctx   Never NULL. Valid only for the duration of the call; a kernel must not keep it.
 *         - ctx->parallel_for(ctx, task, closure, n) runs task(begin, end, closure) over
 *           [0, n) split into at most ctx->num_threads contiguous chunks. The chunks are a
 *           deterministic function of (n, ctx->num_threads): with c = min(n, num_threads),
 *           chunk k covers [k*q + min(k, r), (k+1)*q + min(k+1, r)) where q = n / c and
 *           r = n % c. So per-chunk partial results (reductions) are reproducible run to
 *           run. The calling thread runs chunk 0 itself; the call returns when all chunks
 *           are done and returns 0. Calling parallel_for from inside a task is allowed: it
 *           runs the same chunks serially on the calling thread.
 *         - ctx->workspace points to ctx->workspace_size bytes of 64-byte aligned scratch
 *           memory (NULL when the size is 0), owned by the runtime, not zeroed, and
 *           exclusive to this call.
 *
 *   Return 0 on success. On failure, call ubq_set_error() with a message naming what was
 *   wrong and how to fix it, then return a nonzero status. Codes 1..15 are reserved for the
 *   runtime (UBQ_ERR_*); kernels use other nonzero values.
 *
 *   Entries must be reentrant: the same entry may run concurrently on several threads, each
 *   with its own ctx. Kernels resolve ubq_set_error from this library, which the Python
 *   runtime loads with RTLD_GLOBAL (a C deployment links it).
 *
 * The task type, ubq_ctx's layout and the entry type above are the ABI; changing any of
 * them bumps UBQ_ABI_VERSION. Everything below the ABI section is the runtime's host API.
 */
#ifndef UBIQUE_RUNTIME_H
#define UBIQUE_RUNTIME_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the ABI ------------------------------------------------------------------------- */

#define UBQ_ABI_VERSION 1

typedef void (*ubq_task_fn)(int64_t begin, int64_t end, void *closure);

typedef struct ubq_ctx {
    int32_t abi_version;     /* UBQ_ABI_VERSION */
    int32_t num_threads;     /* size of the pool that parallel_for uses */
    void *pool;              /* opaque */
    /* Runs fn over [0, n) split into at most num_threads contiguous chunks
       [begin, end); the calling thread runs one chunk itself; returns when all are done.
       Chunks are a deterministic function of (n, num_threads). Returns 0. */
    int32_t (*parallel_for)(struct ubq_ctx *ctx, ubq_task_fn fn, void *closure, int64_t n);
    void *workspace;         /* scratch arena for a model entry, 64-byte aligned */
    int64_t workspace_size;
} ubq_ctx;

typedef int32_t (*ubq_entry_fn)(void *const *args, const int64_t *dims, ubq_ctx *ctx);

/* Status codes returned by the runtime itself. */
#define UBQ_OK 0
#define UBQ_ERR_INVALID_ARGUMENT 1
#define UBQ_ERR_OUT_OF_MEMORY 2
#define UBQ_ERR_THREAD 3

/* ---- errors ---------------------------------------------------------------------------- */

/* The calling thread's last error message ("" if none); valid until the thread's next
   ubq_set_error or ubq_call. */
const char *ubq_last_error(void);
/* Sets the calling thread's error message (copied; truncated to 1023 bytes). */
void ubq_set_error(const char *msg);

/* ---- thread pool ----------------------------------------------------------------------- */

typedef struct ubq_pool ubq_pool;

/* A pool of num_threads threads counting the caller, so num_threads - 1 persistent workers;
   num_threads <= 0 means the number of online CPUs. Returns NULL (and sets the error) on
   failure. One pool serves parallel_for calls from any thread, one call at a time. */
ubq_pool *ubq_pool_create(int32_t num_threads);
/* Stops and joins the workers. NULL is ignored. No parallel_for may be running on it. */
void ubq_pool_destroy(ubq_pool *pool);
int32_t ubq_pool_num_threads(const ubq_pool *pool);

/* ---- calling entries ------------------------------------------------------------------- */

/* Fills ctx for pool (NULL pool: num_threads 1, parallel_for runs serially inline). */
void ubq_ctx_init(ubq_ctx *ctx, ubq_pool *pool);

/* Calls fn(args, dims, ctx) with a ctx for pool and a workspace of workspace_size bytes,
   and returns fn's status (or a UBQ_ERR_* code if the call could not be set up). Clears the
   thread's error message first. The workspace is a per-thread cached buffer that only
   grows, so repeated calls do not allocate. */
int32_t ubq_call(ubq_entry_fn fn, void *const *args, const int64_t *dims, ubq_pool *pool,
                 int64_t workspace_size);

/* Places n intermediate buffers in one workspace (run-time memory planning for symbolic
 * sizes): buffer k has sizes[k] bytes and is live from step first[k] to step last[k].
 * Largest first (ties: earlier first use), each at the lowest 64-byte aligned offset that
 * overlaps no placed buffer live at the same time -- the rule compiler/memory_plan.py
 * applies at compile time. Writes offsets[k]; returns the workspace size in bytes, or -1
 * (with ubq_set_error) for negative sizes or lifetimes or when out of memory. */
int64_t ubq_plan_memory(int64_t n, const int64_t *sizes, const int32_t *first, const int32_t *last,
                        int64_t *offsets);

#ifdef __cplusplus
}
#endif

#endif /* UBIQUE_RUNTIME_H */
