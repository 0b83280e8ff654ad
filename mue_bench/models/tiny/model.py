"""`mue-tiny`: the built-in OFA-style unified encoder-decoder, small enough to train on two CPU cores.

Shape follows OFA-base depth (6 encoder + 6 decoder layers, pre-norm, final norms, tied LM head) at a
small width. Images are cut into patches and embedded like tokens; one stack of encoder layers serves
both modalities. With `encoder_attention="split"` (the default, as in the MuE authors' code) image and
text run through it as two separate streams; `"joint"` concatenates them as OFA does. The plain
`generate()` here recomputes the whole decoder each step without a cache: an independent reference
for the exit engine, which must reproduce it token for token when nothing exits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from mue_bench.errors import SpecError
from mue_bench.mue.search import DecodingConfig, RecomputeStepper, generate

# The fields a training recipe chooses; the others follow from the data (vocabulary) or are fixed.
ARCHITECTURE = ("d_model", "n_heads", "d_ff", "enc_layers", "dec_layers", "encoder_attention", "stem_channels",
                "image_positions")


@dataclass
class TinyConfig:
    vocab_size: int
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 256
    enc_layers: int = 6
    dec_layers: int = 6
    image_size: int = 48
    patch_size: int = 8
    max_positions: int = 64
    encoder_attention: Literal["split", "joint"] = "split"
    # Channels of a small convolutional stem before patchifying (0: none, patches embedded linearly). OFA
    # embeds images with ResNet stages, not a single linear map; a stem lets one token see shape edges.
    stem_channels: Annotated[int, Field(ge=0)] = 0
    # "sincos": fixed 2-D sine/cosine features of each patch's (row, column) are added under the learned
    # table. A learned table starts as noise with no notion of left or right and, trained on shapes, stays
    # ~18x smaller than patch contents (studies/NOTEBOOK.md); captions then order shapes at chance.
    image_positions: Literal["learned", "sincos"] = "learned"
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.stem_channels and self.patch_size % 2:
            raise SpecError(f"stem_channels needs an even patch_size (the stem halves the image), "
                                f"got {self.patch_size}")
        if self.image_positions not in ("learned", "sincos"):
            raise SpecError(f"image_positions must be 'learned' or 'sincos', got {self.image_positions!r}")
        if self.image_positions == "sincos" and self.d_model % 4:
            raise SpecError(f"image_positions 'sincos' needs d_model divisible by 4, got {self.d_model}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, H, S, Dh] for already-normalised inputs."""
        return self._split(self.k(x)), self._split(self.v(x))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        q = self._split(self.q(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        b, h, s, dh = out.shape
        return self.o(out.transpose(1, 2).reshape(b, s, h * dh))


class FeedForward(nn.Sequential):
    def __init__(self, d: int, ff: int):
        super().__init__(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff)

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None = None) -> torch.Tensor:
        """`queries`: update only these positions; every position still serves as a key/value."""
        x = self.ln1(h)
        k, v = self.attn.kv(x)
        if queries is not None:
            h, x = h[:, queries], x[:, queries]
        h = h + self.attn(x, k, v, mask=key_mask[:, None, None, :])
        return h + self.ffn(self.ln2(h))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = Attention(cfg.d_model, cfg.n_heads)
        self.cross_attn = Attention(cfg.d_model, cfg.n_heads)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff)

    def self_kv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's self-attention K/V for input states h (CALM-style propagation uses it too)."""
        return self.self_attn.kv(self.ln1(h))

    def forward(self, h: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                cross: tuple[torch.Tensor, torch.Tensor], enc_mask: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [B, T, D] are new positions after `past` K/V; returns (h, new_k, new_v)."""
        x = self.ln1(h)
        k_new, v_new = self.self_attn.kv(x)
        k, v = (k_new, v_new) if past is None else (torch.cat([past[0], k_new], 2), torch.cat([past[1], v_new], 2))
        h = h + self.self_attn(x, k, v, causal=past is None and h.shape[1] > 1)
        h = h + self.cross_attn(self.ln2(h), *cross, mask=enc_mask[:, None, None, :])
        return h + self.ffn(self.ln3(h)), k_new, v_new


def sincos_grid(side: int, d: int) -> torch.Tensor:
    """[side * side, d] features of a row-major patch grid: d/4 frequencies each of sin and cos for the
    column, then for the row. Frequencies are log-spaced from half a period across the grid to a period
    of four patches, so every dimension varies over the grid (ViT's 1/10000 base would leave most of them
    constant over 6 positions) and the lowest cosine is monotone in the coordinate, as "left of" needs."""
    omega = (torch.pi / side) * (side / 2) ** torch.linspace(0.0, 1.0, d // 4)
    coord = torch.arange(side, dtype=torch.float32)
    angles = coord[:, None] * omega[None]  # [side, d/4]
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # [side, d/2]
    rows, cols = axis[:, None, :].expand(side, side, -1), axis[None, :, :].expand(side, side, -1)
    return torch.cat([cols, rows], dim=-1).reshape(side * side, d)


def _stem(channels: int) -> nn.Module:
    """Two 3x3 convolutions, the first with stride 2 (so it costs a fraction of an encoder layer)."""
    if not channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv2d(channels, channels, 3, padding=1), nn.GELU())


class TinyOFA(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.stem = _stem(cfg.stem_channels)
        # The stem halves the resolution, so its patches are half as wide and the token grid is unchanged.
        patch = cfg.patch_size // 2 if cfg.stem_channels else cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.stem_channels or 3, d, patch, stride=patch)
        self.image_pos = nn.Parameter(torch.randn(cfg.n_patches, d) * 0.02)
        side = cfg.image_size // cfg.patch_size
        fixed = sincos_grid(side, d) if cfg.image_positions == "sincos" else torch.zeros(cfg.n_patches, d)
        # Not persistent: it is a function of the config, so checkpoints stay as they were.
        self.register_buffer("image_pos_fixed", fixed, persistent=False)
        self.tok_embed = nn.Embedding(cfg.vocab_size, d)
        self.text_pos = nn.Embedding(cfg.max_positions, d)
        self.dec_pos = nn.Embedding(cfg.max_positions, d)
        self.modality = nn.Embedding(2, d)  # 0 image, 1 text
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(d)
        nn.init.normal_(self.tok_embed.weight, std=0.02)

    # --- embeddings -------------------------------------------------------------------------------
    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.stem(images)).flatten(2).transpose(1, 2)
        return x + self.image_pos + self.image_pos_fixed + self.modality.weight[0]

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.tok_embed(ids) + self.text_pos(pos) + self.modality.weight[1]

    def embed_decoder(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        return self.tok_embed(ids) + self.dec_pos(pos)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.dec_norm(h) @ self.tok_embed.weight.T

    # --- plain (no-exit) forward ------------------------------------------------------------------
    def encode(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
               stop: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output [image; text] after the final norm, and its key mask. `stop`: per-sample layers
        the image and text streams run ([B] each); a stopped stream keeps its state and, in the joint
        encoder, still serves as keys/values: the engine's exits in `freeze` mode, for training with them."""
        img, txt = self.embed_image(images), self.embed_text(ids)
        img_mask = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)
        enc_mask = torch.cat([img_mask, mask], 1)
        # layers each position runs, [B, N, 1] (broadcast over features); None: all of them
        img_stop, txt_stop = (None, None) if stop is None else (stop[0][:, None, None], stop[1][:, None, None])

        def update(old: torch.Tensor, new: torch.Tensor, stops: torch.Tensor | None, i: int) -> torch.Tensor:
            return new if stops is None else torch.where(stops > i, new, old)  # stopped positions keep their state

        if self.cfg.encoder_attention == "joint":
            h = torch.cat([img, txt], 1)
            stops = None if stop is None else torch.cat(
                [img_stop.expand(-1, img.shape[1], 1), txt_stop.expand(-1, txt.shape[1], 1)], 1)
            for i, layer in enumerate(self.encoder):
                h = update(h, layer(h, enc_mask), stops, i)
        else:
            for i, layer in enumerate(self.encoder):
                img = update(img, layer(img, img_mask), img_stop, i)
                txt = update(txt, layer(txt, mask), txt_stop, i)
            h = torch.cat([img, txt], 1)
        return self.enc_norm(h), enc_mask

    def cross_kv(self, enc_out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [layer.cross_attn.kv(enc_out) for layer in self.decoder]

    def decoder_states(self, dec_ids: torch.Tensor, enc_out: torch.Tensor, enc_mask: torch.Tensor,
                       ) -> list[torch.Tensor]:
        """Every decoder layer's output over the whole (teacher-forced) sequence."""
        h = self.embed_decoder(dec_ids)
        states = []
        for layer, cross in zip(self.decoder, self.cross_kv(enc_out)):
            h, _, _ = layer(h, None, cross, enc_mask)
            states.append(h)
        return states

    @torch.no_grad()
    def generate(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                 decoding: DecodingConfig) -> list[list[int]]:
        enc_out, enc_mask = self.encode(images, ids, mask)
        enc_out, enc_mask = (t.repeat_interleave(decoding.num_beams, 0) for t in (enc_out, enc_mask))
        stepper = RecomputeStepper(
            lambda prefix: self.logits(self.decoder_states(prefix, enc_out, enc_mask)[-1][:, -1]).log_softmax(-1))
        return generate(stepper, images.shape[0], decoding, images.device)

    # --- persistence ------------------------------------------------------------------------------
    def save(self, directory: Path, extra: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps({**asdict(self.cfg), **(extra or {})}, indent=2))

    @classmethod
    def load(cls, directory: Path) -> TinyOFA:
        weights, config = directory / "model.safetensors", directory / "config.json"
        for f in (weights, config):
            if not f.is_file():
                hint = " (a pytorch_model.bin? mue-tiny checkpoints are safetensors)" if f == weights else ""
                raise SpecError(f"checkpoint file not found: {f}{hint}")
        fields = TinyConfig.__dataclass_fields__
        try:
            cfg = TinyConfig(**{k: v for k, v in json.loads(config.read_text()).items() if k in fields})
        except (ValueError, TypeError, AttributeError, SpecError) as e:
            raise SpecError(f"{config}: not a mue-tiny config ({str(e).splitlines()[0]})") from None
        model = cls(cfg)
        try:
            state = load_file(str(weights))
        except Exception as e:  # safetensors' own error types: a torn or foreign file
            raise SpecError(f"{weights}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
        expected = model.state_dict()
        for name, tensor in expected.items():
            if name not in state:
                raise SpecError(f"{weights}: no tensor {name}, which {config.name} needs")
            if state[name].shape != tensor.shape:
                raise SpecError(f"{weights}: {name} has shape {tuple(state[name].shape)}, {config.name} says "
                                f"{tuple(tensor.shape)}")
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise SpecError(f"{weights}: tensor {unexpected[0]} is not part of this model ({config.name})")
        model.load_state_dict(state)
        return model.eval()
