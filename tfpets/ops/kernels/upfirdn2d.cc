// UpFirDn2D on NHWC: zero-insert upsample, pad/crop, FIR filter, decimate
// (StyleGAN2-ADA), with `flip` (correlation instead of convolution) and
// `gain` attributes so that its gradient is the same op with up/down
// swapped and the filter flipped. CPU kernel here; CUDA kernel in
// upfirdn2d.cu.cc.

#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

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
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// (in * up + pad0 + pad1 - taps) // down + 1, or -1 if the output is empty.
int64_t OutputSize(int64_t in, int up, int down, int pad0, int pad1,
                   int64_t taps) {
  const int64_t span = in * up + pad0 + pad1 - taps;
  return span < 0 ? -1 : span / down + 1;
}

absl::Status OutputDim(InferenceContext* c, DimensionHandle in,
                       DimensionHandle taps, int up, int down, int pad0,
                       int pad1, DimensionHandle* out) {
  if (!c->ValueKnown(in) || !c->ValueKnown(taps)) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  const int64_t size =
      OutputSize(c->Value(in), up, down, pad0, pad1, c->Value(taps));
  if (size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "UpFirDn2D: empty output (input ", c->Value(in), ", up ", up,
        ", pads ", pad0, "/", pad1, ", ", c->Value(taps), " taps)"));
  }
  *out = c->MakeDim(size);
  return absl::OkStatus();
}

absl::Status UpFirDnShapeFn(InferenceContext* c) {
  ShapeHandle x, k;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &k));
  int upx, upy, downx, downy, padx0, padx1, pady0, pady1;
  TF_RETURN_IF_ERROR(c->GetAttr("upx", &upx));
  TF_RETURN_IF_ERROR(c->GetAttr("upy", &upy));
  TF_RETURN_IF_ERROR(c->GetAttr("downx", &downx));
  TF_RETURN_IF_ERROR(c->GetAttr("downy", &downy));
  TF_RETURN_IF_ERROR(c->GetAttr("padx0", &padx0));
  TF_RETURN_IF_ERROR(c->GetAttr("padx1", &padx1));
  TF_RETURN_IF_ERROR(c->GetAttr("pady0", &pady0));
  TF_RETURN_IF_ERROR(c->GetAttr("pady1", &pady1));
  DimensionHandle out_h, out_w;
  TF_RETURN_IF_ERROR(OutputDim(c, c->Dim(x, 1), c->Dim(k, 0), upy, downy,
                               pady0, pady1, &out_h));
  TF_RETURN_IF_ERROR(OutputDim(c, c->Dim(x, 2), c->Dim(k, 1), upx, downx,
                               padx0, padx1, &out_w));
  c->set_output(0,
                c->MakeShape({c->Dim(x, 0), out_h, out_w, c->Dim(x, 3)}));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("UpFirDn2D")
    .Input("x: T")
    .Input("k: float")
    .Output("y: T")
    .Attr("T: {float, half, bfloat16}")
    .Attr("upx: int >= 1 = 1")
    .Attr("upy: int >= 1 = 1")
    .Attr("downx: int >= 1 = 1")
    .Attr("downy: int >= 1 = 1")
    .Attr("padx0: int = 0")
    .Attr("padx1: int = 0")
    .Attr("pady0: int = 0")
    .Attr("pady1: int = 0")
    .Attr("flip: bool = false")
    .Attr("gain: float = 1.0")
    .SetShapeFn(UpFirDnShapeFn)
    .Doc(R"doc(
Upsample (zero insertion), pad (negative crops), FIR filter, downsample.

For NHWC x, y[n, oy, ox, c] = gain * sum over (i, j) of kc[i, j] *
u[n, oy * downy + i, ox * downx + j, c], where u is x upsampled and padded
and kc is k rotated by 180 degrees (true convolution) unless flip is set.
)doc");

