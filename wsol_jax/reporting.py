"""Metric logging: JSON lines (and TensorBoard when installed), a progress bar, summaries."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import jax

from wsol_jax import files

log = logging.getLogger("wsol_jax")


class WorkdirLogHandler(logging.StreamHandler):
  """Log records appended to a file of a workdir on object storage (``files.Appender``:
  uploaded at most every ``files.UPLOAD_EVERY_S`` seconds, on ``flush_logs()`` and when
  closed, e.g. by ``logging.shutdown`` at exit). Local workdirs use ``logging.FileHandler``."""

  def __init__(self, path):
    super().__init__(files.Appender(path))

  def flush(self, force: bool = False) -> None:
    with self.lock:
      self.stream.flush(force)

  def close(self) -> None:
    with self.lock:
      self.stream.close()
    super().close()


def _file_handlers() -> list[logging.Handler]:
  """The handlers of ``wsol_jax``'s logger that write to a workdir."""
  return [h for h in logging.getLogger("wsol_jax").handlers
          if isinstance(h, (logging.FileHandler, WorkdirLogHandler))]


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of the
  first call: a caller or test that redirects stderr later still sees the lines)."""

  def emit(self, record: logging.LogRecord) -> None:
    self.stream = sys.stderr
    super().emit(record)


def setup_logging(workdir: os.PathLike | None = None) -> None:
  """Logs INFO to stderr and, with a workdir, to ``workdir/train.log`` (``train.<p>.log``
  for process p > 0 of a multi-process run)."""
  root = logging.getLogger("wsol_jax")
  fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
  if not any(isinstance(h, _StderrHandler) for h in root.handlers):
    root.setLevel(logging.INFO)
    root.propagate = False
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
  for old in _file_handlers():
    root.removeHandler(old)  # another run of this process: its own train.log
    old.close()
  if workdir is not None:
    p = jax.process_index()
    path = files.as_path(workdir) / ("train.log" if p == 0 else f"train.{p}.log")
    fh = logging.FileHandler(path) if files.is_local(path) else WorkdirLogHandler(path)
    fh.setFormatter(fmt)
    root.addHandler(fh)


def flush_logs() -> None:
  """Brings the workdir's log file up to date (on object storage: uploads it now)."""
  for handler in _file_handlers():
    if isinstance(handler, WorkdirLogHandler):
      handler.flush(force=True)
    else:
      handler.flush()


