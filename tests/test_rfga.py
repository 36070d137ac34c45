"""RFGA: MoANA-module golden parity, the paper reading, the network and the method plug-in."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from wsol_jax import config_lib, methods, optim

import cli_checks
from wsol_jax.methods import rfga as rfga_method
from wsol_jax.models import load_pretrained
from wsol_jax.models import rfga

VIEWS = {"c": "bn1", "h": "bn2", "w": "bn3"}  # our view -> MoANA BN name


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def assert_close(actual, expected, rel=1e-5):
  """max |actual − expected| <= rel · max |expected| (float32 rounding scale)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  err, scale = np.abs(actual - expected).max(), np.abs(expected).max()
  assert err <= rel * scale, f"max error {err:.3g} > {rel} x scale {scale:.3g}"


@pytest.fixture(scope="module")
def moana(golden_dir):
  from safetensors.numpy import load_file
  variables = rfga.module_variables_from_torch(load_file(golden_dir / "weights_moana.safetensors"))
  return variables, np.load(golden_dir / "moana.npz")


MOANA_MODULE = rfga.RfgaModule(second_sigmoid=False, calibration="residual", hw_conv="full")


def run(module, variables, x, train=False):
  """Jitted ``(out, views, updated batch_stats)`` of a module (eval: stats unchanged)."""
  def fn(v, x):
    (out, views), updates = module.apply(v, x, train, True, mutable=["batch_stats"])
    return out, views, updates["batch_stats"]
  return jax.jit(fn)(variables, x)


# ---- MoANA reading: golden parity ------------------------------------------------------------

@pytest.mark.parametrize("train", [False, True])
def test_moana_outputs_and_views_match_the_official_module(moana, train):
  variables, gold = moana
  mode = "train" if train else "eval"
  out, views, _ = run(MOANA_MODULE, variables, nhwc(gold["X"]), train)
  assert_close(out, nhwc(gold[f"out_{mode}"]))
  assert_close(views["a_c"], gold[f"{mode}_a_c"][:, :, 0, 0])
  assert_close(views["a_h"], gold[f"{mode}_a_h"][..., 0].transpose(0, 2, 1))
  assert_close(views["a_w"], gold[f"{mode}_a_w"][:, :, 0].transpose(0, 2, 1))
  np.testing.assert_allclose(views["M"], views["a_w"][:, None] + views["a_h"][:, :, None]
                             + views["a_c"][:, None, None], rtol=1e-6)


def test_moana_running_statistics_after_a_train_forward(moana):
  variables, gold = moana
  _, _, updates = run(MOANA_MODULE, variables, nhwc(gold["X"]), True)
  for view, torch_bn in VIEWS.items():
    stats = updates[f"bn_{view}"]
    assert_close(stats["mean"], gold[f"train_{torch_bn}_running_mean_after"])
    assert_close(stats["var"], gold[f"train_{torch_bn}_running_var_after"])


def test_moana_train_gradients(moana):
  variables, gold = moana
  cotangent = nhwc(gold["cotangent"])

  def loss(params, x):
    out, _ = MOANA_MODULE.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                True, mutable=["batch_stats"])
    return jnp.sum(out * cotangent)
  grad_p, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], nhwc(gold["X"]))
  assert_close(grad_x, nhwc(gold["train_grad_X"]))
  for view, torch_bn in VIEWS.items():
    # conv_c: 3 weights summing B·C products; the golden's own fp64 gap is 2e-5 relative.
    assert_close(grad_p[f"conv_{view}"]["kernel"],
                 gold[f"train_grad_conv_{view}_weight"].transpose(2, 1, 0),
                 rel=5e-5 if view == "c" else 1e-5)
    assert_close(grad_p[f"bn_{view}"]["scale"], gold[f"train_grad_{torch_bn}_weight"])
    assert_close(grad_p[f"bn_{view}"]["bias"], gold[f"train_grad_{torch_bn}_bias"])


@pytest.mark.parametrize("train", [False, True])
def test_moana_non_square_input(moana, train):
  variables, gold = moana
  x = nhwc(gold["X_rect"])  # H = 7, W = 5
  out, _, _ = run(MOANA_MODULE, variables, x, train)
  assert_close(out, nhwc(gold[f"out_rect_{'train' if train else 'eval'}"]))


# ---- paper reading and options -----------------------------------------------------------------

def _init(module, x):
  return jax.jit(lambda x: module.init(jax.random.key(0), x, False))(x)


