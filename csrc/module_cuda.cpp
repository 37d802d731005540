// Python loads the CUDA kernels with `import magvit2._C_cuda`; as csrc/module.cpp for the CPU, this empty module only
// exists so that the import runs the TORCH_LIBRARY_IMPL(magvit2, CUDA) static initialisers of csrc/cuda/*.cu.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C_cuda(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
