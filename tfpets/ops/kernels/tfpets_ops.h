// Parameter blocks and CUDA launchers shared by the host (.cc) and device
// (.cu.cc) sources of the tfpets custom ops.

#ifndef TFPETS_OPS_KERNELS_TFPETS_OPS_H_
#define TFPETS_OPS_KERNELS_TFPETS_OPS_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "bias_act_math.h"

#if GOOGLE_CUDA
namespace Eigen {
struct GpuDevice;
}  // namespace Eigen
#endif  // GOOGLE_CUDA

namespace tfpets {

// The CPU element loops are bound by instruction count, not memory, once
// their data is in cache, so wider vectors pay (docs/ops.md). The library
// is built for plain x86-64 so that it loads on any such CPU; each kernel's
// per-range function is compiled a second time for AVX2 (TFPETS_AVX2_CLONE:
// everything it calls is inlined into it, so the whole loop nest gets AVX2
// code) and the CPU picks one at run time.
// TFPETS_OPS_ISA=baseline forces the plain build (tests compare the two).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX2__)
#define TFPETS_HAS_AVX2_CLONES 1
#define TFPETS_AVX2_CLONE __attribute__((target("avx2"), flatten))

inline bool UseAvx2Clones() {
  static const bool use = [] {
    const char* isa = std::getenv("TFPETS_OPS_ISA");
    if (isa != nullptr && std::strcmp(isa, "baseline") == 0) return false;
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return use;
}
#else
#define TFPETS_HAS_AVX2_CLONES 0
#endif

// FusedBiasAct viewed as [outer, channels, inner] with the bias along
// `channels`. Optional tensors are null when absent.
template <typename T>
struct BiasActParams {
  const T* x;
  const T* b;
  const T* xref;
  const T* yref;
  const T* dy;
  T* y;
  int64_t size;
  int64_t channels;
  int64_t inner;
  int act;
  int grad;
  BiasActScalars scalars;
  bool stream;  // Non-temporal stores of y (CPU only).
  // One bit per element, y > 0 (CPU only, see the op's doc): written by
  // the forward pass, read by the gradient in place of yref.
  uint8_t* y_positive;
  const uint8_t* yref_positive;
};

// The largest filter the CUDA kernel accepts (weights travel by value).
constexpr int kMaxGpuTaps = 256;

// UpFirDn2D on NHWC, with the filter already turned into correlation
// weights (flip and gain applied): out[oy, ox] = sum over (i, j) of
// weights[i * kw + j] * upsampled_padded[oy * downy + i, ox * downx + j].
struct UpFirDnShape {
  int64_t n, in_h, in_w, channels, out_h, out_w;
  int upx, upy, downx, downy;
  int padx0, pady0;
  int kh, kw;
  bool stream;    // Non-temporal stores of y (CPU only).
  bool prefetch;  // Software prefetch of x rows (CPU only).
};

#if GOOGLE_CUDA
struct GpuTaps {
  float weights[kMaxGpuTaps];
};

// Runs the op; with a non-null db also the bias gradient: `accumulator`
// ([channels] floats of scratch) is zeroed, summed into with atomics and
// converted into db.
template <typename T>
void LaunchBiasActGpu(const Eigen::GpuDevice& device,
                      const BiasActParams<T>& p, float* accumulator, T* db);

template <typename T>
void LaunchUpFirDnGpu(const Eigen::GpuDevice& device, const T* x, T* y,
                      const UpFirDnShape& shape, const GpuTaps& taps);
#endif  // GOOGLE_CUDA

}  // namespace tfpets

#endif  // TFPETS_OPS_KERNELS_TFPETS_OPS_H_
