"""The one generic, config-driven training loop (every method plugs into it).

``train_and_evaluate(config, workdir)``:

1. the mesh of ``config.mesh`` (default: all devices on ``data``); the method (``config.method``) builds the model, its
   loss and map function; the grain pipeline yields sharded global batches;
2. the state ``{step, params, model_state, opt_state, rng}`` is created (pretrained
   weights from ``config.model.pretrained``) or restored from the newest checkpoint in
   ``workdir`` that restores, together with the data iterator — re-running a command
   resumes (a damaged checkpoint is reported, set aside and skipped);
3. a jitted step ``(state, batch) -> (state, metrics)`` (donated state, replicated or
   sharded on the mesh's ``fsdp`` axis by ``sharding.PARAM_RULES``, batch split over
   devices) runs with no host synchronisation; a
   non-finite loss or gradient skips the update on device, and the host stops with
   a message naming the step (checked before every save, so no bad checkpoint);
4. periodic checkpoints (keep-last-k), evaluation on the selection split with the
   best checkpoint kept, SIGTERM → save and exit cleanly;
5. at the end: the selected model is exported to ``workdir/export`` and evaluated on
   the test split next to the center-Gaussian baseline; ``results.json`` and overlay
   PNGs are written.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wsol_jax import checkpoint as ckpt_lib
from wsol_jax import data as data_lib
from wsol_jax import methods as methods_lib
from wsol_jax import config_lib, files, optim, reporting, sharding
from wsol_jax.data import config as data_config
from wsol_jax.maps import postprocess
from wsol_jax.models import pretrained as pretrained_lib
from wsol_jax.runtime import Runtime, enable_compilation_cache

log = logging.getLogger("wsol_jax.train")


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/inf loss or gradient."""


def make_train_step(method: methods_lib.Method, tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable:
  """``(state, batch) -> (state, metrics)``; pure, to be jitted with the state donated."""
  mean, std = method.mean, method.std

  def step(state: dict[str, Any], batch: dict[str, jax.Array]):
    images = postprocess.normalize_images(batch["image"], mean, std)
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    model_state = state["model_state"]

    def loss_fn(params):
      return method.loss({"params": params, **model_state},
                         {"image": images, "label": batch["label"]}, rng)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                             for g in jax.tree_util.tree_leaves(grads)))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def keep_if_finite(new, old):
      return jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)

    new_state = {
        "step": state["step"] + 1,
        "params": keep_if_finite(params, state["params"]),
        "opt_state": keep_if_finite(opt_state, state["opt_state"]),
        "model_state": keep_if_finite({**model_state, **aux.get("model_state", {})}, model_state),
        "rng": state["rng"],
    }
    metrics = dict(aux.get("metrics", {}))
    metrics.update(loss=loss, grad_norm=grad_norm, lr=schedule(state["step"]), finite=finite)
    return new_state, metrics

  return step


def init_state(method: methods_lib.Method, tx: optax.GradientTransformation, seed: int
               ) -> dict[str, Any]:
  variables = method.init(jax.random.key(seed))
  params = variables.pop("params")
  return {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": variables,
          "opt_state": tx.init(params),
          "rng": jax.random.key_data(jax.random.key(seed + 1))}


def variables_of(state: dict[str, Any]) -> dict[str, Any]:
  return {"params": state["params"], **state["model_state"]}


