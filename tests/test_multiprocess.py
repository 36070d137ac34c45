"""Two JAX processes (``jax.distributed`` on 127.0.0.1, 2 CPU devices each) train, select and
test through ``launch/distributed_train.py``; the evaluation gathers every process's rows.
AG-CAM: its maps need gradients and its final test runs the ABPC perturbation test on the
global (multi-process) image batch."""
import json
import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(args, log_prefix, timeout=300):
  """Runs ``launch/distributed_train.py args`` as processes 0 and 1; returns their output."""
  port = _free_port()
  procs, logs = [], []
  for pid in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    logs.append(pathlib.Path(f"{log_prefix}.{pid}.log"))
    procs.append(subprocess.Popen(
        [sys.executable, str(ROOT / "launch/distributed_train.py"), *args], env=env, cwd=ROOT,
        stdout=logs[-1].open("w"), stderr=subprocess.STDOUT))
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      p.kill()
  outs = [log.read_text() for log in logs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def test_two_processes_train_and_evaluate_like_one(tmp_path):
  config = str(ROOT / "configs/agcam_synthetic.py:smoke")
  data_dir = tmp_path / "tfds"
  workdir = tmp_path / "run"
  common = ["--config", config, f"--config.data.data_dir={data_dir}"]
  # Generate the dataset once, before two processes would race for it.
  from wsol_jax import config_lib, data as data_lib
  cfg = config_lib.load(config, [f"data.data_dir={data_dir}"])
  data_lib.build_eval_iterator(cfg.data, "test", 16)

  outs = _run_two_processes([*common, "--workdir", str(workdir)], tmp_path / "first")
  assert "process 1 of 2: 2 local / 4 global devices" in outs[1]

  results = json.loads((workdir / "results.json").read_text())
  test = results["test"]
  assert test["num_examples"] == 16  # both processes' halves of the test split
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any(r["split"] == "val" for r in rows)
  assert len({r["step"] for r in rows if r["split"] == "train"}) == len(
      [r for r in rows if r["split"] == "train"])  # one writer: no duplicated rows
  assert (workdir / "train.1.log").exists()

  # One process evaluating the exported model on the same split gets the same numbers.
  single = tmp_path / "single"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "wsol_jax.evaluate", *common, "--checkpoint",
                         str(workdir / "export"), "--workdir", str(single)],
                        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  alone = json.loads((single / "results.json").read_text())
  alone = alone["metrics"]
  for key in ("maxboxacc_v2", "gt_known", "top1_loc", "cls_top1", "num_examples"):
    assert test[key] == alone[key], (key, test[key], alone[key])
  for key in ("agcam_iou", "agcam_num_correct"):
    assert test[key] == alone[key], (key, test[key], alone[key])
  # PxAP sums map values: float32 maps from 2-row and 16-row device batches differ in ulps;
  # so do the perturbed images' probabilities behind ABPC.
  assert abs(test["pxap"] - alone["pxap"]) < 1e-2
  for key in ("abpc", "auc_lerf", "auc_morf"):
    assert abs(test[key] - alone[key]) < 1e-4, (key, test[key], alone[key])
  assert results["center_gaussian"]["maxboxacc_v2"] > 0

  # Each process reads its own rows: both iterator states are kept, and a resumed run
  # (one more epoch) restores them.
  step = results["final_step"]
  saved = json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())
  assert len(saved["processes"]) == 2 and saved["processes"][0] != saved["processes"][1]
  outs = _run_two_processes([*common, "--workdir", str(workdir),
                             "--config.training.num_epochs=3"], tmp_path / "resume")
  assert all(f"resumed {workdir} at step {step}" in out for out in outs)
  assert json.loads((workdir / "results.json").read_text())["final_step"] == step * 3 // 2