def test_paper_reading_second_sigmoid_and_residual_form():
  x = jax.random.normal(jax.random.key(1), (3, 5, 4, 16))
  paper = rfga.RfgaModule()  # second sigmoid, residual, full, k = 3
  variables = _init(paper, x)
  out, views, _ = run(paper, variables, x)
  s = views["a_w"][:, None] + views["a_h"][:, :, None] + views["a_c"][:, None, None]
  np.testing.assert_allclose(views["M"], jax.nn.sigmoid(s), rtol=1e-6)
  assert views["M"].shape == x.shape and 0 < views["M"].min() and views["M"].max() < 1
  np.testing.assert_allclose(out, x + x * views["M"], rtol=1e-6, atol=1e-6)
  for calibration, expect in (("multiplicative", x * views["M"]),
                              ("affine_0.35_0.65", x * (0.35 + 0.65 * views["M"]))):
    other = run(rfga.RfgaModule(calibration=calibration), variables, x)[0]
    np.testing.assert_allclose(other, expect, rtol=1e-6, atol=1e-6)
  moana_m = run(rfga.RfgaModule(second_sigmoid=False), variables, x)[1]["M"]
  np.testing.assert_allclose(moana_m, s, rtol=1e-6)
  assert moana_m.max() > 1  # M ∈ (0, 3) without the second sigmoid


@pytest.mark.parametrize("hw_conv,kernel_size,expect", [
    ("full", 3, 3 + 2 * 3 * 16 * 16 + 6 * 16),
    ("depthwise", 3, 3 + 2 * 3 * 16 + 6 * 16),
    ("shared", 3, 3 + 2 * 3 + 6 * 16),
    ("full", 5, 5 + 2 * 5 * 16 * 16 + 6 * 16),
])
def test_parameter_count(hw_conv, kernel_size, expect):
  x = jnp.zeros((2, 5, 4, 16))
  variables = _init(rfga.RfgaModule(hw_conv=hw_conv, kernel_size=kernel_size), x)
  assert sum(p.size for p in jax.tree_util.tree_leaves(variables["params"])) == expect
  assert set(variables["batch_stats"]) == {"bn_c", "bn_h", "bn_w"}


def test_full_c2048_parameter_count_matches_the_spec():
  shapes = jax.eval_shape(lambda: _init(rfga.RfgaModule(), jnp.zeros((1, 7, 7, 2048))))
  n = sum(p.size for p in jax.tree_util.tree_leaves(shapes["params"]))
  assert n == 3 + 2 * 3 * 2048 * 2048 + 6 * 2048  # ≈ 25.2M


@pytest.mark.parametrize("hw_conv", ["shared", "depthwise"])
def test_shared_and_depthwise_convs_act_per_channel(hw_conv):
  x = jax.random.normal(jax.random.key(2), (2, 6, 5, 4))
  module = rfga.RfgaModule(hw_conv=hw_conv)
  variables = _init(module, x)
  kernel = np.asarray(variables["params"]["conv_h"]["kernel"])  # (3, 1, 1) or (3, 1, C)
  z_h = np.asarray(x).mean(2)  # (B, H, C)
  pad = np.pad(z_h, ((0, 0), (1, 1), (0, 0)))
  w = kernel.reshape(3, -1)
  expect = sum(pad[:, j:j + 6] * w[j] for j in range(3))

  # Eval mode at init (running mean 0, var 1, scale 1, bias 0): a_h = σ(conv_h(z_h) / sqrt(1 + eps)).
  _, views, _ = run(module, variables, x)
  got = np.log(views["a_h"] / (1 - views["a_h"])) * np.sqrt(1 + 1e-5)
  np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)


