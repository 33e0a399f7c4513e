// bsp_synth.cu: the fused boundary-synthesis kernel of bsp-dali.
//
// One launch renders a whole batch. For every output pixel (n, t, h, w) it gathers the recipe's
// source pixels from the decoded uint8 frames, blends them with the recipe weights, normalises
// ((v - mean[c]) * inv_std[c]), converts to the output dtype and writes it at the caller's strides
// (NCTHW or NTCHW). Speed changes are index remaps in the tables, blends are two-term weights, so
// all four boundary types are the same gather-and-blend pass.
//
// Inputs
//   src_ptrs   [S]        address of source s's decoded frames, FHWC uint8, contiguous
//   term_src   [N*T*K]    source id of each term (-1: unused term)
//   term_frame [N*T*K]    frame position inside that source's FHWC stack
//   term_w     [N*T*K]    weight (float32); the terms of one output frame sum to 1
//   mean, inv_std [C]     normalisation (ignored by the uint8 variant)
// Output
//   out[n*sN + c*sC + t*sT + h*sH + w*sW]  (element strides)
//
// Semantics, bit for bit (the NumPy reference in bsp_dali/synthesis.py computes the same):
//   acc   = 0; for k in 0..K-1 with term_src >= 0: acc = acc + w_k * x_k      (float32, no FMA)
//   float = (acc - mean[c]) * inv_std[c]                                       (float32, no FMA)
//   f16 / bf16: round-to-nearest-even of that float; u8: floor(acc + 0.5) clamped to [0, 255].
// The explicit __fmul_rn / __fadd_rn keep the compiler from contracting into FMAs, so the GPU,
// the host build used by CI (kernels/host_shim.h) and NumPy agree exactly.
//
// Launch geometry: blockDim.x threads walk the H*W pixels of one output frame (grid-stride loop
// over blockIdx.x); output frame nt = n*T + t is blockIdx.y + gridDim.y * blockIdx.z.

#define BSP_MAX_C 4

typedef unsigned char bsp_u8;
typedef unsigned short bsp_u16;

// float32 -> IEEE binary16 bits, round to nearest even (subnormals, overflow to inf, NaN kept).
__host__ __device__ __forceinline__ bsp_u16 bsp_f32_to_f16_bits(float f) {
  unsigned int x = __float_as_uint(f);
  unsigned int sign = (x >> 16) & 0x8000u;
  unsigned int ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or NaN
    return (bsp_u16)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x0200u : 0u));
  }
  if (ax >= 0x477ff000u) return (bsp_u16)(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x33000000u) return (bsp_u16)sign;               // < 2^-25 rounds to zero
  unsigned int e = ax >> 23;
  if (e < 113u) {  // result is a half subnormal (|f| < 2^-14); unit is 2^-24
    unsigned int m = (ax & 0x7fffffu) | 0x800000u;
    unsigned int shift = 126u - e;  // 14..24
    unsigned int r = m >> shift;
    unsigned int rem = m & ((1u << shift) - 1u);
    unsigned int half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) r += 1u;
    return (bsp_u16)(sign | r);
  }
  unsigned int r = ((e - 112u) << 10) | ((ax >> 13) & 0x3ffu);
  unsigned int rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r += 1u;  // a carry may bump the exponent
  return (bsp_u16)(sign | r);
}

// float32 -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN).
__host__ __device__ __forceinline__ bsp_u16 bsp_f32_to_bf16_bits(float f) {
  unsigned int x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (bsp_u16)((x >> 16) | 0x0040u);
  unsigned int lsb = (x >> 16) & 1u;
  return (bsp_u16)((x + 0x7fffu + lsb) >> 16);
}

struct BspStoreF32 {
  typedef float T;
  static __device__ __forceinline__ T store(float acc, float mean, float inv_std) {
    return __fmul_rn(__fsub_rn(acc, mean), inv_std);
  }
};

struct BspStoreF16 {
  typedef bsp_u16 T;
  static __device__ __forceinline__ T store(float acc, float mean, float inv_std) {
    return bsp_f32_to_f16_bits(__fmul_rn(__fsub_rn(acc, mean), inv_std));
  }
};

struct BspStoreBF16 {
  typedef bsp_u16 T;
  static __device__ __forceinline__ T store(float acc, float mean, float inv_std) {
    return bsp_f32_to_bf16_bits(__fmul_rn(__fsub_rn(acc, mean), inv_std));
  }
};

struct BspStoreU8 {
  typedef bsp_u8 T;
  static __device__ __forceinline__ T store(float acc, float, float) {
    float r = floorf(__fadd_rn(acc, 0.5f));
    r = r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r);
    return (bsp_u8)r;
  }
};

template <class Store>
__device__ __forceinline__ void bsp_synth_body(
    const unsigned long long* __restrict__ src_ptrs, const int* __restrict__ term_src,
    const int* __restrict__ term_frame, const float* __restrict__ term_w,
    const float* __restrict__ mean, const float* __restrict__ inv_std,
    typename Store::T* __restrict__ out, int N, int T, int H, int W, int C, int K,
    long long sN, long long sC, long long sT, long long sH, long long sW) {
  const long long nt = (long long)blockIdx.y + (long long)gridDim.y * blockIdx.z;
  if (nt >= (long long)N * T) return;
  const int n = (int)(nt / T);
  const int t = (int)(nt % T);
  const long long hw = (long long)H * W;
  const int* ts = term_src + nt * K;
  const int* tf = term_frame + nt * K;
  const float* tw = term_w + nt * K;

  float m[BSP_MAX_C], is[BSP_MAX_C];
  for (int c = 0; c < C; ++c) {
    m[c] = mean[c];
    is[c] = inv_std[c];
  }
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < hw; p += step) {
    float acc[BSP_MAX_C];
    for (int c = 0; c < C; ++c) acc[c] = 0.0f;
    for (int k = 0; k < K; ++k) {
      const int s = ts[k];
      if (s < 0) continue;
      const float wk = tw[k];
      const bsp_u8* px =
          reinterpret_cast<const bsp_u8*>(src_ptrs[s]) + ((long long)tf[k] * hw + p) * C;
      for (int c = 0; c < C; ++c) acc[c] = __fadd_rn(acc[c], __fmul_rn(wk, (float)px[c]));
    }
    const int h = (int)(p / W);
    const int w = (int)(p % W);
    typename Store::T* o = out + n * sN + t * sT + h * sH + w * sW;
    for (int c = 0; c < C; ++c) o[c * sC] = Store::store(acc[c], m[c], is[c]);
  }
}

#define BSP_SYNTH_ENTRY(NAME, STORE)                                                            \
  extern "C" __global__ void NAME(                                                              \
      const unsigned long long* src_ptrs, const int* term_src, const int* term_frame,           \
      const float* term_w, const float* mean, const float* inv_std, STORE::T* out, int N,       \
      int T, int H, int W, int C, int K, long long sN, long long sC, long long sT, long long sH, \
      long long sW) {                                                                           \
    bsp_synth_body<STORE>(src_ptrs, term_src, term_frame, term_w, mean, inv_std, out, N, T, H,  \
                          W, C, K, sN, sC, sT, sH, sW);                                         \
  }

BSP_SYNTH_ENTRY(bsp_synth_f32, BspStoreF32)
BSP_SYNTH_ENTRY(bsp_synth_f16, BspStoreF16)
BSP_SYNTH_ENTRY(bsp_synth_bf16, BspStoreBF16)
BSP_SYNTH_ENTRY(bsp_synth_u8, BspStoreU8)