namespace {

// One valid filter tap along one axis: source pixel and filter index.
struct Tap {
  int src;
  int index;
};

// Taps for every output position along one axis; offsets[o]..offsets[o+1].
struct AxisTaps {
  std::vector<Tap> taps;
  std::vector<int> offsets;
};

AxisTaps BuildAxisTaps(int64_t out_size, int64_t in_size, int up, int down,
                       int pad0, int taps) {
  AxisTaps result;
  result.offsets.reserve(out_size + 1);
  for (int64_t o = 0; o < out_size; ++o) {
    result.offsets.push_back(static_cast<int>(result.taps.size()));
    for (int i = 0; i < taps; ++i) {
      const int64_t pos = o * down + i - pad0;  // In the upsampled image.
      if (pos < 0 || pos % up != 0 || pos / up >= in_size) continue;
      result.taps.push_back({static_cast<int>(pos / up), i});
    }
  }
  result.offsets.push_back(static_cast<int>(result.taps.size()));
  return result;
}

// Correlation weights: gain * k rotated by 180 degrees unless flip.
std::vector<float> CorrelationWeights(const Tensor& k, bool flip,
                                      float gain) {
  const int kh = k.dim_size(0), kw = k.dim_size(1);
  auto kf = k.matrix<float>();
  std::vector<float> w(kh * kw);
  for (int i = 0; i < kh; ++i) {
    for (int j = 0; j < kw; ++j) {
      w[i * kw + j] =
          gain * (flip ? kf(i, j) : kf(kh - 1 - i, kw - 1 - j));
    }
  }
  return w;
}

// A rank-1 filter as its row and column factors: weights[i * kw + j] ==
// rows[i] * cols[j] up to float rounding. Every StyleGAN filter is the outer
// product of its 1-D taps.
struct SeparableWeights {
  std::vector<float> rows;
  std::vector<float> cols;
};

bool Separate(const std::vector<float>& weights, int kh, int kw,
              SeparableWeights* out) {
  int pivot = 0;
  for (int t = 1; t < kh * kw; ++t) {
    if (std::abs(weights[t]) > std::abs(weights[pivot])) pivot = t;
  }
  const float largest = std::abs(weights[pivot]);
  if (largest == 0.0f) return false;
  const int pi = pivot / kw, pj = pivot % kw;
  out->rows.resize(kh);
  out->cols.resize(kw);
  for (int i = 0; i < kh; ++i) out->rows[i] = weights[i * kw + pj];
  for (int j = 0; j < kw; ++j) {
    out->cols[j] = weights[pi * kw + j] / weights[pivot];
  }
  for (int i = 0; i < kh; ++i) {
    for (int j = 0; j < kw; ++j) {
      const float error = out->rows[i] * out->cols[j] - weights[i * kw + j];
      if (std::abs(error) > 1e-6f * largest) return false;
    }
  }
  return true;
}

template <typename T>
inline float ToFloat(T v) {
  return static_cast<float>(v);
}

// acc[c] (+)= sum_t w[t] * src[t][c] for up to four taps at once; `first`
// overwrites acc instead of adding, so no separate zeroing pass is needed.
template <typename T>
void AccumulateTaps(float* __restrict acc, const T* const* src,
                    const float* w, int count, int64_t channels, bool first) {
  switch (count) {
    case 1: {
      const T* __restrict s0 = src[0];
      if (first) {
        for (int64_t c = 0; c < channels; ++c) acc[c] = w[0] * ToFloat(s0[c]);
      } else {
        for (int64_t c = 0; c < channels; ++c) acc[c] += w[0] * ToFloat(s0[c]);
      }
      return;
    }
    case 2: {
      const T* __restrict s0 = src[0];
      const T* __restrict s1 = src[1];
      const float w0 = w[0], w1 = w[1];
      if (first) {
        for (int64_t c = 0; c < channels; ++c)
          acc[c] = w0 * ToFloat(s0[c]) + w1 * ToFloat(s1[c]);
      } else {
        for (int64_t c = 0; c < channels; ++c)
          acc[c] += w0 * ToFloat(s0[c]) + w1 * ToFloat(s1[c]);
      }
      return;
    }
    case 3: {
      const T* __restrict s0 = src[0];
      const T* __restrict s1 = src[1];
      const T* __restrict s2 = src[2];
      const float w0 = w[0], w1 = w[1], w2 = w[2];
      if (first) {
        for (int64_t c = 0; c < channels; ++c)
          acc[c] = w0 * ToFloat(s0[c]) + w1 * ToFloat(s1[c]) +
                   w2 * ToFloat(s2[c]);
      } else {
        for (int64_t c = 0; c < channels; ++c)
          acc[c] += w0 * ToFloat(s0[c]) + w1 * ToFloat(s1[c]) +
                    w2 * ToFloat(s2[c]);
      }
      return;
    }
    default: {
      const T* __restrict s0 = src[0];
      const T* __restrict s1 = src[1];
      const T* __restrict s2 = src[2];
      const T* __restrict s3 = src[3];
      const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
      if (first) {
        for (int64_t c = 0; c < channels; ++c)
          acc[c] = (w0 * ToFloat(s0[c]) + w1 * ToFloat(s1[c])) +
                   (w2 * ToFloat(s2[c]) + w3 * ToFloat(s3[c]));
      } else {
        for (int64_t c = 0; c < channels; ++c)
          acc[c] += (w0 * ToFloat(s0[c]) + w1 * ToFloat(s1[c])) +
                    (w2 * ToFloat(s2[c]) + w3 * ToFloat(s3[c]));
      }
      return;
    }
  }
}

// acc[c] = sum over t < count of w[t] * src[t][c], four taps per pass.
template <typename S>
void SumTaps(float* acc, const S* const* src, const float* w, int count,
             int64_t channels) {
  if (count == 0) std::fill(acc, acc + channels, 0.0f);
  for (int t = 0; t < count; t += 4) {
    AccumulateTaps<S>(acc, src + t, w + t, std::min(4, count - t), channels,
                      t == 0);
  }
}

// One output pixel: SumTaps straight into `out` for float, else into
// `acc_buffer` and converted.
template <typename T, typename S>
void WritePixel(T* out, const S* const* src, const float* w, int count,
                int64_t channels, float* acc_buffer) {
  float* acc = std::is_same<T, float>::value ? reinterpret_cast<float*>(out)
                                             : acc_buffer;
  SumTaps<S>(acc, src, w, count, channels);
  if (!std::is_same<T, float>::value) {
    for (int64_t c = 0; c < channels; ++c) out[c] = static_cast<T>(acc[c]);
  }
}

// Hands out the places for a worker's consecutive output elements: in
// place, or, for a streamed output, in a small buffer that is copied out
// with non-temporal stores once about kFlushBytes are staged. Small
// flushes keep the stores overlapping the next loads.
template <typename T>
class OutputWriter {
 public:
  static constexpr int64_t kFlushBytes = 1024;

