"""Latent vector models: read the previous L concept vectors [B, L, D], predict the next one [B, D].

    model = create_model(name, input_dim=D, context_length=L, normalize=params["train"]["normalize"],
                         **params["model"])          # every key the model reads must be given
    pred = model(context)                        # [B, D], L2-normalised, float32
    pred, raw = model(context, return_raw=True)  # raw: the un-normalised output (for MSE)
    create_model(**model.config)                 # rebuilds the same architecture from a checkpoint
"""

from __future__ import annotations

import torch.nn as nn

from lvm.config import SCHEMA, check_model

from .amn import AMNModel
from .base import LatentVectorModel
from .gru import GRUModel
from .hierarchical import HierarchicalGRUModel
from .lstm import LSTMModel
from .memory import MemoryGRUModel
from .sparse_transformer import SparseTransformerModel
from .transformer import TransformerModel

_REGISTRY: dict[str, type[LatentVectorModel]] = {
    cls.name: cls
    for cls in (LSTMModel, GRUModel, TransformerModel, AMNModel, HierarchicalGRUModel, MemoryGRUModel,
                SparseTransformerModel)
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

# model name -> the `model.*` keys of params.yaml it reads (what its DVC stage must declare)
MODEL_PARAMS: dict[str, tuple[str, ...]] = {name: cls.PARAMS for name, cls in _REGISTRY.items()}


def config_keys(name: str) -> set[str]:
    """The keys of a `name` model's `model.config`: what a checkpoint must hold to rebuild it."""
    return {"name", "input_dim", "context_length", "normalize", *MODEL_PARAMS[name]}

def create_model(name: str, input_dim: int, context_length: int, normalize: str,
                 **model_params) -> LatentVectorModel:
    """Build model `name`. `model_params` is the flat `model:` section of params.yaml: keys this
    model does not read are ignored; a key it reads that is missing is a ValueError naming it
    (the caller passes the whole section, a checkpoint its `model.config`: nothing is filled in from
    a file behind the caller's back). Every value is checked by `lvm.config.check_model` (ValueError
    naming the key; the models take no defaults). `normalize` (train.normalize) reserves the
    normalised space; its statistics come from training (`set_normalizer`) or the checkpoint's
    state_dict. With `model.anchor` the head's last layer starts at zero, so the fresh model predicts
    exactly its anchor baseline."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    cls = _REGISTRY[name]
    missing = [key for key in cls.PARAMS if key not in model_params]
    if missing:
        raise ValueError(f"{', '.join(f'model.{key}' for key in missing)}: missing ({name} reads "
                         f"{', '.join(cls.PARAMS)}; pass params.yaml's whole model section)")
    used = check_model({key: model_params[key] for key in cls.PARAMS})
    if normalize not in SCHEMA["train"]["normalize"]:
        raise ValueError(f"train.normalize: must be one of {', '.join(SCHEMA['train']['normalize'])}; "
                         f"got {normalize!r}")
    model = cls(input_dim=input_dim, context_length=context_length, normalize=normalize, **used)
    if model.anchor != "none":
        model.zero_output_layers()
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODEL_NAMES", "MODEL_PARAMS", "LatentVectorModel", "config_keys", "create_model", "count_parameters"]
