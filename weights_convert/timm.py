"""Import timm / official WSOL weights into a wsol_jax model directory.

Examples::

    python -m weights_convert.timm --model deit_small_patch16_224 \\
        --checkpoint deit_small_patch16_224-cd65a155.pth --out ckpt/deit_s
    python -m weights_convert.timm --model deit_small_patch16_224 \\
        --hf-repo timm/deit_small_patch16_224.fb_in1k --out ckpt/deit_s
    python -m weights_convert.timm --model deit_small_patch16_224 --method scm \\
        --checkpoint scm_cub_best.pth --out ckpt/scm_cub          # released SCM model
    python -m weights_convert.timm --model deit_small_patch16_224 --num-classes 200 \\
        --drop-head --checkpoint deit_s.safetensors --out ckpt/deit_s_cub

Exit status 0 on success; 1 with every offending key listed when the checkpoint
does not fit; nothing is left at ``--out`` on failure.
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Sequence

from weights_convert import convert


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def _download(repo: str) -> str:
  try:
    from huggingface_hub import hf_hub_download
  except ImportError as e:
    raise SystemExit("error: --hf-repo needs huggingface_hub: pip install 'wsol_jax[convert]'") from e
  last = None
  for filename in ("model.safetensors", "pytorch_model.bin"):
    try:
      return hf_hub_download(repo_id=repo, filename=filename)
    except Exception as e:  # missing file, no network, unknown repo
      last = e
  raise SystemExit(f"error: could not download weights of {repo} from the Hugging Face Hub: {last}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m weights_convert.timm", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True, help="wsol_jax model name, e.g. deit_small_patch16_224")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--checkpoint", help=".safetensors, .pth/.pth.tar (state dict, possibly under "
                   "'model'/'state_dict') or big_vision .npz")
  src.add_argument("--hf-repo", help="Hugging Face Hub repo, e.g. timm/deit_small_patch16_224.fb_in1k")
  parser.add_argument("--out", required=True, help="output model directory")
  parser.add_argument("--method", choices=[m for m in convert.METHODS if m],
                      help="released method checkpoint layout (3x3 conv head, SCM blocks, SAT token, ViTOL)")
  parser.add_argument("--num-classes", type=int, help="classes of the model (default: the checkpoint's)")
  parser.add_argument("--drop-head", action="store_true",
                      help="re-initialise a classification head that does not fit")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a model constructor argument, e.g. --set depth=4")
  parser.add_argument("--seed", type=int, default=0, help="seed of a re-initialised head")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)

  checkpoint = args.checkpoint or _download(args.hf_repo)
  try:
    out = convert.convert_file(
        checkpoint, args.model, args.out, overwrite=args.overwrite, hf_repo=args.hf_repo,
        method=args.method, num_classes=args.num_classes, drop_head=args.drop_head,
        overrides=_parse_set(args.set), seed=args.seed)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
