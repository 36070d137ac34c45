"""Experiment: the TS-CAM DeiT-S step with its Dense layers on OpenBLAS (XLA FFI) vs XLA:CPU's dots.

  python benchmarks/blas_dense.py --steps 5
  OPENBLAS_NUM_THREADS=1 taskset -c 0 python benchmarks/blas_dense.py --steps 2   # one core

Not part of the library: a measurement for deciding whether wsol_jax should route CPU
Dense layers to a BLAS. It compiles a ~40-line XLA FFI handler (``KERNEL`` below) with the
system C++ compiler against jaxlib's FFI headers and scipy-openblas32 (a wsol_jax
dependency), and builds the
benchmark's TS-CAM step twice: as is, and with every ``nn.Dense`` of the ViT given a
``dot_general`` that calls the handler (custom VJP: dX = g·Wᵀ, dW = Xᵀ·g, the same
handler with transpose flags). The handler splits the output rows over XLA's intra-op
thread pool and runs single-threaded ``sgemm`` on each chunk (``ParallelFor`` of
``wsol_jax/cpu/pool_tasks.h``, shared with the attention kernel).
Both steps are timed interleaved with the matmul rate; the ratio is "BLAS / XLA".
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsol_jax import cpu  # noqa: E402

KERNEL = r"""
#include <algorithm>
#include <cstdint>
#include "xla/ffi/api/ffi.h"
#include "cblas.h"
#include "pool_tasks.h"  // wsol_jax/cpu: ParallelFor over XLA's pool, OneBlasThread
namespace ffi = xla::ffi;
using wsol::ParallelFor;

static ffi::Error GemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                           ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
  wsol::OneBlasThread();
  auto da = a.dimensions(); auto db = b.dimensions();
  if (da.size() != 2 || db.size() != 2) return ffi::Error::InvalidArgument("wsol_gemm: 2-D operands");
  const int64_t m = trans_a ? da[1] : da[0], k = trans_a ? da[0] : da[1], n = trans_b ? db[0] : db[1];
  const int64_t lda = da[1], ldb = db[1];
  const float* pa = a.typed_data(); const float* pb = b.typed_data(); float* pc = c->typed_data();
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(2 * pool.num_threads(), m / 32));
  ParallelFor(pool, chunks, [=](int64_t i) {
    const int64_t lo = i == 0 ? 0 : (m * i / chunks) & ~int64_t(7);
    const int64_t hi = i + 1 == chunks ? m : (m * (i + 1) / chunks) & ~int64_t(7);
    if (hi <= lo) return;
    scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                      hi - lo, n, k, 1.0f, trans_a ? pa + lo : pa + lo * lda, lda, pb, ldb, 0.0f, pc + lo * n, n);
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(WsolGemm, GemmImpl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<bool>("trans_a").Attr<bool>("trans_b"));
"""


def build_kernel() -> ctypes.CDLL:
  """Compiles ``KERNEL`` into a temporary shared library and loads it."""
  import jax.ffi
  from wsol_jax.cpu import build
  try:
    import scipy_openblas32 as openblas
  except ImportError:
    sys.exit("error: this benchmark needs scipy-openblas32: pip install -e '.[cpu]'")
  out = tempfile.mkdtemp(prefix="wsol_blas_")
  src, lib = os.path.join(out, "gemm.cc"), os.path.join(out, "libwsol_gemm.so")
  with open(src, "w") as f:
    f.write(KERNEL)
  cmd = ["c++", "-O3", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
         f"-I{build.KERNEL_DIR}",
         f"-I{openblas.get_include_dir()}", src, f"-L{openblas.get_lib_dir()}",
         f"-l{openblas.get_library()}", f"-Wl,-rpath,{openblas.get_lib_dir()}", "-o", lib]
  subprocess.run(cmd, check=True)
  return ctypes.cdll.LoadLibrary(lib)


def blas_dense_patch():
  """A replacement for ``vit._dense``: Dense layers whose matmuls call the handler."""
  import flax.linen as nn
  import jax
  from wsol_jax.models import layers

  jax.ffi.register_ffi_target("wsol_gemm", jax.ffi.pycapsule(build_kernel().WsolGemm), platform="cpu")

  def gemm(a, b, trans_a=False, trans_b=False):
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    return jax.ffi.ffi_call("wsol_gemm", jax.ShapeDtypeStruct((m, n), a.dtype))(
        a, b, trans_a=trans_a, trans_b=trans_b)

  @jax.custom_vjp
  def matmul(x, w):
    return gemm(x, w)

  matmul.defvjp(lambda x, w: (gemm(x, w), (x, w)),
                lambda res, g: (gemm(g, res[1], trans_b=True), gemm(res[0], g, trans_a=True)))

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    (lc, rc), (lb, _) = dimension_numbers
    assert tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and not lb, dimension_numbers
    out = matmul(lhs.reshape(-1, lhs.shape[-1]), rhs)
    return out.reshape(lhs.shape[:-1] + (rhs.shape[1],))

  def dense(features, name, dtype, injected_dot_general, use_bias=True):
    del injected_dot_general  # replaced by the OpenBLAS one
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name, dot_general=dot_general,
                    kernel_init=layers.trunc_normal_init(0.02), bias_init=nn.initializers.zeros)

  return dense


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="timed rounds (after 2 warm-ups)")
  args = parser.parse_args()
  cpu.install(argparse.Namespace(cpu_tuning="auto"))  # before JAX starts, as the trainer does
  import jax
  import train_step
  from wsol_jax.models import vit

  runners = {}
  runners["xla"], flops = train_step.patched_step_runner("tscam", args.batch, [])
  runners["blas"], _ = train_step.patched_step_runner(
      "tscam", args.batch, [(vit, "_dense", blas_dense_patch())])
  times, rates = train_step.time_round_robin(runners, args.steps)
  burst = max(r[0] for r in rates)
  print(f"TS-CAM DeiT-S 224, batch {args.batch}; {jax.device_count()} cpu device(s); "
        f"fastest 2048^3 XLA matmul {burst / 1e9:.1f} GFLOP/s; {flops / 1e9:.1f} GFLOP/step")
  for name, label in (("xla", "Dense on XLA dots"), ("blas", "Dense on OpenBLAS")):
    best, med = min(times[name]), statistics.median(times[name])
    print(f"{label:<20} best {best:7.3f} s  median {med:7.3f} s  {flops / best / burst:6.1%} of matmul")
  print(f"BLAS / XLA (median step time): "
        f"{statistics.median(times['blas']) / statistics.median(times['xla']):.3f}")


if __name__ == "__main__":
  main()
