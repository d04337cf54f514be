/*
 * run_model.c -- run any model library built by `ubique build` on raw input files.
 *
 *     ./run_model libmodel.so in0.bin 2x3x224x224 [in1.bin SHAPE1 ...] -o OUTDIR
 *
 * libmodel.so  a model library (`ubique build model.ubq --target x86_64 -o libmodel.so`)
 * inK.bin      input K as raw values (little-endian, row-major) of the dtype the model declares
 *              for it (ubq_model_input_info), in the model's input order
 * SHAPEK       its shape: sizes joined by 'x' ("2x3x224x224", "7"); "-" for a scalar
 * OUTDIR       an existing folder: output K is written to OUTDIR/out<K>.bin as raw values
 *
 * Prints one line per output ("out0: f32[2, 1000] -> OUTDIR/out0.bin"). On failure it prints
 * one line on stderr (the C API's message from ubq_last_error) and exits with status 1.
 * Needs only ubique.h (from `ubique config --include`) and -ldl; no Python.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ubique.h"

#define MAX_RANK 16

/* Parses "2x3x224x224" (or "-": rank 0) into shape; returns the rank, -1 if malformed. */
static int parse_shape(const char *text, int64_t *shape) {
    int rank = 0;
    if (strcmp(text, "-") == 0) return 0;
    for (;;) {
        char *end;
        long long v = strtoll(text, &end, 10);
        if (end == text || v < 0 || rank == MAX_RANK) return -1;
        shape[rank++] = v;
        if (*end == '\0') return rank;
        if (*end != 'x') return -1;
        text = end + 1;
    }
}

/* prod(shape) * size, or -1 when it overflows. */
static int64_t num_bytes(const int64_t *shape, int rank, int64_t size) {
    int k;
    for (k = 0; k < rank; k++) {
        if (shape[k] != 0 && size > INT64_MAX / shape[k]) return -1;
        size *= shape[k];
    }
    return size;
}

