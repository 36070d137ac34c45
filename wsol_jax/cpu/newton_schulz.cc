// SCM's Newton–Schulz chain on a grid stencil for XLA:CPU, forward and backward, as XLA FFI
// handlers (injected by the CPU wing into ``wsol_jax.models.scm_adb``'s stencil ADB; same
// recurrence, one image per task).
//
// M and X₀ = α·M are symmetric matrices on the h×w grid's 5-point stencil, given as five
// coefficient planes per image, (B, 5, N): the diagonal and the couplings of every cell with
// its right, left, lower and upper neighbour (zero where the neighbour is outside the grid).
//   forward   X₁ = X₀ (2I − M X₀),  X_{k+1} = X_k (2I − M X_k),  k = 1..K−2  (all returned)
//   backward  from Ḡ = ∂L/∂X_{last+1}, for k = last..1:
//               Ȳ = X_kᵀ Ḡ;  M̄ −= Ȳ ⊙ X_k (stencil entries);  Ḡ ← Ḡ Y_kᵀ − M Ȳ,
//             then the constant X₀: Ȳ = X₀ Ḡ;  M̄ −= Ȳ ⊙ X₀.
// Every image's matrices (N×N, 150 KB at N = 196) stay in L2 through the whole chain, and
// the stencil products are row AXPYs fused with 2I − ·, instead of XLA:CPU running each
// step as separate thunks over the whole batch.
#include <cstdint>
#include <cstring>
#include <vector>

#include "cblas.h"
#include "pool_tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using wsol::OneBlasThread;
using wsol::ParallelFor;

enum Plane { kCenter = 0, kRight = 1, kLeft = 2, kDown = 3, kUp = 4 };

struct Grid {
  int64_t h, w, n;
};

// out = S x for the stencil S (coef: 5×N) and x (N×cols, row-major), summed in the order
// of the JAX code (centre, right, left, down, up); neighbours outside the grid are skipped
// (their coefficient is zero). With two_minus: out = 2I − S x (cols == N).
void StencilApply(const Grid& g, const float* coef, const float* x, int64_t cols, float* out,
                  bool two_minus) {
  const float* c0 = coef + kCenter * g.n;
  const float* cr = coef + kRight * g.n;
  const float* cl = coef + kLeft * g.n;
  const float* cd = coef + kDown * g.n;
  const float* cu = coef + kUp * g.n;
  for (int64_t p = 0; p < g.n; ++p) {
    const int64_t i = p / g.w, j = p % g.w;
    const float* xp = x + p * cols;
    const float* xr = j + 1 < g.w ? xp + cols : nullptr;
    const float* xl = j > 0 ? xp - cols : nullptr;
    const float* xd = i + 1 < g.h ? xp + g.w * cols : nullptr;
    const float* xu = i > 0 ? xp - g.w * cols : nullptr;
    const float a0 = c0[p], ar = cr[p], al = cl[p], ad = cd[p], au = cu[p];
    float* o = out + p * cols;
    for (int64_t k = 0; k < cols; ++k) {
      float s = a0 * xp[k];
      if (xr) s += ar * xr[k];
      if (xl) s += al * xl[k];
      if (xd) s += ad * xd[k];
      if (xu) s += au * xu[k];
      o[k] = two_minus ? -s : s;
    }
    if (two_minus) o[p] += 2.0f;
  }
}

// The dense N×N matrix of a stencil.
void StencilDense(const Grid& g, const float* coef, float* out) {
  std::memset(out, 0, sizeof(float) * g.n * g.n);
  for (int64_t p = 0; p < g.n; ++p) {
    const int64_t i = p / g.w, j = p % g.w;
    float* o = out + p * g.n;
    o[p] = coef[kCenter * g.n + p];
    if (j + 1 < g.w) o[p + 1] = coef[kRight * g.n + p];
    if (j > 0) o[p - 1] = coef[kLeft * g.n + p];
    if (i + 1 < g.h) o[p + g.w] = coef[kDown * g.n + p];
    if (i > 0) o[p - g.w] = coef[kUp * g.n + p];
  }
}