class _StoppedWhileWaiting(Exception):
  """SIGTERM arrived while the loop waited for training data."""


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step; while the loop waits for
  data (``waiting``), SIGTERM interrupts the wait instead (a stalled input pipeline must not
  keep a preempted job alive)."""

  def __init__(self):
    self.requested = False
    self.waiting = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some test runners)
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    if self.waiting:
      self.waiting = False
      raise _StoppedWhileWaiting()

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _Profiler:
  """A ``jax.profiler`` trace of steps ``start+1 .. start+num`` (``config.profile``); for a
  workdir on object storage the trace is written locally, then copied there."""

  def __init__(self, directory: os.PathLike, start: int, num: int):
    self.directory, self.start, self.stop = directory, start, start + num if num > 0 else -1
    self.active = False
    self._local = None

  def before(self, step: int) -> None:
    """Called before running step ``step + 1``; starts the trace at ``start``."""
    if step == self.start and self.stop > step and not self.active:
      if not files.is_local(self.directory):
        self._local = tempfile.mkdtemp(prefix="wsol_jax_profile-")
      jax.profiler.start_trace(self._local or str(self.directory))
      self.active = True

  def end(self) -> None:
    """Stops the trace (copying a local one to the workdir)."""
    jax.profiler.stop_trace()
    self.active = False
    if self._local is not None:
      files.upload_tree(self._local, self.directory)
      shutil.rmtree(self._local, ignore_errors=True)
      self._local = None

  def after(self, step: int, metrics: Any) -> None:
    """Called after dispatching step ``step``; ends the trace after its last step."""
    if self.active and step >= self.stop:
      jax.block_until_ready(metrics)  # the traced steps' device work, in full
      self.end()
      log.info("profile of steps %d-%d written to %s", self.start + 1, self.stop, self.directory)


def _schedule_length(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int, int]:
  batch_size = int(config.training.batch_size)
  steps_per_epoch = num_train // batch_size
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(f"training.batch_size={batch_size} is larger than the "
                                 f"{num_train} training examples")
  if int(config.training.total_steps) > 0:
    total = int(config.training.total_steps)
    num_epochs = math.ceil(total / steps_per_epoch)
  else:
    num_epochs = int(config.training.num_epochs)
    total = num_epochs * steps_per_epoch
  return steps_per_epoch, num_epochs, total


def _check_finite(pending: list[tuple[int, dict[str, jax.Array]]]) -> list[dict[str, float]]:
  """Fetches pending per-step metrics; raises naming the first non-finite step."""
  rows = []
  for step, metrics in pending:
    host = {k: float(np.asarray(v)) for k, v in metrics.items()}
    if not host.pop("finite"):
      raise NonFiniteLossError(
          f"non-finite loss or gradient at step {step} (loss={host['loss']}, "
          f"grad_norm={host['grad_norm']}); the update was skipped and training stopped. "
          "The last checkpoint in the workdir is intact; lower the learning rate or check the data.")
    rows.append({"step": step, **host})
  return rows


def jit_train_step(step: Callable, mesh: jax.sharding.Mesh, runtime: Runtime,
                   state_sharding: Any = None) -> Callable:
  """``step`` (``make_train_step``) jitted as the trainer runs it: state donated and placed
  by ``state_sharding`` (default replicated; ``sharding.state_shardings`` on an fsdp mesh),
  batch sharded over the mesh, metrics replicated, the runtime's compiler options."""
  replicated = sharding.replicated(mesh)
  state_sharding = replicated if state_sharding is None else state_sharding
  return jax.jit(step, donate_argnums=(0,),
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, replicated),
                 compiler_options=dict(runtime.compiler_options) or None)


class ResumeConfigError(config_lib.ConfigError):
  """The config differs from the stored one of a run it would resume, in keys that change
  what the restored state means."""


def _check_resume_config(workdir: os.PathLike, config: dict[str, Any]
                         ) -> dict[str, tuple[Any, Any]]:
  """When ``workdir`` holds a run to resume, the differences of ``config`` from its stored
  ``config.json``; changes outside ``config_lib.RESUMABLE`` raise ``ResumeConfigError``
  (before anything is written)."""
  stored_path = workdir / "config.json"
  resuming = (workdir / "checkpoints").is_dir() and any(
      p.name.isdigit() for p in (workdir / "checkpoints").iterdir())
  if resuming and stored_path.is_file():
    try:
      stored = json.loads(stored_path.read_text())
    except ValueError as e:
      raise ResumeConfigError(f"{stored_path} is not valid JSON ({e}); it records the run "
                              "this command would resume: fix or remove it") from e
    stored.pop("runtime", None)
    changes = config_lib.config_changes(stored, config)
    blocked = {k: v for k, v in changes.items() if not config_lib.resumable(k)}
    if blocked:
      listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in blocked.items())
      raise ResumeConfigError(
          f"{workdir} holds a run with another config; these keys cannot change on resume: "
          f"{listed} (use a new --workdir, or the stored values)")
    return changes
  return {}


