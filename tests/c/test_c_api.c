/*
 * test_c_api.c -- the C API of ubique.h on a model library built by `ubique build`
 * (driven by tests/test_c_api.py, natively and under qemu-aarch64).
 *
 * usage: test_c_api MODEL NOT_A_LIBRARY PLAIN_LIBRARY WRONG_VERSION_LIBRARY TRUNCATED IN1 IN3 OUT1 OUT3
 *   MODEL    a LeNet-style classifier: input image f32[batch, 1, 28, 28], batch in [1, 8],
 *            output logits f32[batch, 10]
 *   NOT_A_LIBRARY, PLAIN_LIBRARY, WRONG_VERSION_LIBRARY, TRUNCATED (a model library cut short):
 *            files ubq_model_load must refuse
 *   IN1, IN3 raw float32 images of batch 1 and 3; OUT1, OUT3 receive the logits
 * Prints "ok: <check>" per passed check, "FAIL: <check>: <details>" otherwise; exit status 0
 * when every check passed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ubique.h"

static int failures = 0;

static void check(int ok, const char *what, const char *detail) {
    if (ok) {
        printf("ok: %s\n", what);
    } else {
        printf("FAIL: %s: %s\n", what, detail ? detail : "");
        failures++;
    }
}

/* The call returned `code` and the message contains `needle`. */
static void expect_error(int32_t got, int32_t code, const char *needle, const char *what) {
    char detail[1400];
    const char *msg = ubq_last_error();
    snprintf(detail, sizeof detail, "status %d (want %d), message '%s' (want it to contain '%s')", (int)got,
             (int)code, msg, needle);
    check(got == code && strstr(msg, needle) != NULL, what, detail);
}

