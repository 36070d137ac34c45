// Multi-head self-attention core for XLA:CPU, forward and backward, as XLA FFI handlers.
//
// Works on the fused qkv projection's output as it is, (B, N, 3·H·d) with q, k, v of head h
// at columns [h·d, (h+1)·d), [C + h·d, ...), [2C + h·d, ...) (C = H·d, timm's layout), so
// no head split or merge is materialised. Per (batch, head), on XLA's intra-op threads:
//   forward   P = softmax(scale · Q Kᵀ)   O = P V            (O written into (B, N, C))
//   backward  dV = Pᵀ dO   dP = dO Vᵀ + G   dS = P ⊙ (dP − rowsum(P ⊙ dP))
//             dQ = scale · dS K   dK = scale · dSᵀ Q          (written into (B, N, 3C))
// with single-threaded OpenBLAS sgemm on operands that stay in L2, instead of XLA:CPU's
// batched dots around a (3, B, H, N, d) transpose. G is an optional cotangent of P.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "cblas.h"
#include "pool_tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using wsol::OneBlasThread;
using wsol::ParallelFor;

// exp(x) for x ≤ 0 (softmax after subtracting the row max): 2^n · p(r), r = x − n·ln2,
// |r| ≤ ln2/2, degree-6 polynomial (≤ 2 ulp); 0 below −87.3; NaN propagates.
constexpr float kExpMin = -87.3f, kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f,
                kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline float ExpNonPositive(float x) {
  const float xc = x < kExpMin ? kExpMin : x;
  const float n = __builtin_nearbyintf(xc * kLog2e);
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = kExpPoly[0];
  for (int i = 1; i < 6; ++i) p = p * r + kExpPoly[i];
  p = (p * r) * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < kExpMin ? 0.0f : (x != x ? x : p * scale);
}

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 ExpNonPositive8(__m256 x) {
  const __m256 xc = _mm256_max_ps(x, _mm256_set1_ps(kExpMin));  // NaN -> kExpMin, fixed below
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[i]));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_LT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)));
}
#endif

// Row-wise softmax of s (n×n, row-major) in place; s already holds the scaled scores.
void SoftmaxRows(float* s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = s + i * n;
    int64_t j = 0;
    float m = row[0], z = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    if (n >= 8) {
      __m256 vm = _mm256_loadu_ps(row);
      for (j = 8; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(row + j));
      m = HorizontalMax(vm);
    }
    for (; j < n; ++j) m = row[j] > m ? row[j] : m;
    const __m256 vmax = _mm256_set1_ps(m);
    __m256 vz = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
      const __m256 e = ExpNonPositive8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmax));
      _mm256_storeu_ps(row + j, e);
      vz = _mm256_add_ps(vz, e);
    }
    z = HorizontalSum(vz);
#else
    for (j = 1; j < n; ++j) m = row[j] > m ? row[j] : m;
    j = 0;
#endif
    for (; j < n; ++j) {
      row[j] = ExpNonPositive(row[j] - m);
      z += row[j];
    }
    for (j = 0; j < n; ++j) row[j] /= z;
  }
}

// dS = P ⊙ (dP − rowsum(P ⊙ dP)) in place of dP (n×n).
void SoftmaxBackwardRows(const float* p, float* dp, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float* pr = p + i * n;
    float* dr = dp + i * n;
    int64_t j = 0;
    float dot = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(pr + j), _mm256_loadu_ps(dr + j), acc);
    dot = HorizontalSum(acc);
#endif
    for (; j < n; ++j) dot += pr[j] * dr[j];
    for (j = 0; j < n; ++j) dr[j] = pr[j] * (dr[j] - dot);
  }
}

struct Dims {
  int64_t b, n, c, h, d;
};

// Dims of qkv (B, N, 3·heads·d), or false if it does not have that form.
bool CheckQkv(ffi::Buffer<ffi::F32>& qkv, int64_t heads, Dims* out) {
  auto dims = qkv.dimensions();
  if (dims.size() != 3 || heads <= 0 || dims[2] % (3 * heads) != 0) return false;
  *out = Dims{dims[0], dims[1], dims[2] / 3, heads, dims[2] / (3 * heads)};
  return true;
}

ffi::Error BadQkv() {
  return ffi::Error::InvalidArgument("wsol attention: qkv must be (B, N, 3·heads·head_dim) float32");
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> probs, int64_t heads, float scale) {
  OneBlasThread();
  Dims s;
  if (!CheckQkv(qkv, heads, &s)) return BadQkv();
  const int64_t c3 = 3 * s.c;
  const float* x = qkv.typed_data();
  float* o = out->typed_data();
  float* p_all = probs->typed_data();
  ParallelFor(pool, s.b * s.h, [=](int64_t bh) {
    const int64_t b = bh / s.h, h = bh % s.h;
    const float* q = x + b * s.n * c3 + h * s.d;
    const float* k = q + s.c;
    const float* v = q + 2 * s.c;
    float* p = p_all + bh * s.n * s.n;
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.n, s.n, s.d, scale, q, c3, k, c3,
                      0.0f, p, s.n);
    SoftmaxRows(p, s.n);
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.n, s.d, s.n, 1.0f, p, s.n, v, c3,
                      0.0f, o + b * s.n * s.c + h * s.d, s.c);
  });
  return ffi::Error::Success();
}

// g_probs: the cotangent of P, or an empty buffer when it is zero.
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> probs,
                    ffi::Buffer<ffi::F32> g_out, ffi::Buffer<ffi::F32> g_probs,
                    ffi::ResultBuffer<ffi::F32> g_qkv, int64_t heads, float scale) {
  OneBlasThread();
  Dims s;
  if (!CheckQkv(qkv, heads, &s)) return BadQkv();
  const bool has_gp = g_probs.element_count() != 0;
  if (has_gp && g_probs.element_count() != probs.element_count()) {
    return ffi::Error::InvalidArgument("wsol attention: probs cotangent has the wrong size");
  }
  const int64_t c3 = 3 * s.c;
  const float* x = qkv.typed_data();
  const float* p_all = probs.typed_data();
  const float* go = g_out.typed_data();
  const float* gp_all = has_gp ? g_probs.typed_data() : nullptr;
  float* gx = g_qkv->typed_data();
  ParallelFor(pool, s.b * s.h, [=](int64_t bh) {
    thread_local std::vector<float> scratch;
    scratch.resize(s.n * s.n);
    float* dp = scratch.data();
    const int64_t b = bh / s.h, h = bh % s.h;
    const float* q = x + b * s.n * c3 + h * s.d;
    const float* k = q + s.c;
    const float* v = q + 2 * s.c;
    const float* p = p_all + bh * s.n * s.n;
    const float* dout = go + b * s.n * s.c + h * s.d;
    float* dq = gx + b * s.n * c3 + h * s.d;
    float* dk = dq + s.c;
    float* dv = dq + 2 * s.c;
    scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s.n, s.d, s.n, 1.0f, p, s.n, dout,
                      s.c, 0.0f, dv, c3);
    if (has_gp) std::memcpy(dp, gp_all + bh * s.n * s.n, sizeof(float) * s.n * s.n);
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.n, s.n, s.d, 1.0f, dout, s.c, v,
                      c3, has_gp ? 1.0f : 0.0f, dp, s.n);
    SoftmaxBackwardRows(p, dp, s.n);
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.n, s.d, s.n, scale, dp, s.n, k,
                      c3, 0.0f, dq, c3);
    scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s.n, s.d, s.n, scale, dp, s.n, q,
                      c3, 0.0f, dk, c3);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WsolAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(WsolAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<float>("scale"));
