/*
 * ubique.h -- the ubique C API: run a model library built by `ubique build` from C or C++.
 *
 *     ubique compile model.onnx -o model.ubq
 *     ubique build model.ubq --target x86_64 -o libmodel.so     (or --target aarch64, ...)
 *     cc app.c -I"$(ubique config --include)" -ldl -o app
 *
 * A model library is ONE self-contained shared library: the compiled model, the ubique
 * native runtime (thread pool, memory planner) and the weights (embedded in the library's
 * read-only data, so there is no separate weights file). It needs no Python at run time,
 * only the C library (libc, libm, libpthread; libmvec for x86-64 code using vector math).
 *
 * This header is all an application needs: include it and link with -ldl. The functions
 * below are defined here (static inline); ubq_model_load opens the library with dlopen and
 * finds the one symbol every model library exports, `ubq_model_library` (a ubq_model_api:
 * a magic number, the API version, and the functions that do the work inside the library).
 * Applications include ubique.h only, never ubique_runtime.h (the kernel ABI).
 *
 * Usage
 * -----
 *     ubq_model *m;
 *     if (ubq_model_load("./libmodel.so", &m) != UBQ_OK) { puts(ubq_last_error()); return 1; }
 *     int64_t in_shape[4] = {1, 1, 28, 28}, out_shape[2];
 *     ubq_tensor in = {pixels, UBQ_F32, 4, in_shape};
 *     ubq_model_output_shape(m, &in, 1, 0, out_shape);            // {1, 10}
 *     ubq_tensor out = {scores, UBQ_F32, 2, out_shape};
 *     if (ubq_model_run(m, &in, 1, &out, 1) != UBQ_OK) puts(ubq_last_error());
 *     ubq_model_free(m);
 *
 * Errors: every function that can fail returns UBQ_OK (0) or a nonzero UBQ_ERR_* code, and
 * ubq_last_error() then gives a message naming what was wrong (which input, which axis, the
 * expected and actual values) and how to fix it. Bad arguments never crash: NULL pointers,
 * out-of-range indices, wrong counts, dtypes, ranks and shapes are all reported.
 *
 * Shapes: a model's input and output shapes are fixed sizes or symbolic sizes (named, such
 * as "batch", or expressions over names, such as "2*seq"; declared with
 * `ubique compile/build --dims batch=1:64`). ubq_model_input_info reports a symbolic axis as
 * -1 in `shape` and its expression in `dims`. A run binds every named size from the input
 * shapes, checks it against the range the model was built for, and checks every input
 * axis. Outputs are allocated by the caller: ubq_model_output_shape computes output i's
 * shape for given inputs (for a model without symbolic sizes it equals output_info's
 * shape), and ubq_model_run checks each output's dtype and shape against it before
 * anything runs. Buffers are dense, row-major, in the machine's byte order; the run reads
 * and writes exactly prod(shape) * ubq_dtype_size(dtype) bytes of each. A buffer of zero
 * elements may be NULL. Output buffers must not overlap each other or the inputs.
 *
 * Threads: each loaded model owns a thread pool (default: UBIQUE_NUM_THREADS if set, else
 * the number of online CPUs; change it with ubq_model_set_num_threads). ubq_model_run may be
 * called from several threads at once on the same model (each run gets its own scratch
 * memory; the threads share the model's pool). ubq_model_set_num_threads and ubq_model_free
 * must not run concurrently with any other call on the same model. Results do not depend on
 * the thread count.
 *
 * ubq_last_error() is per thread and reports the most recent failed call of that thread
 * (it is not cleared by calls that succeed).
 */
#ifndef UBIQUE_H
#define UBIQUE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- element types (the dtypes of ubique: f32 f64 f16 bf16 i8 u8 i32 i64 bool) ---------- */
typedef enum ubq_dtype {
    UBQ_DTYPE_INVALID = 0,
    UBQ_F32 = 1,
    UBQ_F64 = 2,
    UBQ_F16 = 3,
    UBQ_BF16 = 4,
    UBQ_I8 = 5,
    UBQ_U8 = 6,
    UBQ_I32 = 7,
    UBQ_I64 = 8,
    UBQ_BOOL = 9 /* one byte per element, 0 or 1 */
} ubq_dtype;

