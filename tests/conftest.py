"""Test set-up: 8 fake CPU devices for every test (set before JAX starts)."""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain worker processes read absl flags; mark them parsed once for the suite.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

GOLDEN_DIR = pathlib.Path(
    os.environ.get("WSOL_GOLDEN_DIR",
                   pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden" / "v1"))


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
  """Directory of the official-code golden vectors (../shared/golden/v1)."""
  if not (GOLDEN_DIR / "MANIFEST.md").exists():
    raise FileNotFoundError(
        f"golden vectors not found at {GOLDEN_DIR}; set WSOL_GOLDEN_DIR to shared/golden/v1")
  return GOLDEN_DIR