  OutputWriter(T* out, bool stream) : out_(out), stream_(stream) {}
  OutputWriter(const OutputWriter&) = delete;
  OutputWriter& operator=(const OutputWriter&) = delete;
  ~OutputWriter() {
    if (!stream_) return;
    Flush();
    StreamFence();
  }

  // Where the next n elements go; valid until the next call.
  T* Next(int64_t n) {
    if (!stream_) {
      T* place = out_;
      out_ += n;
      return place;
    }
    if ((staged_ + n) * static_cast<int64_t>(sizeof(T)) > kFlushBytes) {
      Flush();
    }
    if (staged_ + n > static_cast<int64_t>(buffer_.size())) {
      buffer_.resize(staged_ + n);
    }
    T* place = buffer_.data() + staged_;
    staged_ += n;
    return place;
  }

 private:
  void Flush() {
    StreamCopy(out_, buffer_.data(), staged_ * sizeof(T));
    out_ += staged_;
    staged_ = 0;
  }

  T* out_;
  bool stream_;
  int64_t staged_ = 0;
  std::vector<T> buffer_;
};

// Computes output rows [row_begin, row_end) of the flattened [N * outH]
// row index. Every output pixel gathers its non-zero taps and sums them
// over the contiguous channel vector, so each output element is written
// once and only taps that hit real (not inserted-zero) pixels cost work.
template <typename T>
void UpFirDnRows(const T* x, T* y, const UpFirDnShape& s,
                 const std::vector<float>& weights, const AxisTaps& rows,
                 const AxisTaps& cols, int64_t row_begin, int64_t row_end) {
  const int64_t c_count = s.channels;
  std::vector<float> acc_buffer(std::is_same<T, float>::value ? 0 : c_count);
  const int max_taps = s.kh * s.kw;
  std::vector<const T*> src(max_taps);
  std::vector<float> w(max_taps);
  OutputWriter<T> output(y + row_begin * s.out_w * c_count, s.stream);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / s.out_h;
    const int64_t oy = row % s.out_h;
    const T* image = x + n * s.in_h * s.in_w * c_count;
    for (int64_t ox = 0; ox < s.out_w; ++ox) {
      int count = 0;
      for (int ty = rows.offsets[oy]; ty < rows.offsets[oy + 1]; ++ty) {
        const Tap& vy = rows.taps[ty];
        const T* src_row = image + vy.src * s.in_w * c_count;
        const float* w_row = &weights[vy.index * s.kw];
        for (int tx = cols.offsets[ox]; tx < cols.offsets[ox + 1]; ++tx) {
          const Tap& vx = cols.taps[tx];
          const float weight = w_row[vx.index];
          if (weight == 0.0f) continue;
          src[count] = src_row + vx.src * c_count;
          w[count] = weight;
          ++count;
        }
      }
      WritePixel<T, T>(output.Next(c_count), src.data(), w.data(), count,
                       c_count, acc_buffer.data());
    }
  }
}

