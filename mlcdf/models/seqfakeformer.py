"""SeqFakeFormer: Seq-DeepFake's image-to-sequence model, which predicts the manipulations in the order applied.

Shao, Wu, Liu, "Detecting and Recovering Sequential DeepFake Manipulation", ECCV 2022,
https://arxiv.org/abs/2207.02204 (reference code: github.com/rshaojimmy/SeqDeepFake, ``models/``). Written
here from the paper and a reading of that code, on timm and torch parts::

    F = layer4(ResNet(x))                        # stem and layer1 frozen; R34 stride 32, R50 dilated stride 16
    S = conv1x1(F) -> 256 channels, flattened;   P = DETR's sine position encoding (normalised, 2π)
    M = Encoder(S, P)                            # 2 pre-norm layers, 4 heads, FFN 512, dropout 0.1, final norm
    h = Decoder(tokens, M)                       # 2 pre-norm layers, then a final norm
    logits = MLP 256-512-512-(C+3)(h)

Tokens, for C labels: SOS 0, ids 1..C, EOS C+1, PAD C+2; a vocabulary of C+3 and C+1 positions (8 and 6
for Seq-DeepFake's C = 5). Token embeddings and learned position embeddings are summed and normalised
(LayerNorm eps 1e-12); the position embeddings also serve as the decoder's query position.

Each decoder layer: causal self-attention over the tokens, then *spatially enhanced* cross-attention: a
Gaussian prior around a reference point is added to the attention logits of each head, as in SMCA (Gao et
al., ICCV 2021). The first layer predicts a reference point per query from ``norm(token + query_pos)``
with an MLP 256-256-2 and a sigmoid, scaled to feature-map cells; each layer adds its own per-head offset
(a linear layer) and per-head, per-axis scales ``s`` (a linear layer, squared; initialised to weight 0,
bias 1); for a feature cell ``g`` the prior is ``-Σ_axis s·(p - g)² / 4``.

Parameter counts with C = 5, all parameters (frozen ones too), as the authors' model counts them:
24,596,586 (R34) and 27,213,162 (R50).

``forward(images, tokens)`` gives teacher-forced logits (B, T, C+3); ``forward(images)`` decodes greedily,
batched, for C steps and returns the logits of each step along the greedy path, (B, C, C+3): step ``i``
holds the distribution of the token at position ``i + 1`` given the greedy tokens before it. Rows go on
after their EOS (their later steps are ignored by :class:`~mlcdf.tasks.sequence.SequenceTask`), so each
row's result does not depend on the batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlcdf.errors import MlcdfError
from mlcdf.models._backbone import BackboneClassifier, create_backbone, timm_api
from mlcdf.models._registry import register_model

__all__ = [  # the registry appends the entry functions
    "GaussianCrossAttention",
    "SeqFakeFormer",
    "create_seqfakeformer",
    "sequence_tokens",
    "sine_position_encoding",
]


def sequence_tokens(num_labels: int) -> dict[str, int]:
    """The special tokens for ``num_labels`` labels: ``sos`` 0, ``eos`` C+1, ``pad`` C+2, ``vocab`` C+3, ``positions`` C+1."""
    return {"sos": 0, "eos": num_labels + 1, "pad": num_labels + 2, "vocab": num_labels + 3, "positions": num_labels + 1}


def sine_position_encoding(height: int, width: int, dim: int, *, temperature: float = 10000.0, device: Any = None) -> torch.Tensor:
    """DETR's normalised sine position encoding of an unpadded ``height`` x ``width`` map: (dim, height, width).

    Half the channels encode the row, half the column: the 1-based coordinate is divided by the map's size
    (plus 1e-6) and multiplied by 2π, then divided by ``temperature ** (2⌊k/2⌋ / (dim/2))`` and passed
    through sin (even k) and cos (odd k), interleaved; rows first, then columns (Carion et al., ECCV 2020).
    """
    half = dim // 2
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + 1e-6) * 2 * math.pi
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + 1e-6) * 2 * math.pi
    frequencies = temperature ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)

    def encode(coordinates: torch.Tensor) -> torch.Tensor:
        angles = coordinates[:, None] / frequencies  # (n, half)
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(rows)[:, None, :].expand(height, width, half)
    pos_x = encode(cols)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)


class _MLP(nn.Module):
    """Linear layers with ReLU between them: widths ``[in, hidden, ..., out]``."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class _EncoderLayer(nn.Module):
    """Pre-norm encoder layer; the position encoding is added to queries and keys only (DETR)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.norm1(src)
        src = src + self.dropout1(self.self_attn(x + pos, x + pos, x, need_weights=False)[0])
        x = self.norm2(src)
        return src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))


class GaussianCrossAttention(nn.Module):
    """Multi-head attention whose logits get an additive bias per head (the Gaussian spatial prior).

    The same parameters as ``nn.MultiheadAttention`` (packed input projection, output projection).
    Inputs are sequence-first: query (T, B, D), key and value (S, B, D), bias (B, heads, T, S).
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        batch = query.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:  # (n, B, D) -> (B, heads, n, D/heads)
            return x.reshape(x.shape[0], batch, self.heads, self.dim // self.heads).permute(1, 2, 0, 3)

        q, k, v = heads(F.linear(query, w_q, b_q)), heads(F.linear(key, w_k, b_k)), heads(F.linear(value, w_v, b_v))
        # Written out rather than F.scaled_dot_product_attention: torch.export (the ONNX export) mistakes the
        # strides of its output under a dynamic batch and cannot reshape it; T and S are small (<= C + 1
        # tokens, one key per feature cell), so the explicit form costs nothing that matters.
        weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias.to(q.dtype)).softmax(dim=-1)
        out = F.dropout(weights, self.dropout, self.training) @ v
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(query.shape[0], batch, self.dim))