static float *read_file(const char *path, long *bytes) {
    FILE *f = fopen(path, "rb");
    float *data;
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    *bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = (float *)malloc((size_t)*bytes);
    if (data && fread(data, 1, (size_t)*bytes, f) != (size_t)*bytes) {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

static int write_file(const char *path, const void *data, size_t bytes) {
    FILE *f = fopen(path, "wb");
    int ok = f != NULL && fwrite(data, 1, bytes, f) == bytes;
    if (f) ok = fclose(f) == 0 && ok;
    return ok;
}

/* Runs the model on a batch from `in_path`, writes the logits to `out_path`. */
static void run_batch(ubq_model *m, const char *in_path, const char *out_path, int64_t batch) {
    long bytes = 0;
    float *x = read_file(in_path, &bytes), *y;
    int64_t shape[4] = {batch, 1, 28, 28}, out_shape[2] = {0, 0};
    ubq_tensor in = {NULL, UBQ_F32, 4, shape}, out;
    char what[64];
    int32_t status;
    snprintf(what, sizeof what, "run at batch %lld", (long long)batch);
    if (x == NULL || bytes != (long)(batch * 28 * 28 * 4)) {
        check(0, what, "cannot read the input file");
        free(x);
        return;
    }
    in.data = x;
    status = ubq_model_output_shape(m, &in, 1, 0, out_shape);
    check(status == UBQ_OK && out_shape[0] == batch && out_shape[1] == 10, "output shape at this batch",
          ubq_last_error());
    y = (float *)calloc((size_t)(batch * 10), sizeof(float));
    out.data = y;
    out.dtype = UBQ_F32;
    out.rank = 2;
    out.shape = out_shape;
    status = ubq_model_run(m, &in, 1, &out, 1);
    check(status == UBQ_OK, what, ubq_last_error());
    check(write_file(out_path, y, (size_t)(batch * 10) * sizeof(float)), "write the logits", out_path);
    free(x);
    free(y);
}

int main(int argc, char **argv) {
    ubq_model *m = NULL;
    ubq_tensor_info info;
    ubq_symbol_info sym;
    static float image[3 * 28 * 28], logits[3 * 10];
    int64_t shape[4] = {1, 1, 28, 28}, out_shape[2] = {1, 10}, bad[4];
    ubq_tensor in = {image, UBQ_F32, 4, shape}, two[2];
    ubq_tensor out = {logits, UBQ_F32, 2, out_shape};
    int32_t status;

    if (argc != 10) {
        fprintf(stderr, "usage: test_c_api MODEL NOT_A_LIBRARY PLAIN_LIBRARY WRONG_VERSION TRUNCATED IN1 IN3 OUT1 "
                "OUT3\n");
        return 2;
    }

    /* ---- loading: every kind of wrong file ---- */
    status = ubq_model_load("/nonexistent/libmodel.so", &m);
    expect_error(status, UBQ_ERR_NOT_FOUND, "/nonexistent/libmodel.so", "missing file");
    check(m == NULL, "missing file leaves *out NULL", NULL);
    expect_error(ubq_model_load(argv[2], &m), UBQ_ERR_NOT_A_MODEL, "not an ELF shared library", "not a library");
    expect_error(ubq_model_load(argv[3], &m), UBQ_ERR_NOT_A_MODEL, "exports no ubq_model_library",
                 "library without the descriptor");
    expect_error(ubq_model_load(argv[4], &m), UBQ_ERR_VERSION, "API version 999", "API version mismatch");
    expect_error(ubq_model_load(argv[5], &m), UBQ_ERR_NOT_A_MODEL, "truncated", "truncated library");
    expect_error(ubq_model_load(NULL, &m), UBQ_ERR_INVALID_ARGUMENT, "no path", "NULL path");
    expect_error(ubq_model_load(argv[1], NULL), UBQ_ERR_INVALID_ARGUMENT, "out is NULL", "NULL out");
    expect_error(ubq_model_run(NULL, &in, 1, &out, 1), UBQ_ERR_INVALID_ARGUMENT, "model is NULL", "NULL model");
    check(ubq_model_num_inputs(NULL) == -1, "num_inputs of NULL", NULL);
    ubq_model_free(NULL);

    status = ubq_model_load(argv[1], &m);
    check(status == UBQ_OK && m != NULL, "load the model", ubq_last_error());
    if (m == NULL) return 1;

    /* ---- description ---- */
    check(ubq_model_num_inputs(m) == 1 && ubq_model_num_outputs(m) == 1, "one input, one output", NULL);
    status = ubq_model_input_info(m, 0, &info);
    check(status == UBQ_OK && strcmp(info.name, "image") == 0 && info.dtype == UBQ_F32 && info.rank == 4 &&
              info.shape[0] == -1 && strcmp(info.dims[0], "batch") == 0 && info.dims[1] == NULL &&
              info.shape[1] == 1 && info.shape[2] == 28 && info.shape[3] == 28,
          "input info: image f32[batch, 1, 28, 28]", ubq_last_error());
    status = ubq_model_output_info(m, 0, &info);
    check(status == UBQ_OK && strcmp(info.name, "logits") == 0 && info.rank == 2 && info.shape[0] == -1 &&
              info.shape[1] == 10,
          "output info: logits f32[batch, 10]", ubq_last_error());
    status = ubq_model_symbol_info(m, 0, &sym);
    check(ubq_model_num_symbols(m) == 1 && status == UBQ_OK && strcmp(sym.name, "batch") == 0 && sym.min == 1 &&
              sym.max == 8,
          "symbol batch in [1, 8]", ubq_last_error());
    expect_error(ubq_model_input_info(m, 1, &info), UBQ_ERR_INVALID_ARGUMENT, "index 1 is out of range",
                 "input index out of range");
    expect_error(ubq_model_output_info(m, -1, &info), UBQ_ERR_INVALID_ARGUMENT, "out of range",
                 "output index out of range");
    expect_error(ubq_model_input_info(m, 0, NULL), UBQ_ERR_INVALID_ARGUMENT, "NULL", "NULL info");

    /* ---- bad runs: nothing is run, each says what was wrong ---- */
    expect_error(ubq_model_run(m, &in, 0, &out, 1), UBQ_ERR_COUNT, "takes 1 input ('image'), got 0",
                 "no inputs");
    two[0] = in;
    two[1] = in;
    expect_error(ubq_model_run(m, two, 2, &out, 1), UBQ_ERR_COUNT, "got 2", "two inputs");
    expect_error(ubq_model_run(m, NULL, 1, &out, 1), UBQ_ERR_INVALID_ARGUMENT, "inputs is NULL", "NULL inputs");
    in.dtype = UBQ_F64;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_DTYPE, "expected dtype f32, got f64", "wrong dtype");
    in.dtype = 77;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_DTYPE, "got invalid (77)", "unknown dtype");
    in.dtype = UBQ_F32;
    in.rank = 3;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_SHAPE, "expected rank 4 (batch, 1, 28, 28), got rank 3",
                 "wrong rank");
    in.rank = 4;
    in.shape = NULL;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_INVALID_ARGUMENT, "shape is NULL", "NULL shape");
    memcpy(bad, shape, sizeof bad);
    in.shape = bad;
    bad[1] = 3;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_SHAPE,
                 "expected shape (batch=1, 1, 28, 28), got (1, 3, 28, 28) (axis 1)", "wrong channel count");
    bad[1] = 1;
    bad[3] = -5;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_SHAPE, "negative size", "negative size");
    bad[3] = 28;
    bad[0] = 9;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_SHAPE, "'batch' = 9 is outside the range [1, 8]",
                 "batch above the range");
    bad[0] = 0;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_SHAPE, "'batch' = 0 is outside the range [1, 8]",
                 "batch below the range");
    expect_error(ubq_model_output_shape(m, &in, 1, 0, out_shape), UBQ_ERR_SHAPE, "outside the range",
                 "output shape checks the inputs");
    in.shape = shape;
    in.data = NULL;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_INVALID_ARGUMENT, "input 'image': data is NULL",
                 "NULL input data");
    in.data = image;
    expect_error(ubq_model_run(m, &in, 1, &out, 0), UBQ_ERR_COUNT, "has 1 output", "no outputs");
    out.dtype = UBQ_I32;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_DTYPE, "output 'logits': expected dtype f32, got i32",
                 "wrong output dtype");
    out.dtype = UBQ_F32;
    out_shape[0] = 2;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_SHAPE,
                 "output 'logits': expected shape (1, 10) for these inputs, got (2, 10)", "wrong output shape");
    out_shape[0] = 1;
    out.data = NULL;
    expect_error(ubq_model_run(m, &in, 1, &out, 1), UBQ_ERR_INVALID_ARGUMENT, "output 'logits': data is NULL",
                 "NULL output data");
    out.data = logits;
    expect_error(ubq_model_output_shape(m, &in, 1, 1, out_shape), UBQ_ERR_INVALID_ARGUMENT, "out of range",
                 "output_shape index out of range");
    expect_error(ubq_model_set_num_threads(m, 1 << 20), UBQ_ERR_THREAD, "threads", "too many threads");

    /* ---- good runs at two batch sizes, and again on one thread ---- */
    run_batch(m, argv[6], argv[8], 1);
    run_batch(m, argv[7], argv[9], 3);
    check(ubq_model_set_num_threads(m, 1) == UBQ_OK && ubq_model_num_threads(m) == 1, "one thread",
          ubq_last_error());
    run_batch(m, argv[7], argv[9], 3);
    check(ubq_model_set_num_threads(m, 0) == UBQ_OK && ubq_model_num_threads(m) >= 1, "all CPUs",
          ubq_last_error());
    run_batch(m, argv[6], argv[8], 1);
    ubq_model_free(m);

    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