def _record_config(workdir: os.PathLike, config: dict[str, Any], ran: dict[str, Any],
                   changes: dict[str, tuple[Any, Any]]) -> None:
  """Writes ``config.json`` (the config and what ran); a resume's allowed changes are logged
  and appended to ``config_history.jsonl``."""
  if changes:
    log.info("resuming with config changes: %s",
             "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
  if jax.process_index() != 0:
    return
  if changes:
    files.append_text(workdir / "config_history.jsonl", json.dumps(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}}) + "\n")
  ckpt_lib.write_json(workdir / "config.json", {**config, "runtime": ran})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       runtime: Runtime | None = None) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns the results.

  ``runtime``: how the models run (``wsol_jax.cpu.install(config)`` in the CLI); default
  plain XLA.
  """
  runtime = runtime if runtime is not None else Runtime()
  workdir = config_lib.dir_path(workdir, "workdir")  # a path or a gs:// URL
  if workdir.exists() and not workdir.is_dir():
    raise config_lib.ConfigError(f"--workdir {workdir} is a file, not a directory")
  mesh = sharding.mesh_from_config(config.mesh)
  for key in ("training.batch_size", "eval.batch_size"):  # one rule, checked before any file
    size, n_dev = int(config[key.split(".")[0]].batch_size), mesh.devices.size
    if size <= 0 or size % n_dev:
      raise config_lib.ConfigError(f"{key}={size} must be a positive multiple of the {n_dev} "
                                   f"devices; e.g. {max(n_dev, size // n_dev * n_dev)}")
  # "0 = from the data" keys (model.num_classes, sizes, length) before anything is built.
  config, derived = data_lib.resolve_config(config)
  config_dict = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as stored
  changes = _check_resume_config(workdir, config_dict) if workdir.is_dir() else {}
  workdir.mkdir(parents=True, exist_ok=True)
  reporting.setup_logging(workdir)
  for line in derived:
    log.info("%s", line)
  cache = enable_compilation_cache(str(config.compilation_cache_dir))
  method = methods_lib.get_method(config, runtime)
  ran = {**method.runtime.describe(), "compilation_cache": cache or "off"}
  log.info("%s, compilation_cache=%s", method.runtime.summary(), cache or "off")
  if config.eval.test_at_end and config.data.test_split:  # the final test runs the protocols
    from wsol_jax.eval import protocols as protocols_lib
    protocols_lib.check_supported(protocols_lib.resolve_names(config.eval, method))
  train_iter = data_lib.build_train_iterator(config.data, int(config.training.batch_size),
                                             seed=int(config.seed))
  if config.eval.test_at_end and config.data.test_split:
    # Reading the source validates the split's metadata: a bad box in the test split stops
    # the run now, not after training. (The selection split's is read below.)
    data_lib.make_source(config.data, config.data.test_split)
  if train_iter.num_classes != method.num_classes:
    raise data_lib.class_count_error(method.num_classes, train_iter.num_classes,
                                     f"data.name={config.data.name!r}")
  steps_per_epoch, num_epochs, total_steps = _schedule_length(config, len(train_iter.source))
  schedule = optim.make_schedule(config, steps_per_epoch, num_epochs)
  writer = reporting.MetricWriter(workdir)
  _record_config(workdir, config_dict, ran, changes)

  # State: built once abstractly (for restore and shardings), then created or restored.
  labels_fn = method.param_labels
  dummy_params = jax.eval_shape(lambda: method.init_fresh(jax.random.key(0)))["params"]
  tx = optim.make_optimizer(config, schedule, labels_fn(dummy_params))
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(config.checkpoint.keep))
  abstract = jax.eval_shape(lambda: init_state(method, tx, int(config.seed)))
  state_sharding = sharding.state_shardings(abstract, mesh)
  log.info("mesh %s: %s", dict(mesh.shape), sharding.describe_state(abstract, state_sharding))
  # The target shardings are this run's: a checkpoint written on another mesh restores onto it.
  abstract = jax.tree_util.tree_map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, state_sharding)
  restored = checkpointer.restore_newest(abstract, train_iter)  # skips damaged checkpoints
  if restored is None:
    state = jax.jit(lambda: init_state(method, tx, int(config.seed)),
                    out_shardings=state_sharding)()
    start = 0
    log.info("starting a new run in %s: %d steps (%d epochs of %d steps)", workdir,
             total_steps, num_epochs, steps_per_epoch)
  else:
    state, start = restored
    log.info("resumed %s at step %d of %d", workdir, start, total_steps)
    moved = writer.supersede_after(start)
    if moved:
      log.info("moved %d metrics rows of steps after %d (re-run now) to "
               "metrics.superseded.jsonl", moved, start)

  step_fn = jit_train_step(make_train_step(method, tx, schedule), mesh, runtime, state_sharding)
  from wsol_jax.eval import evaluator as evaluator_lib
  select_split = (data_config.resolve_split(config.data, "val")
                  if config.eval.select_split == "val" else str(config.eval.select_split))
  selector = (evaluator_lib.for_method(method, config, select_split, mesh)
              if select_split else None)

  batch_size = int(config.training.batch_size)
  log_every = max(int(config.training.log_every_steps), 1)
  ckpt_every = max(int(config.checkpoint.every_steps), 1)
  eval_every = int(config.eval.every_epochs) * steps_per_epoch
  if int(config.eval.every_steps) > 0:
    eval_every = int(config.eval.every_steps)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  progress = reporting.Progress(total_steps, start, batch_size, disable=None)
  profiler = _Profiler(workdir / "profile", int(config.profile.start_step),
                       int(config.profile.num_steps))
  step = start
  try:
    with _Preemption() as preemption:
      while step < total_steps:
        try:
          preemption.waiting = True
          host_batch = next(train_iter)
        except _StoppedWhileWaiting:
          # The data iterator was interrupted mid-batch: its state is not saved; the last
          # checkpoint (data state included) stays the one to resume from.
          checkpointer.wait()
          log.warning("SIGTERM while waiting for training data at step %d: stopped without a "
                      "new checkpoint; re-run the same command to resume from step %s", step,
                      checkpointer.latest_step() or 0)
          return {"preempted_at_step": step}
        finally:
          preemption.waiting = False
        batch = sharding.global_batch(host_batch, mesh)
        profiler.before(step)
        state, metrics = step_fn(state, batch)
        step += 1
        profiler.after(step, metrics)
        pending.append((step, metrics))
        boundary = step % ckpt_every == 0 or step == total_steps or preemption.requested
        if step % log_every == 0 or boundary:
          rows = _check_finite(pending)
          pending = []
          writer.write_train(rows, steps_per_epoch)
          progress.update(step, rows[-1])
        if boundary:
          checkpointer.save(step, state, train_iter, wait=preemption.requested)
          writer.flush()  # the rows of the saved steps reach the workdir with the checkpoint
        if preemption.requested:
          checkpointer.wait()
          log.warning("SIGTERM: saved the checkpoint of step %d; re-run the same command to "
                      "resume", step)
          return {"preempted_at_step": step}
        if selector is not None and eval_every > 0 and step % eval_every == 0 and step < total_steps:
          _select(selector, checkpointer, writer, state, step, config)
    progress.close()
    if pending:
      writer.write_train(_check_finite(pending), steps_per_epoch)
    if checkpointer.latest_step() != step:
      checkpointer.save(step, state, train_iter)
    checkpointer.wait()
    if selector is not None:
      _select(selector, checkpointer, writer, state, step, config)
    return _finish(method, config, checkpointer, writer, state, step, mesh, workdir, ran)
  finally:
    if profiler.active:  # the run ended inside the traced steps
      profiler.end()
    progress.close()
    checkpointer.close()
    writer.close()
    reporting.flush_logs()


def _select(selector, checkpointer, writer, state, step, config) -> None:
  """Evaluates on the selection split and keeps the best variables."""
  variables = variables_of(state)
  results = dict(selector.run(variables))
  writer.write_eval(step, selector.split, results)
  name = str(config.eval.select_metric)
  if name not in results:
    raise ValueError(f"eval.select_metric {name!r} is not a metric of the evaluator; "
                     f"available: {sorted(results)}")
  if checkpointer.save_best(step, jax.tree_util.tree_map(sharding.to_host, variables), results,
                            results[name]):
    log.info("step %d: new best %s %s = %.3f", step, selector.split, name, results[name])


def _finish(method, config, checkpointer, writer, state, step, mesh, workdir, ran
            ) -> dict[str, Any]:
  """Exports the selected model and evaluates it (and the baseline) on the test split."""
  from wsol_jax.eval import evaluator as evaluator_lib
  variables = jax.tree_util.tree_map(sharding.to_host, variables_of(state))
  selected_step = step
  best = checkpointer.restore_best(jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables))
  if best is not None:
    variables, selected_step = jax.tree_util.tree_map(np.asarray, best[0]), best[1]
  meta = method.export_meta()
  meta["selected_step"] = int(selected_step)
  primary = jax.process_index() == 0  # multi-process runs: process 0 writes the files
  if primary:
    pretrained_lib.save_pretrained(workdir / "export", variables, meta, overwrite=True)
  results: dict[str, Any] = {"selected_step": int(selected_step), "final_step": int(step),
                             "runtime": ran}
  if config.eval.test_at_end and config.data.test_split:
    # The role 'test', not the split's name: a test split named 'val' (VOC) is not the val role.
    tester = evaluator_lib.for_method(method, config, "test", mesh, protocols=True)
    report = tester.evaluate(variables)
    test = report.metrics
    baseline = dict(tester.run_baseline())
    writer.write_eval(step, config.data.test_split, test)
    writer.write_eval(step, config.data.test_split + "/center_gaussian", baseline)
    if primary:
      tester.write_overlays(variables, report.per_image, workdir / "overlays",
                            int(config.eval.num_overlays))
      reporting.print_summary(config, test, baseline)
    results["test"] = test
    results["center_gaussian"] = baseline
  if primary:
    ckpt_lib.write_json(workdir / "results.json", results)
  return results
