// FusedBiasAct: y = clamp(act(x + b) * gain), and its first and second
// derivatives (attribute `grad`), as in StyleGAN2-ADA (PyTorch semantics for
// the bias in gradient mode). CPU kernel here; CUDA kernel in
// fused_bias_act.cu.cc.

#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "cpu_stream.h"
#include "tfpets_ops.h"

namespace tfpets {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;

namespace {

absl::Status BiasActShapeFn(
    ::tensorflow::shape_inference::InferenceContext* c) {
  c->set_output(0, c->input(0));
  bool emit_positive = false;
  TF_RETURN_IF_ERROR(c->GetAttr("emit_positive", &emit_positive));
  c->set_output(2, emit_positive ? c->Vector(c->UnknownDim()) : c->Vector(0));
  bool reduce_b = false;
  TF_RETURN_IF_ERROR(c->GetAttr("reduce_b", &reduce_b));
  if (!reduce_b) {
    c->set_output(1, c->Vector(0));
    return absl::OkStatus();
  }
  if (!c->RankKnown(c->input(0))) {
    c->set_output(1, c->Vector(c->UnknownDim()));
    return absl::OkStatus();
  }
  int axis = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("axis", &axis));
  const int rank = c->Rank(c->input(0));
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FusedBiasAct: axis ", axis, " out of range for rank ", rank));
  }
  c->set_output(1, c->Vector(c->Dim(c->input(0), axis)));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("FusedBiasAct")
    .Input("x: T")
    .Input("b: T")
    .Input("xref: T")
    .Input("yref: T")
    .Input("dy: T")
    .Input("yref_positive: uint8")
    .Output("y: T")
    .Output("db: T")
    .Output("y_positive: uint8")
    .Attr("T: {float, half, bfloat16}")
    .Attr("grad: int = 0")
    .Attr("reduce_b: bool = false")
    .Attr("axis: int = -1")
    .Attr("act: int = 1")
    .Attr("alpha: float = 0.0")
    .Attr("gain: float = 1.0")
    .Attr("clamp: float = -1.0")
    .Attr("emit_positive: bool = false")
    .SetShapeFn(BiasActShapeFn)
    .Doc(R"doc(
Fused bias + activation + gain + clamp (StyleGAN2-ADA).

grad=0: y = clamp(act(x + b[axis]) * gain, -clamp, clamp).
grad=1: x is an incoming gradient; y = gain * act'(xref + b) * x, zero where
  |yref| >= clamp. grad=2: y = gain * act''(xref + b) * x * dy, same mask.
b, xref, yref and dy may be empty ([0]) where unused. With reduce_b (grad
1 or 2 only), db = sum of y over every axis but `axis` (the bias gradient,
accumulated in float, in a fixed order); otherwise db is empty.

y_positive: with emit_positive, on CPU, for float32 relu and lrelu with a
positive gain, no clamp and the bias along the last axis (on AVX2 CPUs, for
a 32-byte aligned y, as TensorFlow allocates it), y > 0 packed one bit per
element (bit k % 8 of byte k / 8, unused bits zero); otherwise empty. A grad=1 op given it as yref_positive reads it in place of
yref's sign: the gradient then reads 1/32 of the bytes of yref, and it is
bound by memory bandwidth. yref is still required (it serves every other
case); an empty yref_positive is ignored.
)doc");

namespace {

using ::tensorflow::int64;

template <typename T>
inline float ToFloat(T v) {
  return static_cast<float>(v);
}

// y_positive's layout: element k is bit k % 8 of byte k / 8. The AVX2
// rows' vector bodies, which start where the output is 32-byte aligned,
// read and write whole bytes; the op uses the bits only for aligned
// outputs, where those starts are multiples of 8 elements. Workers own
// whole bytes (the forward pass splits its work at multiples of 8
// elements), so StoreBit's read-modify-write never races.
inline void StoreBit(uint8_t* bits, int64_t position, bool value) {
  const int shift = static_cast<int>(position & 7);
  uint8_t& byte = bits[position >> 3];
  byte = static_cast<uint8_t>((byte & ~(1u << shift)) |
                              (unsigned{value} << shift));
}

inline bool LoadBit(const uint8_t* bits, int64_t position) {
  return (bits[position >> 3] >> (position & 7)) & 1;
}

// Whether the AVX2 rows of an output at `data` start their vector bodies
// at multiples of 8 elements.
inline bool AlignedForBits(const void* data) {
  return reinterpret_cast<uintptr_t>(data) % 32 == 0;
}

// n consecutive elements. kPerElementBias: the bias advances with the
// elements (a channels-last row); otherwise one bias value covers the span.
// Which optional inputs are read is decided at compile time, so the loop is
// branch-free and vectorises for the piecewise-linear activations.
template <typename T, int A, int G, bool kPerElementBias>
void BiasActSpan(const T* __restrict x, const T* __restrict b,
                 const T* __restrict xref, const T* __restrict yref,
                 const T* __restrict dy, T* __restrict y, int64_t n,
                 BiasActScalars s) {
  constexpr bool kReadsXref = G > 0 && A == kSwish;
  const float shared_bias = kPerElementBias ? 0.0f : ToFloat(b[0]);
  for (int64_t k = 0; k < n; ++k) {
    const float bias = kPerElementBias ? ToFloat(b[k]) : shared_bias;
    const float xr = kReadsXref ? ToFloat(xref[k]) : 0.0f;
    const float yr = G > 0 ? ToFloat(yref[k]) : 0.0f;
    const float d = G == 2 ? ToFloat(dy[k]) : 1.0f;
    y[k] = static_cast<T>(BiasActElement<A, G>(ToFloat(x[k]), bias, xr, yr, d,
                                              s));
  }
}

// Forward pass of the transcendental activations for float, with Eigen's
// vectorised tanh/exp/expm1/log1p/logistic (the functions TensorFlow's own
// kernels use); element-wise scalar libm calls would be several times
// slower. Works in L1-sized chunks, in place in y (which may alias x).
template <int A>
void ApplyActInPlace(Eigen::Map<Eigen::ArrayXf>& v, float alpha) {
  if (A == kTanh) {
    v = v.tanh();
  } else if (A == kSigmoid) {
    v = v.logistic();
  } else if (A == kElu) {
    v = (v >= 0.0f).select(v, v.expm1());
  } else if (A == kSelu) {
    v = (v >= 0.0f).select(v * kSeluScale,
                           v.expm1() * (kSeluScale * kSeluAlpha));
  } else if (A == kSoftplus) {
    v = v.max(0.0f) + (-v.abs()).exp().log1p();
  } else if (A == kSwish) {
    v = v * v.logistic();
  }
}

template <int A, bool kPerElementBias>
void ForwardSpanVectorised(const float* x, const float* b, float* y,
                           int64_t n, BiasActScalars s) {
  constexpr int64_t kChunk = 1024;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = std::min(kChunk, n - start);
    Eigen::Map<const Eigen::ArrayXf> xs(x + start, m);
    Eigen::Map<Eigen::ArrayXf> v(y + start, m);
    if (kPerElementBias) {
      v = xs + Eigen::Map<const Eigen::ArrayXf>(b + start, m);
    } else {
      v = xs + b[0];
    }
    ApplyActInPlace<A>(v, s.alpha);
    v *= s.gain;
    if (s.clamp >= 0.0f) v = v.min(s.clamp).max(-s.clamp);
  }
}

template <typename T, int A, int G, bool kPerElementBias>
void Span(const T* x, const T* b, const T* xref, const T* yref, const T* dy,
          T* y, int64_t n, BiasActScalars s) {
  if constexpr (std::is_same<T, float>::value && G == 0 && A >= kTanh) {
    ForwardSpanVectorised<A, kPerElementBias>(x, b, y, n, s);
  } else {
    BiasActSpan<T, A, G, kPerElementBias>(x, b, xref, yref, dy, y, n, s);
  }
}

// First derivative of a piecewise-linear activation on one channels-last
// row, with the bias-gradient sums in the same loop. The slope follows from
// the sign of the saved output alone (gain > 0), so the loop needs neither
// the saved input nor a division, and it vectorises. dx may alias dy (the
// op forwards its input buffer).
template <int A, bool kClamped, bool kReduce>
void PiecewiseLinearGradRow(const float* dy, const float* __restrict yref,
                            float* dx, float* __restrict partial,
                            int64_t n, BiasActScalars s) {
  const float positive = s.gain;
  const float negative =
      A == kLinear ? s.gain : A == kLrelu ? s.alpha * s.gain : 0.0f;
  const float clamp = kClamped ? s.clamp : 0.0f;
  for (int64_t k = 0; k < n; ++k) {
    const float r = yref[k];
    float g = dy[k] * (r > 0.0f ? positive : negative);
    if (kClamped) g = (r > -clamp && r < clamp) ? g : 0.0f;
    dx[k] = g;
    if (kReduce) partial[k] += g;
  }
}

// PiecewiseLinearGradRow, unclamped, with the slope picked by the
// y_positive bits from `first` on instead of by yref.
template <int A, bool kReduce>
void PositiveBitsGradRow(const float* dy, const uint8_t* positive,
                         int64_t first, float* dx, float* __restrict partial,
                         int64_t n, BiasActScalars s) {
  const float negative = A == kLrelu ? s.alpha * s.gain : 0.0f;
  for (int64_t k = 0; k < n; ++k) {
    const float g = dy[k] * (LoadBit(positive, first + k) ? s.gain : negative);
    dx[k] = g;
    if (kReduce) partial[k] += g;
  }
}

// The piecewise-linear forward and first-derivative rows in AVX2, for two
// jobs: non-temporal stores straight from registers (kStream; cpu_stream.h
// says why), and the y_positive bits (one movemask per 8 outputs), which
// the gradient reads in place of yref. They compute exactly what
// BiasActSpan and PiecewiseLinearGradRow compute, which also run their
// unaligned ends.
#if defined(__x86_64__) && defined(__GNUC__)
#define TFPETS_HAS_STREAM_ROWS 1
#define TFPETS_STREAM_ROW __attribute__((target("avx2")))

// Whether this CPU runs the streamed rows (TFPETS_OPS_ISA=baseline: no).
inline bool CanStreamRows() {
#if TFPETS_HAS_AVX2_CLONES
  return UseAvx2Clones();
#else
  return __builtin_cpu_supports("avx2") != 0;
#endif
}

// Elements of `out` before its first 32-byte boundary (at most n).
inline int64_t UnalignedHead(const float* out, int64_t n) {
  const int64_t misaligned = reinterpret_cast<uintptr_t>(out) % 32 / 4;
  return std::min(n, (8 - misaligned) % 8);
}

// Sets the y_positive bits of y[0, n), element `first` onwards.
inline void StorePositiveBits(const float* y, int64_t n, uint8_t* positive,
                              int64_t first) {
  for (int64_t k = 0; k < n; ++k) StoreBit(positive, first + k, y[k] > 0.0f);
}

// y = clamp(act(x + b) * gain): ActForward's ternaries as blends, so NaN
// and signed zeros come out as in the scalar loop. With a non-null
// `positive`, also sets its bits from `first` on (unclamped rows only).
template <int A, bool kClamped, bool kStream>
TFPETS_STREAM_ROW void ForwardRowAvx2(const float* x, const float* b,
                                      float* y, int64_t n, BiasActScalars s,
                                      uint8_t* positive, int64_t first) {
  const int64_t head = UnalignedHead(y, n);
  BiasActSpan<float, A, 0, true>(x, b, nullptr, nullptr, nullptr, y, head, s);
  if (positive != nullptr) StorePositiveBits(y, head, positive, first);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 alpha = _mm256_set1_ps(s.alpha);
  const __m256 gain = _mm256_set1_ps(s.gain);
  const __m256 high = _mm256_set1_ps(s.clamp);
  const __m256 low = _mm256_set1_ps(-s.clamp);
  int64_t k = head;
  for (; k + 8 <= n; k += 8) {
    const __m256 v =
        _mm256_add_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(b + k));
    __m256 t = v;
    if (A != kLinear) {
      const __m256 negative = A == kRelu ? zero : _mm256_mul_ps(v, alpha);
      t = _mm256_blendv_ps(negative, v, _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
    }
    t = _mm256_mul_ps(t, gain);
    if (kClamped) {
      t = _mm256_blendv_ps(t, high, _mm256_cmp_ps(t, high, _CMP_GT_OQ));
      t = _mm256_blendv_ps(t, low, _mm256_cmp_ps(t, low, _CMP_LT_OQ));
    }
    if (kStream) {
      _mm256_stream_ps(y + k, t);
    } else {
      _mm256_store_ps(y + k, t);
    }
    if (positive != nullptr) {
      positive[(first + k) >> 3] = static_cast<uint8_t>(
          _mm256_movemask_ps(_mm256_cmp_ps(t, zero, _CMP_GT_OQ)));
    }
  }
  BiasActSpan<float, A, 0, true>(x + k, b + k, nullptr, nullptr, nullptr,
                                 y + k, n - k, s);
  if (positive != nullptr) {
    StorePositiveBits(y + k, n - k, positive, first + k);
  }
}

// PiecewiseLinearGradRow with streamed dx (kStream) and/or the slope
// picked by the y_positive bits from `first` on (kFromBits, unclamped).
template <int A, bool kClamped, bool kReduce, bool kStream, bool kFromBits>
TFPETS_STREAM_ROW void GradRowAvx2(const float* dy,
                                   const float* __restrict yref,
                                   const uint8_t* positive, int64_t first,
                                   float* dx, float* __restrict partial,
                                   int64_t n, BiasActScalars s) {
  static_assert(!(kClamped && kFromBits), "the bits exist only unclamped");
  auto scalar_span = [&](int64_t start, int64_t count) {
    float* sums = kReduce ? partial + start : partial;
    if (kFromBits) {
      PositiveBitsGradRow<A, kReduce>(dy + start, positive, first + start,
                                      dx + start, sums, count, s);
    } else {
      PiecewiseLinearGradRow<A, kClamped, kReduce>(
          dy + start, yref + start, dx + start, sums, count, s);
    }
  };
  const int64_t head = UnalignedHead(dx, n);
  scalar_span(0, head);
  const float negative_slope =
      A == kLinear ? s.gain : A == kLrelu ? s.alpha * s.gain : 0.0f;
  const __m256 zero = _mm256_setzero_ps();
  const __m256 positive_slope_v = _mm256_set1_ps(s.gain);
  const __m256 negative_slope_v = _mm256_set1_ps(negative_slope);
  const __m256 high = _mm256_set1_ps(s.clamp);
  const __m256 low = _mm256_set1_ps(-s.clamp);
  const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  int64_t k = head;
  for (; k + 8 <= n; k += 8) {
    __m256 is_positive;
    __m256 inside;
    if (kFromBits) {
      const __m256i bits = _mm256_set1_epi32(positive[(first + k) >> 3]);
      is_positive = _mm256_castsi256_ps(
          _mm256_cmpeq_epi32(_mm256_and_si256(bits, lanes), lanes));
    } else {
      const __m256 r = _mm256_loadu_ps(yref + k);
      is_positive = _mm256_cmp_ps(r, zero, _CMP_GT_OQ);
      if (kClamped) {
        inside = _mm256_and_ps(_mm256_cmp_ps(r, low, _CMP_GT_OQ),
                               _mm256_cmp_ps(r, high, _CMP_LT_OQ));
      }
    }
    const __m256 slope =
        _mm256_blendv_ps(negative_slope_v, positive_slope_v, is_positive);
    __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + k), slope);
    if (kClamped) g = _mm256_and_ps(g, inside);
    if (kStream) {
      _mm256_stream_ps(dx + k, g);
    } else {
      _mm256_store_ps(dx + k, g);
    }
    if (kReduce) {
      _mm256_storeu_ps(partial + k,
                       _mm256_add_ps(_mm256_loadu_ps(partial + k), g));
    }
  }
  scalar_span(k, n - k);
}
#else
#define TFPETS_HAS_STREAM_ROWS 0
inline bool CanStreamRows() { return false; }
#endif  // x86-64 GCC/Clang

