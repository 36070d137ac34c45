"""CAM baseline method: wsolevaluation golden CAMs (os16/os8) through ``maps``, labels, init, loss."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from wsol_jax import config_lib, methods, optim

import cli_checks
from wsol_jax.methods import cam as cam_lib
from wsol_jax.models import load_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(output_stride=16, num_classes=10, pretrained=""):
  cfg = config_lib.base_config()
  cfg.method = "cam"
  cfg.model.name = "resnet50"
  cfg.model.num_classes = num_classes
  cfg.model.pretrained = pretrained
  cfg.model.kwargs = dict(layers=(1, 1, 1, 1), output_stride=output_stride)
  cfg.data.image_size = 32
  return cfg


@pytest.fixture(scope="module")
def golden(golden_resnet_dir, golden_dir):
  variables, _ = load_pretrained(golden_resnet_dir)
  return variables, np.load(golden_dir / "resnet.npz")


@pytest.mark.parametrize("output_stride,prefix,grid", [(16, "os16_", 14), (8, "os8_", 28)])
def test_maps_match_the_wsolevaluation_cams(golden, golden_inputs, output_stride, prefix, grid):
  variables, gold = golden
  images, targets = golden_inputs
  method = methods.get_method(_config(output_stride))
  maps, logits = jax.jit(method.maps)(variables, images, targets)
  assert maps.shape == (4, grid, grid)
  np.testing.assert_allclose(maps, gold[f"{prefix}cams"], atol=1e-7, rtol=0)
  np.testing.assert_allclose(logits, gold[f"{prefix}logits"], atol=2e-5, rtol=0)
  np.testing.assert_allclose(jax.jit(method.predict)(variables, images), logits, atol=1e-6)
  assert method.upsample == "bicubic" and method.map_kinds == ("cam",)


def test_default_output_stride_is_16():
  cfg = _config()
  cfg.model.kwargs = dict(layers=(1, 1, 1, 1))
  method = methods.get_method(cfg)
  assert method.model.output_stride == 16 and method.model.head == "fc"
  assert method.export_meta()["family"] == "resnet"  # a plain ResNet: explain's 'cam' kind works


def test_labels_give_layer4_and_fc_the_classifier_ratio():
  method = methods.get_method(_config())
  params = jax.eval_shape(lambda: method.init_fresh(jax.random.key(0)))["params"]
  labels = traverse_util.flatten_dict(method.param_labels(params), sep="/")
  new = {k for k, v in labels.items() if v == "new_decay"}
  assert new == {k for k in labels if k.startswith(("layer4_", "fc/"))}
  assert {v for k, v in labels.items() if k not in new} == {"decay"}  # BN and biases decay too
  assert cam_lib.classifier_roots({"layer4_0": 0, "layer4_2": 0, "fc": 0, "layer3_0": 0}) == (
      "layer4_0", "layer4_2", "fc")


def test_init_fc_and_pretrained_loading(golden_resnet_dir, golden):
  variables, _ = golden
  method = methods.get_method(_config(pretrained=str(golden_resnet_dir)))
  # A fc the checkpoint does not provide starts as wsolevaluation's: N(0, 0.01), zero bias.
  fresh = method.init_fresh(jax.random.key(0))
  kernel = np.asarray(fresh["params"]["fc"]["kernel"])
  assert kernel.shape == (2048, 10) and abs(kernel.std() - 0.01) < 5e-4
  assert not np.asarray(fresh["params"]["fc"]["bias"]).any()
  # Pretrained: backbone, running statistics and (same classes, as for ILSVRC) the fc loaded.
  loaded = method.init(jax.random.key(0))
  for path in (("params", "layer4_0", "conv3", "kernel"), ("batch_stats", "layer1_0", "bn2", "mean"),
               ("params", "fc", "kernel")):
    a, b = loaded, variables
    for k in path:
      a, b = a[k], b[k]
    np.testing.assert_array_equal(a, b)


def test_loss_updates_running_statistics_and_nesterov_sgd(golden):
  variables, _ = golden
  method = methods.get_method(_config())
  batch = {"image": jax.random.normal(jax.random.key(1), (4, 32, 32, 3)),
           "label": jnp.array([0, 3, 5, 9])}
  (loss, aux), grads = jax.jit(jax.value_and_grad(
      lambda p: method.loss({**variables, "params": p}, batch, None), has_aux=True))(
          variables["params"])
  assert np.isfinite(loss) and 0 <= aux["metrics"]["accuracy"] <= 1
  stats = aux["model_state"]["batch_stats"]
  assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(
      jax.tree_util.tree_map(jnp.asarray, variables["batch_stats"]))
  moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), stats,
                                 variables["batch_stats"])
  assert min(jax.tree_util.tree_leaves(moved)) > 0  # every BN layer's statistics moved
  cfg = config_lib.load(str(ROOT / "configs/cam_cub.py"))
  assert (cfg.optimizer.name, cfg.optimizer.nesterov, cfg.optimizer.momentum) == ("sgd", True, 0.9)
  assert cfg.optimizer.weight_decay == 1e-4 and dict(cfg.optimizer.lr_multipliers) == {
      "new_decay": 10.0}
  tx = optim.make_optimizer(cfg, optim.make_schedule(cfg, 10, 40), method.param_labels(grads))
  updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
  # First Nesterov step: −lr·ratio·(1 + momentum)·(g + wd·p).
  for path, ratio in ((("fc", "bias"), 10.0), (("layer4_0", "bn1", "scale"), 10.0),
                      (("layer3_0", "bn1", "scale"), 1.0)):
    g, p, u = grads, variables["params"], updates
    for k in path:
      g, p, u = g[k], p[k], u[k]
    expect = -0.01 * ratio * 1.9 * (np.asarray(g) + 1e-4 * np.asarray(p))
    np.testing.assert_allclose(u, expect, rtol=1e-5, atol=1e-9)


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_through_the_cli(tmp_path, capsys):
  """The ``:smoke`` config through the CLI: results, export, overlays, BatchNorm statistics."""
  from wsol_jax import train as train_cli
  root = pathlib.Path(__file__).resolve().parents[1]
  workdir = tmp_path / "run"
  args = ["--config", str(root / "configs/cam_synthetic.py:smoke"), "--workdir", str(workdir),
          f"--config.data.data_dir={tmp_path / 'tfds'}"]
  assert train_cli.main(args) == 0
  out = capsys.readouterr().out
  assert "center-Gaussian" in out and "maxboxacc_v2" in out
  results = json.loads((workdir / "results.json").read_text())
  assert 0 <= results["test"]["maxboxacc_v2"] <= 100 and results["center_gaussian"]["maxboxacc_v2"] > 0
  assert "rfga_miou" not in results["test"]
  variables = cli_checks.check_export_and_overlays(workdir, "cam")
  cli_checks.check_batch_stats_trained(args[1], tmp_path / "tfds", variables)
