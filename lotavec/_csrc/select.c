/* Compiled kernels of lotavec's top-k selection (loaded with ctypes: lotavec/native.py). */
#include <Python.h>
#include <stdint.h>

static struct PyModuleDef lv_module = {PyModuleDef_HEAD_INIT, "_cselect", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__cselect(void) { return PyModule_Create(&lv_module); }