#if TFPETS_HAS_STREAM_ROWS
// Picks ForwardRowAvx2's variant once per row. The y_positive bits exist
// only unclamped.
template <int A>
void ForwardRowAvx2For(const float* x, const float* b, float* y, int64_t n,
                       BiasActScalars s, bool stream, uint8_t* positive,
                       int64_t first) {
  if (s.clamp >= 0.0f) {  // Then only to stream.
    return ForwardRowAvx2<A, true, true>(x, b, y, n, s, nullptr, first);
  }
  if (stream) {
    return ForwardRowAvx2<A, false, true>(x, b, y, n, s, positive, first);
  }
  ForwardRowAvx2<A, false, false>(x, b, y, n, s, positive, first);
}
#endif

// `positive`: the y_positive bits (element `first` onwards) or null.
template <int A, bool kClamped, bool kReduce>
void GradRow(const float* dy, const float* yref, const uint8_t* positive,
             int64_t first, float* dx, float* partial, int64_t n,
             BiasActScalars s, bool stream) {
#if TFPETS_HAS_STREAM_ROWS
  if constexpr (!kClamped && A != kLinear) {
    if (positive != nullptr && stream) {
      return GradRowAvx2<A, false, kReduce, true, true>(
          dy, yref, positive, first, dx, partial, n, s);
    }
    if (positive != nullptr) {
      return GradRowAvx2<A, false, kReduce, false, true>(
          dy, yref, positive, first, dx, partial, n, s);
    }
  }
  if (stream) {
    return GradRowAvx2<A, kClamped, kReduce, true, false>(
        dy, yref, nullptr, first, dx, partial, n, s);
  }
#endif
  PiecewiseLinearGradRow<A, kClamped, kReduce>(dy, yref, dx, partial, n, s);
}