class _DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, spatially enhanced cross-attention, FFN."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, *, first: bool, smooth: float) -> None:
        super().__init__()
        self.heads, self.smooth, self.first = heads, smooth, first
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.cross_attn = GaussianCrossAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1, self.norm2, self.norm3, self.norm_point = (nn.LayerNorm(dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))
        self.reference = _MLP([dim, dim, dim, 2]) if first else None  # the reference point (first layer only)
        self.offset = nn.Linear(dim, 2 * heads)  # per-head offsets from the reference point
        self.scale = nn.Linear(dim, 2 * heads)  # per-head, per-axis scales of the Gaussian (squared)

    def prior(
        self, point_input: torch.Tensor, grid: torch.Tensor, cells: float, reference: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian prior (B, heads, T, S) added to the cross-attention logits, and the reference points.

        ``point_input`` is ``norm(token + query_pos)`` (T, B, D); ``grid`` the (x, y) of each feature cell
        (S, 2). The first layer predicts the reference point ``sigmoid(MLP(point_input)) · cells``; later
        layers reuse it. Head h looks at ``p_h = reference + offset_h`` with per-axis scales
        ``s_h = scale_h²``; the prior of cell g is ``-Σ_axis s_h (p_h - g)² / smooth``.
        """
        length, batch = point_input.shape[:2]
        if self.reference is not None:
            # The reference point in feature-map cells, the same for every head.
            reference = (self.reference(point_input).sigmoid() * cells).repeat(1, 1, self.heads)
        assert reference is not None, "the first decoder layer predicts the reference point"
        point = (reference + self.offset(point_input)).reshape(length, batch, self.heads, 2)
        scale = self.scale(point_input).square().reshape(length, batch, self.heads, 2)
        # (T, B, heads, S): the scaled squared distance of every feature cell to each head's point.
        distance = ((point[:, :, :, None, :] - grid) ** 2 * scale[:, :, :, None, :]).sum(-1)
        return (-distance / self.smooth).permute(1, 2, 0, 3), reference

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        grid: torch.Tensor,
        cells: float,
        causal: torch.Tensor,
        padding: torch.Tensor | None,
        reference: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        point_input = self.norm_point(tgt + query_pos)
        x = self.norm1(tgt)
        attended = self.self_attn(x + query_pos, x + query_pos, x, attn_mask=causal, key_padding_mask=padding, need_weights=False)[0]
        tgt = tgt + self.dropout1(attended)
        bias, reference = self.prior(point_input, grid, cells, reference)
        x = self.norm2(tgt)
        tgt = tgt + self.dropout2(self.cross_attn(x + query_pos, memory + pos, memory, bias))
        x = self.norm3(tgt)
        tgt = tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt, reference


class SeqFakeFormer(BackboneClassifier):
    """A timm backbone's last feature map, a transformer encoder and a token decoder (see the module docstring).

    Args:
        backbone: a timm model built with ``num_classes=0`` whose ``forward_features`` gives (B, C, H, W).
        num_labels: C; the vocabulary has C + 3 tokens and C + 1 positions.
        hidden_dim: the transformer's width (256).
        heads: attention heads (4).
        encoder_layers, decoder_layers: layers of each (2, 2).
        ffn_dim: width of the feed-forward layers (512).
        dropout: dropout of attention, feed-forward and embeddings (0.1).
        smooth: the Gaussian prior's divisor (4).
        freeze_stem: freeze the stem and ``layer1`` of a ResNet-style backbone (conv1, bn1, layer1), as the
            authors do; other backbones are left trainable (True).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        *,
        hidden_dim: int = 256,
        heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        ffn_dim: int = 512,
        dropout: float = 0.1,
        smooth: float = 4.0,
        freeze_stem: bool = True,
    ) -> None:
        super().__init__(backbone, num_labels)
        # The authors normalise with mean = std = 0.5 (their datasets/dataset.py), over torchvision weights.
        self.input_mean = (0.5, 0.5, 0.5)
        self.input_std = (0.5, 0.5, 0.5)
        if freeze_stem and hasattr(backbone, "layer1"):
            for name, parameter in backbone.named_parameters():
                if not name.startswith(("layer2.", "layer3.", "layer4.")):
                    parameter.requires_grad_(False)
        tokens = sequence_tokens(num_labels)
        self.sos, self.eos, self.pad, self.positions = tokens["sos"], tokens["eos"], tokens["pad"], tokens["positions"]
        self.hidden_dim, self.heads = hidden_dim, heads
        self.input_proj = nn.Conv2d(self.num_features, hidden_dim, kernel_size=1)
        self.encoder = nn.ModuleList(_EncoderLayer(hidden_dim, heads, ffn_dim, dropout) for _ in range(encoder_layers))
        self.encoder_norm = nn.LayerNorm(hidden_dim)
        self.token_embedding = nn.Embedding(tokens["vocab"], hidden_dim, padding_idx=self.pad)
        self.position_embedding = nn.Embedding(self.positions, hidden_dim)
        self.embedding_norm = nn.LayerNorm(hidden_dim, eps=1e-12)
        self.embedding_dropout = nn.Dropout(dropout)
        self.decoder = nn.ModuleList(
            _DecoderLayer(hidden_dim, heads, ffn_dim, dropout, first=index == 0, smooth=smooth) for index in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        # The authors' transformer initialisation: Xavier-uniform for every matrix of the encoder, the
        # decoder and the embeddings, then Gaussian scales of weight 0 and bias 1 (a unit prior).
        for module in (self.encoder, self.encoder_norm, self.token_embedding, self.position_embedding, self.decoder):
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)
        for layer in self.decoder:
            assert isinstance(layer, _DecoderLayer)
            nn.init.zeros_(layer.scale.weight)
            nn.init.ones_(layer.scale.bias)
        self.head = _MLP([hidden_dim, 512, 512, tokens["vocab"]])

    def encode(self, features: torch.Tensor, image_side: int) -> dict[str, Any]:
        """The encoder's memory (S, B, D) and what the decoder needs about the feature map."""
        batch, _, height, width = features.shape
        src = self.input_proj(features).flatten(2).permute(2, 0, 1)
        pos = sine_position_encoding(height, width, self.hidden_dim, device=features.device).flatten(1).permute(1, 0)[:, None, :]
        pos = pos.to(src.dtype)
        for layer in self.encoder:
            src = layer(src, pos)
        rows, cols = torch.meshgrid(
            torch.arange(height, device=features.device), torch.arange(width, device=features.device), indexing="ij"
        )
        grid = torch.stack((cols, rows), dim=-1).reshape(-1, 2).to(src.dtype)  # (S, 2) as (x, y)
        # The reference point is a sigmoid times image_side / stride, the stride rounded down as the
        # authors' code does; for a square input whose side the stride divides, the map's side in cells.
        side = max(height, width)
        cells = image_side / max(1, image_side // side) if image_side else float(side)
        return {"memory": self.encoder_norm(src), "pos": pos, "grid": grid, "cells": cells}

    def decode(self, tokens: torch.Tensor, encoded: dict[str, Any], padding: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T), T <= C + 1, and :meth:`encode`'s output -> logits (B, T, C + 3).

        ``padding`` (B, T), float, is added to the self-attention logits of each key (-inf hides a key).
        """
        length = tokens.shape[1]
        if length > self.positions:
            raise MlcdfError(f"at most {self.positions} decoder positions, got {length} tokens")
        positions = self.position_embedding.weight[:length]
        x = self.embedding_dropout(self.embedding_norm(self.token_embedding(tokens) + positions)).permute(1, 0, 2)
        query_pos = positions[:, None, :]
        causal = torch.full((length, length), float("-inf"), device=tokens.device).triu(1)
        reference = None
        for layer in self.decoder:
            x, reference = layer(
                x, encoded["memory"], encoded["pos"], query_pos, encoded["grid"], encoded["cells"], causal, padding, reference
            )
        return self.head(self.decoder_norm(x)).permute(1, 0, 2)

    def greedy(self, encoded: dict[str, Any], batch: int) -> torch.Tensor:
        """Batched greedy decoding for C steps: the logits of each step along the greedy path, (B, C, C+3)."""
        tokens = torch.full((batch, 1), self.sos, dtype=torch.long, device=encoded["memory"].device)
        steps = []
        for _ in range(self.positions - 1):
            logits = self.decode(tokens, encoded)[:, -1]
            steps.append(logits)
            tokens = torch.cat((tokens, logits.argmax(dim=-1, keepdim=True)), dim=1)
        return torch.stack(steps, dim=1)

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False, tokens: torch.Tensor | None = None, image_side: int = 0
    ) -> torch.Tensor:
        """Feature map -> teacher-forced logits for ``tokens`` (PAD keys masked), or greedy step logits.

        ``image_side`` is the input's longer side, which scales the reference points as the authors'
        code does; 0 takes the feature map's side in cells.
        """
        if pre_logits:
            raise MlcdfError("SeqFakeFormer has no pooled features; its outputs are token logits")
        encoded = self.encode(x, image_side)
        if tokens is None:
            return self.greedy(encoded, x.shape[0])
        padding = torch.zeros(tokens.shape, device=x.device).masked_fill(tokens == self.pad, float("-inf"))
        return self.decode(tokens, encoded, padding=padding)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) -> teacher-forced logits (B, T, C+3) for ``tokens`` (B, T), or, without
        tokens, the greedy step logits (B, C, C+3). Under autocast the transformer runs in float32."""
        features = self.forward_features(x)
        side = max(x.shape[-2:])
        if torch.is_autocast_enabled(features.device.type):
            with torch.autocast(features.device.type, enabled=False):
                return self.forward_head(features.float(), tokens=tokens, image_side=side)
        return self.forward_head(features, tokens=tokens, image_side=side)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_labels: int) -> None:
        """A fresh token embedding, position embedding and output MLP for ``num_labels`` labels."""
        tokens = sequence_tokens(num_labels)
        device = self.input_proj.weight.device
        self.num_labels = num_labels
        self.sos, self.eos, self.pad, self.positions = tokens["sos"], tokens["eos"], tokens["pad"], tokens["positions"]
        self.token_embedding = nn.Embedding(tokens["vocab"], self.hidden_dim, padding_idx=self.pad).to(device)
        self.position_embedding = nn.Embedding(self.positions, self.hidden_dim).to(device)
        nn.init.xavier_uniform_(self.token_embedding.weight)
        nn.init.xavier_uniform_(self.position_embedding.weight)
        self.head = _MLP([self.hidden_dim, 512, 512, tokens["vocab"]]).to(device)


