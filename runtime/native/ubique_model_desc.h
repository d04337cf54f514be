/*
 * ubique_model_desc.h -- the descriptor of a model library (internal to `ubique build`).
 *
 * `ubique build` (runtime/aot.py) generates one C file defining `ubq_model_descriptor`, a
 * ubq_model_desc, and compiles it into the model library together with ubique_runtime.c,
 * ubique_model.c (which implements the C API of ubique.h on top of this descriptor), the
 * model's object code and its embedded weights. All of them are built together from one
 * ubique, so this layout is not a stable ABI; the stable ABI is ubq_model_api in ubique.h.
 */
#ifndef UBIQUE_MODEL_DESC_H
#define UBIQUE_MODEL_DESC_H

#include <stdint.h>

#include "ubique_runtime.h"

typedef struct ubq_desc_tensor {
    const char *name;
    int32_t dtype;             /* a ubq_dtype */
    int32_t rank;
    const int64_t *shape;      /* rank sizes; -1 where symbolic */
    const char *const *dims;   /* rank entries: NULL, or the symbolic size's expression */
    const int32_t *bind;       /* rank entries: the symbol index when the axis is exactly that
                                  named size (its value is read from the input), else -1 */
} ubq_desc_tensor;

typedef struct ubq_model_desc {
    const char *name;
    const char *producer;
    const char *triple;
    int32_t num_inputs, num_outputs;
    const ubq_desc_tensor *inputs, *outputs;
    int32_t total_axes;        /* sum of the ranks of all inputs and outputs */
    /* named symbolic sizes, in the order of the kernel ABI's dims array */
    int32_t num_symbols;
    const char *const *symbols;
    const int64_t *symbol_min, *symbol_max; /* max -1: unbounded */
    /* Every input axis then every output axis, in order, for the symbol values `dims`.
       Returns nonzero when a size overflows int64 or divides by zero. */
    int32_t (*eval_shapes)(const int64_t *dims, int64_t *shapes);
    /* weights: entry arguments after the inputs and outputs, in the embedded blob */
    int32_t num_weights;
    const unsigned char *weights;
    const int64_t *weight_offsets;
    ubq_entry_fn entry;
    int64_t workspace_size;    /* when num_slots is 0: the statically planned workspace */
    /* intermediates with symbolic sizes: planned per call with ubq_plan_memory; the entry
       then takes the offsets table as one more trailing argument */
    int32_t num_slots;
    const int32_t *slot_first, *slot_last;
    int32_t (*slot_sizes)(const int64_t *dims, int64_t *sizes); /* bytes per slot */
} ubq_model_desc;

/* Checked int64 arithmetic for the generated size expressions (ir/dims.py: + - * and
   Python's floor division). Each sets *err on overflow or division by zero. */
static inline int64_t ubq_dim_add(int64_t a, int64_t b, int *err) {
    int64_t r = 0;
    if (__builtin_add_overflow(a, b, &r)) *err = 1;
    return r;
}

static inline int64_t ubq_dim_sub(int64_t a, int64_t b, int *err) {
    int64_t r = 0;
    if (__builtin_sub_overflow(a, b, &r)) *err = 1;
    return r;
}

static inline int64_t ubq_dim_mul(int64_t a, int64_t b, int *err) {
    int64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) *err = 1;
    return r;
}

/* Floor division (rounds toward negative infinity, as Python's //), unlike C's `/`. */
static inline int64_t ubq_dim_floordiv(int64_t a, int64_t b, int *err) {
    int64_t q;
    if (b == 0 || (a == INT64_MIN && b == -1)) {
        *err = 1;
        return 0;
    }
    q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0))) q -= 1;
    return q;
}

#endif /* UBIQUE_MODEL_DESC_H */
