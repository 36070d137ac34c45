"""weights_convert: the name/transpose table, every checkpoint layout, and failure reporting."""
import pathlib

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from weights_convert import mapping
from weights_convert import timm as cli
from wsol_jax.models import load_pretrained, model_from_meta

TINY = ["--model", "deit_tiny_patch16_224", "--set", "depth=4"]


@pytest.fixture(scope="module")
def timm_state(golden_dir):
  return load_file(str(golden_dir / "weights_vit.safetensors"))


@pytest.fixture(scope="module")
def conv_head(golden_dir):
  return load_file(str(golden_dir / "weights_tscam_head.safetensors"))


def _run(out, *args):
  return cli.main([*args, "--out", str(out)])


def _save_pth(path, obj):
  torch.save(obj, path)
  return str(path)


def _torch_sd(state, prefix=""):
  return {prefix + k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def _forward(model_dir, images, **capture):
  variables, meta = load_pretrained(model_dir)
  model = model_from_meta(meta)
  logits, aux = model.apply({k: v for k, v in variables.items()}, images, **capture)
  return variables, meta, logits, aux


# ---- the table ------------------------------------------------------------------------------

def test_transforms_are_the_documented_transposes():
  w = np.arange(24, dtype=np.float32)
  np.testing.assert_array_equal(mapping.transform(w.reshape(4, 6), "linear", "k"), w.reshape(4, 6).T)
  conv = w.reshape(2, 3, 2, 2)
  np.testing.assert_array_equal(mapping.transform(conv, "conv2d", "k"), conv.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(mapping.transform(w.reshape(2, 3, 4), "conv1d", "k"),
                                w.reshape(2, 3, 4).transpose(2, 1, 0))
  assert mapping.transform(conv, "auto", "k").shape == (2, 2, 3, 2)
  with pytest.raises(ValueError, match="head.weight"):
    mapping.transform(w.reshape(2, 3, 4), "auto", "head.weight")


def test_rules_map_timm_names_to_flax_paths():
  state = {"blocks.3.attn.qkv.weight": np.zeros((6, 2)), "blocks.10.norm2.bias": np.zeros(2),
           "layer4.2.downsample.1.running_var": np.zeros(3), "odd.key": np.zeros(1)}
  vit, unmatched = mapping.apply_rules(state, mapping.VIT_RULES)
  assert set(vit) == {"params/blocks_3/attn/qkv/kernel", "params/blocks_10/norm2/bias"}
  assert vit["params/blocks_3/attn/qkv/kernel"].shape == (2, 6)
  assert unmatched == ["layer4.2.downsample.1.running_var", "odd.key"]
  rn, _ = mapping.apply_rules({"layer4.2.downsample.1.running_var": np.zeros(3),
                               "bn1.num_batches_tracked": np.zeros(())}, mapping.RESNET_RULES)
  assert set(rn) == {"batch_stats/layer4_2/downsample_bn/var"}


# ---- layouts --------------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict_module_prefix"])
def test_pth_layouts_equal_the_safetensors_conversion(tmp_path, timm_state, golden_vit_dir, wrap):
  sd = _torch_sd(timm_state, "module." if "module" in wrap else "")
  obj = {"plain": sd, "model": {"model": sd, "epoch": 3},
         "state_dict_module_prefix": {"state_dict": sd, "best_acc": 0.5}}[wrap]
  ckpt = _save_pth(tmp_path / "w.pth", obj)
  assert _run(tmp_path / "out", *TINY, "--checkpoint", ckpt) == 0
  got, meta = load_pretrained(tmp_path / "out")
  ref, _ = load_pretrained(golden_vit_dir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, ref)
  assert meta["source"]["format"] == "torch" and len(meta["source"]["sha256"]) == 64


def test_tscam_checkpoint_reproduces_official_logits_and_semantic_maps(
    tmp_path, timm_state, conv_head, golden_dir, golden_inputs):
  sd = {k: v for k, v in timm_state.items() if not k.startswith("head.")} | conv_head
  ckpt = _save_pth(tmp_path / "tscam.pth", {"state_dict": _torch_sd(sd, "module.")})
  assert _run(tmp_path / "out", *TINY, "--method", "tscam", "--checkpoint", ckpt) == 0
  _, meta, logits, aux = _forward(tmp_path / "out", golden_inputs[0], capture=("semantic",))
  gold = np.load(golden_dir / "tscam.npz")
  assert meta["method"] == "tscam" and meta["kwargs"]["head"] == "conv3x3"
  np.testing.assert_allclose(logits, gold["logits"], atol=1e-5)
  np.testing.assert_allclose(aux["semantic"], gold["semantic"].transpose(0, 2, 3, 1), atol=2e-5)


def test_scm_checkpoint_carries_lambda_and_beta(tmp_path, timm_state, conv_head, golden_dir, golden_inputs):
  sd = {k: v for k, v in timm_state.items() if not k.startswith("head.")} | conv_head
  for i in range(4):
    sd[f"layers.{i}.fuse._loss_rate"] = np.full((1,), 1.0 + i, np.float32)
    sd[f"layers.{i}.thred"] = np.full((1,), 0.5 - 0.1 * i, np.float32)
  path = tmp_path / "scm.safetensors"
  save_file(sd, str(path))
  assert _run(tmp_path / "out", *TINY, "--method", "scm", "--checkpoint", str(path)) == 0
  variables, _ = load_pretrained(tmp_path / "out")
  scm = variables["params"].pop("scm")
  assert [float(scm[f"adb_{i}"]["lambda"][0]) for i in range(4)] == [1.0, 2.0, 3.0, 4.0]
  np.testing.assert_allclose([scm[f"adb_{i}"]["beta"][0] for i in range(4)], [0.5, 0.4, 0.3, 0.2])
  _, meta = load_pretrained(tmp_path / "out")
  logits, _ = model_from_meta(meta).apply(variables, golden_inputs[0])
  np.testing.assert_allclose(logits, np.load(golden_dir / "scm.npz")["eval_logits"], atol=1e-5)
  # Without the SCM blocks the method layout is incomplete and the error names them.
  bad = {k: v for k, v in sd.items() if "thred" not in k}
  save_file(bad, str(path))
  assert _run(tmp_path / "out2", *TINY, "--method", "scm", "--checkpoint", str(path)) == 1
  assert not (tmp_path / "out2").exists()


def test_vitol_checkpoint_nested_under_state_dict_uses_final_norm_eps_1e5(
    tmp_path, timm_state, golden_dir, golden_inputs):
  ckpt = _save_pth(tmp_path / "ViTOL-DeiT-T_last.pth.tar",
                   {"state_dict": _torch_sd(timm_state), "epoch": 10, "arch": "deit_tiny"})
  assert _run(tmp_path / "out", *TINY, "--method", "vitol", "--checkpoint", ckpt) == 0
  _, meta, logits, _ = _forward(tmp_path / "out", golden_inputs[0])
  assert meta["kwargs"]["final_norm_eps"] == 1e-5
  np.testing.assert_allclose(logits, np.load(golden_dir / "vitol.npz")["logits"], atol=1e-5)


def _to_big_vision(state):
  dim = state["cls_token"].shape[-1]
  heads = 3
  out = {"embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": state["patch_embed.proj.bias"], "cls": state["cls_token"],
         "Transformer/posembed_input/pos_embedding": state["pos_embed"],
         "Transformer/encoder_norm/scale": state["norm.weight"],
         "Transformer/encoder_norm/bias": state["norm.bias"],
         "head/kernel": state["head.weight"].T, "head/bias": state["head.bias"]}
  for i in range(4):
    p, b = f"Transformer/encoderblock_{i}", f"blocks.{i}"
    for ln, n in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
      out[f"{p}/{ln}/scale"], out[f"{p}/{ln}/bias"] = state[f"{b}.{n}.weight"], state[f"{b}.{n}.bias"]
    w, bias = state[f"{b}.attn.qkv.weight"], state[f"{b}.attn.qkv.bias"]
    for j, n in enumerate(("query", "key", "value")):
      att = f"{p}/MultiHeadDotProductAttention_1/{n}"
      out[f"{att}/kernel"] = w[j * dim:(j + 1) * dim].T.reshape(dim, heads, dim // heads)
      out[f"{att}/bias"] = bias[j * dim:(j + 1) * dim].reshape(heads, dim // heads)
    att = f"{p}/MultiHeadDotProductAttention_1/out"
    out[f"{att}/kernel"] = state[f"{b}.attn.proj.weight"].T.reshape(heads, dim // heads, dim)
    out[f"{att}/bias"] = state[f"{b}.attn.proj.bias"]
    for j, n in enumerate(("fc1", "fc2")):
      out[f"{p}/MlpBlock_3/Dense_{j}/kernel"] = state[f"{b}.mlp.{n}.weight"].T
      out[f"{p}/MlpBlock_3/Dense_{j}/bias"] = state[f"{b}.mlp.{n}.bias"]
  return out


def test_big_vision_npz_equals_the_timm_conversion(tmp_path, timm_state, golden_vit_dir):
  np.savez(tmp_path / "augreg.npz", **_to_big_vision(timm_state))
  assert _run(tmp_path / "out", *TINY, "--checkpoint", str(tmp_path / "augreg.npz")) == 0
  got, meta = load_pretrained(tmp_path / "out")
  ref, _ = load_pretrained(golden_vit_dir)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=0), got, ref)
  assert meta["source"]["format"] == "npz"


def test_hf_repo_downloads_through_huggingface_hub(tmp_path, golden_dir, monkeypatch):
  import huggingface_hub
  calls = []

  def fake_download(repo_id, filename):
    calls.append((repo_id, filename))
    return str(golden_dir / "weights_vit.safetensors")

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
  assert _run(tmp_path / "out", *TINY, "--hf-repo", "timm/deit_tiny_patch16_224.fb_in1k") == 0
  assert calls == [("timm/deit_tiny_patch16_224.fb_in1k", "model.safetensors")]
  _, meta = load_pretrained(tmp_path / "out")
  assert meta["source"]["hf_repo"] == "timm/deit_tiny_patch16_224.fb_in1k"


# ---- heads and failures ---------------------------------------------------------------------

def test_head_of_another_size_needs_drop_head(tmp_path, golden_dir, golden_vit_dir, capsys):
  ckpt = str(golden_dir / "weights_vit.safetensors")
  assert _run(tmp_path / "a", *TINY, "--num-classes", "200", "--checkpoint", ckpt) == 1
  err = capsys.readouterr().err
  assert "params/head/kernel: checkpoint (192, 10) vs model (192, 200)" in err and "--drop-head" in err
  assert not (tmp_path / "a").exists()
  assert _run(tmp_path / "b", *TINY, "--num-classes", "200", "--drop-head", "--checkpoint", ckpt) == 0
  got, meta = load_pretrained(tmp_path / "b")
  ref, _ = load_pretrained(golden_vit_dir)
  assert got["params"]["head"]["kernel"].shape == (192, 200)
  assert meta["reinitialized"] == ["params/head/bias", "params/head/kernel"]
  np.testing.assert_array_equal(got["params"]["blocks_3"]["mlp"]["fc2"]["kernel"],
                                ref["params"]["blocks_3"]["mlp"]["fc2"]["kernel"])


def test_missing_unexpected_and_mis_shaped_keys_are_all_reported(tmp_path, timm_state, capsys):
  sd = dict(timm_state)
  del sd["blocks.2.mlp.fc1.weight"]
  sd["blocks.2.attn.q_norm.weight"] = np.ones(64, np.float32)
  sd["pos_embed"] = sd["pos_embed"][:, :50]
  path = tmp_path / "bad.safetensors"
  save_file(sd, str(path))
  assert _run(tmp_path / "out", *TINY, "--checkpoint", str(path)) == 1
  err = capsys.readouterr().err
  assert "missing    params/blocks_2/mlp/fc1/kernel (192, 768)" in err
  assert "unexpected blocks.2.attn.q_norm.weight (64,)" in err
  assert "params/pos_embed: checkpoint (1, 50, 192) vs model (1, 197, 192)" in err
  assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("name,content", [
    ("trunc.safetensors", None), ("garbage.pth", b"not a zip file at all"),
    ("garbage.npz", b"PK\x03\x04broken"), ("w.ckpt.json", b"{}")])
def test_corrupt_or_truncated_checkpoints_give_clear_errors(tmp_path, golden_dir, capsys, name, content):
  path = tmp_path / name
  if content is None:
    content = (golden_dir / "weights_vit.safetensors").read_bytes()[:100_000]
  path.write_bytes(content)
  assert _run(tmp_path / "out", *TINY, "--checkpoint", str(path)) == 1
  err = capsys.readouterr().err
  assert name in err and "error:" in err
  assert not (tmp_path / "out").exists()


class _Evil:
  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(_Evil.target),))


def test_pth_is_never_unpickled_beyond_tensors(tmp_path, capsys):
  _Evil.target = str(tmp_path / "pwned")
  path = tmp_path / "evil.pth"
  torch.save({"state_dict": {"cls_token": torch.zeros(1, 1, 192)}, "payload": _Evil()}, path)
  assert _run(tmp_path / "out", *TINY, "--checkpoint", str(path)) == 1
  assert "weights_only" in capsys.readouterr().err
  assert not (tmp_path / "pwned").exists()


def test_unknown_model_missing_file_and_existing_output(tmp_path, golden_dir, golden_vit_dir, capsys):
  ckpt = str(golden_dir / "weights_vit.safetensors")
  assert cli.main(["--model", "deit_small", "--checkpoint", ckpt, "--out", str(tmp_path / "o")]) == 1
  assert "did you mean" in capsys.readouterr().err
  assert _run(tmp_path / "o", *TINY, "--checkpoint", str(tmp_path / "nope.pth")) == 1
  assert "not found" in capsys.readouterr().err
  assert _run(golden_vit_dir, *TINY, "--checkpoint", ckpt) == 1
  assert "--overwrite" in capsys.readouterr().err


def test_a_killed_writer_leaves_no_temporary_directory_behind(tmp_path):
  """A writer killed mid-save leaves ``.NAME.tmp-<pid>-*``; the next save of NAME removes it
  (its process is gone) and keeps a live process's."""
  import os
  import subprocess
  import sys
  from wsol_jax.models import pretrained
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = tmp_path / f".out.tmp-{dead}-abc"
  live = tmp_path / f".out.tmp-{os.getpid()}-xyz"
  for d in (stale, live):
    (d / "variables").mkdir(parents=True)
  pretrained.save_pretrained(tmp_path / "out", {"params": {"w": np.zeros(2, np.float32)}},
                             {"model": "x"})
  assert not stale.exists() and live.exists() and (tmp_path / "out" / "wsol_model.json").is_file()