/* Bytes per element (0 for an unknown dtype). */
static inline int32_t ubq_dtype_size(int32_t dtype) {
    static const int32_t sizes[10] = {0, 4, 8, 2, 2, 1, 1, 4, 8, 1};
    return dtype >= 0 && dtype < 10 ? sizes[dtype] : 0;
}

/* The dtype's short name as ubique prints it ("f32", ...), or "invalid". */
static inline const char *ubq_dtype_name(int32_t dtype) {
    static const char *const names[10] = {"invalid", "f32", "f64", "f16", "bf16",
                                          "i8", "u8", "i32", "i64", "bool"};
    return dtype >= 0 && dtype < 10 ? names[dtype] : "invalid";
}

/* ---- status codes (1..3 are shared with the native runtime) ------------------------------ */
#ifndef UBQ_OK
#define UBQ_OK 0
#endif
#ifndef UBQ_ERR_INVALID_ARGUMENT
#define UBQ_ERR_INVALID_ARGUMENT 1 /* a NULL pointer, an index out of range, a bad thread count */
#endif
#ifndef UBQ_ERR_OUT_OF_MEMORY
#define UBQ_ERR_OUT_OF_MEMORY 2
#endif
#ifndef UBQ_ERR_THREAD
#define UBQ_ERR_THREAD 3 /* the thread pool could not be created */
#endif
#define UBQ_ERR_NOT_FOUND 4   /* the library file does not exist or cannot be read */
#define UBQ_ERR_NOT_A_MODEL 5 /* not a shared library for this machine, or not a model library */
#define UBQ_ERR_VERSION 6     /* the library was built for another version of this API */
#define UBQ_ERR_COUNT 7       /* wrong number of inputs or outputs */
#define UBQ_ERR_DTYPE 8       /* an input or output has the wrong dtype */
#define UBQ_ERR_SHAPE 9       /* wrong rank or size, a symbolic size outside its range */
/* Other nonzero codes (16 and above) come from the model's code itself. */

/* ---- types ----------------------------------------------------------------------------- */

/* A tensor handed to a run: `rank` sizes at `shape` (may be NULL when rank is 0). */
typedef struct ubq_tensor {
    void *data;
    int32_t dtype; /* a ubq_dtype */
    int32_t rank;
    const int64_t *shape;
} ubq_tensor;

/* What a model expects of one input or output. The pointers stay valid until the model is
   freed. */
typedef struct ubq_tensor_info {
    const char *name;
    int32_t dtype;           /* a ubq_dtype */
    int32_t rank;
    const int64_t *shape;    /* rank sizes; -1 where the size is symbolic */
    const char *const *dims; /* rank entries: NULL for a fixed size, else the symbolic size
                                as an expression over named sizes ("batch", "2*seq") */
} ubq_tensor_info;

/* A named symbolic size and the range the model was built for. */
typedef struct ubq_symbol_info {
    const char *name;
    int64_t min;
    int64_t max; /* -1: no upper bound */
} ubq_symbol_info;

typedef struct ubq_model ubq_model;

