"""OFA ("One For All", Wang et al. 2022) in plain PyTorch: what the released checkpoints compute, in pieces
the exit engine can call one layer at a time.

OFA is not in transformers, so mue-bench carries it, as it carries mue-tiny. Parameter and buffer names are
those of ModelScope's `modeling_ofa.OFAModel`, so its `pytorch_model.bin` (and checkpoint.py's mapping of the
authors' fairseq `.pt`) loads with no missing or unexpected key. What sets OFA apart from a plain
encoder-decoder, all of it here:
- images: the first three stages of a ResNet (one 1024-channel feature per 16x16 pixels), `image_proj`;
- a type embedding per modality, `layernorm_embedding` (text) and `patch_layernorm_embedding` (image);
- positions never enter the residual stream: separate text and image position tables, each with its own
  LayerNorm, become an attention bias (TUPE: `pos_q_linear(p_i) . pos_k_linear(p_j)`, scaled by
  `(head_dim * attn_scale_factor) ** -0.5`, the same factor that scales the attention logits);
- per-layer relative-position bias tables: log-spaced token-distance buckets for text, 2-D offset buckets
  for image patches (image-text pairs get the absolute bias only);
- NormFormer: LayerNorm after each attention and inside the FFN, learned per-head output scales;
- the decoder's self- and cross-attention get the same kinds of bias, from the decoder's own position table
  against itself and against the encoder's position embeddings;
- shared input/output embeddings, pre-LN layers and final LayerNorms.

Every position bias depends on positions only, never on the batch: text positions are 0..T-1 from the
first prompt token (right padding keeps them), the patch grid is the same for every image. So the biases
are built once per batch shape as [1, heads, queries, keys] and broadcast; a layer is a pure function of
its rows, which is what batch compaction needs.

`OFAModel.encode` / `decoder_logits` / `generate` are the plain, non-exiting forward: the joint encoder with
ModelScope's bias layout, and decoding that re-runs the decoder over the whole prefix at every step as
ModelScope's fairseq-style generator does. They are the reference the exit engine must reproduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mue_bench.models.ofa.config import RESNET_BLOCKS, OFAConfig
from mue_bench.mue.search import DecodingConfig, RecomputeStepper, generate

KV = tuple[torch.Tensor, torch.Tensor]
MAX_BUCKET_POSITIONS = 1024  # the relative-position index tables cover this many positions (fairseq's default)


# --- relative-position buckets ------------------------------------------------------------------------
def token_buckets(bucket_size: int, max_position: int = MAX_BUCKET_POSITIONS) -> torch.Tensor:
    """[P, P] bucket index of each (query, key) text distance: exact within bucket_size / 2, log-spaced beyond,
    offset to start at 0."""
    pos = torch.arange(max_position, dtype=torch.long)
    rel = pos[:, None] - pos[None, :]
    mid = bucket_size // 2
    dist = torch.where((rel < mid) & (rel > -mid), mid - 1, rel.abs())
    log_dist = (torch.ceil(torch.log(dist / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid).int()
    bucket = torch.where(dist.le(mid), rel, log_dist * torch.sign(rel)).long()
    return bucket + bucket_size - 1


def image_buckets(bucket_size: int) -> torch.Tensor:
    """[S + 1, S + 1] bucket index of each pair of cells of a bucket_size x bucket_size grid (row-major, S
    cells), by 2-D offset; row and column 0 are a leading "cls" slot with three buckets of its own."""
    n_rel = (2 * bucket_size - 1) ** 2 + 3
    ys, xs = torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij")
    cells = torch.stack([ys.flatten(), xs.flatten()])  # [2, S]
    offset = (cells[:, :, None] - cells[:, None, :]).permute(1, 2, 0) + (bucket_size - 1)  # [S, S, 2]
    index = torch.zeros((bucket_size * bucket_size + 1,) * 2, dtype=offset.dtype)
    index[1:, 1:] = offset[..., 0] * (2 * bucket_size - 1) + offset[..., 1]
    index[0, 0:] = n_rel - 3
    index[0:, 0] = n_rel - 2
    index[0, 0] = n_rel - 1
    return index


def image_position_ids(height: int, width: int, bucket_size: int, device=None) -> torch.Tensor:
    """[height * width] ids of a patch grid in the image position table (and in image_buckets): row-major
    cells of the bucket grid, from 1 (0 is the cls slot)."""
    rows = torch.arange(height, device=device)[:, None] * bucket_size
    return (rows + torch.arange(width, device=device)[None, :] + 1).flatten()


def _activation(name: str):
    if name in ("gelu_new", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[name]


def additive_mask(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, N] True on real keys -> [B, 1, 1, N] additive mask (ModelScope's finfo.min on padding)."""
    return torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill(
        ~key_mask, torch.finfo(dtype).min)[:, None, None, :]


