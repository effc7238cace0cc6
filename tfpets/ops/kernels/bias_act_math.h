// Element-wise math of FusedBiasAct, shared by the CPU and CUDA kernels.
//
// Activation indices follow the StyleGAN2-ADA table (1 linear, 2 relu,
// 3 lrelu, 4 tanh, 5 sigmoid, 6 elu, 7 selu, 8 softplus, 9 swish).
// grad 0 is the forward pass, grad 1 the first derivative applied to an
// incoming gradient, grad 2 the derivative of grad 1 with respect to the
// op's input. Derivatives are written through the saved output
// (yy = yref / gain) except for swish, which uses the saved input xref
// (to which the bias is added, as in the PyTorch kernel).

#ifndef TFPETS_OPS_KERNELS_BIAS_ACT_MATH_H_
#define TFPETS_OPS_KERNELS_BIAS_ACT_MATH_H_

#include <cmath>

#if defined(__CUDACC__)
#define TFPETS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TFPETS_HOST_DEVICE inline
#endif

namespace tfpets {

enum BiasActKind {
  kLinear = 1,
  kRelu = 2,
  kLrelu = 3,
  kTanh = 4,
  kSigmoid = 5,
  kElu = 6,
  kSelu = 7,
  kSoftplus = 8,
  kSwish = 9,
};

struct BiasActScalars {
  float alpha;
  float gain;
  float clamp;  // < 0: no clamping.
};

// exp() of anything beyond this saturates the activations below.
constexpr float kExpRange = 80.0f;
constexpr float kSeluScale = 1.0507009873554804934193349852946f;
constexpr float kSeluAlpha = 1.6732632423543772848170429916717f;

template <int A>
TFPETS_HOST_DEVICE float ActForward(float s, float alpha) {
  if (A == kLinear) return s;
  if (A == kRelu) return s > 0.0f ? s : 0.0f;
  if (A == kLrelu) return s > 0.0f ? s : s * alpha;
  if (A == kTanh) return tanhf(s);
  if (A == kSigmoid) return 1.0f / (1.0f + expf(-s));
  if (A == kElu) return s >= 0.0f ? s : expm1f(s);
  if (A == kSelu) return s >= 0.0f ? kSeluScale * s
                                   : kSeluScale * kSeluAlpha * expm1f(s);
  if (A == kSoftplus) {
    // log(1 + e^s) without overflow for large |s|.
    return s > 0.0f ? s + log1pf(expf(-s)) : log1pf(expf(s));
  }
  // Swish.
  return s < -kExpRange ? 0.0f : s / (expf(-s) + 1.0f);
}

// First derivative f'(s), from yy = f(s) or (swish) from s itself.
template <int A>
TFPETS_HOST_DEVICE float ActDeriv1(float yy, float s, float alpha) {
  if (A == kLinear) return 1.0f;
  if (A == kRelu) return yy > 0.0f ? 1.0f : 0.0f;
  if (A == kLrelu) return yy > 0.0f ? 1.0f : alpha;
  if (A == kTanh) return 1.0f - yy * yy;
  if (A == kSigmoid) return yy * (1.0f - yy);
  if (A == kElu) return yy >= 0.0f ? 1.0f : yy + 1.0f;
  if (A == kSelu) return yy >= 0.0f ? kSeluScale : yy + kSeluScale * kSeluAlpha;
  if (A == kSoftplus) return 1.0f - expf(-yy);
  // Swish: with c = e^s, d = c + 1: c (s + d) / d^2.
  if (s > kExpRange) return 1.0f;
  const float c = expf(s);
  const float d = c + 1.0f;
  return c * (s + d) / (d * d);
}

// Second derivative f''(s), same conventions.
template <int A>
TFPETS_HOST_DEVICE float ActDeriv2(float yy, float s, float alpha) {
  if (A == kTanh) return (1.0f - yy * yy) * (-2.0f * yy);
  if (A == kSigmoid) return yy * (1.0f - yy) * (1.0f - 2.0f * yy);
  if (A == kElu) return yy >= 0.0f ? 0.0f : yy + 1.0f;
  if (A == kSelu) return yy >= 0.0f ? 0.0f : yy + kSeluScale * kSeluAlpha;
  if (A == kSoftplus) {
    const float c = expf(-yy);
    return c * (1.0f - c);
  }
  if (A == kSwish) {
    if (s > kExpRange) return 0.0f;
    const float c = expf(s);
    const float d = c + 1.0f;
    return c * (s * (2.0f - d) + 2.0f * d) / (d * d * d);
  }
  return 0.0f;  // Piecewise-linear activations.
}

// One output element. For G = 0, x is the input and b its bias; for G >= 1,
// x is the incoming gradient, b the bias of xref, and dy (G = 2) the
// gradient that was fed to the grad-1 op.
template <int A, int G>
TFPETS_HOST_DEVICE float BiasActElement(float x, float b, float xref,
                                        float yref, float dy,
                                        const BiasActScalars& p) {
  float y;
  if (G == 0) {
    y = ActForward<A>(x + b, p.alpha) * p.gain;
    if (p.clamp >= 0.0f) {
      y = y > p.clamp ? p.clamp : y;
      y = y < -p.clamp ? -p.clamp : y;
    }
    return y;
  }
  const float yy = p.gain != 0.0f ? yref / p.gain : 0.0f;
  const float s = xref + b;
  if (G == 1) {
    y = x * ActDeriv1<A>(yy, s, p.alpha) * p.gain;
  } else {
    y = x * ActDeriv2<A>(yy, s, p.alpha) * dy * p.gain;
  }
  if (p.clamp >= 0.0f && !(yref > -p.clamp && yref < p.clamp)) y = 0.0f;
  return y;
}

}  // namespace tfpets

#endif  // TFPETS_OPS_KERNELS_BIAS_ACT_MATH_H_