// Prefetches a byte range into L2, a few cache lines per step, so that
// the loads overlap the steps' own work. L2 rather than L1: the range is
// about a row of the input, which would push the row buffer out of L1.
class SpreadPrefetch {
 public:
  SpreadPrefetch() = default;
  SpreadPrefetch(const char* begin, int64_t bytes, int64_t steps)
      : next_(begin),
        end_(begin + bytes),
        lines_per_step_((bytes / kLine + steps) / steps) {}

  void Step() {
    for (int64_t k = 0; k < lines_per_step_ && next_ < end_; ++k) {
      __builtin_prefetch(next_, /*rw=*/0, /*locality=*/2);
      next_ += kLine;
    }
  }

 private:
  static constexpr int64_t kLine = 64;
  const char* next_ = nullptr;
  const char* end_ = nullptr;
  int64_t lines_per_step_ = 0;
};

// The lowest and highest input row (of its image) that output row `oy`
// reads with a non-zero weight; lowest > highest when it reads none.
std::pair<int64_t, int64_t> SourceRowSpan(const AxisTaps& rows,
                                          const std::vector<float>& weights,
                                          int64_t oy) {
  int64_t lowest = std::numeric_limits<int64_t>::max(), highest = -1;
  for (int ty = rows.offsets[oy]; ty < rows.offsets[oy + 1]; ++ty) {
    if (weights[rows.taps[ty].index] == 0.0f) continue;
    lowest = std::min<int64_t>(lowest, rows.taps[ty].src);
    highest = std::max<int64_t>(highest, rows.taps[ty].src);
  }
  return {lowest, highest};
}

