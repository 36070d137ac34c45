"""SAT: parity with the official wpy1999/SAT code (``tests/golden_sat/sat.npz``, made by
``tests/golden_sat/make_golden.py``), its loss, maps, labels, configs, and the three CLIs."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from weights_convert import convert, mapping
from wsol_jax import config_lib, evaluate, explain, methods
from wsol_jax import train as train_cli
from wsol_jax import maps as maps_lib
from wsol_jax.maps import postprocess
from wsol_jax.methods import sat as sat_lib
from wsol_jax.models import load_pretrained, registry
from wsol_jax.models import sat as sat_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = pathlib.Path(__file__).with_name("golden_sat") / "sat.npz"
# The golden model (make_golden.py): the official 14×14 grid at image 56 / patch 4.
GOLDEN_KWARGS = dict(img_size=56, patch_size=4, embed_dim=16, depth=12, num_heads=2, mlp_ratio=2.0)
SAT_RULES = mapping.VIT_RULES + mapping.SAT_RULES


def golden_config(**sat):
  c = config_lib.base_config()
  c.method = "sat"
  c.model.name = "deit_tiny_patch16_224"
  c.model.kwargs = dict(GOLDEN_KWARGS)
  c.model.num_classes = 5
  c.model.drop_path_rate = 0.0  # the golden model has none (train mode is deterministic)
  c.data.image_size = 56
  c.sat.update(sat)
  return c


@pytest.fixture(scope="module")
def gold():
  return np.load(GOLDEN)


@pytest.fixture(scope="module")
def golden_variables(gold):
  """The official state dict through the converter (``--method sat``)."""
  state = {k[2:]: gold[k] for k in gold.files if k.startswith("w/")}
  converted = convert.convert_state_dict(state, "deit_tiny_patch16_224", method="sat",
                                         overrides=GOLDEN_KWARGS)
  assert converted.meta["family"] == "sat" and converted.meta["num_classes"] == 5
  return jax.tree_util.tree_map(jnp.asarray, converted.variables)


@pytest.fixture(scope="module")
def batch(gold):
  return {"image": jnp.asarray(gold["images"].transpose(0, 2, 3, 1)),
          "label": jnp.asarray(gold["labels"])}


def _tol(gold, name):
  """Twice the official float32-vs-float64 distance, at least 1e-7: float32 rounding."""
  return max(2 * float(np.max(np.abs(gold[name] - gold[name + "_f64"]))), 1e-7)


def test_golden_provenance_and_rounding_scale(gold):
  prov = json.loads(str(gold["provenance"]))
  assert prov["repo"] == "wpy1999/SAT" and prov["commit"].startswith("702290d")
  # The float64 rerun is a float32-rounding yardstick, and the map is far from constant.
  assert _tol(gold, "map") < 1e-6 and np.ptp(gold["map"]) > 0.5


@pytest.mark.parametrize("runtime", ["xla", "cpu_wing"])
def test_logits_and_map_match_the_official_model(gold, golden_variables, batch, runtime):
  from wsol_jax import cpu
  rt = cpu.runtime(cpu.plan("on")) if runtime == "cpu_wing" else None
  m = methods.get_method(golden_config(), rt)
  if runtime == "cpu_wing":
    assert m.model.attention_fn is not None  # the 9 plain blocks run the injected core
  logits, sat_map = jax.jit(m.train_forward)(golden_variables, batch["image"], None)
  np.testing.assert_allclose(logits, gold["logits"], rtol=0, atol=_tol(gold, "logits") + 1e-7)
  np.testing.assert_allclose(sat_map, gold["map"], rtol=0, atol=_tol(gold, "map") + 1e-7)
  maps, eval_logits = jax.jit(m.maps)(golden_variables, batch["image"])
  np.testing.assert_allclose(maps, gold["map"], rtol=0, atol=_tol(gold, "map") + 1e-7)
  np.testing.assert_allclose(eval_logits, gold["logits_eval"], rtol=0,
                             atol=_tol(gold, "logits_eval") + 1e-7)


@pytest.fixture(scope="module")
def train_step(golden_variables, batch):
  """(method, loss, metrics, gradients) of one jitted value-and-grad of the SAT loss."""
  m = methods.get_method(golden_config())

  def loss_fn(params):
    return m.loss({"params": params}, batch, jax.random.key(0))

  (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      golden_variables["params"])
  return m, loss, aux["metrics"], grads


def test_loss_terms_match_the_official_train_script(gold, golden_variables, batch, train_step):
  m, loss, metrics, _ = train_step
  for ours, theirs in [("loss_cls", "loss_cls"), ("loss_ba", "loss_ba"),
                       ("loss_norm", "loss_norm"), ("loss", "loss")]:
    np.testing.assert_allclose(metrics[ours], gold[theirs], rtol=0,
                               atol=_tol(gold, theirs) + 2e-7, err_msg=ours)
  np.testing.assert_allclose(loss, gold["loss"], rtol=0, atol=_tol(gold, "loss") + 2e-7)
  _, sat_map = m.train_forward(golden_variables, batch["image"], None)
  terms = sat_lib.sat_losses(sat_map, m.section_config)
  np.testing.assert_allclose(terms["ba"], gold["ba"], rtol=0, atol=_tol(gold, "ba") + 1e-7)
  np.testing.assert_allclose(terms["norm"], gold["norm"], rtol=0, atol=_tol(gold, "norm") + 1e-7)
  np.testing.assert_allclose(metrics["map_area"], np.mean(gold["ba"]), rtol=1e-6)


def test_gradients_of_every_parameter_match_the_official_backward(gold, train_step):
  """d loss / d θ for every trainable tensor — the new loc_token/loc_embed and the head
  included — against PyTorch's autograd of the official loss."""
  grads = train_step[3]
  flat = {"/".join(("params",) + k): np.asarray(v)
          for k, v in traverse_util.flatten_dict(grads).items()}
  compared = set()
  for name in (k[2:] for k in gold.files if k.startswith("g/")):
    (key, want), = mapping.apply_rules({name: gold["g/" + name]}, SAT_RULES)[0].items()
    tol = 2 * float(gold["f64diff/" + name]) + 2e-8
    np.testing.assert_allclose(flat[key], want, rtol=0, atol=tol, err_msg=name)
    compared.add(key)
  assert compared == set(flat)
  assert np.abs(flat["params/loc_token"]).max() > 1e-3  # the spatial token is trained


