"""OFA's configuration, spelt as ModelScope's `OFAConfig` spells it, and the five released sizes.

ModelScope's `config.json` is the canonical form: the released OFA checkpoints that are not fairseq `.pt`
files come with one, and the fairseq conversion (checkpoint.py) writes one. `from_dict` ignores what this
model has no use for (dropouts, transformers' generation settings) and takes ModelScope's default for
anything missing, so a ModelScope folder loads as it is. Settings this implementation does not provide
(OFA-Sys's ViT image encoder, position interpolation) are refused here, with their field named, rather than
silently computing something else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from mue_bench.errors import SpecError

# ResNet variant -> Bottleneck blocks in its first three stages (ModelScope's table: its "resnet18" and
# "resnet34" are Bottleneck stacks too).
RESNET_BLOCKS = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}
ACTIVATIONS = ("gelu", "relu", "silu", "gelu_new", "gelu_fast")


@dataclass
class OFAConfig:
    # Field names and defaults are ModelScope's (modelscope/models/multi_modal/ofa/configuration_ofa.py).
    vocab_size: int = 59457
    max_position_embeddings: int = 1024
    encoder_layers: int = 4
    encoder_ffn_dim: int = 512 * 4
    encoder_attention_heads: int = 8
    decoder_layers: int = 4
    decoder_ffn_dim: int = 512 * 4
    decoder_attention_heads: int = 8
    activation_function: str = "gelu"
    d_model: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    scale_embedding: bool = False
    pad_token_id: int = 1
    bos_token_id: int = 0
    decoder_start_token_id: int = 0
    eos_token_id: int = 2
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    normformer: bool = True  # NormFormer: LayerNorm after each attention and inside the FFN
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    resnet_type: str = "resnet101"
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    add_type_embedding: bool = True
    share_decoder_input_output_embed: bool = True
    attn_scale_factor: float = 2.0
    code_layernorm_embedding: bool = True
    code_image_size: int = 128
    entangle_position_embedding: bool = False
    interpolate_position: bool = False
    orig_patch_image_size: int = 224
    share_attn_bias: bool = False
    use_image_feature: bool = True
    disable_entangle: bool = False
    use_ofasys: bool = False
    use_gamma_feature: bool = False
    gamma: float = 1.0
    exclude_mlp: bool = True
    temperature_init_value: float | None = None
    mlp_dim: int = 512
    # Not in ModelScope's config: fairseq OFA's `--scale-resids` (NormFormer's residual scale). The released
    # models were trained without it (run_scripts pass --scale-attn --scale-fc --scale-heads only), so it is
    # off and adds no tensor unless a converted fairseq checkpoint says otherwise.
    scale_resids: bool = False

    def __post_init__(self) -> None:
        if self.use_ofasys:
            raise SpecError("OFA config: use_ofasys (OFA-Sys's ViT image encoder) is not supported; "
                            "mue-bench's OFA has the ResNet image encoder of the released OFA models")
        if not self.use_image_feature:
            raise SpecError("OFA config: use_image_feature is false; MuE needs the image stream")
        if self.interpolate_position:
            raise SpecError("OFA config: interpolate_position is not supported (set it to false)")
        if self.resnet_type not in RESNET_BLOCKS:
            raise SpecError(f"OFA config: resnet_type {self.resnet_type!r} is not one of "
                            f"{', '.join(RESNET_BLOCKS)}")
        if self.activation_function not in ACTIVATIONS:
            raise SpecError(f"OFA config: activation_function {self.activation_function!r} is not one of "
                            f"{', '.join(ACTIVATIONS)}")
        for heads, name in ((self.encoder_attention_heads, "encoder"), (self.decoder_attention_heads, "decoder")):
            if self.d_model % heads:
                raise SpecError(f"OFA config: d_model {self.d_model} is not divisible by "
                                f"{name}_attention_heads {heads}")

    @classmethod
    def from_dict(cls, raw: dict) -> OFAConfig:
        """A ModelScope-style config.json dict; unknown keys are ignored, missing ones take the defaults."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as e:
            raise SpecError(f"OFA config: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads


def _size(d_model: int, layers: tuple[int, int], heads: int, resnet: str) -> OFAConfig:
    """A released size: the authors' `ofa_<size>_architecture` (ffn 4 x d_model, NormFormer with head scales,
    token buckets 256, image buckets 42, attention scale factor 2, shared embeddings) over ModelScope's
    defaults, with the released vocabulary (50265 BPE + 1000 location bins + 8192 image codes)."""
    return OFAConfig(vocab_size=59457, d_model=d_model, encoder_layers=layers[0], decoder_layers=layers[1],
                     encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
                     decoder_ffn_dim=4 * d_model, resnet_type=resnet, token_bucket_size=256, image_bucket_size=42,
                     normformer=True, attn_scale_factor=2.0, dropout=0.0)


PRESETS: dict[str, OFAConfig] = {
    "tiny": _size(256, (4, 4), 4, "resnet50"),
    "medium": _size(512, (4, 4), 8, "resnet101"),
    "base": _size(768, (6, 6), 12, "resnet101"),
    "large": _size(1024, (12, 12), 16, "resnet152"),
    "huge": _size(1280, (24, 12), 16, "resnet152"),
}


# The image resolution each released size was fine-tuned at (the authors' run_scripts, --patch-image-size):
# what random weights of a size are run with.
IMAGE_SIZES = {"tiny": 256, "medium": 256, "base": 384, "large": 480, "huge": 480}


def preset(name: str, **overrides) -> OFAConfig:
    if name not in PRESETS:
        raise SpecError(f"unknown OFA size {name!r} (use one of {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides)