def create_seqfakeformer(arch: str, num_labels: int, *, freeze_stem: bool = True, **kwargs: Any) -> SeqFakeFormer:
    """A :class:`SeqFakeFormer` over the timm architecture ``arch``; ``kwargs`` go to ``timm.create_model``."""
    model = SeqFakeFormer(create_backbone(arch, **kwargs), num_labels, freeze_stem=freeze_stem)
    timm_api(model.backbone)  # every timm model has forward_features
    return model


@register_model(task="sequence", recipe="seqfakeformer")
def seqfakeformer_r34(num_labels: int, *, backbone: str = "resnet34.tv_in1k", **kwargs: Any) -> SeqFakeFormer:
    """SeqFakeFormer on ResNet-34 (stride 32): image-to-sequence, Seq-DeepFake's model (Shao et al., ECCV 2022)."""
    return create_seqfakeformer(backbone, num_labels, **kwargs)


@register_model(task="sequence", recipe="seqfakeformer")
def seqfakeformer_r50(num_labels: int, *, backbone: str = "resnet50.tv_in1k", **kwargs: Any) -> SeqFakeFormer:
    """SeqFakeFormer on ResNet-50 with a dilated layer4 (stride 16): Seq-DeepFake's model (Shao et al., ECCV 2022)."""
    kwargs.setdefault("output_stride", 16)
    return create_seqfakeformer(backbone, num_labels, **kwargs)
