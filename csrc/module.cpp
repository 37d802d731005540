// Python loads the kernels with `import magvit2._C`; this empty module only exists so that the import runs the
// TORCH_LIBRARY_IMPL static initialisers of the op files. No Python API lives here (schemas are in magvit2/ops).
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