// Picks the row loop for the clamp and the bias gradient once per row, so
// that neither test stays inside the loop.
template <int A>
void PiecewiseLinearGradRowFor(const float* dy, const float* yref,
                               const uint8_t* positive, int64_t first,
                               float* dx, float* partial, int64_t n,
                               BiasActScalars s, bool stream) {
  const bool clamped = s.clamp >= 0.0f;
  if (partial == nullptr && clamped) {
    return GradRow<A, true, false>(dy, yref, positive, first, dx, partial, n,
                                   s, stream);
  }
  if (partial == nullptr) {
    return GradRow<A, false, false>(dy, yref, positive, first, dx, partial,
                                    n, s, stream);
  }
  if (clamped) {
    return GradRow<A, true, true>(dy, yref, positive, first, dx, partial, n,
                                  s, stream);
  }
  return GradRow<A, false, true>(dy, yref, positive, first, dx, partial, n, s,
                                 stream);
}

template <typename T, int A>
constexpr bool IsPiecewiseLinear() {
  return std::is_same<T, float>::value &&
         (A == kLinear || A == kRelu || A == kLrelu);
}

template <typename T, int A, int G>
constexpr bool UsesPiecewiseLinearGradRow() {
  return IsPiecewiseLinear<T, A>() && G == 1;
}

