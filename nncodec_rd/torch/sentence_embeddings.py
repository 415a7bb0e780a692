"""Fidelity of a sentence-embedding model with decoded weights (needs torch and
sentence-transformers)."""

from __future__ import annotations

import os

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def embedding_cosine(model_folder: str, decoded: dict, sentences: list[str]) -> float:
    """Mean cosine similarity between the embeddings of ``sentences`` by the original model in
    ``model_folder`` and by the same model with the ``decoded`` weights (name -> array)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = SentenceTransformer(model_folder, device="cpu")
    reference = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    state = model[0].auto_model.state_dict()
    with torch.no_grad():
        for name, value in decoded.items():
            if name in state:
                state[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    compressed = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    return float((reference * compressed).sum(dim=1).mean())
