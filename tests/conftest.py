"""Test set-up: 8 fake CPU devices for every test (set before JAX starts)."""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# On an accelerator (e.g. benchmarks/accelerator_check.py runs these tests with
# JAX_PLATFORMS=cuda or tpu) float32 matmuls run at full precision: the parity tolerances are
# float32's, and a TPU's default bf16 passes (or a GPU's TF32) would break them.
if os.environ["JAX_PLATFORMS"].split(",")[0] not in ("cpu", ""):
  import jax  # noqa: E402
  jax.config.update("jax_default_matmul_precision", "highest")

import pathlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain worker processes read absl flags; mark them parsed once for the suite.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

GOLDEN_DIR = pathlib.Path(
    os.environ.get("WSOL_GOLDEN_DIR",
                   pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden" / "v1"))
# CI (.ci/run) sets WSOL_REQUIRE_GOLDEN=1 so that missing vectors fail the run instead of
# silently skipping every parity test; a plain clone without ../shared skips them.
REQUIRE_GOLDEN = os.environ.get("WSOL_REQUIRE_GOLDEN", "") not in ("", "0")


def golden_missing_message(directory: pathlib.Path) -> str:
  return (f"golden vectors not found at {directory}: these parity tests compare with outputs of "
          "the official PyTorch code shipped in the project's shared/golden/v1; "
          "set WSOL_GOLDEN_DIR")


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
  """Directory of the official-code golden vectors (../shared/golden/v1).

  Every golden-dependent test reaches the files through this fixture, so a missing directory
  skips exactly those tests (or fails them under WSOL_REQUIRE_GOLDEN=1)."""
  if not (GOLDEN_DIR / "MANIFEST.md").exists():
    message = golden_missing_message(GOLDEN_DIR)
    if REQUIRE_GOLDEN:
      pytest.fail(f"WSOL_REQUIRE_GOLDEN is set and {message}", pytrace=False)
    pytest.skip(message)
  return GOLDEN_DIR


def _convert(out_dir: pathlib.Path, *args: str) -> pathlib.Path:
  from weights_convert import timm as convert_cli
  code = convert_cli.main([*args, "--out", str(out_dir)])
  assert code == 0, f"conversion failed: {args}"
  return out_dir


@pytest.fixture(scope="session")
def golden_vit_dir(golden_dir, tmp_path_factory) -> pathlib.Path:
  """The golden timm ViT (D=192, depth 4, 3 heads, 10 classes) converted by the real CLI."""
  return _convert(tmp_path_factory.mktemp("golden") / "vit", "--model", "deit_tiny_patch16_224",
                  "--checkpoint", str(golden_dir / "weights_vit.safetensors"), "--set", "depth=4")


@pytest.fixture(scope="session")
def golden_resnet_dir(golden_dir, tmp_path_factory) -> pathlib.Path:
  """The golden timm ResNet (one Bottleneck per stage, 10 classes) converted by the real CLI."""
  return _convert(tmp_path_factory.mktemp("golden") / "resnet", "--model", "resnet50",
                  "--checkpoint", str(golden_dir / "weights_resnet.safetensors"),
                  "--set", "layers=(1,1,1,1)")


@pytest.fixture(scope="session")
def golden_inputs(golden_dir):
  """Golden images as NHWC float32 (ImageNet-normalised) and the class targets."""
  import numpy as np
  data = np.load(golden_dir / "inputs.npz")
  return data["images"].transpose(0, 2, 3, 1).copy(), data["targets"].astype(np.int32)