// Adds the n outputs just written (still in L1) to the bias-gradient
// partial sums of this block.
template <typename T>
void AccumulateBiasGrad(const T* y, int64_t n, bool channels_last,
                        float* partial) {
  if (channels_last) {
    for (int64_t k = 0; k < n; ++k) partial[k] += ToFloat(y[k]);
    return;
  }
  float total = 0.0f;
  for (int64_t k = 0; k < n; ++k) total += ToFloat(y[k]);
  partial[0] += total;
}

// Runs elements [begin, end) of the flat tensor, viewed as
// [outer, channels, inner] with the bias along `channels`; with a non-null
// `partial` ([channels] floats) also sums the outputs per channel.
template <typename T, int A, int G>
void BiasActRange(const BiasActParams<T>& p, int64_t begin, int64_t end,
                  float* partial) {
  int64_t i = begin;
  while (i < end) {
    const int64_t line = i / p.inner;
    const int64_t channel = line % p.channels;
    const bool channels_last = p.inner == 1;
    const int64_t n = channels_last
                          ? std::min(end - i, p.channels - channel)
                          : std::min(end, (line + 1) * p.inner) - i;
    const T* xref = p.xref ? p.xref + i : nullptr;
    const T* yref = p.yref ? p.yref + i : nullptr;
    const T* dy = p.dy ? p.dy + i : nullptr;
    if constexpr (UsesPiecewiseLinearGradRow<T, A, G>()) {
      if (channels_last && p.scalars.gain > 0.0f) {
        PiecewiseLinearGradRowFor<A>(p.x + i, yref, p.yref_positive, i,
                                     p.y + i,
                                     partial ? partial + channel : nullptr, n,
                                     p.scalars, p.stream);
        i += n;
        continue;
      }
    }
#if TFPETS_HAS_STREAM_ROWS
    if constexpr (IsPiecewiseLinear<T, A>() && G == 0) {
      if (channels_last && (p.stream || p.y_positive != nullptr)) {
        ForwardRowAvx2For<A>(p.x + i, p.b + channel, p.y + i, n, p.scalars,
                             p.stream, p.y_positive, i);
        i += n;
        continue;
      }
    }
#endif
    if (channels_last) {
      Span<T, A, G, true>(p.x + i, p.b + channel, xref, yref, dy, p.y + i, n,
                          p.scalars);
    } else {
      Span<T, A, G, false>(p.x + i, p.b + channel, xref, yref, dy, p.y + i, n,
                           p.scalars);
    }
    if (partial != nullptr) {
      AccumulateBiasGrad(p.y + i, n, channels_last, partial + channel);
    }
    i += n;
  }
}