/* ---- the API ----------------------------------------------------------------------------
 *
 * int32_t ubq_model_load(const char *path, ubq_model **out);
 *     Loads a model library built by `ubique build` (a path without '/' means the current
 *     folder, never the system's library search path). On success *out is the model; on
 *     failure *out is NULL and the code is UBQ_ERR_NOT_FOUND (no such file),
 *     UBQ_ERR_NOT_A_MODEL (not a shared library, built for another architecture, truncated,
 *     or a library that is not a ubique model), UBQ_ERR_VERSION (built for another version
 *     of this API: rebuild it with this ubique, or use the ubique.h of the ubique that
 *     built it) or UBQ_ERR_THREAD / UBQ_ERR_OUT_OF_MEMORY. A library is code, run as it is
 *     loaded: load only libraries you trust (the checks catch mistakes, not attacks).
 * void ubq_model_free(ubq_model *m);                  NULL is ignored.
 * int32_t ubq_model_num_inputs(const ubq_model *m);   -1 for a NULL model
 * int32_t ubq_model_num_outputs(const ubq_model *m);  -1 for a NULL model
 * int32_t ubq_model_input_info(const ubq_model *m, int32_t i, ubq_tensor_info *out);
 * int32_t ubq_model_output_info(const ubq_model *m, int32_t i, ubq_tensor_info *out);
 * int32_t ubq_model_num_symbols(const ubq_model *m);  named symbolic sizes; -1 for NULL
 * int32_t ubq_model_symbol_info(const ubq_model *m, int32_t i, ubq_symbol_info *out);
 * int32_t ubq_model_output_shape(const ubq_model *m, const ubq_tensor *inputs, int32_t n_in,
 *                                int32_t i, int64_t *shape);
 *     Checks the inputs (as a run does; their data is not read and may be NULL) and writes
 *     output i's shape (output_info's rank sizes) to shape.
 * int32_t ubq_model_run(ubq_model *m, const ubq_tensor *inputs, int32_t n_in,
 *                       ubq_tensor *outputs, int32_t n_out);
 *     Checks the counts, every dtype and shape (binding symbolic sizes, checking their
 *     ranges) and every output against ubq_model_output_shape, then runs the model on the
 *     model's thread pool, writing the outputs. Nothing is written when a check fails.
 * int32_t ubq_model_set_num_threads(ubq_model *m, int32_t n);  n <= 0: all online CPUs
 * int32_t ubq_model_num_threads(const ubq_model *m);           -1 for a NULL model
 * const char *ubq_last_error(void);
 *     The calling thread's message for its most recent failed call ("" if none).
 */

/* ---- what a model library exports (the ABI between this header and the library) ---------
 * `ubq_model_library`, a const ubq_model_api. `impl` is the library's own model object. */
#define UBQ_MODEL_MAGIC 0x4c45444f4d515542ull /* the bytes "UBQMODEL", little-endian */
#define UBQ_MODEL_API_VERSION 1
#define UBQ_MODEL_SYMBOL "ubq_model_library"

typedef struct ubq_model_api {
    uint64_t magic;             /* UBQ_MODEL_MAGIC */
    int32_t api_version;        /* UBQ_MODEL_API_VERSION: the layout of everything below */
    int32_t kernel_abi_version; /* UBQ_ABI_VERSION of the runtime built into the library */
    const char *producer;       /* "ubique 0.1.0" */
    const char *triple;         /* the target the code is for */
    const char *name;           /* the model's name */
    int32_t (*create)(void **impl, int32_t num_threads);
    void (*destroy)(void *impl);
    const char *(*last_error)(void);
    int32_t (*num_inputs)(const void *impl);
    int32_t (*num_outputs)(const void *impl);
    int32_t (*input_info)(const void *impl, int32_t i, ubq_tensor_info *out);
    int32_t (*output_info)(const void *impl, int32_t i, ubq_tensor_info *out);
    int32_t (*num_symbols)(const void *impl);
    int32_t (*symbol_info)(const void *impl, int32_t i, ubq_symbol_info *out);
    int32_t (*output_shape)(const void *impl, const ubq_tensor *inputs, int32_t n_in, int32_t i,
                            int64_t *shape);
    int32_t (*run)(void *impl, const ubq_tensor *inputs, int32_t n_in, ubq_tensor *outputs,
                   int32_t n_out);
    int32_t (*set_num_threads)(void *impl, int32_t n);
    int32_t (*num_threads)(const void *impl);
} ubq_model_api;

/* ---- the loader (compiled into the application) ------------------------------------------ */
#ifndef UBQ_MODEL_LIBRARY /* defined only while building a model library */

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ubq_model { /* opaque: use the functions */
    void *handle;
    const ubq_model_api *api;
    void *impl;
};