# --- image encoder: the first three ResNet stages ------------------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(identity + out)


class ResNet(nn.Module):
    """Stem (7x7 stride-2 conv, max-pool) and stages 1-3 (stride 1, 2, 2): [B, 3, H, W] -> [B, 1024, H/16, W/16]."""

    def __init__(self, blocks: tuple[int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256), blocks, (1, 2, 2)), start=1):
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            layers += [Bottleneck(inplanes, planes) for _ in range(1, n)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        return self.layer3(self.layer2(self.layer1(x)))


# --- attention and layers ------------------------------------------------------------------------------
class OFAAttention(nn.Module):
    """Multi-head attention with an additive bias, logits scaled by (head_dim * scale_factor) ** -0.5, and
    NormFormer's learned per-head output scale `c_attn` (present in every ModelScope OFA layer)."""

    def __init__(self, d: int, heads: int, scale_factor: float):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.c_attn = nn.Parameter(torch.ones(heads))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def kv(self, x: torch.Tensor) -> KV:
        """Keys and values [B, H, S, Dh] of (already normalised) states x [B, S, D]."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Queries x [B, T, D] over k, v [B, H, S, Dh]; `bias` [B or 1, H, T, S] holds positions and masks."""
        q = self._split(self.q_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scaling)
        out = out * self.c_attn[None, :, None, None]
        b, h, t, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * dh))


class _Block(nn.Module):
    """What encoder and decoder layers share: the FFN with NormFormer's inner LayerNorm, pre/post-LN
    residuals, ModelScope's optional gamma (layer-scale) weights and fairseq's optional residual scale."""

    def _init_ffn(self, cfg: OFAConfig, d_ff: int, normalize_before: bool, gammas: tuple[str, ...]) -> None:
        d = cfg.d_model
        self.normalize_before = normalize_before
        self.act = _activation(cfg.activation_function)
        self.fc1, self.fc2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.ffn_layer_norm = nn.LayerNorm(d_ff) if cfg.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)
        for name in gammas if cfg.use_gamma_feature else ():
            setattr(self, name, nn.Parameter(torch.ones(d) * cfg.gamma))
        self.w_resid = nn.Parameter(torch.ones(d)) if cfg.scale_resids else None

    def _pre(self, norm: nn.LayerNorm, h: torch.Tensor) -> torch.Tensor:
        return norm(h) if self.normalize_before else h

    def _add(self, residual: torch.Tensor, x: torch.Tensor, norm: nn.LayerNorm, gamma: str) -> torch.Tensor:
        if hasattr(self, gamma):
            x = getattr(self, gamma) * x
        h = residual + x
        return h if self.normalize_before else norm(h)

    def _mid(self, norm: nn.LayerNorm | None, x: torch.Tensor) -> torch.Tensor:
        return x if norm is None else norm(x)

    def ffn(self, h: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self._pre(self.final_layer_norm, h)))
        x = self.fc2(self._mid(self.ffn_layer_norm, x))
        residual = h if self.w_resid is None else self.w_resid * h
        return self._add(residual, x, self.final_layer_norm, "weight_ffn")