def test_a_released_checkpoint_converts_through_the_cli(tmp_path, gold, golden_variables):
  """The official training script's file: ``{'model': DataParallel state dict, 'best_thr',
  'epoch'}``, with the fixed Gaussian buffer ``weight`` (skipped)."""
  torch = pytest.importorskip("torch")
  from weights_convert import timm as convert_cli
  state = {"module." + k[2:]: torch.from_numpy(gold[k]) for k in gold.files if k.startswith("w/")}
  path = tmp_path / "best_loc.pth.tar"
  torch.save({"model": state, "best_thr": 0.4, "epoch": 30}, path)
  sets = [a for k, v in GOLDEN_KWARGS.items() for a in ("--set", f"{k}={v}")]
  assert convert_cli.main(["--model", "deit_tiny_patch16_224", "--method", "sat", "--checkpoint",
                           str(path), "--out", str(tmp_path / "out"), *sets]) == 0
  variables, meta = load_pretrained(tmp_path / "out")
  assert meta["method"] == "sat" and meta["family"] == "sat"
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, golden_variables)


def test_gaussian_kernel_is_the_official_buffer(gold):
  np.testing.assert_allclose(sat_model.gaussian_kernel(3, 6.0), gold["w/weight"][0, 0], rtol=1e-6)
  k = sat_model.gaussian_kernel(5, 1.0)
  assert k.shape == (5, 5) and abs(k.sum() - 1) < 1e-6 and k[2, 2] == k.max()


def test_smoothing_is_a_zero_padded_convolution():
  rng = np.random.default_rng(0)
  maps, kernel = rng.random((2, 5, 7)).astype(np.float32), rng.random((3, 3)).astype(np.float32)
  want = np.zeros_like(maps)
  padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)))
  for y in range(5):
    for x in range(7):
      want[:, y, x] = np.sum(padded[:, y:y + 3, x:x + 3] * kernel, axis=(1, 2))
  np.testing.assert_allclose(sat_model.smooth(jnp.asarray(maps), kernel), want, rtol=1e-6)


