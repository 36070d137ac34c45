"""The train CLI's config handling: every shipped config loads; bad keys fail before compute."""
import pathlib

import pytest

from wsol_jax import config_lib, methods
from wsol_jax import train as train_cli

CONFIGS = sorted(pathlib.Path(__file__).resolve().parents[1].joinpath("configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_validates(path):
  cfg = config_lib.load(str(path))
  assert cfg.method in methods.METHODS
  assert cfg.model.num_classes > 0 or path.stem == "own_data"  # 0 = from the data
  doc = path.read_text().split('"""')[1]
  assert "python -m wsol_jax.train" in doc or "python -m wsol_jax.evaluate" in doc
  # Every declared variant loads and changes the config (no stale declaration).
  module = config_lib.load_module(path)
  for variant in set(module.VARIANTS) - {getattr(module, "DEFAULT_VARIANT", None)}:
    assert config_lib.load(f"{path}:{variant}").to_dict() != cfg.to_dict(), variant


def test_a_mistyped_variant_fails_before_compute_naming_the_valid_ones(tmp_path, capsys):
  code = train_cli.main(["--config", "configs/scm_synthetic.py:smok", "--workdir",
                         str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 2 and "unknown variant 'smok' (did you mean 'smoke'?); valid: smoke" in err
  assert not (tmp_path / "w").exists()
  cfg_file = tmp_path / "mine.py"
  cfg_file.write_text("from wsol_jax import config_lib\n"
                      "def get_config(arg=None):\n"
                      "  return config_lib.base_config()\n")
  assert config_lib.load(str(cfg_file)).method == "tscam"  # no variants asked: fine
  with pytest.raises(config_lib.ConfigError, match="declares no variants"):
    config_lib.load(f"{cfg_file}:fast")


def test_override_with_a_typo_names_the_closest_keys(tmp_path, capsys):
  code = train_cli.main(["--config", "configs/tscam_synthetic.py", "--workdir", str(tmp_path / "w"),
                         "--config.optimizer.lrr=0.1"])
  err = capsys.readouterr().err
  assert code == 2 and "optimizer.lrr" in err and "optimizer.lr" in err
  assert not (tmp_path / "w").exists()  # failed before any compute or file


def test_typo_inside_a_config_file_is_caught(tmp_path, capsys):
  cfg_file = tmp_path / "bad.py"
  cfg_file.write_text("from wsol_jax import config_lib\n"
                      "def get_config(arg=None):\n"
                      "  c = config_lib.base_config()\n"
                      "  c.training.bach_size = 32\n"
                      "  return c\n")
  code = train_cli.main(["--config", str(cfg_file), "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 2 and "training.bach_size" in err and "training.batch_size" in err
  assert not (tmp_path / "w").exists()


def test_override_values_are_typed(tmp_path, capsys):
  cfg = config_lib.load("configs/scm_cub.py:tfds", ["optimizer.lr=1e-4", "training.batch_size=32",
                                                    "scm.iterations=(4,4,4,4)",
                                                    "model.kwargs.depth=6", "data.random_flip=false"])
  assert cfg.optimizer.lr == 1e-4 and cfg.training.batch_size == 32
  assert tuple(cfg.scm.iterations) == (4, 4, 4, 4) and cfg.model.kwargs.depth == 6
  assert cfg.data.random_flip is False and cfg.data.train_split == "train[:90%]"
  code = train_cli.main(["--config", "configs/scm_cub.py", "--workdir", str(tmp_path / "w"),
                         "--config.training.batch_size=many"])
  assert code == 2 and "expected int" in capsys.readouterr().err


def test_unknown_arguments_and_missing_config_file(tmp_path, capsys):
  with pytest.raises(SystemExit):
    train_cli.main(["--config", "configs/scm_cub.py", "--workdir", str(tmp_path), "--lr=3"])
  assert train_cli.main(["--config", "configs/nope.py", "--workdir", str(tmp_path / "w")]) == 2
  assert "not found" in capsys.readouterr().err


def test_a_url_workdir_of_another_scheme_fails_before_compute(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a URL taken as a path would create ./s3:/bucket/run here
  config = str(CONFIGS[0].parent / "scm_synthetic.py")
  code = train_cli.main(["--config", config, "--workdir", "s3://bucket/run"])
  err = capsys.readouterr().err
  assert code == 2 and "--workdir s3://bucket/run: s3:// URLs are not supported" in err
  assert not list(tmp_path.iterdir())
  assert config_lib.dir_path("runs/x", "--workdir") == tmp_path / "runs/x"


def test_a_bad_cpu_tuning_value_fails_before_compute(tmp_path, capsys):
  config = str(CONFIGS[0].parent / "scm_synthetic.py")
  code = train_cli.main(["--config", config, "--workdir", str(tmp_path / "w"),
                         "--config.cpu_tuning=fast"])
  err = capsys.readouterr().err
  assert code == 2 and "config.cpu_tuning must be one of" in err and "'auto'" in err
  assert not (tmp_path / "w").exists()


def test_the_dot_thunk_option_moves_the_dots_off_ynnpack_with_the_same_result():
  import jax
  import jax.numpy as jnp
  import numpy as np
  from wsol_jax.cpu import dots
  assert dots.option_accepted()
  x = jax.random.normal(jax.random.key(0), (64, 96))
  w = jax.random.normal(jax.random.key(1), (96, 48))
  f = lambda x, w: jnp.tanh(x @ w) @ w.T
  outs = {}
  for name, options in (("thunk", dots.COMPILER_OPTIONS), ("xla", None)):
    step = jax.jit(f, compiler_options=options)
    outs[name] = step(x, w)
    hlo = step.lower(x, w).compile().as_text()
    if name == "thunk":  # every dot is XLA's own dot thunk, none inside a YNNPACK fusion
      assert "__ynn_fusion" not in hlo and hlo.count(" dot(") == 2
  np.testing.assert_allclose(outs["thunk"], outs["xla"], rtol=1e-5, atol=1e-5)


def test_config_changes_and_which_keys_a_resume_may_change():
  stored = config_lib.base_config().to_dict()
  new = config_lib.base_config()
  new.training.num_epochs = 90
  new.eval.batch_size = 8
  new.model.kwargs = dict(depth=3)
  new.scm.iterations = (4, 4, 4, 4)
  changes = config_lib.config_changes(stored, new.to_dict())
  assert changes == {"training.num_epochs": (60, 90), "eval.batch_size": (64, 8),
                     "model.kwargs.depth": (None, 3),
                     "scm.iterations": ([16, 4, 4, 4], [4, 4, 4, 4])}
  assert [k for k in changes if config_lib.resumable(k)] == ["eval.batch_size",
                                                              "training.num_epochs"]
  assert not config_lib.resumable("training.batch_size") and not config_lib.resumable("seed")
  old_schema = {**stored, "xla": {"cpu_dots": "eigen"}}  # a key the schema no longer has
  assert config_lib.config_changes(old_schema, stored) == {}


@pytest.mark.parametrize("override,message", [
    ("training.batch_size=-4", "training.batch_size=-4 must be a positive multiple of the 8 devices"),
    ("eval.batch_size=12", "eval.batch_size=12 must be a positive multiple of the 8 devices; e.g. 8"),
])
def test_batch_sizes_follow_one_rule_and_fail_naming_the_key(tmp_path, capsys, override, message):
  code = train_cli.main(["--config", "configs/scm_synthetic.py:smoke", "--workdir",
                         str(tmp_path / "w"), f"--config.{override}"])
  assert code == 2 and message in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_a_workdir_that_is_a_file_is_one_error_line(tmp_path, capsys):
  (tmp_path / "w").write_text("")
  code = train_cli.main(["--config", "configs/scm_synthetic.py:smoke", "--workdir",
                         str(tmp_path / "w")])
  assert code == 2 and "is a file, not a directory" in capsys.readouterr().err