// The input rows that the flattened output row `row + 1` reads and `row`
// does not, spread over the `row`'s output pixels. Going down an image the
// other rows were read for earlier output rows and are still in L2; in a
// tensor larger than L2 the new ones come from L3 or memory, and without
// this the vertical pass waits on them while the horizontal pass, working
// from L1 and L2, leaves memory idle.
template <typename T>
SpreadPrefetch NextRowsPrefetch(const T* x, const UpFirDnShape& s,
                                const SeparableWeights& weights,
                                const AxisTaps& rows, int64_t row) {
  const int64_t n = (row + 1) / s.out_h;
  auto [lowest, highest] = SourceRowSpan(rows, weights.rows,
                                         (row + 1) % s.out_h);
  if (n == row / s.out_h) {
    lowest = std::max(lowest,
                      SourceRowSpan(rows, weights.rows, row % s.out_h).second +
                          1);
  }
  if (lowest > highest) return SpreadPrefetch();
  const int64_t row_bytes = s.in_w * s.channels * sizeof(T);
  return SpreadPrefetch(
      reinterpret_cast<const char*>(x) + (n * s.in_h + lowest) * row_bytes,
      (highest - lowest + 1) * row_bytes, s.out_w);
}

// UpFirDnRows for a rank-1 filter: per output row, a vertical pass sums the
// row taps of every input column into `column_sums`, then a horizontal pass
// sums the column taps of that. A plain filter pass costs kh + kw
// multiply-adds per output element instead of kh * kw (8 instead of 16 for
// StyleGAN's 4-tap filters); up- and downsampling save less. With
// `s.prefetch` the horizontal pass prefetches the next row's new input
// rows (NextRowsPrefetch), which overlaps the two passes' memory waits
// (measurements and the alternatives tried: docs/ops.md).
template <typename T>
void UpFirDnRowsSeparable(const T* x, T* y, const UpFirDnShape& s,
                          const SeparableWeights& weights,
                          const AxisTaps& rows, const AxisTaps& cols,
                          int64_t row_begin, int64_t row_end) {
  const int64_t c_count = s.channels;
  const int64_t row_size = s.in_w * c_count;
  std::vector<float> column_sums(row_size);
  std::vector<float> acc_buffer(std::is_same<T, float>::value ? 0 : c_count);
  std::vector<const T*> row_src(s.kh);
  std::vector<const float*> col_src(s.kw);
  std::vector<float> w(std::max(s.kh, s.kw));
  OutputWriter<T> output(y + row_begin * s.out_w * c_count, s.stream);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / s.out_h;
    const int64_t oy = row % s.out_h;
    const T* image = x + n * s.in_h * row_size;
    int count = 0;
    for (int ty = rows.offsets[oy]; ty < rows.offsets[oy + 1]; ++ty) {
      const float weight = weights.rows[rows.taps[ty].index];
      if (weight == 0.0f) continue;
      row_src[count] = image + rows.taps[ty].src * row_size;
      w[count++] = weight;
    }
    SumTaps<T>(column_sums.data(), row_src.data(), w.data(), count, row_size);
    SpreadPrefetch prefetch;
    if (s.prefetch && row + 1 < row_end) {
      prefetch = NextRowsPrefetch(x, s, weights, rows, row);
    }
    for (int64_t ox = 0; ox < s.out_w; ++ox) {
      count = 0;
      for (int tx = cols.offsets[ox]; tx < cols.offsets[ox + 1]; ++tx) {
        const float weight = weights.cols[cols.taps[tx].index];
        if (weight == 0.0f) continue;
        col_src[count] = column_sums.data() + cols.taps[tx].src * c_count;
        w[count++] = weight;
      }
      WritePixel<T, float>(output.Next(c_count), col_src.data(), w.data(),
                           count, c_count, acc_buffer.data());
      prefetch.Step();
    }
  }
}

#if TFPETS_HAS_AVX2_CLONES
template <typename T>
TFPETS_AVX2_CLONE void UpFirDnRowsAvx2(const T* x, T* y, const UpFirDnShape& s,
                                       const std::vector<float>& weights,
                                       const AxisTaps& rows,
                                       const AxisTaps& cols, int64_t row_begin,
                                       int64_t row_end) {
  UpFirDnRows<T>(x, y, s, weights, rows, cols, row_begin, row_end);
}
#endif