/* Reads exactly `bytes` bytes of `path` into a new buffer (an error if the size differs). */
static void *read_file(const char *path, int64_t bytes) {
    FILE *f = fopen(path, "rb");
    void *data = NULL;
    long size = -1;
    if (f != NULL && fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (f == NULL || size < 0) {
        fprintf(stderr, "run_model: cannot read %s\n", path);
    } else if ((int64_t)size != bytes) {
        fprintf(stderr, "run_model: %s holds %ld bytes; the given shape and dtype need %lld\n", path, size,
                (long long)bytes);
    } else if ((data = malloc(bytes > 0 ? (size_t)bytes : 1)) == NULL) {
        fprintf(stderr, "run_model: out of memory\n");
    } else if (fseek(f, 0, SEEK_SET) != 0 || fread(data, 1, (size_t)bytes, f) != (size_t)bytes) {
        fprintf(stderr, "run_model: cannot read %s\n", path);
        free(data);
        data = NULL;
    }
    if (f != NULL) fclose(f);
    return data;
}

int main(int argc, char **argv) {
    ubq_model *model = NULL;
    ubq_tensor *ins = NULL, *outs = NULL;
    int64_t(*in_shapes)[MAX_RANK] = NULL, (*out_shapes)[MAX_RANK] = NULL;
    const char *outdir = NULL;
    int32_t n_in, n_out, k, status = 1;
    int n_args = 0;

    if (argc >= 4 && strcmp(argv[argc - 2], "-o") == 0) {
        outdir = argv[argc - 1];
        n_args = argc - 4; /* the input files and shapes between LIB and -o */
    }
    if (outdir == NULL || n_args % 2 != 0) {
        fprintf(stderr, "usage: run_model LIB.so IN0.bin SHAPE0 [IN1.bin SHAPE1 ...] -o OUTDIR\n");
        return 1;
    }
    if (ubq_model_load(argv[1], &model) != UBQ_OK) {
        fprintf(stderr, "run_model: cannot load the model: %s\n", ubq_last_error());
        return 1;
    }
    n_in = ubq_model_num_inputs(model);
    n_out = ubq_model_num_outputs(model);
    if (n_args / 2 != n_in) {
        fprintf(stderr, "run_model: the model has %d input(s); %d were given\n", (int)n_in, n_args / 2);
        goto done;
    }
    ins = calloc((size_t)n_in + 1, sizeof *ins);
    in_shapes = calloc((size_t)n_in + 1, sizeof *in_shapes);
    outs = calloc((size_t)n_out + 1, sizeof *outs);
    out_shapes = calloc((size_t)n_out + 1, sizeof *out_shapes);
    if (ins == NULL || in_shapes == NULL || outs == NULL || out_shapes == NULL) {
        fprintf(stderr, "run_model: out of memory\n");
        goto done;
    }

    /* The inputs: dtype from the model, shape from the command line, data from the file. */
    for (k = 0; k < n_in; k++) {
        const char *path = argv[2 + 2 * k], *shape_text = argv[3 + 2 * k];
        ubq_tensor_info info;
        int rank = parse_shape(shape_text, in_shapes[k]);
        int64_t bytes;
        ubq_model_input_info(model, k, &info);
        bytes = rank < 0 ? -1 : num_bytes(in_shapes[k], rank, ubq_dtype_size(info.dtype));
        if (bytes < 0) {
            fprintf(stderr, "run_model: input '%s': bad shape '%s' (expected sizes joined by 'x', e.g. 2x3x224x224)\n",
                    info.name, shape_text);
            goto done;
        }
        ins[k].dtype = info.dtype;
        ins[k].rank = rank;
        ins[k].shape = in_shapes[k];
        if ((ins[k].data = read_file(path, bytes)) == NULL) goto done;
    }

    /* The outputs: shapes from the inputs, buffers allocated here. */
    for (k = 0; k < n_out; k++) {
        ubq_tensor_info info;
        int64_t bytes;
        ubq_model_output_info(model, k, &info);
        if (info.rank > MAX_RANK) {
            fprintf(stderr, "run_model: output '%s' has rank %d (at most %d here)\n", info.name, (int)info.rank,
                    MAX_RANK);
            goto done;
        }
        if (ubq_model_output_shape(model, ins, n_in, k, out_shapes[k]) != UBQ_OK) {
            fprintf(stderr, "run_model: %s\n", ubq_last_error());
            goto done;
        }
        bytes = num_bytes(out_shapes[k], info.rank, ubq_dtype_size(info.dtype));
        outs[k].dtype = info.dtype;
        outs[k].rank = info.rank;
        outs[k].shape = out_shapes[k];
        if (bytes < 0 || (outs[k].data = malloc(bytes > 0 ? (size_t)bytes : 1)) == NULL) {
            fprintf(stderr, "run_model: out of memory for output '%s'\n", info.name);
            goto done;
        }
    }

    if (ubq_model_run(model, ins, n_in, outs, n_out) != UBQ_OK) {
        fprintf(stderr, "run_model: %s\n", ubq_last_error());
        goto done;
    }

    for (k = 0; k < n_out; k++) {
        char path[4096];
        int64_t bytes = num_bytes(out_shapes[k], outs[k].rank, ubq_dtype_size(outs[k].dtype));
        FILE *f;
        int a, written;
        snprintf(path, sizeof path, "%s/out%d.bin", outdir, (int)k);
        f = fopen(path, "wb");
        written = f != NULL && fwrite(outs[k].data, 1, (size_t)bytes, f) == (size_t)bytes;
        if (f != NULL && fclose(f) != 0) written = 0;
        if (!written) {
            fprintf(stderr, "run_model: cannot write %s\n", path);
            goto done;
        }
        printf("out%d: %s[", (int)k, ubq_dtype_name(outs[k].dtype));
        for (a = 0; a < outs[k].rank; a++) printf("%s%lld", a ? ", " : "", (long long)out_shapes[k][a]);
        printf("] -> %s\n", path);
    }
    status = 0;
done:
    for (k = 0; ins != NULL && k < n_in; k++) free(ins[k].data);
    for (k = 0; outs != NULL && k < n_out; k++) free(outs[k].data);
    free(ins);
    free(outs);
    free(in_shapes);
    free(out_shapes);
    ubq_model_free(model);
    return status;
}
