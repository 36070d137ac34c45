"""An offline stand-in for Google Cloud Storage that a whole ``gs://`` run can use.

A run on ``gs://bucket/...`` reaches storage two ways, and both land in one in-memory
object store here:

* ``etils.epath`` (every file the project writes itself, and Orbax's metadata files) goes
  through the fsspec protocol ``gcs``: ``install()`` registers ``FakeGcsFileSystem``, an
  fsspec ``MemoryFileSystem`` whose store holds objects under ``bucket/key`` names, for it
  (in production, gcsfs);
* TensorStore (the arrays of Orbax checkpoints) speaks GCS's JSON API over HTTP:
  ``install()`` starts ``FakeGcsServer`` on 127.0.0.1 and points
  ``TENSORSTORE_GCS_HTTP_URL`` at it. The server serves the same store: reads (whole or a
  byte range), uploads, deletes and listings, with GCS's generation preconditions
  (``ifGenerationMatch`` / ``ifGenerationNotMatch``), which TensorStore's conditional
  writes rely on.

Orbax asks the bucket whether it has a hierarchical namespace (through the
google-cloud-storage client); ``install()`` answers that it has not (a flat bucket, GCS's
default), without the client.

TensorStore reads ``TENSORSTORE_GCS_HTTP_URL`` once per process, so ``install()`` must run
before the process's first GCS access and the server lives as long as the process.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import urllib.parse
from typing import Any

import fsspec
from fsspec.implementations.memory import MemoryFileSystem


class FakeGcsFileSystem(MemoryFileSystem):
  """fsspec's memory filesystem under GCS names: ``gs://bucket/a/b`` is the key
  ``bucket/a/b`` (as gcsfs names them: no leading slash)."""

  protocol = ("gs", "gcs")
  root_marker = ""
  store: dict[str, Any] = {}
  pseudo_dirs = [""]

  def __init__(self, *args, **kwargs):
    kwargs.pop("finalize_on_close", None)  # a gcsfs option that epath passes
    super().__init__(*args, **kwargs)

  # GCS has no directories: a "directory" exists while an object name has it as a prefix
  # (gcsfs's makedirs creates nothing inside a bucket either).
  def mkdir(self, path, create_parents=True, **kwargs):
    pass

  def makedirs(self, path, exist_ok=False):
    pass

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix):]
    return path.strip("/")


def _generation(data: bytes) -> int:
  """A positive generation number that changes with the content (GCS gives each upload a
  new one; equal contents sharing one changes nothing a precondition decides)."""
  return int.from_bytes(hashlib.sha256(data).digest()[:7], "big") + 1


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  fs: FakeGcsFileSystem

  def log_message(self, *args):  # quiet
    pass

  # -- helpers --------------------------------------------------------------------------------
  def _parse(self) -> tuple[list[str], dict[str, str]]:
    url = urllib.parse.urlsplit(self.path)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
    return url.path.split("/"), query

  def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    self.send_response(code)
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if body and self.command != "HEAD":
      self.wfile.write(body)

  def _json(self, code: int, obj: Any) -> None:
    self._reply(code, json.dumps(obj).encode(), {"Content-Type": "application/json"})

  def _error(self, code: int, message: str) -> None:
    self._json(code, {"error": {"code": code, "message": message}})

  def _object(self, bucket: str, name: str) -> bytes | None:
    key = f"{bucket}/{name}"
    entry = self.fs.store.get(key)
    return None if entry is None else bytes(entry.getbuffer())

  def _resource(self, bucket: str, name: str, data: bytes) -> dict[str, Any]:
    return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(len(data)),
            "generation": str(_generation(data)), "metageneration": "1"}

  def _preconditions(self, query: dict[str, str], data: bytes | None) -> int | None:
    """The HTTP status a failed generation precondition gives (None: they hold)."""
    current = 0 if data is None else _generation(data)
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != current:
      return 412
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == current:
      return 304
    return None

  # -- JSON API -------------------------------------------------------------------------------
  def do_GET(self):  # noqa: N802
    parts, query = self._parse()
    # /storage/v1/b/<bucket>/o[/<object>]
    if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 6 or parts[5] != "o":
      return self._error(404, f"unknown path {self.path}")
    bucket = urllib.parse.unquote(parts[4])
    if len(parts) == 6 or parts[6] == "":
      return self._list(bucket, query)
    name = urllib.parse.unquote("/".join(parts[6:]))
    data = self._object(bucket, name)
    if data is None:
      return self._error(404, f"no object {bucket}/{name}")
    failed = self._preconditions(query, data)
    if failed:
      return self._reply(failed) if failed == 304 else self._error(failed, "precondition")
    headers = {"x-goog-generation": str(_generation(data))}
    if query.get("alt") != "media":
      return self._json(200, self._resource(bucket, name, data))
    byte_range = self.headers.get("Range")
    if byte_range and byte_range.startswith("bytes="):
      first, _, last = byte_range[len("bytes="):].partition("-")
      start = int(first) if first else max(len(data) - int(last), 0)
      stop = int(last) + 1 if first and last else len(data)
      if start >= len(data) and len(data) > 0:
        return self._error(416, "range not satisfiable")
      part = data[start:stop]
      headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
      return self._reply(206, part, headers)
    return self._reply(200, data, headers)

  def _list(self, bucket: str, query: dict[str, str]) -> None:
    prefix = query.get("prefix", "")
    start, end = query.get("startOffset", ""), query.get("endOffset", "")
    delimiter = query.get("delimiter", "")
    names = sorted(k[len(bucket) + 1:] for k in list(self.fs.store) if k.startswith(bucket + "/"))
    items, prefixes = [], set()
    for name in names:
      if not name.startswith(prefix) or name < start or (end and name >= end):
        continue
      rest = name[len(prefix):]
      if delimiter and delimiter in rest:
        prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
        continue
      items.append(self._resource(bucket, name, self._object(bucket, name) or b""))
    reply: dict[str, Any] = {"kind": "storage#objects", "items": items}
    if prefixes:
      reply["prefixes"] = sorted(prefixes)
    self._json(200, reply)

  def do_POST(self):  # noqa: N802
    parts, query = self._parse()
    # /upload/storage/v1/b/<bucket>/o?uploadType=media&name=<object>
    if parts[1:5] != ["upload", "storage", "v1", "b"] or query.get("uploadType") != "media":
      return self._error(501, f"unsupported request {self.command} {self.path}")
    bucket, name = urllib.parse.unquote(parts[5]), query["name"]
    data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
    with _LOCK:
      failed = self._preconditions(query, self._object(bucket, name))
      if failed:
        return self._error(412, "precondition failed")
      self.fs.pipe_file(f"{bucket}/{name}", data)
    self._json(200, self._resource(bucket, name, data))

  def do_DELETE(self):  # noqa: N802
    parts, query = self._parse()
    if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 7:
      return self._error(404, f"unknown path {self.path}")
    bucket, name = urllib.parse.unquote(parts[4]), urllib.parse.unquote("/".join(parts[6:]))
    with _LOCK:
      data = self._object(bucket, name)
      if data is None:
        return self._error(404, f"no object {bucket}/{name}")
      failed = self._preconditions(query, data)
      if failed:
        return self._error(412, "precondition failed")
      self.fs.rm_file(f"{bucket}/{name}")
    self._reply(204)


_LOCK = threading.Lock()


class FakeGcsServer:
  """The JSON API of ``FakeGcsFileSystem``'s store on ``http://127.0.0.1:<port>``."""

  def __init__(self, fs: FakeGcsFileSystem):
    handler = type("Handler", (_Handler,), {"fs": fs})
    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()


_INSTALLED: tuple[FakeGcsFileSystem, FakeGcsServer] | None = None


def install() -> FakeGcsFileSystem:
  """Routes this process's ``gs://`` paths (epath and TensorStore) to one in-memory store;
  returns its filesystem. Idempotent."""
  global _INSTALLED
  if _INSTALLED is not None:
    return _INSTALLED[0]
  fsspec.register_implementation("gcs", FakeGcsFileSystem, clobber=True)
  fsspec.register_implementation("gs", FakeGcsFileSystem, clobber=True)
  fs = fsspec.filesystem("gcs")
  server = FakeGcsServer(fs)
  os.environ["TENSORSTORE_GCS_HTTP_URL"] = server.url
  os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "offline"  # no credential lookup
  os.environ["EPATH_USE_TF"] = "false"  # epath -> fsspec, whether or not TF is installed
  from orbax.checkpoint._src.path import gcs_utils
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
  _INSTALLED = (fs, server)
  return fs
