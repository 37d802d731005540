// Which x86-64 code the CPU kernels compile: AVX2 clones of the vector loops (target_clones: both versions are
// compiled, the CPU picks one at load time) and decode's float32 loops with their AVX-512 and AVX2 + FMA matmul
// tiles (csrc/cpu/decode.cpp), chosen at run time by what the CPU has. MAGVIT2_CPU_ISA=avx2 (or =base) caps that
// choice for decode (csrc/cpu/decode.cpp), so that one machine runs and tests every path: avx2 skips the AVX-512 tile, base the float32
// loops (the ATen calls instead). Other architectures (aarch64) compile the plain loops only and run decode's float32 through
// the reference's ATen calls; so does an x86-64 build with MAGVIT2_NO_X86_KERNELS defined (setup.py:
// MAGVIT2_PORTABLE=1; CMakeLists.txt: -DMAGVIT2_PORTABLE=ON), which builds and tests that code on an x86 machine.
#pragma once

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(MAGVIT2_NO_X86_KERNELS)
#define MAGVIT2_X86_KERNELS 1
#define MAGVIT2_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MAGVIT2_X86_KERNELS 0
#define MAGVIT2_AVX2_CLONES
#endif