// Output rows [row_begin, row_end) on this CPU's best instruction set.
template <typename T>
void RunUpFirDnRows(const T* x, T* y, const UpFirDnShape& s,
                    const std::vector<float>& weights, const AxisTaps& rows,
                    const AxisTaps& cols, int64_t row_begin, int64_t row_end) {
#if TFPETS_HAS_AVX2_CLONES
  if (UseAvx2Clones()) {
    return UpFirDnRowsAvx2<T>(x, y, s, weights, rows, cols, row_begin,
                              row_end);
  }
#endif
  UpFirDnRows<T>(x, y, s, weights, rows, cols, row_begin, row_end);
}

#if TFPETS_HAS_AVX2_CLONES
template <typename T>
TFPETS_AVX2_CLONE void UpFirDnRowsSeparableAvx2(
    const T* x, T* y, const UpFirDnShape& s, const SeparableWeights& weights,
    const AxisTaps& rows, const AxisTaps& cols, int64_t row_begin,
    int64_t row_end) {
  UpFirDnRowsSeparable<T>(x, y, s, weights, rows, cols, row_begin, row_end);
}
#endif

template <typename T>
void RunUpFirDnRowsSeparable(const T* x, T* y, const UpFirDnShape& s,
                             const SeparableWeights& weights,
                             const AxisTaps& rows, const AxisTaps& cols,
                             int64_t row_begin, int64_t row_end) {
#if TFPETS_HAS_AVX2_CLONES
  if (UseAvx2Clones()) {
    return UpFirDnRowsSeparableAvx2<T>(x, y, s, weights, rows, cols,
                                       row_begin, row_end);
  }
#endif
  UpFirDnRowsSeparable<T>(x, y, s, weights, rows, cols, row_begin, row_end);
}

struct CpuDeviceTag {};
struct GpuDeviceTag {};

template <typename Tag, typename T>
struct UpFirDnLauncher;

template <typename T>
struct UpFirDnLauncher<CpuDeviceTag, T> {
  static void Run(OpKernelContext* ctx, const T* x, T* y,
                  const UpFirDnShape& s, const std::vector<float>& weights) {
    const AxisTaps rows =
        BuildAxisTaps(s.out_h, s.in_h, s.upy, s.downy, s.pady0, s.kh);
    const AxisTaps cols =
        BuildAxisTaps(s.out_w, s.in_w, s.upx, s.downx, s.padx0, s.kw);
    const int64_t taps_per_pixel =
        std::max<int64_t>(1, (s.kh + s.upy - 1) / s.upy) *
        std::max<int64_t>(1, (s.kw + s.upx - 1) / s.upx);
    const int64_t cost = s.out_w * s.channels * (2 * taps_per_pixel + 2);
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    SeparableWeights separable_weights;
    const bool separable = s.kh * s.kw > 1 &&
                           Separate(weights, s.kh, s.kw, &separable_weights);
    workers->ParallelFor(
        s.n * s.out_h, cost,
        [&](::tensorflow::int64 begin, ::tensorflow::int64 end) {
          if (separable) {
            RunUpFirDnRowsSeparable<T>(x, y, s, separable_weights, rows, cols,
                                       begin, end);
          } else {
            RunUpFirDnRows<T>(x, y, s, weights, rows, cols, begin, end);
          }
        });
  }
};

#if GOOGLE_CUDA
template <typename T>
struct UpFirDnLauncher<GpuDeviceTag, T> {
  static void Run(OpKernelContext* ctx, const T* x, T* y,
                  const UpFirDnShape& s, const std::vector<float>& weights) {
    GpuTaps taps{};
    std::copy(weights.begin(), weights.end(), taps.weights);
    LaunchUpFirDnGpu<T>(ctx->eigen_device<Eigen::GpuDevice>(), x, y, s, taps);
  }
};
#endif  // GOOGLE_CUDA