// Σ_k a[k]·b[k] in eight interleaved partial sums added in a fixed order at the end: the
// compiler vectorises it without being allowed to reassociate (no fast-math), so the result
// is the same for every vector width.
inline float Dot(const float* a, const float* b, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int l = 0; l < 8; ++l) lane[l] += a[k + l] * b[k + l];
  }
  for (int l = 0; k < n; ++k, ++l) lane[l] += a[k] * b[k];
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// acc −= the coefficient cotangent of S x for the output cotangent ct (both N×N):
// plane c at cell p gets Σ_k ct[p,k]·x[q,k] with q = p or its neighbour in that direction.
void SubtractCoefficientGrad(const Grid& g, const float* x, const float* ct, float* acc) {
  for (int64_t p = 0; p < g.n; ++p) {
    const int64_t i = p / g.w, j = p % g.w;
    const float* t = ct + p * g.n;
    const float* xp = x + p * g.n;
    const float s0 = Dot(t, xp, g.n);
    const float sr = j + 1 < g.w ? Dot(t, xp + g.n, g.n) : 0.0f;
    const float sl = j > 0 ? Dot(t, xp - g.n, g.n) : 0.0f;
    const float sd = i + 1 < g.h ? Dot(t, xp + g.w * g.n, g.n) : 0.0f;
    const float su = i > 0 ? Dot(t, xp - g.w * g.n, g.n) : 0.0f;
    acc[kCenter * g.n + p] -= s0;
    acc[kRight * g.n + p] -= sr;
    acc[kLeft * g.n + p] -= sl;
    acc[kDown * g.n + p] -= sd;
    acc[kUp * g.n + p] -= su;
  }
}

