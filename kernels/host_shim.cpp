// host_shim.cpp: the host build of bsp_synth.cu used by the CPU tests (see host_shim.h).
// Each exported launcher takes the launch geometry, then the kernel's own arguments.
#include "host_shim.h"
#include "bsp_synth.cu"

#define BSP_HOST_LAUNCHER(NAME, OUT_T)                                                        \
  extern "C" void host_##NAME(unsigned gx, unsigned gy, unsigned gz, unsigned bx,             \
                              const unsigned long long* src_ptrs, const int* term_src,        \
                              const int* term_frame, const float* term_w, const float* mean,  \
                              const float* inv_std, OUT_T* out, int N, int T, int H, int W,   \
                              int C, int K, long long sN, long long sC, long long sT,         \
                              long long sH, long long sW) {                                   \
    BSP_HOST_LAUNCH(gx, gy, gz, bx,                                                           \
                    NAME(src_ptrs, term_src, term_frame, term_w, mean, inv_std, out, N, T, H, \
                         W, C, K, sN, sC, sT, sH, sW));                                       \
  }

BSP_HOST_LAUNCHER(bsp_synth_f32, float)
BSP_HOST_LAUNCHER(bsp_synth_f16, bsp_u16)
BSP_HOST_LAUNCHER(bsp_synth_bf16, bsp_u16)
BSP_HOST_LAUNCHER(bsp_synth_u8, bsp_u8)