def test_batchnorm_train_and_eval_behaviour():
  x = jax.random.normal(jax.random.key(3), (4, 6, 5, 8)) + 0.5
  module = rfga.RfgaModule()
  variables = _init(module, x)
  out_t, views_t, updates = run(module, variables, x, True)
  out_e, views_e, _ = run(module, variables, x)
  assert np.abs(np.asarray(out_t) - np.asarray(out_e)).max() > 1e-4
  params = variables["params"]
  conv_c = np.asarray(params["conv_c"]["kernel"]).reshape(3)
  z_c = np.pad(np.asarray(x, np.float64).mean((1, 2)), ((0, 0), (1, 1)))
  pre_c = sum(z_c[:, j:j + 8] * conv_c[j] for j in range(3))  # (B, C) before BN
  # Channel view in train mode: BN over the batch only (scale 1, bias 0 at init).
  logit_c = np.log(views_t["a_c"] / (1 - views_t["a_c"]))
  np.testing.assert_allclose(logit_c, (pre_c - pre_c.mean(0)) / np.sqrt(pre_c.var(0) + 1e-5),
                             atol=2e-4)
  logit_h = np.log(views_t["a_h"] / (1 - views_t["a_h"]))  # h view: over B·H values
  np.testing.assert_allclose(logit_h.mean((0, 1)), 0, atol=1e-4)
  # Running statistics: momentum 0.1 from (0, 1), unbiased variance over the reduced values.
  stats = updates["bn_c"]
  np.testing.assert_allclose(stats["mean"], 0.1 * pre_c.mean(0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * pre_c.var(0, ddof=1), rtol=1e-5)
  # Eval mode uses the (initial) running statistics: a_c = σ(conv / sqrt(1 + eps)).
  np.testing.assert_allclose(views_e["a_c"], jax.nn.sigmoid(pre_c / np.sqrt(1 + 1e-5)), rtol=1e-5)


def test_invalid_options_raise():
  with pytest.raises(ValueError, match="calibration"):
    rfga_method.RfgaConfig(calibration="add")
  with pytest.raises(ValueError, match="hw_conv"):
    rfga_method.RfgaConfig(hw_conv="dense")
  with pytest.raises(ValueError, match="kernel_size"):
    rfga_method.RfgaConfig(kernel_size=4)


# ---- network and method ----------------------------------------------------------------------

def _config(**rfga_options):
  cfg = config_lib.base_config()
  cfg.method = "rfga"
  cfg.model.name = "resnet50"
  cfg.model.num_classes = 5
  cfg.model.kwargs = dict(layers=(1, 1, 1, 1))
  cfg.data.image_size = 32
  cfg.rfga.update(rfga_options)
  return cfg


@pytest.fixture(scope="module")
def small():
  method = methods.get_method(_config(second_sigmoid=False, hw_conv="depthwise"))  # small
  return method, method.init(jax.random.key(0))


def test_network_layout_labels_and_stride(small):
  method, variables = small
  params = variables["params"]
  assert {"conv1", "bn1", "layer4_0", "rfga", "head"} <= set(params) and "fc" not in params
  assert params["rfga"]["conv_h"]["kernel"].shape == (3, 1, 2048)
  full = jax.eval_shape(lambda: methods.get_method(_config()).init_fresh(jax.random.key(0)))
  assert full["params"]["rfga"]["conv_h"]["kernel"].shape == (3, 2048, 2048)
  assert params["head"]["kernel"].shape == (1, 1, 2048, 5) and params["head"]["bias"].shape == (5,)
  assert {"rfga", "layer4_0"} <= set(variables["batch_stats"])
  labels = traverse_util.flatten_dict(method.param_labels(params), sep="/")
  assert {k for k, v in labels.items() if v == "new_decay"} == {
      k for k in labels if k.startswith(("rfga/", "head/"))}
  assert set(labels.values()) == {"decay", "new_decay"}
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  maps_fn = jax.jit(method.maps)
  maps, logits = maps_fn(variables, images, jnp.array([1, 3]))
  assert maps.shape == (2, 4, 4) and logits.shape == (2, 5)  # output stride 8
  _, aux = jax.jit(lambda v, x: method.model.apply(v, x, capture=("class_maps", "calibrated")))(
      variables, images)
  np.testing.assert_allclose(logits, aux["class_maps"].mean((1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maps, aux["class_maps"][..., [1, 3]].transpose(3, 0, 1, 2)[[0, 1], [0, 1]],
                             rtol=1e-6)
  head = params["head"]
  expect = np.einsum("bhwk,kc->bhwc", aux["calibrated"], head["kernel"][0, 0]) + head["bias"]
  np.testing.assert_allclose(aux["class_maps"], expect, rtol=1e-4, atol=1e-4)
  argmax_maps, _ = jax.jit(method.maps)(variables, images)
  np.testing.assert_allclose(argmax_maps, maps_fn(variables, images, jnp.argmax(logits, -1))[0])
  assert rfga_method.Rfga.upsample == "bicubic" and rfga_method.Rfga.eval_protocols == ("rfga",)


def test_loss_updates_batch_stats_and_the_optimizer_scales_new_layers(small):
  method, variables = small
  batch = {"image": jax.random.normal(jax.random.key(2), (4, 32, 32, 3)),
           "label": jnp.array([0, 1, 2, 3])}
  (loss, aux), grads = jax.jit(jax.value_and_grad(
      lambda p: method.loss({**variables, "params": p}, batch, None), has_aux=True))(
          variables["params"])
  assert np.isfinite(loss) and set(aux["model_state"]) == {"batch_stats"}
  new_stats = aux["model_state"]["batch_stats"]
  for path in (("rfga", "bn_c", "mean"), ("rfga", "bn_h", "var"), ("layer4_0", "bn1", "mean")):
    old, new = variables["batch_stats"], new_stats
    for k in path:
      old, new = old[k], new[k]
    assert np.abs(np.asarray(new) - np.asarray(old)).max() > 0, path
  cfg = _config()
  cfg.optimizer.update(dict(name="sgd", lr=0.01, weight_decay=0.0, momentum=0.0))
  cfg.optimizer.lr_multipliers = dict(new_decay=10.0)
  tx = optim.make_optimizer(cfg, optim.make_schedule(cfg, 1, 1), method.param_labels(grads))
  updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
  np.testing.assert_allclose(updates["head"]["bias"], -0.1 * grads["head"]["bias"], rtol=1e-6)
  np.testing.assert_allclose(updates["layer4_0"]["bn3"]["bias"],
                             -0.01 * grads["layer4_0"]["bn3"]["bias"], rtol=1e-6)


def test_config_section_and_output_stride_override():
  m = methods.get_method(_config(second_sigmoid=False, hw_conv="shared",
                                 calibration="multiplicative"))
  assert (m.model.second_sigmoid, m.model.hw_conv, m.model.calibration) == (False, "shared",
                                                                              "multiplicative")
  assert m.model.output_stride == 8
  cfg = _config()
  cfg.model.kwargs = dict(layers=(1, 1, 1, 1), output_stride=16)
  assert methods.get_method(cfg).model.output_stride == 16
  meta = m.export_meta()
  assert meta["family"] == "rfga" and meta["kwargs"]["hw_conv"] == "shared"


def test_pretrained_backbone_loads_and_new_layers_stay_fresh(golden_resnet_dir):
  cfg = _config(hw_conv="shared")
  cfg.model.num_classes = 7
  cfg.model.pretrained = str(golden_resnet_dir)
  method = methods.get_method(cfg)
  variables = method.init(jax.random.key(0))
  loaded, _ = load_pretrained(golden_resnet_dir)
  np.testing.assert_array_equal(variables["params"]["layer4_0"]["conv2"]["kernel"],
                                loaded["params"]["layer4_0"]["conv2"]["kernel"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"],
                                loaded["batch_stats"]["bn1"]["var"])
  fresh = method.init_fresh(jax.random.key(0))  # jitted
  for root in ("rfga", "head"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"][root],
                           fresh["params"][root])


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_through_the_cli(tmp_path, capsys):
  """The ``:smoke`` config through the CLI: results, export, overlays, BatchNorm statistics."""
  from wsol_jax import train as train_cli
  root = pathlib.Path(__file__).resolve().parents[1]
  workdir = tmp_path / "run"
  args = ["--config", str(root / "configs/rfga_synthetic.py:smoke"), "--workdir", str(workdir),
          f"--config.data.data_dir={tmp_path / 'tfds'}"]
  assert train_cli.main(args) == 0
  out = capsys.readouterr().out
  assert "center-Gaussian" in out and "maxboxacc_v2" in out
  results = json.loads((workdir / "results.json").read_text())
  assert 0 <= results["test"]["maxboxacc_v2"] <= 100 and results["center_gaussian"]["maxboxacc_v2"] > 0
  for t in (50, 60, 70, 80, 90):
    assert 0 <= results["test"][f"rfga_maxboxacc_iou{t}"] <= 100
  assert 0 <= results["test"]["rfga_miou"] <= 1
  variables = cli_checks.check_export_and_overlays(workdir, "rfga")
  cli_checks.check_batch_stats_trained(args[1], tmp_path / "tfds", variables)
  # The export loads in the explain CLI's loader (model family 'rfga') with CAM maps.
  from wsol_jax import explain
  explainer = explain.build_explainer(workdir / "export")
  assert explainer.kind == "cam"
  size = explainer.image_size
  raw, logits = explainer.fn(explainer.variables, jnp.zeros((2, size, size, 3), jnp.uint8), None)
  assert raw.ndim == 3 and raw.shape[0] == 2 and logits.shape == (2, explainer.meta["num_classes"])