/* One error buffer per thread for the whole program: a weak definition, so every
   translation unit that includes this header shares the same one. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((weak)) char *ubq__error_buffer(void) {
    static __thread char buffer[1024];
    return buffer;
}
#else
static char *ubq__error_buffer(void) {
    static char buffer[1024];
    return buffer;
}
#endif

static inline const char *ubq_last_error(void) { return ubq__error_buffer(); }

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 2, 3)))
#endif
static inline int32_t ubq__fail(int32_t code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ubq__error_buffer(), 1024, fmt, ap);
    va_end(ap);
    return code;
}

/* A failed call inside the library: its message becomes ours. */
static inline int32_t ubq__from_library(const ubq_model *m, int32_t code) {
    if (code != UBQ_OK) {
        const char *msg = m->api->last_error();
        snprintf(ubq__error_buffer(), 1024, "%s", msg && msg[0] ? msg : "(the model library set no message)");
    }
    return code;
}

#define UBQ__CHECK_MODEL(m, fn, bad)                                                         \
    do {                                                                                     \
        if ((m) == NULL) {                                                                   \
            ubq__fail(UBQ_ERR_INVALID_ARGUMENT, "%s: the model is NULL", fn);                  \
            return bad;                                                                      \
        }                                                                                    \
    } while (0)

/* This program's ELF machine (e_machine): model libraries must match it. */
#if defined(__x86_64__)
#define UBQ__ELF_MACHINE 62
#elif defined(__aarch64__)
#define UBQ__ELF_MACHINE 183
#elif defined(__riscv) && __riscv_xlen == 64
#define UBQ__ELF_MACHINE 243
#else
#define UBQ__ELF_MACHINE 0 /* unknown: left to dlopen */
#endif

static inline const char *ubq__machine_name(int machine) {
    switch (machine) {
    case 62: return "x86_64";
    case 183: return "aarch64";
    case 243: return "riscv64";
    case 3: return "i386";
    case 40: return "arm";
    default: return "another architecture";
    }
}

/* Little-endian unsigned integer of n bytes at p. */
static inline uint64_t ubq__le(const unsigned char *p, int n) {
    uint64_t v = 0;
    while (n-- > 0) v = (v << 8) | p[n];
    return v;
}

/* Checks an ELF file before dlopen: built for this machine, a shared library, and (for 64-bit
   little-endian files) every loadable segment inside the file -- dlopen maps a truncated
   library and the process dies of SIGBUS when it touches the missing part. */
static inline int32_t ubq__check_elf(FILE *f, const unsigned char *head, size_t got, const char *path) {
    uint64_t size, phoff, phentsize, phnum, k;
    long end;
    if (got < 20) return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s' is truncated (%d bytes)", path, (int)got);
    if (head[5] == 1 && UBQ__ELF_MACHINE != 0) { /* e_machine of a little-endian ELF */
        int machine = (int)ubq__le(head + 18, 2);
        if (machine != UBQ__ELF_MACHINE)
            return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s' is built for %s (ELF machine %d), but this program runs "
                             "on %s: build the library for this machine with `ubique build MODEL.ubq --target %s`",
                             path, ubq__machine_name(machine), machine, ubq__machine_name(UBQ__ELF_MACHINE),
                             ubq__machine_name(UBQ__ELF_MACHINE));
    }
    if (head[5] == 1 && ubq__le(head + 16, 2) != 3) /* e_type ET_DYN */
        return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s' is an ELF file but not a shared library (an object file or "
                         "executable); build a model library with `ubique build`", path);
    if (head[4] != 2 || head[5] != 1) return UBQ_OK; /* not 64-bit little-endian: left to dlopen */
    if (got < 64 || fseek(f, 0, SEEK_END) != 0 || (end = ftell(f)) < 0)
        return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s' is truncated (no complete ELF header)", path);
    size = (uint64_t)end;
    phoff = ubq__le(head + 32, 8);
    phentsize = ubq__le(head + 54, 2);
    phnum = ubq__le(head + 56, 2);
    if (phentsize < 56 || phoff > size || phnum * phentsize > size - phoff)
        return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s' is truncated or corrupt (its program headers lie outside the "
                         "file): build it again with `ubique build`", path);
    for (k = 0; k < phnum; k++) {
        unsigned char ph[56];
        uint64_t offset, filesz;
        if (fseek(f, (long)(phoff + k * phentsize), SEEK_SET) != 0 || fread(ph, 1, sizeof ph, f) != sizeof ph)
            return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s': cannot read its program headers", path);
        if (ubq__le(ph, 4) != 1) continue; /* PT_LOAD */
        offset = ubq__le(ph + 8, 8);
        filesz = ubq__le(ph + 32, 8);
        if (offset > size || filesz > size - offset)
            return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s' is truncated or corrupt (a segment of %llu bytes at offset "
                             "%llu lies past the end of the %llu-byte file): build it again with `ubique build`",
                             path, (unsigned long long)filesz, (unsigned long long)offset,
                             (unsigned long long)size);
    }
    return UBQ_OK;
}