template <typename Tag, typename T>
class UpFirDn2DOp : public OpKernel {
 public:
  explicit UpFirDn2DOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("upx", &upx_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("upy", &upy_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("downx", &downx_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("downy", &downy_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padx0", &padx0_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padx1", &padx1_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pady0", &pady0_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pady1", &pady1_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("flip", &flip_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("gain", &gain_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& k = ctx->input(1);
    OP_REQUIRES(ctx, x.dims() == 4,
                absl::InvalidArgumentError(absl::StrCat(
                    "UpFirDn2D: x must be NHWC (rank 4), got rank ",
                    x.dims())));
    OP_REQUIRES(ctx, k.dims() == 2 && k.NumElements() > 0,
                absl::InvalidArgumentError(
                    "UpFirDn2D: k must be a non-empty 2-D filter"));
    UpFirDnShape s;
    s.n = x.dim_size(0);
    s.in_h = x.dim_size(1);
    s.in_w = x.dim_size(2);
    s.channels = x.dim_size(3);
    s.upx = upx_;
    s.upy = upy_;
    s.downx = downx_;
    s.downy = downy_;
    s.padx0 = padx0_;
    s.pady0 = pady0_;
    s.kh = static_cast<int>(k.dim_size(0));
    s.kw = static_cast<int>(k.dim_size(1));
    s.out_h = OutputSize(s.in_h, upy_, downy_, pady0_, pady1_, s.kh);
    s.out_w = OutputSize(s.in_w, upx_, downx_, padx0_, padx1_, s.kw);
    OP_REQUIRES(ctx, s.out_h > 0 && s.out_w > 0,
                absl::InvalidArgumentError(absl::StrCat(
                    "UpFirDn2D: empty output for input ",
                    x.shape().DebugString(),
                    " and filter ", k.shape().DebugString())));
    constexpr bool kOnCpu = std::is_same<Tag, CpuDeviceTag>::value;
    s.stream = kOnCpu && StreamOutput(s.n * s.out_h * s.out_w * s.channels *
                                      static_cast<int64_t>(sizeof(T)));
    s.prefetch = kOnCpu && BeyondL2(x.NumElements() *
                                    static_cast<int64_t>(sizeof(T)));
    OP_REQUIRES(ctx, kOnCpu || k.NumElements() <= kMaxGpuTaps,
                absl::InvalidArgumentError(absl::StrCat(
                    "UpFirDn2D: the GPU kernel takes at most ", kMaxGpuTaps,
                    " filter taps")));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, {s.n, s.out_h, s.out_w, s.channels}, &y));
    if (y->NumElements() == 0) return;
    UpFirDnLauncher<Tag, T>::Run(ctx, x.flat<T>().data(), y->flat<T>().data(),
                                 s, CorrelationWeights(k, flip_, gain_));
  }

 private:
  int upx_, upy_, downx_, downy_, padx0_, padx1_, pady0_, pady1_;
  bool flip_;
  float gain_;
};

#define REGISTER_CPU(T)                                               \
  REGISTER_KERNEL_BUILDER(Name("UpFirDn2D")                           \
                              .Device(::tensorflow::DEVICE_CPU)       \
                              .TypeConstraint<T>("T"),                \
                          UpFirDn2DOp<CpuDeviceTag, T>)
REGISTER_CPU(float);
REGISTER_CPU(Eigen::half);
REGISTER_CPU(Eigen::bfloat16);
#undef REGISTER_CPU

#if GOOGLE_CUDA
// The filter is read on the host and passed to the kernel by value.
#define REGISTER_GPU(T)                                               \
  REGISTER_KERNEL_BUILDER(Name("UpFirDn2D")                           \
                              .Device(::tensorflow::DEVICE_GPU)       \
                              .TypeConstraint<T>("T")                 \
                              .HostMemory("k"),                       \
                          UpFirDn2DOp<GpuDeviceTag, T>)
REGISTER_GPU(float);
REGISTER_GPU(Eigen::half);
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace
}  // namespace tfpets
