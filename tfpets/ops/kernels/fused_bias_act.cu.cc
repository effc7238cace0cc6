// CUDA kernel of FusedBiasAct: one thread per element (grid-stride loop),
// sharing the element math with the CPU kernel (bias_act_math.h).
// Compiled only where nvcc and the CUDA headers exist.

#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "tensorflow/core/util/gpu_kernel_helper.h"
#include "tfpets_ops.h"

namespace tfpets {
namespace {

template <typename T, int A, int G>
__global__ void BiasActKernel(BiasActParams<T> p, float* accumulator) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < p.size; i += stride) {
    const int64_t channel = (i / p.inner) % p.channels;
    const float b = p.b ? static_cast<float>(p.b[channel]) : 0.0f;
    const float xref = p.xref ? static_cast<float>(p.xref[i]) : 0.0f;
    const float yref = p.yref ? static_cast<float>(p.yref[i]) : 0.0f;
    const float dy = p.dy ? static_cast<float>(p.dy[i]) : 1.0f;
    const T value = static_cast<T>(BiasActElement<A, G>(
        static_cast<float>(p.x[i]), b, xref, yref, dy, p.scalars));
    p.y[i] = value;
    if (accumulator != nullptr) {
      atomicAdd(accumulator + channel, static_cast<float>(value));
    }
  }
}

template <typename T>
__global__ void ConvertKernel(const float* from, T* to, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    to[i] = static_cast<T>(from[i]);
  }
}

template <typename T, int A, int G>
void Launch(const Eigen::GpuDevice& device, const BiasActParams<T>& p,
            float* accumulator) {
  const tensorflow::GpuLaunchConfig config =
      tensorflow::GetGpuLaunchConfig(static_cast<int>(p.size), device);
  TF_CHECK_OK(tensorflow::GpuLaunchKernel(
      BiasActKernel<T, A, G>, config.block_count, config.thread_per_block, 0,
      device.stream(), p, accumulator));
}

template <typename T, int A>
void LaunchForGrad(const Eigen::GpuDevice& device, const BiasActParams<T>& p,
                   float* accumulator) {
  switch (p.grad) {
    case 0:
      return Launch<T, A, 0>(device, p, accumulator);
    case 1:
      return Launch<T, A, 1>(device, p, accumulator);
    default:
      return Launch<T, A, 2>(device, p, accumulator);
  }
}

template <typename T>
void LaunchForAct(const Eigen::GpuDevice& device, const BiasActParams<T>& p,
                  float* accumulator) {
  switch (p.act) {
    case kLinear:
      return LaunchForGrad<T, kLinear>(device, p, accumulator);
    case kRelu:
      return LaunchForGrad<T, kRelu>(device, p, accumulator);
    case kLrelu:
      return LaunchForGrad<T, kLrelu>(device, p, accumulator);
    case kTanh:
      return LaunchForGrad<T, kTanh>(device, p, accumulator);
    case kSigmoid:
      return LaunchForGrad<T, kSigmoid>(device, p, accumulator);
    case kElu:
      return LaunchForGrad<T, kElu>(device, p, accumulator);
    case kSelu:
      return LaunchForGrad<T, kSelu>(device, p, accumulator);
    case kSoftplus:
      return LaunchForGrad<T, kSoftplus>(device, p, accumulator);
    default:
      return LaunchForGrad<T, kSwish>(device, p, accumulator);
  }
}

}  // namespace

template <typename T>
void LaunchBiasActGpu(const Eigen::GpuDevice& device,
                      const BiasActParams<T>& p, float* accumulator, T* db) {
  if (db != nullptr) {
    device.memset(accumulator, 0, p.channels * sizeof(float));
  }
  if (p.size > 0) LaunchForAct<T>(device, p, accumulator);
  if (db != nullptr) {
    const tensorflow::GpuLaunchConfig config =
        tensorflow::GetGpuLaunchConfig(static_cast<int>(p.channels), device);
    TF_CHECK_OK(tensorflow::GpuLaunchKernel(
        ConvertKernel<T>, config.block_count, config.thread_per_block, 0,
        device.stream(), accumulator, db, p.channels));
  }
}

template void LaunchBiasActGpu<float>(const Eigen::GpuDevice&,
                                      const BiasActParams<float>&, float*,
                                      float*);
template void LaunchBiasActGpu<Eigen::half>(const Eigen::GpuDevice&,
                                            const BiasActParams<Eigen::half>&,
                                            float*, Eigen::half*);

}  // namespace tfpets

#endif  // GOOGLE_CUDA