def test_loss_weights_and_area_threshold_options(golden_variables, batch):
  rng = jax.random.key(0)
  base = methods.get_method(golden_config()).loss(golden_variables, batch, rng)[1]["metrics"]
  m = methods.get_method(golden_config(area_thr=0.35, ba_weight=2.0, norm_weight=0.0))
  loss, aux = m.loss(golden_variables, batch, rng)
  got = aux["metrics"]
  np.testing.assert_allclose(got["loss_ba"], abs(base["map_area"] - 0.35), rtol=1e-5)
  np.testing.assert_allclose(loss, got["loss_cls"] + 2 * got["loss_ba"], rtol=1e-6)


def test_maps_are_class_agnostic_and_only_sat_kind_applies(golden_variables, batch):
  m = methods.get_method(golden_config())
  a, _ = m.maps(golden_variables, batch["image"], jnp.zeros(4, jnp.int32))
  b, _ = m.maps(golden_variables, batch["image"], jnp.full(4, 3, jnp.int32))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 14, 14)
  assert (m.map_kinds, m.upsample, m.maps_all_classes) == (("sat",), "bilinear", False)
  with pytest.raises(ValueError, match="does not apply to a SAT model"):
    maps_lib.compute(m.model, golden_variables, batch["image"], ("gar",))
  vit = registry.create_model("deit_tiny_patch16_224", depth=1, img_size=32, num_classes=3)
  with pytest.raises(ValueError, match="needs a SAT model"):
    maps_lib.compute(vit, {}, jnp.zeros((1, 32, 32, 3)), ("sat",))


def test_spatial_layers_option_changes_which_blocks_are_masked(golden_variables, batch, gold):
  m = methods.get_method(golden_config(layers=1))
  assert m.model.sat_layers == 1
  _, sat_map = m.train_forward(golden_variables, batch["image"], None)
  assert np.abs(np.asarray(sat_map) - gold["map"]).max() > 1e-3
  with pytest.raises(ValueError, match="sat_layers"):
    methods.get_method(golden_config(layers=13)).init_fresh(jax.random.key(0))


def test_config_validation():
  for bad, match in [(dict(area_thr=1.5), "area_thr"), (dict(layers=0), "layers"),
                     (dict(kernel_size=2), "kernel_size")]:
    with pytest.raises(ValueError, match=match):
      sat_lib.SatConfig(**bad)
  with pytest.raises(ValueError, match="unknown sat config keys"):
    methods.get_method(golden_config(area=0.3))


def test_param_labels_and_fresh_init():
  c = golden_config(layers=1)
  c.model.kwargs = dict(GOLDEN_KWARGS, depth=2)
  m = methods.get_method(c)
  params = jax.jit(m.init_fresh)(jax.random.key(0))["params"]
  labels = m.param_labels(params)
  assert labels["loc_token"] == labels["loc_embed"] == labels["cls_token"] == "no_decay"
  assert labels["head"]["kernel"] == "decay"
  assert labels["blocks_1"]["attn"]["qkv"]["bias"] == "no_decay"
  assert params["loc_token"].shape == params["loc_embed"].shape == (1, 1, 16)
  # trunc-normal(0.02) as the official init (not zeros, not timm's 1e-6 class token)
  assert 0.005 < float(jnp.std(params["loc_embed"])) < 0.05


def test_init_loads_a_deit_backbone_and_keeps_the_new_parameters(golden_vit_dir):
  """A plain DeiT export (linear head) into SAT: backbone loaded, head and spatial token fresh."""
  c = config_lib.base_config()
  c.method = "sat"
  c.model.name = "deit_tiny_patch16_224"
  c.model.kwargs = dict(depth=4)
  c.model.num_classes = 10
  c.model.pretrained = str(golden_vit_dir)
  m = methods.get_method(c)
  v = m.init(jax.random.key(0))
  fresh = m.init_fresh(jax.random.key(0))
  backbone, _ = load_pretrained(golden_vit_dir)
  np.testing.assert_array_equal(v["params"]["blocks_3"]["attn"]["qkv"]["kernel"],
                                backbone["params"]["blocks_3"]["attn"]["qkv"]["kernel"])
  for name in ("loc_token", "loc_embed"):
    np.testing.assert_array_equal(v["params"][name], fresh["params"][name])
  assert v["params"]["head"]["kernel"].shape == (3, 3, 192, 10)


