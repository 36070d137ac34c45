"""Files of workdirs and model directories, local or on object storage (``gs://``).

Every file the project writes or reads in a workdir goes through ``etils.epath.Path``, the
path abstraction Orbax uses too: a local path uses the ``os`` functions, a ``gs://`` URL
goes through fsspec's ``gcs`` protocol (gcsfs, the ``gcs`` extra; ``tf.io.gfile`` when
TensorFlow is installed), while Orbax writes checkpoint arrays to the same bucket with
TensorStore's GCS driver.

Object stores have no append, no atomic directory rename and no partial writes: an object
appears whole when its upload completes. So on a non-local path

* ``write_text`` writes the object directly (locally: a temporary file renamed into place);
* ``Appender`` (metrics, logs) keeps the file's text and uploads all of it again at most
  every ``UPLOAD_EVERY_S`` seconds (at the latest that long after a line is flushed) and on
  ``flush(force=True)``/``close()`` (locally: a file opened for appending, flushed on every
  write);
* tools that open their files themselves (TensorBoard's event writer, the JAX profiler) write
  to a local temporary directory that ``upload_tree`` copies into the workdir, so their
  files too reach it through epath.
"""
from __future__ import annotations

import io
import os
import re
import threading
import time
from typing import Any

from etils import epath

# The URL schemes a workdir may have: Orbax writes checkpoint arrays with TensorStore to a
# local path or to GCS (``gs://``) only.
SCHEMES = ("gs",)
UPLOAD_EVERY_S = 30.0


class UnsupportedPathError(ValueError):
  """A path this project cannot use as a workdir or model directory."""


def as_path(value: str | os.PathLike) -> epath.Path:
  """``value`` as an ``epath.Path``: a ``gs://`` URL as it is, anything else as an absolute
  local path. Raises ``UnsupportedPathError`` for another URL scheme, or for ``gs://``
  when no filesystem for it is installed."""
  if isinstance(value, epath.Path) and not is_local(value):
    return value
  text = os.fspath(value)
  scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
  if not scheme:
    return epath.Path(os.path.abspath(text))
  if scheme.group(1) not in SCHEMES:
    raise UnsupportedPathError(
        f"{scheme.group(1)}:// URLs are not supported (only gs://, where Orbax writes "
        "checkpoints too); give a gs:// URL or a filesystem path")
  _check_gcs_filesystem()
  return epath.Path(text)


def _check_gcs_filesystem() -> None:
  import importlib.util

  import fsspec
  if importlib.util.find_spec("tensorflow") is not None and os.environ.get(
      "EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0"):
    return  # epath reads gs:// with tf.io.gfile
  try:
    fsspec.get_filesystem_class("gcs")
  except (ImportError, ValueError) as e:
    raise UnsupportedPathError(
        "gs:// paths need gcsfs (pip install -e '.[gcs]'); or mount the bucket with gcsfuse "
        f"and give the mount path ({e})") from None


def is_local(path: str | os.PathLike) -> bool:
  """Whether ``path`` is on a local (or mounted) filesystem, not a URL."""
  return "://" not in os.fspath(path)


def write_text(path: epath.Path, text: str) -> None:
  """Writes ``path`` whole: readers see the old or the new content, never a part."""
  if not is_local(path):
    path.write_text(text)  # an object appears when its upload completes
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def write_json(path: epath.Path, obj: Any) -> None:
  import json
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_text(path: epath.Path, text: str) -> None:
  """Appends ``text`` to ``path`` (on object storage: reads and rewrites the object)."""
  if is_local(path):
    with open(path, "a") as f:
      f.write(text)
    return
  old = path.read_text() if path.exists() else ""
  path.write_text(old + text)


def save_png(path: epath.Path, picture: Any) -> None:
  """An (H, W, 3) uint8 array as a PNG file."""
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(picture).save(buffer, format="PNG")
  path.write_bytes(buffer.getvalue())


def save_npy(path: epath.Path, array: Any) -> None:
  import numpy as np
  buffer = io.BytesIO()
  np.save(buffer, array)
  path.write_bytes(buffer.getvalue())


def move_tree(source: epath.Path, target: epath.Path) -> None:
  """Moves the directory ``source`` to ``target`` (which must not exist). Locally a rename;
  on object storage, which has no directories to rename, each object is copied, then
  ``source`` is deleted."""
  if is_local(source):
    source.rename(target)
    return
  for child in _files_under(source):
    dest = target / os.fspath(child)[len(os.fspath(source)):].lstrip("/")
    dest.write_bytes(child.read_bytes())
  source.rmtree()


def _files_under(directory: epath.Path) -> list[epath.Path]:
  out = []
  for child in directory.iterdir():
    out.extend(_files_under(child) if child.is_dir() else [child])
  return out


def upload_tree(local_dir: str | os.PathLike, target: epath.Path) -> int:
  """Copies the files under ``local_dir`` to the same relative paths under ``target``
  (overwriting); returns the number copied."""
  count = 0
  for root, _, names in os.walk(local_dir):
    for name in names:
      source = os.path.join(root, name)
      dest = target / os.path.relpath(source, local_dir)
      dest.parent.mkdir(parents=True, exist_ok=True)
      with open(source, "rb") as f:
        dest.write_bytes(f.read())
      count += 1
  return count


class Appender:
  """A text file opened for appending: ``write``, ``flush``, ``close``.

  Locally the file itself (each ``flush`` reaches the file). On object storage the whole
  text is kept and uploaded again by ``flush`` once ``every_s`` seconds have passed since the
  last upload (a timer thread uploads what a ``flush`` left waiting, so a line reaches the
  object at most ``every_s`` seconds after it was flushed), and at once by
  ``flush(force=True)`` and ``close()``: a killed process loses at most that interval.
  """

  def __init__(self, path: epath.Path, every_s: float = UPLOAD_EVERY_S):
    self.path, self.every_s = path, every_s
    self.local = is_local(path)
    if self.local:
      self._file = open(path, "a")
      return
    self._parts = [path.read_text()] if path.exists() else []
    self._dirty = self._closed = False
    self._uploaded = time.monotonic()
    self._lock = threading.Lock()
    self._timer: threading.Timer | None = None

  @property
  def closed(self) -> bool:
    return self._file.closed if self.local else self._closed

  def write(self, text: str) -> int:
    if self.local:
      return self._file.write(text)
    with self._lock:
      self._parts.append(text)
      self._dirty = True
    return len(text)

  def flush(self, force: bool = False) -> None:
    if self.local:
      self._file.flush()
      return
    with self._lock:
      if not self._dirty:
        return
      wait = self.every_s - (time.monotonic() - self._uploaded)
      if force or wait <= 0:
        self._upload()
      elif self._timer is None:
        self._timer = threading.Timer(wait, self._on_timer)
        self._timer.daemon = True
        self._timer.start()

  def _on_timer(self) -> None:
    with self._lock:
      self._timer = None
      if self._dirty and not self._closed:
        self._upload()

  def _upload(self) -> None:  # with the lock held
    text = "".join(self._parts)
    self._parts = [text]
    self.path.write_text(text)
    self._dirty, self._uploaded = False, time.monotonic()

  def close(self) -> None:
    if self.local:
      self._file.close()
      return
    with self._lock:
      if self._timer is not None:
        self._timer.cancel()
        self._timer = None
      if self._dirty and not self._closed:
        self._upload()
      self._closed = True
