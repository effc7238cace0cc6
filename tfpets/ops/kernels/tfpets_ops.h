// Parameter blocks and CUDA launchers shared by the host (.cc) and device
// (.cu.cc) sources of the tfpets custom ops.

#ifndef TFPETS_OPS_KERNELS_TFPETS_OPS_H_
#define TFPETS_OPS_KERNELS_TFPETS_OPS_H_

#include <cstdint>

#include "bias_act_math.h"

#if GOOGLE_CUDA
namespace Eigen {
struct GpuDevice;
}  // namespace Eigen
#endif  // GOOGLE_CUDA

namespace tfpets {

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
