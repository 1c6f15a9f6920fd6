"""The language-modelling loss as a pure function of the params dict and a batch of token windows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..model import forward
from ..params import Params


def next_token_loss(params: Params, batch: torch.Tensor, *, cfg: ModelConfig) -> torch.Tensor:
    """batch (B, T+1) token ids -> mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1]."""
    logits, _ = forward(params, batch[:, :-1], cfg=cfg)                   # (B, T, V) float32
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