static inline int32_t ubq_model_load(const char *path, ubq_model **out) {
    char local[4096];
    unsigned char head[64];
    size_t got;
    const char *open_path = path;
    const ubq_model_api *api;
    ubq_model *m;
    void *handle, *impl = NULL;
    FILE *f;
    int32_t status;

    if (out == NULL) return ubq__fail(UBQ_ERR_INVALID_ARGUMENT, "ubq_model_load: out is NULL");
    *out = NULL;
    if (path == NULL || path[0] == '\0')
        return ubq__fail(UBQ_ERR_INVALID_ARGUMENT, "ubq_model_load: no path given");
    f = fopen(path, "rb");
    if (f == NULL)
        return ubq__fail(UBQ_ERR_NOT_FOUND, "cannot open model library '%s': %s", path, strerror(errno));
    got = fread(head, 1, sizeof head, f);
    if (got < 4 || memcmp(head, "\177ELF", 4) != 0) {
        fclose(f);
        return ubq__fail(UBQ_ERR_NOT_A_MODEL,
                         "'%s' is not a model library (not an ELF shared library)%s; build one with "
                         "`ubique build MODEL.ubq --target TARGET -o libmodel.so`", path,
                         got >= 4 && memcmp(head, "UBQM", 4) == 0 ? " but a .ubq model file" : "");
    }
    status = ubq__check_elf(f, head, got, path);
    fclose(f);
    if (status != UBQ_OK) return status;
    if (strchr(path, '/') == NULL) { /* dlopen would search the system's library path */
        if (strlen(path) + 3 > sizeof local)
            return ubq__fail(UBQ_ERR_INVALID_ARGUMENT, "ubq_model_load: path too long: '%s'", path);
        snprintf(local, sizeof local, "./%s", path);
        open_path = local;
    }
    handle = dlopen(open_path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *why = dlerror();
        return ubq__fail(UBQ_ERR_NOT_A_MODEL, "cannot load '%s' as a shared library for this machine "
                         "(built for another target?): %s", path, why ? why : "unknown dlopen error");
    }
    api = (const ubq_model_api *)dlsym(handle, UBQ_MODEL_SYMBOL);
    if (api == NULL) {
        dlclose(handle);
        return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s' is a shared library but not a ubique model library (it "
                         "exports no %s); build one with `ubique build MODEL.ubq --target TARGET -o "
                         "libmodel.so`", path, UBQ_MODEL_SYMBOL);
    }
    if (api->magic != UBQ_MODEL_MAGIC) {
        dlclose(handle);
        return ubq__fail(UBQ_ERR_NOT_A_MODEL, "'%s' exports %s but it is not a ubique model descriptor "
                         "(wrong magic number)", path, UBQ_MODEL_SYMBOL);
    }
    if (api->api_version != UBQ_MODEL_API_VERSION) {
        int have = (int)api->api_version;
        dlclose(handle);
        return ubq__fail(UBQ_ERR_VERSION, "'%s' implements ubique model API version %d, but this ubique.h "
                         "implements version %d: rebuild the library with `ubique build` from the ubique that "
                         "provides this header (or compile against that library's ubique.h)", path, have,
                         (int)UBQ_MODEL_API_VERSION);
    }
    m = (ubq_model *)calloc(1, sizeof *m);
    if (m == NULL) {
        dlclose(handle);
        return ubq__fail(UBQ_ERR_OUT_OF_MEMORY, "ubq_model_load: out of memory");
    }
    m->handle = handle;
    m->api = api;
    status = api->create(&impl, 0);
    if (status != UBQ_OK) {
        ubq__from_library(m, status);
        free(m);
        dlclose(handle);
        return status;
    }
    m->impl = impl;
    *out = m;
    return UBQ_OK;
}

