/*
 * classify.c -- run an image classifier built by `ubique build` on one raw input file.
 *
 *     ./classify libmodel.so input.bin [THREADS]
 *
 * libmodel.so  a model library (`ubique build model.ubq --target x86_64 -o libmodel.so`)
 *              with one float32 input and one float32 output of class scores (last axis)
 * input.bin    the input tensor as raw float32 values (little-endian, row-major); when the
 *              input has one symbolic size (a batch), its value is taken from the file size
 * THREADS      size of the model's thread pool (default: all CPUs)
 *
 * Prints one line per item of the batch: "class <index> score <score>" for its top class.
 * Needs only ubique.h (from `ubique config --include`) and -ldl; no Python.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ubique.h"

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "classify: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

/* The whole file as a malloc'ed buffer of floats; their number in *count. */
static float *read_floats(const char *path, int64_t *count) {
    FILE *f = fopen(path, "rb");
    float *data;
    long size;
    if (f == NULL) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        size % (long)sizeof(float) != 0) {
        fclose(f);
        return NULL;
    }
    data = (float *)malloc(size > 0 ? (size_t)size : 1);
    if (data != NULL && size > 0 && fread(data, 1, (size_t)size, f) != (size_t)size) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *count = size / (long)sizeof(float);
    return data;
}

int main(int argc, char **argv) {
    ubq_model *model = NULL;
    ubq_tensor_info in_info, out_info;
    int64_t in_shape[16], out_shape[16], count = 0, per_item = 1, classes, rows, r, c;
    int32_t k, symbolic = -1, status = 1;
    float *input = NULL, *scores = NULL;
    ubq_tensor in, out;

    if (argc < 3 || argc > 4) return fail("usage: classify LIBMODEL INPUT.bin [THREADS]", NULL);
    if (ubq_model_load(argv[1], &model) != UBQ_OK) return fail("cannot load the model", ubq_last_error());
    if (argc == 4 && ubq_model_set_num_threads(model, atoi(argv[3])) != UBQ_OK) {
        fail("cannot set the thread count", ubq_last_error());
        goto done;
    }
    if (ubq_model_num_inputs(model) != 1 || ubq_model_num_outputs(model) != 1) {
        fail("expected a model with one input and one output", NULL);
        goto done;
    }
    ubq_model_input_info(model, 0, &in_info);
    ubq_model_output_info(model, 0, &out_info);
    if (in_info.dtype != UBQ_F32 || out_info.dtype != UBQ_F32 || in_info.rank > 16 || out_info.rank < 1 ||
        out_info.rank > 16) {
        fail("expected a float32 input and a float32 output of class scores", NULL);
        goto done;
    }

    input = read_floats(argv[2], &count);
    if (input == NULL) {
        fail("cannot read the input as raw float32 values", argv[2]);
        goto done;
    }
    /* The input's shape: its fixed sizes, and at most one symbolic size taken from the file. */
    for (k = 0; k < in_info.rank; k++) {
        if (in_info.shape[k] >= 0) {
            in_shape[k] = in_info.shape[k];
            per_item *= in_shape[k];
        } else if (symbolic < 0) {
            symbolic = k;
        } else {
            fail("the input has more than one symbolic size; this example infers only one", NULL);
            goto done;
        }
    }
    if (symbolic >= 0) {
        if (per_item == 0 || count % per_item != 0) {
            fprintf(stderr, "classify: %s holds %lld floats, not a multiple of %lld (one %s item)\n", argv[2],
                    (long long)count, (long long)per_item, in_info.name);
            goto done;
        }
        in_shape[symbolic] = count / per_item;
    } else if (count != per_item) {
        fprintf(stderr, "classify: %s holds %lld floats; input '%s' needs %lld\n", argv[2], (long long)count,
                in_info.name, (long long)per_item);
        goto done;
    }

    in.data = input;
    in.dtype = UBQ_F32;
    in.rank = in_info.rank;
    in.shape = in_shape;
    if (ubq_model_output_shape(model, &in, 1, 0, out_shape) != UBQ_OK) {
        fail("the input does not fit the model", ubq_last_error());
        goto done;
    }
    classes = out_shape[out_info.rank - 1];
    rows = 1;
    for (k = 0; k < out_info.rank - 1; k++) rows *= out_shape[k];
    scores = (float *)malloc((size_t)(rows * classes > 0 ? rows * classes : 1) * sizeof(float));
    if (scores == NULL) {
        fail("out of memory", NULL);
        goto done;
    }
    out.data = scores;
    out.dtype = UBQ_F32;
    out.rank = out_info.rank;
    out.shape = out_shape;
    if (ubq_model_run(model, &in, 1, &out, 1) != UBQ_OK) {
        fail("the run failed", ubq_last_error());
        goto done;
    }
    for (r = 0; r < rows; r++) {
        const float *row = scores + r * classes;
        int64_t best = 0;
        for (c = 1; c < classes; c++)
            if (row[c] > row[best]) best = c;
        printf("class %lld score %.6f\n", (long long)best, classes > 0 ? (double)row[best] : 0.0);
    }
    status = 0;
done:
    free(scores);
    free(input);
    ubq_model_free(model);
    return status;
}