template <typename T, int A>
void BiasActRangeForGrad(const BiasActParams<T>& p, int64_t begin,
                         int64_t end, float* partial) {
  switch (p.grad) {
    case 0:
      return BiasActRange<T, A, 0>(p, begin, end, partial);
    case 1:
      return BiasActRange<T, A, 1>(p, begin, end, partial);
    default:
      return BiasActRange<T, A, 2>(p, begin, end, partial);
  }
}

template <typename T>
void BiasActDispatch(const BiasActParams<T>& p, int64_t begin, int64_t end,
                     float* partial = nullptr) {
  switch (p.act) {
    case kLinear:
      return BiasActRangeForGrad<T, kLinear>(p, begin, end, partial);
    case kRelu:
      return BiasActRangeForGrad<T, kRelu>(p, begin, end, partial);
    case kLrelu:
      return BiasActRangeForGrad<T, kLrelu>(p, begin, end, partial);
    case kTanh:
      return BiasActRangeForGrad<T, kTanh>(p, begin, end, partial);
    case kSigmoid:
      return BiasActRangeForGrad<T, kSigmoid>(p, begin, end, partial);
    case kElu:
      return BiasActRangeForGrad<T, kElu>(p, begin, end, partial);
    case kSelu:
      return BiasActRangeForGrad<T, kSelu>(p, begin, end, partial);
    case kSoftplus:
      return BiasActRangeForGrad<T, kSoftplus>(p, begin, end, partial);
    default:
      return BiasActRangeForGrad<T, kSwish>(p, begin, end, partial);
  }
}

