// Non-temporal (streaming) stores for the CPU kernels' large outputs, and
// the sizes past which a tensor is taken to live beyond a cache.
//
// An output larger than half the last-level cache (32 MB per core complex
// on current server CPUs) is no longer cached when the next op reads it,
// and a plain store first reads each output line from memory
// (write-allocate). Non-temporal stores skip that read. UpFirDn2D stages
// its outputs in L1 and copies them out; FusedBiasAct's piecewise-linear
// rows store straight from registers, where staging gains nothing
// (measurements: benchmarks/RESULTS.md).

#ifndef TFPETS_OPS_KERNELS_CPU_STREAM_H_
#define TFPETS_OPS_KERNELS_CPU_STREAM_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace tfpets {

// Whether an output of `bytes` is too large to stay cached between ops,
// and so is streamed. TFPETS_OPS_STREAM_MIN_BYTES overrides the 16 MiB
// threshold; tests set 0 to compare the two paths.
inline bool StreamOutput(int64_t bytes) {
  static const int64_t min_bytes = [] {
    const char* value = std::getenv("TFPETS_OPS_STREAM_MIN_BYTES");
    return value != nullptr ? std::atoll(value) : int64_t{16} << 20;
  }();
  return bytes >= min_bytes;
}

// Whether an input of `bytes` is larger than a core's L2 cache (1 MiB on
// current server CPUs), so that its reads wait on L3 or memory and are
// worth prefetching. A lower TFPETS_OPS_STREAM_MIN_BYTES lowers this
// threshold too, so that tests force both paths with one variable.
inline bool BeyondL2(int64_t bytes) {
  return bytes >= (int64_t{1} << 20) || StreamOutput(bytes);
}

// Copies with non-temporal stores where dst is 16-byte aligned, plain
// stores at the unaligned ends; StreamFence must follow before another
// thread reads dst.
inline void StreamCopy(void* dst, const void* src, int64_t bytes) {
#if defined(__x86_64__)
  auto* out = static_cast<char*>(dst);
  const auto* in = static_cast<const char*>(src);
  const int64_t misalignment = reinterpret_cast<uintptr_t>(out) % 16;
  const int64_t head = std::min<int64_t>(bytes, (16 - misalignment) % 16);
  std::memcpy(out, in, head);
  int64_t k = head;
  for (; k + 16 <= bytes; k += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(out + k),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + k)));
  }
  std::memcpy(out + k, in + k, bytes - k);
#else
  std::memcpy(dst, src, bytes);
#endif
}

// Orders a worker's non-temporal stores before the op completes.
inline void StreamFence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

}  // namespace tfpets

#endif  // TFPETS_OPS_KERNELS_CPU_STREAM_H_
