"""The golden_dir fixture: a clone without ../shared skips parity tests, CI makes them fail.

Runs pytest in a subprocess on a tiny golden-dependent test next to a copy of the real
conftest.py, so the check sees exactly what a user (or .ci/run) would see."""
import os
import pathlib
import shutil
import subprocess
import sys

_TINY_TEST = '''
def test_needs_golden(golden_dir):
  assert (golden_dir / "MANIFEST.md").exists()
'''


def _run_pytest(tmp_path: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
  suite = tmp_path / "suite"
  suite.mkdir()
  shutil.copy(pathlib.Path(__file__).with_name("conftest.py"), suite / "conftest.py")
  (suite / "test_tiny.py").write_text(_TINY_TEST)
  empty = tmp_path / "empty_golden"  # exists, but holds no MANIFEST.md
  empty.mkdir()
  environ = {k: v for k, v in os.environ.items() if k != "WSOL_REQUIRE_GOLDEN"}
  environ.update(WSOL_GOLDEN_DIR=str(empty), **env)
  # -p no:cacheprovider: write nothing into the tmp suite; --rootdir: ignore this project's ini.
  return subprocess.run(
      [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "--rootdir", str(suite),
       str(suite / "test_tiny.py")],
      cwd=suite, env=environ, capture_output=True, text=True, timeout=300)


def test_missing_golden_vectors_skip_with_a_message(tmp_path):
  result = _run_pytest(tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "1 skipped" in result.stdout, result.stdout
  assert f"golden vectors not found at {tmp_path / 'empty_golden'}" in result.stdout
  assert "set WSOL_GOLDEN_DIR" in result.stdout


def test_missing_golden_vectors_fail_when_required(tmp_path):
  result = _run_pytest(tmp_path, WSOL_REQUIRE_GOLDEN="1")
  assert result.returncode != 0, result.stdout
  assert "skipped" not in result.stdout, result.stdout
  assert "WSOL_REQUIRE_GOLDEN is set and golden vectors not found" in result.stdout