#if TFPETS_HAS_AVX2_CLONES
template <typename T>
TFPETS_AVX2_CLONE void BiasActDispatchAvx2(const BiasActParams<T>& p,
                                           int64_t begin, int64_t end,
                                           float* partial) {
  BiasActDispatch<T>(p, begin, end, partial);
}
#endif

// Elements [begin, end) on this CPU's best instruction set.
template <typename T>
void RunBiasActRange(const BiasActParams<T>& p, int64_t begin, int64_t end,
                     float* partial = nullptr) {
#if TFPETS_HAS_AVX2_CLONES
  if (UseAvx2Clones()) {
    BiasActDispatchAvx2<T>(p, begin, end, partial);
  } else {
    BiasActDispatch<T>(p, begin, end, partial);
  }
#else
  BiasActDispatch<T>(p, begin, end, partial);
#endif
  if (p.stream) StreamFence();
}

struct CpuDeviceTag {};
struct GpuDeviceTag {};

template <typename Tag, typename T>
struct BiasActLauncher;

template <typename T>
struct BiasActLauncher<CpuDeviceTag, T> {
  static void Run(OpKernelContext* ctx, const BiasActParams<T>& p, T* db) {
    const bool transcendental = p.act >= kTanh;
    const int64_t cost = (transcendental ? 40 : 4) + (p.grad > 0 ? 4 : 0);
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    if (p.y_positive != nullptr) {
      // Whole bytes of y_positive per worker: split at multiples of 8.
      const int64_t octets = (p.size + 7) / 8;
      workers->ParallelFor(octets, 8 * cost, [&p](int64 begin, int64 end) {
        RunBiasActRange<T>(p, begin * 8, std::min(end * 8, p.size));
      });
      return;
    }
    if (db == nullptr) {
      workers->ParallelFor(p.size, cost, [&p](int64 begin, int64 end) {
        RunBiasActRange<T>(p, begin, end);
      });
      return;
    }
    // The bias gradient: a fixed split into blocks of whole bias runs, one
    // partial sum per block, added in block order, so the result does not
    // depend on thread scheduling.
    const int64_t run = p.inner == 1 ? p.channels : p.inner;
    const int64_t runs = p.size / run;
    const int64_t blocks = std::min<int64_t>(runs, 64);
    const int64_t runs_per_block = (runs + blocks - 1) / blocks;
    std::vector<float> partials(blocks * p.channels, 0.0f);
    workers->ParallelFor(
        blocks, cost * runs_per_block * run,
        [&](int64 first_block, int64 end_block) {
          for (int64_t block = first_block; block < end_block; ++block) {
            const int64_t begin = block * runs_per_block * run;
            const int64_t end = std::min(p.size, begin + runs_per_block * run);
            RunBiasActRange<T>(p, begin, end, &partials[block * p.channels]);
          }
        });
    // Block by block over contiguous channels (it vectorises); each channel
    // still adds its partial sums in block order.
    float* totals = partials.data();
    for (int64_t block = 1; block < blocks; ++block) {
      const float* row = &partials[block * p.channels];
      for (int64_t c = 0; c < p.channels; ++c) totals[c] += row[c];
    }
    for (int64_t c = 0; c < p.channels; ++c) db[c] = static_cast<T>(totals[c]);
  }
};

