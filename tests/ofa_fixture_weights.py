"""Deterministic weights for the tiny OFA reference fixtures.

Pure torch + stdlib on purpose: the throwaway ModelScope reference
environment (tools/ofa_reference/) and this project's tests both import this
file and must rebuild bit-identical tensors.  The fixtures under
tests/fixtures/ofa/<config>/ commit only the config, the key -> shape list
(shapes.json) and the golden outputs; the ResNet backbones alone are 8-26 M
parameters, far too many to commit.

Keys are ModelScope ``OFAModel.state_dict()`` names.  How a tensor is drawn
depends only on (key, shape, seed):

* a generator seeded with ``zlib.crc32(key) ^ seed`` draws from a standard
  normal (uniform for BatchNorm running variances), in float64 and then cast
  to float32, so the numbers do not depend on the torch version's float32
  sampling path;
* the key's last name and the rank choose an affine map of that draw:

  ================================  ==========================================
  ``...running_var``                ``0.75 + 0.5 * U[0, 1)`` (always positive)
  ``...running_mean``               ``0.1 * N``
  ``...num_batches_tracked``        ``0`` (int64)
  1-D ``...weight`` (LayerNorm /    ``1 + 0.1 * N``
  BatchNorm), ``c_attn``, ``w_resid``,
  ``weight_*``/``*gamma*`` scales
  1-D ``...bias``                   ``0.02 * N``
  other 1-D tensors                 ``0.1 * N``
  2-D ``...embed_tokens.weight``    ``N`` (tied to the output projection)
  ``type_embedding.weight``         ``0.2 * N`` (a large constant would drown
                                    the image features before the patch LN)
  ``...rel_pos_table...``           ``0.5 * N``
  other 2-D ``...embed...``         ``N`` (``embed_positions``,
                                    ``embed_image_positions``)
  conv weights (4-D)                ``N * 1.0 / sqrt(fan_in)``
  attention ``q_proj``/``k_proj``     ``N * 2.0 / sqrt(fan_in)`` (sharper
  weights                           attention, so the image matters)
  ``out_proj``/``fc2`` weights      ``N * 1.5 / sqrt(fan_in)`` (branches
                                    outweigh the residual token embedding)
  other linear weights (2-D)        ``N * 1.0 / sqrt(fan_in)``
  ================================  ==========================================

Scales were tuned on the two fixture configs so that greedy and beam outputs
differ between rows (image and prompt), instead of repeating one token.
The scales are larger than OFA's own init (which zero-inits the relative
position tables and uses small embeddings) so that outputs depend on the image
content and on every term of the attention bias, not only on position.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence

import torch

__all__ = ["fixture_tensor", "fixture_state_dict", "FIXTURE_RULES_VERSION"]

# Bump if the rules below ever change (the fixtures record it).
FIXTURE_RULES_VERSION = 1


def _generator(key: str, seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed((zlib.crc32(key.encode("utf-8")) ^ int(seed)) & 0xFFFFFFFF)
    return g


def _normal(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _uniform(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64)


def _is_scale_vector(last: str) -> bool:
    return (
        last == "weight"
        or last in ("c_attn", "w_resid")
        or last.startswith("weight_")
        or "gamma" in last
    )


_BIAS_SCALE = 0.02
_QK_GAIN = 2.0
_BRANCH_GAIN = 1.5


def _linear_gain(key: str) -> float:
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] in ("q_proj", "k_proj"):
        return _QK_GAIN
    if len(parts) >= 2 and parts[-2] in ("out_proj", "fc2"):
        return _BRANCH_GAIN
    return 1.0


def fixture_tensor(key: str, shape: Sequence[int], seed: int) -> torch.Tensor:
    """The fixture value of state-dict entry ``key`` (see module docstring)."""
    shape = tuple(int(s) for s in shape)
    last = key.rsplit(".", 1)[-1]
    g = _generator(key, seed)
    if last == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    if last == "running_var":
        return (0.75 + 0.5 * _uniform(shape, g)).float()
    if last == "running_mean":
        return (0.1 * _normal(shape, g)).float()
    if len(shape) <= 1:
        if last == "bias":
            return (_BIAS_SCALE * _normal(shape, g)).float()
        if _is_scale_vector(last):
            return (1.0 + 0.1 * _normal(shape, g)).float()
        return (0.1 * _normal(shape, g)).float()
    if len(shape) == 2 and (
        "embed" in key or "type_embedding" in key or "rel_pos_table" in key
    ):
        if key.endswith("embed_tokens.weight"):
            scale = 1.0
        elif "rel_pos_table" in key:
            scale = 0.5
        elif "type_embedding" in key:
            scale = 0.2
        else:
            scale = 1.0
        return (scale * _normal(shape, g)).float()
    fan_in = math.prod(shape[1:])
    gain = _linear_gain(key) if last == "weight" else 1.0
    return (gain * _normal(shape, g) / math.sqrt(fan_in)).float()


def fixture_state_dict(
    shapes: Mapping[str, Iterable[int]], seed: int
) -> dict[str, torch.Tensor]:
    """``{key: fixture_tensor(key, shape, seed)}`` in the order of ``shapes``."""
    return {k: fixture_tensor(k, tuple(v), seed) for k, v in shapes.items()}