@pytest.mark.parametrize("spec,lr,epochs,batch,area,select", [
    ("sat_cub.py", 1e-4, 30, 256, 0.25, "val"), ("sat_cub.py:paper", 1e-4, 30, 256, 0.25, "test"),
    ("sat_ilsvrc.py", 1.5e-5, 1, 512, 0.35, "val")])
def test_official_recipes(spec, lr, epochs, batch, area, select):
  c = config_lib.load(str(ROOT / "configs" / spec))
  assert (c.method, c.model.name, c.seed) == ("sat", "deit_small_patch16_224", 6)
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay) == ("adamw", lr, 0.05)
  assert (c.schedule.name, c.training.num_epochs) == ("constant", epochs)
  assert c.training.batch_size == batch
  assert (c.sat.area_thr, c.sat.layers, c.eval.select_split) == (area, 3, select)
  assert (c.data.image_size, c.data.resize_size) == (224, 256)
  m = methods.method_class(c.method)
  assert m.drop_path_rate == 0.1 and c.model.drop_path_rate is None


# ---- end to end: train -> evaluate -> explain ------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("sat_e2e")
  workdir = root / "run"
  assert train_cli.main(["--config", str(ROOT / "configs/sat_synthetic.py:smoke"),
                         "--workdir", str(workdir), f"--config.data.data_dir={root / 'tfds'}"]) == 0
  return root, workdir


@pytest.mark.slow
def test_training_through_the_cli(trained):
  _, workdir = trained
  results = json.loads((workdir / "results.json").read_text())
  assert 0 <= results["test"]["maxboxacc_v2"] <= 100
  assert results["test"]["sat_threshold"] in (0.3, 0.35, 0.4, 0.45)  # SAT's own protocol ran
  assert results["test"]["sat_top1_loc"] <= results["test"]["sat_gt_known"]
  assert results["center_gaussian"]["maxboxacc_v2"] > 0
  variables, meta = load_pretrained(workdir / "export")
  assert meta["method"] == "sat" and meta["family"] == "sat" and meta["kwargs"]["sat_layers"] == 1
  assert {"loc_token", "loc_embed"} <= set(variables["params"])
  assert len(list((workdir / "overlays").glob("*.png"))) == 2


@pytest.mark.slow
def test_evaluate_cli_on_the_export(trained):
  root, workdir = trained
  out = root / "eval"
  assert evaluate.main(["--config", str(ROOT / "configs/sat_synthetic.py:smoke"),
                        "--checkpoint", str(workdir / "export"), "--workdir", str(out),
                        f"--config.data.data_dir={root / 'tfds'}"]) == 0
  got = json.loads((out / "results.json").read_text())
  want = json.loads((workdir / "results.json").read_text())["test"]
  assert got["metrics"]["maxboxacc_v2"] == pytest.approx(want["maxboxacc_v2"], abs=1e-6)


@pytest.mark.slow
def test_explain_cli_writes_the_sat_maps(trained, tmp_path):
  _, workdir = trained
  cfg = config_lib.load(str(ROOT / "configs/sat_synthetic.py:smoke"))
  m = methods.get_method(cfg)
  rng = np.random.default_rng(1)
  files = []
  for i, size in enumerate([(48, 40), (32, 32)]):
    files.append(tmp_path / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(files[-1])
  out = tmp_path / "out"
  assert explain.main(["--checkpoint", str(workdir / "export"), "--images", *map(str, files),
                       "--out", str(out)]) == 0  # the default kind of a SAT export: 'sat'
  got = np.stack([np.load(out / f"img{i}.npy") for i in range(2)])
  variables, _ = load_pretrained(workdir / "export")
  x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR))
                for f in files])
  ref, _ = m.maps(variables, postprocess.normalize_images(x, m.mean, m.std))
  assert got.shape == (2, 4, 4)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  assert (out / "img0.png").exists() and "x0" in (out / "summary.csv").read_text()