#if GOOGLE_CUDA
template <typename T>
struct BiasActLauncher<GpuDeviceTag, T> {
  static void Run(OpKernelContext* ctx, const BiasActParams<T>& p, T* db) {
    float* accumulator = nullptr;
    Tensor accumulator_tensor;
    if (db != nullptr) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                             {p.channels}, &accumulator_tensor));
      accumulator = accumulator_tensor.flat<float>().data();
    }
    LaunchBiasActGpu<T>(ctx->eigen_device<Eigen::GpuDevice>(), p, accumulator,
                        db);
  }
};
#endif  // GOOGLE_CUDA

template <typename Tag, typename T>
class FusedBiasActOp : public OpKernel {
 public:
  explicit FusedBiasActOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("grad", &grad_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reduce_b", &reduce_b_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("emit_positive", &emit_positive_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axis", &axis_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("act", &act_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("alpha", &scalars_.alpha));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("gain", &scalars_.gain));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clamp", &scalars_.clamp));
    OP_REQUIRES(ctx, grad_ >= 0 && grad_ <= 2,
                absl::InvalidArgumentError("FusedBiasAct: grad must be 0-2"));
    OP_REQUIRES(ctx, act_ >= kLinear && act_ <= kSwish,
                absl::InvalidArgumentError("FusedBiasAct: act must be 1-9"));
    OP_REQUIRES(ctx, !reduce_b_ || grad_ > 0,
                absl::InvalidArgumentError(
                    "FusedBiasAct: reduce_b needs gradient mode (grad 1-2)"));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& b = ctx->input(1);
    const int rank = x.dims();
    const int axis = axis_ < 0 ? axis_ + rank : axis_;
    const bool axis_ok =
        rank == 0 ? b.NumElements() == 0 : axis >= 0 && axis < rank;
    OP_REQUIRES(ctx, axis_ok,
                absl::InvalidArgumentError(absl::StrCat(
                    "FusedBiasAct: axis ", axis_, " out of range for rank ",
                    rank)));
    const int64_t channels = rank == 0 ? 1 : x.dim_size(axis);
    OP_REQUIRES(ctx, b.NumElements() == 0 || b.NumElements() == channels,
                absl::InvalidArgumentError(absl::StrCat(
                    "FusedBiasAct: b has ", b.NumElements(),
                    " elements, expected 0 or x.shape[axis] = ", channels)));
    for (int i = 2; i < 5; ++i) {
      const int64_t size = ctx->input(i).NumElements();
      OP_REQUIRES(ctx, size == 0 || size == x.NumElements(),
                  absl::InvalidArgumentError(absl::StrCat(
                      "FusedBiasAct: input ", i, " has ", size,
                      " elements, expected 0 or ", x.NumElements())));
    }
    const bool has_xref = ctx->input(2).NumElements() != 0;
    const bool has_yref = ctx->input(3).NumElements() != 0;
    const bool has_dy = ctx->input(4).NumElements() != 0;
    OP_REQUIRES(ctx, grad_ == 0 || (has_yref && (has_xref || act_ != kSwish)),
                absl::InvalidArgumentError(
                    "FusedBiasAct: gradient mode needs yref (and xref for "
                    "swish)"));
    OP_REQUIRES(ctx, grad_ != 2 || (has_dy && (has_xref || act_ != kSwish)),
                absl::InvalidArgumentError(
                    "FusedBiasAct: grad=2 needs dy (and xref for swish)"));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    Tensor* db = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, {reduce_b_ ? channels : 0},
                                             &db));
    int64_t inner = 1;
    for (int d = axis + 1; d < rank; ++d) inner *= x.dim_size(d);
    const bool positive_bits_apply =
        std::is_same<Tag, CpuDeviceTag>::value &&
        std::is_same<T, float>::value && (act_ == kRelu || act_ == kLrelu) &&
        scalars_.clamp < 0.0f && scalars_.gain > 0.0f && inner == 1 &&
        CanStreamRows() && AlignedForBits(y->data());
    const int64_t positive_bytes = (x.NumElements() + 7) / 8;
    const bool emit_positive = emit_positive_ && grad_ == 0 &&
                               positive_bits_apply;
    Tensor* y_positive = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            2, {emit_positive ? positive_bytes : 0},
                            &y_positive));
    const Tensor& yref_positive = ctx->input(5);
    OP_REQUIRES(ctx,
                yref_positive.NumElements() == 0 ||
                    yref_positive.NumElements() == positive_bytes,
                absl::InvalidArgumentError(absl::StrCat(
                    "FusedBiasAct: yref_positive has ",
                    yref_positive.NumElements(), " bytes, expected 0 or ",
                    positive_bytes)));
    // The CPU loops always read a bias; the GPU kernel checks for null.
    constexpr bool kOnCpu = std::is_same<Tag, CpuDeviceTag>::value;
    if (x.NumElements() == 0 && kOnCpu) {
      if (reduce_b_) db->flat<T>().setZero();
      return;
    }
    Tensor zero_bias;
    if (b.NumElements() == 0 && kOnCpu) {
      OP_REQUIRES_OK(
          ctx, ctx->allocate_temp(::tensorflow::DataTypeToEnum<T>::v(),
                                  {channels}, &zero_bias));
      zero_bias.flat<T>().setZero();
    }

    BiasActParams<T> p;
    p.x = x.flat<T>().data();
    p.b = b.NumElements() != 0 ? b.flat<T>().data()
          : kOnCpu            ? zero_bias.flat<T>().data()
                              : nullptr;
    p.xref = OptionalData(ctx->input(2));
    p.yref = OptionalData(ctx->input(3));
    p.dy = OptionalData(ctx->input(4));
    p.y = y->flat<T>().data();
    p.size = x.NumElements();
    p.channels = channels == 0 ? 1 : channels;
    p.inner = inner == 0 ? 1 : inner;
    p.act = act_;
    p.grad = grad_;
    p.scalars = scalars_;
    // Only the piecewise-linear float rows stream (see StreamForwardRow).
    p.stream = kOnCpu && std::is_same<T, float>::value &&
               act_ <= kLrelu && grad_ <= 1 && CanStreamRows() &&
               StreamOutput(p.size * static_cast<int64_t>(sizeof(T)));
    p.y_positive = nullptr;
    if (emit_positive) {
      p.y_positive = y_positive->flat<uint8_t>().data();
      p.y_positive[positive_bytes - 1] = 0;  // Its unused bits stay zero.
    }
    p.yref_positive = grad_ == 1 && positive_bits_apply &&
                              yref_positive.NumElements() != 0
                          ? yref_positive.flat<uint8_t>().data()
                          : nullptr;
    BiasActLauncher<Tag, T>::Run(ctx, p,
                                 reduce_b_ ? db->flat<T>().data() : nullptr);
  }

 private:
  static const T* OptionalData(const Tensor& t) {
    return t.NumElements() == 0 ? nullptr : t.flat<T>().data();
  }

  int grad_ = 0;
  bool reduce_b_ = false;
  bool emit_positive_ = false;
  int axis_ = -1;
  int act_ = kLinear;
  BiasActScalars scalars_{};
};

#define REGISTER_CPU(T)                                               \
  REGISTER_KERNEL_BUILDER(Name("FusedBiasAct")                        \
                              .Device(::tensorflow::DEVICE_CPU)       \
                              .TypeConstraint<T>("T"),                \
                          FusedBiasActOp<CpuDeviceTag, T>)
REGISTER_CPU(float);
REGISTER_CPU(Eigen::half);
REGISTER_CPU(Eigen::bfloat16);
#undef REGISTER_CPU

#if GOOGLE_CUDA
#define REGISTER_GPU(T)                                               \
  REGISTER_KERNEL_BUILDER(Name("FusedBiasAct")                        \
                              .Device(::tensorflow::DEVICE_GPU)       \
                              .TypeConstraint<T>("T"),                \
                          FusedBiasActOp<GpuDeviceTag, T>)
REGISTER_GPU(float);
REGISTER_GPU(Eigen::half);
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace
}  // namespace tfpets
