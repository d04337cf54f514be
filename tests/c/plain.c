/* A shared library that is not a model library (for tests). */
int plain_function(int x) { return x + 1; }
