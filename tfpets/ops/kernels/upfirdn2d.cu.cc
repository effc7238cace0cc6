// CUDA kernel of UpFirDn2D (NHWC): one thread per output element, channel
// fastest so that neighbouring threads read neighbouring memory; the filter
// (already flipped and scaled on the host) travels in the kernel arguments.
// A straightforward generic kernel: correct for every up/down/pad/filter,
// not tuned (no shared-memory tiling). Compiled only where nvcc exists.

#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "tensorflow/core/util/gpu_kernel_helper.h"
#include "tfpets_ops.h"

namespace tfpets {
namespace {

template <typename T>
__global__ void UpFirDnKernel(const T* __restrict__ x, T* __restrict__ y,
                              UpFirDnShape s, GpuTaps taps) {
  const int64_t total = s.n * s.out_h * s.out_w * s.channels;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                     threadIdx.x;
       idx < total; idx += stride) {
    const int64_t c = idx % s.channels;
    const int64_t ox = (idx / s.channels) % s.out_w;
    const int64_t oy = (idx / (s.channels * s.out_w)) % s.out_h;
    const int64_t n = idx / (s.channels * s.out_w * s.out_h);
    float acc = 0.0f;
    for (int i = 0; i < s.kh; ++i) {
      const int64_t py = oy * s.downy + i - s.pady0;
      if (py < 0 || py % s.upy != 0 || py / s.upy >= s.in_h) continue;
      const int64_t iy = py / s.upy;
      for (int j = 0; j < s.kw; ++j) {
        const int64_t px = ox * s.downx + j - s.padx0;
        if (px < 0 || px % s.upx != 0 || px / s.upx >= s.in_w) continue;
        const int64_t ix = px / s.upx;
        acc += taps.weights[i * s.kw + j] *
               static_cast<float>(
                   x[((n * s.in_h + iy) * s.in_w + ix) * s.channels + c]);
      }
    }
    y[idx] = static_cast<T>(acc);
  }
}

}  // namespace

template <typename T>
void LaunchUpFirDnGpu(const Eigen::GpuDevice& device, const T* x, T* y,
                      const UpFirDnShape& shape, const GpuTaps& taps) {
  const int64_t total = shape.n * shape.out_h * shape.out_w * shape.channels;
  const tensorflow::GpuLaunchConfig config =
      tensorflow::GetGpuLaunchConfig(static_cast<int>(total), device);
  TF_CHECK_OK(tensorflow::GpuLaunchKernel(
      UpFirDnKernel<T>, config.block_count, config.thread_per_block, 0,
      device.stream(), x, y, shape, taps));
}

template void LaunchUpFirDnGpu<float>(const Eigen::GpuDevice&, const float*,
                                      float*, const UpFirDnShape&,
                                      const GpuTaps&);
template void LaunchUpFirDnGpu<Eigen::half>(const Eigen::GpuDevice&,
                                            const Eigen::half*, Eigen::half*,
                                            const UpFirDnShape&,
                                            const GpuTaps&);

}  // namespace tfpets

#endif  // GOOGLE_CUDA
