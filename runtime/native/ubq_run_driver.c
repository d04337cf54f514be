/*
 * ubq_run_driver.c -- runs one compiled ubique model library on raw binary files.
 *
 * The small native runner behind runtime/emulator.py: it is built for a target with that
 * target's C compiler, linked with the native runtime, and run natively or under an
 * emulator (qemu-aarch64), so code compiled for another architecture can be checked here.
 *
 * usage: ubq_run_driver LIBRARY ENTRY WORKSPACE_BYTES THREADS DIMS ARG...
 *   LIBRARY          shared library holding the entry (loaded with dlopen)
 *   ENTRY            the entry's symbol, an ubq_entry_fn (see ubique_runtime.h)
 *   WORKSPACE_BYTES  scratch bytes the entry needs (ubq_call allocates them)
 *   THREADS          thread pool size; 0 means all CPUs
 *   DIMS             symbolic dimension values, comma-separated, or "-" for none
 *   ARG              one per entry argument, in the entry's order:
 *                      in:PATH         a buffer holding the whole file (an input, a weight,
 *                                      the offsets table of symbolic intermediates)
 *                      out:BYTES:PATH  a buffer of BYTES, written to PATH after the call
 * Files hold raw, dense, row-major elements in the target's byte order. Empty buffers are
 * passed as NULL, as the Python runtime does.
 *
 * Exit status: 0 success; 1 bad usage, a file or the library could not be read or written;
 * 2 the entry (or ubq_call) returned a nonzero status. Every failure prints one line to stderr.
 */
#define _POSIX_C_SOURCE 200809L

#include "ubique_runtime.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 64

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "ubq_run_driver: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

static int parse_i64(const char *text, int64_t *out) {
    char *end;
    long long v;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < 0) return 0;
    *out = (int64_t)v;
    return 1;
}

/* A 64-byte aligned buffer of `size` bytes (NULL for 0 bytes); 0 on allocation failure. */
static int alloc_buffer(int64_t size, void **out) {
    *out = NULL;
    if (size == 0) return 1;
    return posix_memalign(out, ALIGN, (size_t)size) == 0;
}

static int read_file(const char *path, void **buf) {
    FILE *f = fopen(path, "rb");
    long size;
    int ok;
    if (f == NULL) return fail("cannot open input", path);
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return fail("cannot size input", path);
    }
    if (!alloc_buffer(size, buf)) {
        fclose(f);
        return fail("out of memory reading", path);
    }
    ok = size == 0 || fread(*buf, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    return ok ? 0 : fail("cannot read input", path);
}

static int write_file(const char *path, const void *buf, int64_t size) {
    FILE *f = fopen(path, "wb");
    int ok;
    if (f == NULL) return fail("cannot create output", path);
    ok = size == 0 || fwrite(buf, 1, (size_t)size, f) == (size_t)size;
    ok = (fclose(f) == 0) && ok;
    return ok ? 0 : fail("cannot write output", path);
}

int main(int argc, char **argv) {
    int64_t workspace, threads, dims[256], out_bytes[1024];
    const char *out_path[1024];
    void *args[1024];
    int ndims = 0, nargs = argc - 6, k, status = 0;
    void *library;
    ubq_entry_fn entry;
    ubq_pool *pool;

    if (argc < 6 || !parse_i64(argv[3], &workspace) || !parse_i64(argv[4], &threads))
        return fail("usage: ubq_run_driver LIBRARY ENTRY WORKSPACE_BYTES THREADS DIMS ARG...", NULL);
    if (nargs > 1024) return fail("too many arguments (at most 1024)", NULL);

    if (strcmp(argv[5], "-") != 0) { /* DIMS: "3,17,..." */
        char *text = argv[5], *tok, *save = NULL;
        for (tok = strtok_r(text, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (ndims == 256 || !parse_i64(tok, &dims[ndims])) return fail("bad DIMS", argv[5]);
            ndims++;
        }
    }

    for (k = 0; k < nargs; k++) {
        char *spec = argv[6 + k];
        out_path[k] = NULL;
        if (strncmp(spec, "in:", 3) == 0) {
            if (read_file(spec + 3, &args[k])) return 1;
        } else if (strncmp(spec, "out:", 4) == 0) {
            char *colon = strchr(spec + 4, ':');
            if (colon == NULL) return fail("bad output argument (want out:BYTES:PATH)", spec);
            *colon = '\0';
            if (!parse_i64(spec + 4, &out_bytes[k])) return fail("bad output size", spec + 4);
            if (!alloc_buffer(out_bytes[k], &args[k])) return fail("out of memory for output", colon + 1);
            out_path[k] = colon + 1;
        } else {
            return fail("bad argument (want in:PATH or out:BYTES:PATH)", spec);
        }
    }

    library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) return fail("cannot load the library", dlerror());
    *(void **)(&entry) = dlsym(library, argv[2]);
    if (entry == NULL) return fail("the library has no entry", argv[2]);

    pool = ubq_pool_create((int32_t)threads);
    if (pool == NULL) return fail("cannot create a thread pool", ubq_last_error());
    status = ubq_call(entry, args, ndims ? dims : NULL, pool, workspace);
    if (status != 0) {
        fprintf(stderr, "ubq_run_driver: entry %s failed with status %d: %s\n", argv[2], (int)status,
                ubq_last_error()[0] ? ubq_last_error() : "no error message was set");
        return 2;
    }
    ubq_pool_destroy(pool);

    for (k = 0; k < nargs; k++)
        if (out_path[k] != NULL && write_file(out_path[k], args[k], out_bytes[k])) return 1;
    for (k = 0; k < nargs; k++) free(args[k]);
    return 0;
}