static inline void ubq_model_free(ubq_model *m) {
    if (m == NULL) return;
    m->api->destroy(m->impl);
    dlclose(m->handle);
    free(m);
}

static inline int32_t ubq_model_num_inputs(const ubq_model *m) {
    UBQ__CHECK_MODEL(m, "ubq_model_num_inputs", -1);
    return m->api->num_inputs(m->impl);
}

static inline int32_t ubq_model_num_outputs(const ubq_model *m) {
    UBQ__CHECK_MODEL(m, "ubq_model_num_outputs", -1);
    return m->api->num_outputs(m->impl);
}

static inline int32_t ubq_model_input_info(const ubq_model *m, int32_t i, ubq_tensor_info *out) {
    UBQ__CHECK_MODEL(m, "ubq_model_input_info", UBQ_ERR_INVALID_ARGUMENT);
    return ubq__from_library(m, m->api->input_info(m->impl, i, out));
}

static inline int32_t ubq_model_output_info(const ubq_model *m, int32_t i, ubq_tensor_info *out) {
    UBQ__CHECK_MODEL(m, "ubq_model_output_info", UBQ_ERR_INVALID_ARGUMENT);
    return ubq__from_library(m, m->api->output_info(m->impl, i, out));
}

static inline int32_t ubq_model_num_symbols(const ubq_model *m) {
    UBQ__CHECK_MODEL(m, "ubq_model_num_symbols", -1);
    return m->api->num_symbols(m->impl);
}

static inline int32_t ubq_model_symbol_info(const ubq_model *m, int32_t i, ubq_symbol_info *out) {
    UBQ__CHECK_MODEL(m, "ubq_model_symbol_info", UBQ_ERR_INVALID_ARGUMENT);
    return ubq__from_library(m, m->api->symbol_info(m->impl, i, out));
}

static inline int32_t ubq_model_output_shape(const ubq_model *m, const ubq_tensor *inputs, int32_t n_in,
                                             int32_t i, int64_t *shape) {
    UBQ__CHECK_MODEL(m, "ubq_model_output_shape", UBQ_ERR_INVALID_ARGUMENT);
    return ubq__from_library(m, m->api->output_shape(m->impl, inputs, n_in, i, shape));
}

static inline int32_t ubq_model_run(ubq_model *m, const ubq_tensor *inputs, int32_t n_in, ubq_tensor *outputs,
                                    int32_t n_out) {
    UBQ__CHECK_MODEL(m, "ubq_model_run", UBQ_ERR_INVALID_ARGUMENT);
    return ubq__from_library(m, m->api->run(m->impl, inputs, n_in, outputs, n_out));
}

static inline int32_t ubq_model_set_num_threads(ubq_model *m, int32_t n) {
    UBQ__CHECK_MODEL(m, "ubq_model_set_num_threads", UBQ_ERR_INVALID_ARGUMENT);
    return ubq__from_library(m, m->api->set_num_threads(m->impl, n));
}

static inline int32_t ubq_model_num_threads(const ubq_model *m) {
    UBQ__CHECK_MODEL(m, "ubq_model_num_threads", -1);
    return m->api->num_threads(m->impl);
}

#endif /* UBQ_MODEL_LIBRARY */

#ifdef __cplusplus
}
#endif

#endif /* UBIQUE_H */
