// host_shim.h: compiles a CUDA kernel source as plain C++ so that it runs on a CPU.
//
// CI has no GPU. Rather than testing a re-implementation, tests compile the very same
// kernels/*.cu with the host compiler through this header and call it with ctypes: every block
// and thread index of the launch is visited in turn (the kernels here use no shared memory or
// barriers, so a sequential walk is a faithful schedule). Only the CUDA features the kernels use
// are emulated; anything else fails to compile, which is the point.
#ifndef BSP_HOST_SHIM_H
#define BSP_HOST_SHIM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

struct bsp_dim3 {
  unsigned int x, y, z;
};

static bsp_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

// Correctly rounded float32 operations: on x86-64 (SSE) plain float arithmetic is IEEE
// round-to-nearest, and -ffp-contract=off keeps the compiler from fusing them into FMAs.
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  memcpy(&u, &f, sizeof u);
  return u;
}

// Visit every (block, thread) of a launch in order, running BODY for each.
#define BSP_HOST_LAUNCH(gx, gy, gz, bx, BODY)                                   \
  do {                                                                          \
    gridDim.x = (gx); gridDim.y = (gy); gridDim.z = (gz);                       \
    blockDim.x = (bx); blockDim.y = 1; blockDim.z = 1;                          \
    threadIdx.y = threadIdx.z = 0;                                              \
    for (blockIdx.z = 0; blockIdx.z < gridDim.z; ++blockIdx.z)                  \
      for (blockIdx.y = 0; blockIdx.y < gridDim.y; ++blockIdx.y)                \
        for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x)              \
          for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) {      \
            BODY;                                                               \
          }                                                                     \
  } while (0)

#endif