class MetricWriter:
  """Appends metrics to ``workdir/metrics.jsonl``; mirrors them to TensorBoard if available.

  On object storage the rows reach ``metrics.jsonl`` as ``files.Appender`` uploads them (at
  most every ``files.UPLOAD_EVERY_S`` seconds, on ``flush()`` and on ``close()``), and the
  TensorBoard event files are written to a local temporary directory and copied to
  ``workdir/tensorboard`` by ``flush()`` and ``close()``.
  """

  def __init__(self, workdir: os.PathLike):
    self.workdir = files.as_path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self._tb = None
    self._tb_local = None  # the local directory of the event files of a remote workdir
    if jax.process_index() != 0:  # multi-process runs: process 0 writes for all
      self._file = open(os.devnull, "w")
      return
    self._file = files.Appender(self.path)
    try:
      from tensorboardX import SummaryWriter  # optional
    except ImportError:
      return
    tb_dir = self.workdir / "tensorboard"
    if not files.is_local(tb_dir):
      self._tb_local = tempfile.mkdtemp(prefix="wsol_jax_tensorboard-")
    self._tb = SummaryWriter(self._tb_local or str(tb_dir))

  def supersede_after(self, step: int) -> int:
    """A resume at ``step`` re-runs the steps after it: their rows (train and eval) move
    from ``metrics.jsonl`` to ``metrics.superseded.jsonl``, so every step is logged once.
    Returns the number of rows moved."""
    if jax.process_index() != 0 or not self.path.is_file():
      return 0
    self._file.close()
    keep, moved = [], []
    for line in self.path.read_text().splitlines():
      try:
        later = int(json.loads(line).get("step", 0)) > step
      except (ValueError, AttributeError):
        later = False  # not ours to judge: keep the line as it is
      (moved if later else keep).append(line)
    if moved:
      files.append_text(self.path.with_name("metrics.superseded.jsonl"),
                        "".join(line + "\n" for line in moved))
      files.write_text(self.path, "".join(line + "\n" for line in keep))
    self._file = files.Appender(self.path)
    return len(moved)

  def flush(self) -> None:
    """Brings ``metrics.jsonl`` (and TensorBoard's files) in the workdir up to date."""
    if isinstance(self._file, files.Appender):
      self._file.flush(force=True)
    if self._tb is not None:
      self._tb.flush()
      if self._tb_local is not None:
        files.upload_tree(self._tb_local, self.workdir / "tensorboard")

  def _write(self, row: Mapping[str, Any]) -> None:
    self._file.write(json.dumps(row, sort_keys=True) + "\n")
    self._file.flush()

  def write_train(self, rows: Sequence[Mapping[str, float]], steps_per_epoch: int) -> None:
    """One JSON line per step; ``epoch`` = steps done / steps per epoch."""
    for row in rows:
      epoch = int(row["step"]) / max(int(steps_per_epoch), 1)
      self._write({"split": "train", "epoch": round(epoch, 4), **row})
      if self._tb is not None:
        for k, v in row.items():
          if k != "step":
            self._tb.add_scalar(f"train/{k}", v, int(row["step"]))

  def write_eval(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    self._write({"split": split, "step": int(step), **{k: float(v) for k, v in metrics.items()}})
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
      if self._tb_local is not None:
        files.upload_tree(self._tb_local, self.workdir / "tensorboard")
        shutil.rmtree(self._tb_local, ignore_errors=True)
      self._tb = None


def record_error(message: str) -> None:
  """Writes ``message`` as an ERROR line to ``train.log`` (the file handlers only: the CLI
  prints it on the console itself)."""
  record = logging.LogRecord("wsol_jax.train", logging.ERROR, __file__, 0, message, None, None)
  for handler in _file_handlers():
    handler.handle(record)
  flush_logs()


class Progress:
  """A tqdm bar over training steps with loss, throughput (img/s) and ETA; where output is
  not a terminal (the bar is off), a log line with the same at most every ``every_s``
  seconds and at the last step."""

  def __init__(self, total: int, start: int, batch_size: int, disable: bool | None = None,
               every_s: float = 15.0):
    from tqdm.auto import tqdm
    self.batch_size, self.total, self.every_s = batch_size, total, every_s
    self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                     disable=disable, desc="train")
    self._last_step, self._last_time = start, time.perf_counter()
    self._logged = float("-inf")
    self._logged_step, self._logged_time = start, self._last_time

  def update(self, step: int, row: Mapping[str, float]) -> None:
    now = time.perf_counter()
    seconds_per_step = (now - self._last_time) / max(step - self._last_step, 1)
    rate = self.batch_size / max(seconds_per_step, 1e-9)
    self._last_step, self._last_time = step, now
    loss = row.get("loss", float("nan"))
    self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}", lr=f"{row.get('lr', 0):.2e}")
    self._bar.update(step - self._bar.n)
    if self._bar.disable and (now - self._logged >= self.every_s or step >= self.total):
      # Over the whole interval since the previous line: steps are dispatched
      # asynchronously, so one interval between updates says little.
      per_step = (now - self._logged_time) / max(step - self._logged_step, 1)
      self._logged, self._logged_step, self._logged_time = now, step, now
      eta = time.strftime("%H:%M:%S", time.gmtime((self.total - step) * per_step))
      logging.getLogger("wsol_jax.train").info(
          "step %d/%d  loss %.4f  %.1f img/s  ETA %s", step, self.total, loss,
          self.batch_size / max(per_step, 1e-9), eta)

  def close(self) -> None:
    self._bar.close()


def print_summary(config: Any, test: Mapping[str, float], baseline: Mapping[str, float],
                  split: str | None = None) -> None:
  """Prints the metrics of a split next to the center-Gaussian baseline."""
  keys = [k for k in test if k not in ("num_examples", "num_skipped")]
  lines = [f"{config.method} on {config.data.name} ({split or config.data.test_split} split, "
           f"{int(test.get('num_examples', 0))} images)",
           f"{'metric':<22}{'model':>10}{'center-Gaussian':>18}"]
  for k in keys:
    b = baseline.get(k)
    lines.append(f"{k:<22}{test[k]:>10.2f}{(f'{b:.2f}' if b is not None else '-'):>18}")
  print("\n".join(lines), flush=True)
