/* A shared library that looks like a model library of a future API version (for tests). */
#define UBQ_MODEL_LIBRARY /* only the types: no loader */
#include "ubique.h"

const ubq_model_api ubq_model_library = {UBQ_MODEL_MAGIC, 999, 1, "test", "test", "test"};