class OFAEncoderLayer(_Block):
    def __init__(self, cfg: OFAConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = OFAAttention(d, cfg.encoder_attention_heads, cfg.attn_scale_factor)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if cfg.normformer else None
        self._init_ffn(cfg, cfg.encoder_ffn_dim, cfg.encoder_normalize_before, ("weight_self_attn", "weight_ffn"))

    def forward(self, h: torch.Tensor, bias: torch.Tensor, queries: slice | None = None) -> torch.Tensor:
        """h [B, N, D]; `bias` [B or 1, H, Nq, N] (positions plus key mask) for the query rows `queries`
        (all if None). Only those rows are computed and returned; every position serves as key/value."""
        x = self._pre(self.self_attn_layer_norm, h)
        k, v = self.self_attn.kv(x)
        if queries is not None:
            h, x = h[:, queries], x[:, queries]
        a = self._mid(self.self_attn_mid_layer_norm, self.self_attn(x, k, v, bias))
        return self.ffn(self._add(h, a, self.self_attn_layer_norm, "weight_self_attn"))


class OFADecoderLayer(_Block):
    def __init__(self, cfg: OFAConfig):
        super().__init__()
        d, heads = cfg.d_model, cfg.decoder_attention_heads
        self.self_attn = OFAAttention(d, heads, cfg.attn_scale_factor)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if cfg.normformer else None
        self.cross_attn = OFAAttention(d, heads, cfg.attn_scale_factor)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d) if cfg.normformer else None
        self._init_ffn(cfg, cfg.decoder_ffn_dim, cfg.decoder_normalize_before,
                       ("weight_self_attn", "weight_cross_attn", "weight_ffn"))

    def self_kv(self, h: torch.Tensor) -> KV:
        """This layer's self-attention K/V [B, H, T, Dh] of input states h [B, T, D] (also CALM's propagation)."""
        return self.self_attn.kv(self._pre(self.self_attn_layer_norm, h))

    def cross_kv(self, enc_out: torch.Tensor) -> KV:
        return self.cross_attn.kv(enc_out)

    def forward(self, h: torch.Tensor, past: KV | None, cross: KV, self_bias: torch.Tensor,
                cross_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [B, T, D]: positions after the `past` K/V [B, H, P, Dh]. `self_bias` [., H, T, P + T] (positions,
        causality), `cross_bias` [., H, T, N] (positions, encoder padding). Returns (h, new K, new V)."""
        x = self._pre(self.self_attn_layer_norm, h)
        k_new, v_new = self.self_attn.kv(x)
        k, v = (k_new, v_new) if past is None else (torch.cat([past[0], k_new], 2), torch.cat([past[1], v_new], 2))
        a = self._mid(self.self_attn_mid_layer_norm, self.self_attn(x, k, v, self_bias))
        h = self._add(h, a, self.self_attn_layer_norm, "weight_self_attn")
        x = self._pre(self.cross_attn_layer_norm, h)
        a = self._mid(self.cross_attn_mid_layer_norm, self.cross_attn(x, *cross, cross_bias))
        h = self._add(h, a, self.cross_attn_layer_norm, "weight_cross_attn")
        return self.ffn(h), k_new, v_new


# --- position biases ---------------------------------------------------------------------------------------
def _zero_embedding(n: int, d: int) -> nn.Embedding:
    e = nn.Embedding(n, d)
    nn.init.zeros_(e.weight)
    return e


class _Positions(nn.Module):
    """What encoder and decoder share: a text position table with its LayerNorm, an image one, per-layer
    relative-position tables (one if shared), and TUPE's projection of positions into a bias; and the shared
    token embedding with its scale."""

    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.cfg = cfg
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.embed_tokens = embed_tokens

    def _init_positions(self, cfg: OFAConfig, n_layers: int, heads: int) -> None:
        d = cfg.d_model
        self.heads = heads
        self.pos_scaling = float(d / heads * cfg.attn_scale_factor) ** -0.5
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size ** 2 + 1, d)
        self.pos_ln, self.image_pos_ln = nn.LayerNorm(d), nn.LayerNorm(d)
        self.share_attn_bias = cfg.share_attn_bias
        tables = 1 if cfg.share_attn_bias else n_layers
        n_image_rel = (2 * cfg.image_bucket_size - 1) ** 2 + 3
        self.token_rel_pos_table_list = nn.ModuleList(
            _zero_embedding(2 * cfg.token_bucket_size - 1, heads) for _ in range(tables))
        self.image_rel_pos_table_list = nn.ModuleList(
            _zero_embedding(n_image_rel, heads) for _ in range(tables))
        self.register_buffer("token_rp_bucket", token_buckets(cfg.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_buckets(cfg.image_bucket_size))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [H, N, Dh]."""
        return x.view(x.shape[0], self.heads, -1).transpose(0, 1)

    def project(self, q_linear: nn.Linear, k_linear: nn.Linear, q_pos: torch.Tensor, k_pos: torch.Tensor,
                ) -> torch.Tensor:
        """TUPE's absolute-position bias [H, Nq, Nk] of normalised position embeddings [Nq, D], [Nk, D]."""
        return self.project_q(q_linear, q_pos) @ self._heads(k_linear(k_pos)).transpose(1, 2)

    def project_q(self, q_linear: nn.Linear, q_pos: torch.Tensor) -> torch.Tensor:
        return self._heads(q_linear(q_pos)) * self.pos_scaling

    def _table(self, tables: nn.ModuleList, layer: int) -> torch.Tensor:
        return tables[0 if self.share_attn_bias else layer].weight

    def text_rel_bias(self, layer: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[H, len(rows), len(cols)] relative-position bias between text positions."""
        return F.embedding(self.token_rp_bucket[rows][:, cols],
                           self._table(self.token_rel_pos_table_list, layer)).permute(2, 0, 1)

    def image_rel_bias(self, layer: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[H, len(rows), len(cols)] relative-position bias between image cells given by position ids."""
        return F.embedding(self.image_rp_bucket[rows][:, cols],
                           self._table(self.image_rel_pos_table_list, layer)).permute(2, 0, 1)


@dataclass
class EncoderPositions:
    """A batch shape's position information: the joint [image; text] absolute bias and the ids the relative
    biases are looked up by. Batch-independent (positions are 0..T-1 and one patch grid)."""

    abs_bias: torch.Tensor  # [H, N, N], N = n_img + n_txt
    image_ids: torch.Tensor  # [n_img] position ids of the patch grid
    n_img: int
    src_pos: torch.Tensor  # [N, D] normalised position embeddings: what the decoder's cross bias reads

    @property
    def n_txt(self) -> int:
        return self.abs_bias.shape[-1] - self.n_img


class OFAEncoder(_Positions):
    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__(cfg, embed_tokens)
        d = cfg.d_model
        self.type_embedding = nn.Embedding(2, d) if cfg.add_type_embedding else None  # 0 text, 1 image
        self.embed_images = ResNet(RESNET_BLOCKS[cfg.resnet_type])
        self.image_proj = nn.Linear(1024, d)
        self.layernorm_embedding = nn.LayerNorm(d) if cfg.layernorm_embedding else None
        self.patch_layernorm_embedding = nn.LayerNorm(d) if cfg.patch_layernorm_embedding else None
        self._init_positions(cfg, cfg.encoder_layers, cfg.encoder_attention_heads)
        self.pos_q_linear, self.pos_k_linear = nn.Linear(d, d), nn.Linear(d, d)
        self.layers = nn.ModuleList(OFAEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(d) if cfg.encoder_normalize_before else None

    # embeddings (h_0 of each stream)
    def image_grid(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """ResNet features [B, h*w, 1024] and the grid (h, w)."""
        feats = self.embed_images(images)
        return feats.flatten(2).transpose(1, 2), tuple(feats.shape[-2:])

    def embed_image(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[B, 3, H, W] -> patch states [B, h*w, D] and the grid (h, w)."""
        feats, grid = self.image_grid(images)
        x = self.image_proj(feats) * self.embed_scale
        if self.cfg.entangle_position_embedding:
            x = x + self.embed_image_positions(image_position_ids(*grid, self.cfg.image_bucket_size, x.device))
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[1]
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        return x, grid

    def embed_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T] ids (right-padded, mask True on real tokens) -> [B, T, D]; padding positions are zeroed as
        ModelScope does (they are masked as keys, so this changes no real position)."""
        x = self.embed_tokens(ids) * self.embed_scale
        if self.cfg.entangle_position_embedding:
            x = x + self.embed_positions(torch.arange(ids.shape[1], device=ids.device))
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return x * mask[..., None].to(x.dtype)

    # position biases
    def positions(self, grid: tuple[int, int], n_txt: int) -> EncoderPositions:
        ids = image_position_ids(*grid, self.cfg.image_bucket_size, self.embed_positions.weight.device)
        pos = torch.cat([self.image_pos_ln(self.embed_image_positions(ids)),
                         self.pos_ln(self.embed_positions(torch.arange(n_txt, device=ids.device)))], 0)
        return EncoderPositions(self.project(self.pos_q_linear, self.pos_k_linear, pos, pos), ids, len(ids), pos)

    def layer_bias(self, pos: EncoderPositions, layer: int, stream: str = "joint",
                   queries: slice | None = None, image_rel: bool = True) -> torch.Tensor:
        """[1, H, Nq, N] position bias of encoder layer `layer` for `stream`: "joint" ([image; text], image-text
        pairs get the absolute bias only), "image" or "text" (that stream's own block), rows `queries`.
        `image_rel=False` leaves image positions with the absolute bias alone, as the authors' MuE encoder
        computes it (Tangshengku/OFA unify_transformer.py, TransformerEncoder_MuE's image loop overwrites the
        biased copy with `image_abs_pos_bias`)."""
        n_img, n = pos.n_img, pos.abs_bias.shape[-1]
        span = {"joint": slice(0, n), "image": slice(0, n_img), "text": slice(n_img, n)}[stream]
        bias = pos.abs_bias[:, span, span]
        idx = torch.arange(span.stop - span.start, device=bias.device)
        rows = idx if queries is None else idx[queries]
        img_rows, txt_rows = rows[rows < n_img - span.start], rows[rows >= n_img - span.start]
        bias = bias[:, rows]  # a copy: the relative biases are added in place
        if stream != "text" and len(img_rows) and image_rel:
            ids = pos.image_ids
            bias[:, : len(img_rows), :n_img] += self.image_rel_bias(layer, ids[img_rows], ids)
        if stream != "image" and len(txt_rows):
            t0 = n_img - span.start  # where text starts in this stream
            t = torch.arange(pos.n_txt, device=bias.device)
            bias[:, len(img_rows):, t0:] += self.text_rel_bias(layer, txt_rows - t0, t)
        return bias[None]


class DecoderPositions:
    """The decoder's position biases for one batch shape: cross-attention keys from the encoder's position
    embeddings (projected once), self-attention keys of each step's position (projected once, when the step
    is first reached), and each step's bias rows, so a step's layers share them."""

    def __init__(self, decoder: OFADecoder, src_pos: torch.Tensor):
        self.decoder = decoder
        self.cross_k = decoder._heads(decoder.cross_pos_k_linear(src_pos)).transpose(1, 2)  # [H, Dh, N]
        self.self_k: torch.Tensor | None = None  # [H, Dh, steps so far]
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def rows(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(self-attention absolute bias [H, 1, step + 1], cross bias [H, 1, N]) of the token at `step`."""
        if step not in self._rows:
            d = self.decoder
            pos = d.pos_ln(d.embed_positions(torch.tensor([step], device=self.cross_k.device)))  # [1, D]
            k = d._heads(d.self_pos_k_linear(pos)).transpose(1, 2)  # [H, Dh, 1]
            self.self_k = k if self.self_k is None else torch.cat([self.self_k, k], 2)
            assert self.self_k.shape[2] == step + 1, "decoder steps must come in order"
            self._rows[step] = (d.project_q(d.self_pos_q_linear, pos) @ self.self_k,
                                d.project_q(d.cross_pos_q_linear, pos) @ self.cross_k)
        return self._rows[step]

    def self_bias(self, layer: int, step: int) -> torch.Tensor:
        """[1, H, 1, step + 1]: absolute plus layer `layer`'s relative bias, the current token over its history."""
        steps = torch.arange(step + 1, device=self.cross_k.device)
        return (self.rows(step)[0] + self.decoder.text_rel_bias(layer, steps[-1:], steps))[None]

    def cross_bias(self, step: int) -> torch.Tensor:
        return self.rows(step)[1][None]


class OFADecoder(_Positions):
    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__(cfg, embed_tokens)
        d = cfg.d_model
        self.layers = nn.ModuleList(OFADecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layernorm_embedding = nn.LayerNorm(d) if cfg.layernorm_embedding else None
        # Image-code generation (OFA's text-to-image task) only; kept so that checkpoints load as they are.
        self.code_layernorm_embedding = nn.LayerNorm(d) if cfg.code_layernorm_embedding else None
        window = cfg.code_image_size // 8
        code_ids = image_position_ids(window, window, cfg.image_bucket_size)
        self.register_buffer("image_position_idx",
                             torch.cat([torch.tensor([0]), code_ids, torch.full((768,), 1024)]))
        self._init_positions(cfg, cfg.decoder_layers, cfg.decoder_attention_heads)
        self.self_pos_q_linear, self.self_pos_k_linear = nn.Linear(d, d), nn.Linear(d, d)
        self.cross_pos_q_linear, self.cross_pos_k_linear = nn.Linear(d, d), nn.Linear(d, d)
        self.layer_norm = nn.LayerNorm(d) if cfg.decoder_normalize_before else None
        self.output_projection = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight

    def embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """[B, T] target ids at positions start.. -> [B, T, D]."""
        x = self.embed_tokens(ids) * self.embed_scale
        if self.cfg.entangle_position_embedding and not self.cfg.disable_entangle:
            x = x + self.embed_positions(torch.arange(start, start + ids.shape[1], device=ids.device))
        return x if self.layernorm_embedding is None else self.layernorm_embedding(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.output_projection(h if self.layer_norm is None else self.layer_norm(h))

    def full_biases(self, n_tgt: int, src_pos: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher forcing over n_tgt positions: cross bias [1, H, T, N] and per layer the self bias
        [1, H, T, T] with the causal mask in it."""
        pos = self.pos_ln(self.embed_positions(torch.arange(n_tgt, device=src_pos.device)))
        steps = torch.arange(n_tgt, device=pos.device)
        causal = torch.full((n_tgt, n_tgt), float("-inf"), device=pos.device).triu(1)
        self_abs = self.project(self.self_pos_q_linear, self.self_pos_k_linear, pos, pos) + causal
        cross = self.project(self.cross_pos_q_linear, self.cross_pos_k_linear, pos, src_pos)
        return cross[None], [(self_abs + self.text_rel_bias(i, steps, steps))[None] for i in range(len(self.layers))]


class OFAModel(nn.Module):
    """ModelScope's `OFAModel` (its state-dict names): a shared token embedding, the encoder, the decoder."""

    def __init__(self, cfg: OFAConfig):
        super().__init__()
        self.cfg = cfg
        shared = nn.Embedding(cfg.vocab_size, cfg.d_model, cfg.pad_token_id)
        self.encoder = OFAEncoder(cfg, shared)
        self.decoder = OFADecoder(cfg, shared)
        if not cfg.exclude_mlp:  # a contrastive-retrieval head of some ModelScope checkpoints; unused here
            self.mlp_head = nn.Linear(cfg.d_model, cfg.mlp_dim)
        if cfg.temperature_init_value:
            self.temp = nn.Parameter(cfg.temperature_init_value * torch.ones([]))

    def train(self, mode: bool = True) -> OFAModel:
        """Training mode everywhere but the ResNet's batch norms: fine-tuning batches of a few images would
        overwrite the running statistics the released weights carry."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    # --- plain (no-exit) forward ----------------------------------------------------------------------
    def encode(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The joint encoder: output [B, Ni + T, D] after the final norm ([image; text]), its key mask, and the
        position embeddings [Ni + T, D] the decoder's cross bias reads."""
        enc = self.encoder
        img, grid = enc.embed_image(images)
        h = torch.cat([img, enc.embed_text(ids, mask)], 1)
        key_mask = torch.cat([torch.ones(img.shape[:2], dtype=torch.bool, device=h.device), mask], 1)
        pos = enc.positions(grid, ids.shape[1])
        pad = additive_mask(key_mask, h.dtype)
        for i, layer in enumerate(enc.layers):
            h = layer(h, enc.layer_bias(pos, i) + pad)
        return (h if enc.layer_norm is None else enc.layer_norm(h)), key_mask, pos.src_pos

    def decoder_states(self, dec_ids: torch.Tensor, enc_out: torch.Tensor, enc_mask: torch.Tensor,
                       src_pos: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder layer's output over the whole (teacher-forced) sequence [B, T]. Pad tokens in it are
        masked as keys, as ModelScope does (so padded rows' outputs at their padding match its too)."""
        cross_bias, self_biases = self.decoder.full_biases(dec_ids.shape[1], src_pos)
        cross_bias = cross_bias + additive_mask(enc_mask, enc_out.dtype)
        pads = additive_mask(dec_ids.ne(self.cfg.pad_token_id), enc_out.dtype)
        h, states = self.decoder.embed(dec_ids), []
        for layer, self_bias in zip(self.decoder.layers, self_biases):
            h, _, _ = layer(h, None, layer.cross_kv(enc_out), self_bias + pads, cross_bias)
            states.append(h)
        return states

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, dec_ids: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder output, teacher-forced logits [B, T_dec, V])."""
        enc_out, enc_mask, src_pos = self.encode(images, ids, mask)
        return enc_out, self.decoder.logits(self.decoder_states(dec_ids, enc_out, enc_mask, src_pos)[-1])

    @torch.no_grad()
    def generate(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                 decoding: DecodingConfig) -> list[list[int]]:
        """Greedy or beam search over the plain model, re-running the decoder over the whole prefix at every
        step (as ModelScope's generator does): the reference for the exit engine."""
        enc_out, enc_mask, src_pos = self.encode(images, ids, mask)
        enc_out, enc_mask = (t.repeat_interleave(decoding.num_beams, 0) for t in (enc_out, enc_mask))

        def last_logprobs(prefix: torch.Tensor) -> torch.Tensor:
            h = self.decoder_states(prefix, enc_out, enc_mask, src_pos)[-1][:, -1]
            return F.log_softmax(self.decoder.logits(h), -1, dtype=torch.float32)

        stepper = RecomputeStepper(last_logprobs)
        return generate(stepper, images.shape[0], decoding, images.device)


# --- weights ---------------------------------------------------------------------------------------------
# Buffers that are functions of the config (and BatchNorm's step counter, unused at inference): a checkpoint
# may or may not carry them; when it does they are loaded, so the checkpoint's own tables win.
DERIVED = ("token_rp_bucket", "image_rp_bucket", "image_position_idx", "num_batches_tracked")


def tied_names(model: nn.Module) -> list[list[str]]:
    """Groups of state-dict names that are one tensor (the shared embedding and, tied, the output projection):
    a safetensors file holds each group once, under any of its names."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model` strictly: every parameter present with its shape, nothing unknown, else a
    SpecError naming `source` and the first offending tensor (tied aliases and DERIVED buffers may be absent)."""
    from mue_bench.errors import SpecError

    expected = model.state_dict()
    alias = {name: group for group in tied_names(model) for name in group}
    chosen: dict[str, torch.Tensor] = {}
    for name, tensor in expected.items():
        present = [n for n in alias.get(name, [name]) if n in state]
        if not present:
            if name.rsplit(".", 1)[-1] in DERIVED:
                continue
            raise SpecError(f"{source}: no tensor {name}, which this OFA config needs")
        got = state[present[0]]
        if got.shape != tensor.shape:
            raise SpecError(f"{source}: {present[0]} has shape {tuple(got.shape)}, the config says "
                            f"{tuple(tensor.shape)}")
        chosen[name] = got
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise SpecError(f"{source}: tensor {unexpected[0]} is not part of this OFA model")
    model.load_state_dict(chosen, strict=False)