// c = a·b (transa/transb: use aᵀ/bᵀ), N×N row-major.
void Gemm(int64_t n, const float* a, bool transa, const float* b, bool transb, float* c) {
  scipy_cblas_sgemm(CblasRowMajor, transa ? CblasTrans : CblasNoTrans,
                    transb ? CblasTrans : CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
}

// Checks coef (B, 5, N) against the grid; returns false on a mismatch.
bool CheckCoef(const ffi::Buffer<ffi::F32>& coef, const Grid& g, int64_t* batch) {
  auto d = coef.dimensions();
  if (d.size() != 3 || d[1] != 5 || d[2] != g.n) return false;
  *batch = d[0];
  return true;
}

ffi::Error BadShapes(const char* what) {
  return ffi::Error::InvalidArgument(std::string("wsol newton_schulz: ") + what);
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coef_m, ffi::Buffer<ffi::F32> coef_x0,
                   ffi::RemainingRets xs, int64_t h, int64_t w) {
  OneBlasThread();
  const Grid g{h, w, h * w};
  int64_t batch, batch_x0;
  if (!CheckCoef(coef_m, g, &batch) || !CheckCoef(coef_x0, g, &batch_x0) || batch != batch_x0) {
    return BadShapes("coefficients must be (B, 5, h·w) float32");
  }
  std::vector<float*> out;
  for (size_t r = 0; r < xs.size(); ++r) {
    auto buf = xs.get<ffi::Buffer<ffi::F32>>(r);
    if (!buf.has_error() && (*buf)->element_count() == batch * g.n * g.n) {
      out.push_back((*buf)->typed_data());
    } else {
      return BadShapes("every iterate must be (B, h·w, h·w) float32");
    }
  }
  if (out.empty()) return ffi::Error::Success();
  const float* cm_all = coef_m.typed_data();
  const float* cx_all = coef_x0.typed_data();
  ParallelFor(pool, batch, [=, &out](int64_t b) {
    thread_local std::vector<float> scratch;
    scratch.resize(2 * g.n * g.n);
    float* dense = scratch.data();
    float* y = dense + g.n * g.n;
    const float* cm = cm_all + b * 5 * g.n;
    const float* cx = cx_all + b * 5 * g.n;
    const int64_t stride = g.n * g.n;
    StencilDense(g, cx, dense);
    StencilApply(g, cm, dense, g.n, y, true);               // Y₀ = 2I − M X₀
    StencilApply(g, cx, y, g.n, out[0] + b * stride, false);  // X₁ = X₀ Y₀
    for (size_t k = 1; k < out.size(); ++k) {
      const float* x = out[k - 1] + b * stride;
      StencilApply(g, cm, x, g.n, y, true);                 // Y_k = 2I − M X_k
      Gemm(g.n, x, false, y, false, out[k] + b * stride);   // X_{k+1} = X_k Y_k
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coef_m, ffi::Buffer<ffi::F32> coef_x0,
                    ffi::Buffer<ffi::F32> g_last, ffi::RemainingArgs xs,
                    ffi::ResultBuffer<ffi::F32> grad, int64_t h, int64_t w) {
  OneBlasThread();
  const Grid g{h, w, h * w};
  int64_t batch, batch_x0;
  if (!CheckCoef(coef_m, g, &batch) || !CheckCoef(coef_x0, g, &batch_x0) || batch != batch_x0) {
    return BadShapes("coefficients must be (B, 5, h·w) float32");
  }
  const int64_t stride = g.n * g.n;
  if (g_last.element_count() != batch * stride || grad->element_count() != batch * 5 * g.n) {
    return BadShapes("the cotangent must be (B, h·w, h·w) and the gradient (B, 5, h·w)");
  }
  std::vector<const float*> iterates;
  for (size_t r = 0; r < xs.size(); ++r) {
    auto buf = xs.get<ffi::Buffer<ffi::F32>>(r);
    if (!buf.has_error() && buf->element_count() == batch * stride) {
      iterates.push_back(buf->typed_data());
    } else {
      return BadShapes("every iterate must be (B, h·w, h·w) float32");
    }
  }
  const float* cm_all = coef_m.typed_data();
  const float* cx_all = coef_x0.typed_data();
  const float* g_all = g_last.typed_data();
  float* grad_all = grad->typed_data();
  ParallelFor(pool, batch, [=, &iterates](int64_t b) {
    thread_local std::vector<float> scratch;
    scratch.resize(4 * stride);
    float* gbar = scratch.data();
    float* ybar = gbar + stride;
    float* y = ybar + stride;
    float* next = y + stride;
    const float* cm = cm_all + b * 5 * g.n;
    const float* cx = cx_all + b * 5 * g.n;
    float* acc = grad_all + b * 5 * g.n;
    std::memset(acc, 0, sizeof(float) * 5 * g.n);
    std::memcpy(gbar, g_all + b * stride, sizeof(float) * stride);
    for (size_t k = iterates.size(); k-- > 0;) {
      const float* x = iterates[k] + b * stride;
      Gemm(g.n, x, true, gbar, false, ybar);               // Ȳ = Xᵀ Ḡ
      StencilApply(g, cm, x, g.n, y, true);                // Y = 2I − M X
      SubtractCoefficientGrad(g, x, ybar, acc);            // M̄ −= Ȳ ⊙ X
      Gemm(g.n, gbar, false, y, true, next);               // Ḡ Yᵀ
      StencilApply(g, cm, ybar, g.n, y, false);            // M Ȳ (y reused)
      for (int64_t e = 0; e < stride; ++e) next[e] -= y[e];
      std::swap(gbar, next);
    }
    StencilApply(g, cx, gbar, g.n, ybar, false);           // step 0: Ȳ = X₀ Ḡ
    StencilDense(g, cx, y);
    SubtractCoefficientGrad(g, y, ybar, acc);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WsolNewtonSchulzForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingRets()
                                  .Attr<int64_t>("h")
                                  .Attr<int64_t>("w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(WsolNewtonSchulzBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("h")
                                  .Attr<int64_t>("w"));
