"""DeepEthogram's two-stream feature extractor (Bohnslav et al. 2021, Methods "Feature extractors", "Fusion").

Two CNNs classify each frame ``t``: the spatial stream sees the RGB image,
the flow stream a stack of 10 optic flows. Each reduces its input to a
512-d feature vector (the features the sequence model later reads), then
dropout and a linear layer give K logits. The fused output is the late
average ``(f_spatial + f_flow) / 2`` of the two logit vectors, before the
sigmoid.

Inputs (2D archs ``resnet18``, ``resnet50``, or backbone ``efficientnet_lite0``):

* frames ``(N, 3, H, W)`` float RGB in [0, 1];
* flows ``(N, 2 * n_flows, H, W)`` float32 px, channels ``(dx_1, dy_1, dx_2,
  dy_2, ...)``: ``dx`` along image columns (positive right), ``dy`` along
  rows (positive down).

3D arch ``resnet3d_34`` (DeepEthogram-slow): frames ``(N, 3, T, H, W)``
(``T = n_rgb`` frames, 11 in DeepEthogram; ``(N, 3, H, W)`` is read as
``T = 1``) and flows ``(N, 2, n_flows, H, W)`` = (dx/dy, flow index, H, W);
the 2D flow layout ``(N, 2 * n_flows, H, W)`` is accepted too and
rearranged.

Frames are standardised channel-wise inside the model with the buffers
``rgb_mean`` / ``rgb_std`` (DeepEthogram: the dataset's RGB mean and standard
deviation, set by the training code); flows are used as they are
(DeepEthogram keeps the flow generator's float values).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from sipec_models.deg_losses import bias_from_counts
from sipec_models.nets.resnet import build_backbone

#: DeepEthogram: features per stream read by the sequence model.
FEATURE_DIM = 512
#: DeepEthogram: optic flows stacked into the flow stream (20 input channels).
N_FLOWS = 10
#: DeepEthogram code default (conf/model/feature_extractor.yaml): dropout before each final linear layer.
DROPOUT = 0.9
ARCHS = ("resnet18", "resnet50", "resnet3d_34")
BACKBONES = ("resnet", "efficientnet_lite0")


class StreamClassifier(nn.Module):
    """One stream: backbone -> (compression) -> ``(N, feature_dim)`` features -> dropout -> linear -> ``(N, K)``.

    When the backbone's pooled width differs from ``feature_dim`` (ResNet-50:
    2048, EfficientNet-Lite0: 1280) a ``Linear(width, feature_dim)`` + ReLU
    follows the global pooling (DeepEthogram-medium's extra 2048 -> 512 layer,
    which keeps the stored features small).

    Args:
        backbone: module mapping the stream's input to ``(N, backbone.out_features)``.
        n_classes: K behaviours.
        feature_dim: width of the features (DeepEthogram: 512).
        dropout: dropout probability before the final linear layer.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, feature_dim: int = FEATURE_DIM,
                 dropout: float = DROPOUT):
        super().__init__()
        if n_classes < 1 or feature_dim < 1:
            raise ValueError(f"n_classes and feature_dim must be >= 1, got {n_classes} and {feature_dim}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        width = int(backbone.out_features)
        self.backbone = backbone
        self.compress = nn.Identity() if width == feature_dim else nn.Sequential(
            nn.Linear(width, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, n_classes)
        self.feature_dim, self.n_classes = feature_dim, n_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Stream input -> ``(N, feature_dim)``."""
        return self.compress(self.backbone(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, feature_dim)`` -> ``(N, K)`` logits (dropout in training mode)."""
        return self.fc(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class TwoStreamOutput(NamedTuple):
    """Everything one forward pass computes; logits ``(N, K)``, features ``(N, feature_dim)``."""

    logits: torch.Tensor
    spatial_logits: torch.Tensor
    flow_logits: torch.Tensor
    spatial: torch.Tensor
    flow: torch.Tensor


class TwoStreamFeatureExtractor(nn.Module):
    """Spatial + flow streams with late average fusion of their logits (DeepEthogram).

    Args:
        spatial: :class:`StreamClassifier` for RGB frames.
        flow: :class:`StreamClassifier` for optic-flow stacks.
        is_3d: whether the backbones are 3D (inputs with a time axis).
        n_flows: optic flows per stack (DeepEthogram: 10).
        n_rgb: RGB frames in the spatial input (1 for 2D; DeepEthogram-slow: 11).
        meta: JSON-able description (arch, backbone, ...), kept in checkpoints.
    """

    def __init__(self, spatial: StreamClassifier, flow: StreamClassifier, is_3d: bool = False,
                 n_flows: int = N_FLOWS, n_rgb: int = 1, meta: Mapping[str, Any] | None = None):
        super().__init__()
        if spatial.n_classes != flow.n_classes or spatial.feature_dim != flow.feature_dim:
            raise ValueError(f"the streams differ: {spatial.n_classes} vs {flow.n_classes} classes, "
                             f"{spatial.feature_dim} vs {flow.feature_dim} features")
        if n_flows < 1 or n_rgb < 1:
            raise ValueError(f"n_flows and n_rgb must be >= 1, got {n_flows} and {n_rgb}")
        self.spatial, self.flow = spatial, flow
        self.is_3d, self.n_flows, self.n_rgb = bool(is_3d), int(n_flows), int(n_rgb)
        self.n_classes, self.feature_dim = spatial.n_classes, spatial.feature_dim
        self.meta = dict(meta or {})
        self.register_buffer("rgb_mean", torch.full((3,), 0.5))
        self.register_buffer("rgb_std", torch.full((3,), 0.5))

    # ----------------------------------------------------------------- inputs

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Channel-wise RGB standardisation ``(x - mean) / std`` of frames in [0, 1] (DeepEthogram)."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.shape != (3,) or std_t.shape != (3,) or (std_t <= 0).any():
            raise ValueError(f"mean and std must be 3 values with std > 0, got {mean} and {std}")
        self.rgb_mean.copy_(mean_t)
        self.rgb_std.copy_(std_t)

    def spatial_input(self, frames: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (uint8 is divided by 255) -> standardised spatial-stream input.

        2D: ``(N, 3, H, W)``. 3D: ``(N, 3, T, H, W)``, or ``(N, 3, H, W)`` as ``T = 1``.
        """
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        if self.is_3d and frames.ndim == 4:
            frames = frames.unsqueeze(2)
        want = 5 if self.is_3d else 4
        if frames.ndim != want or frames.shape[1] != 3:
            shape = "(N, 3, T, H, W)" if self.is_3d else "(N, 3, H, W)"
            raise ValueError(f"frames must be {shape} RGB, got {tuple(frames.shape)}")
        view = (1, 3) + (1,) * (frames.ndim - 2)
        return (frames.float() - self.rgb_mean.view(view)) / self.rgb_std.view(view)

    def flow_input(self, flows: torch.Tensor) -> torch.Tensor:
        """Optic flows -> flow-stream input.

        2D: ``(N, 2 * n_flows, H, W)`` as given. 3D: ``(N, 2, n_flows, H, W)``;
        a 2D-layout ``(N, 2 * n_flows, H, W)`` stack (``dx_1, dy_1, dx_2, ...``)
        is rearranged to it.
        """
        flows = flows.float()
        C = 2 * self.n_flows
        if self.is_3d:
            if flows.ndim == 4 and flows.shape[1] == C:
                N, _, H, W = flows.shape
                flows = flows.view(N, self.n_flows, 2, H, W).transpose(1, 2)
            if flows.ndim != 5 or flows.shape[1] != 2:
                raise ValueError(f"flows must be (N, 2, {self.n_flows}, H, W) or (N, {C}, H, W), "
                                 f"got {tuple(flows.shape)}")
            return flows
        if flows.ndim != 4 or flows.shape[1] != C:
            raise ValueError(f"flows must be (N, {C}, H, W) = {self.n_flows} x (dx, dy), got {tuple(flows.shape)}")
        return flows

    # ----------------------------------------------------------------- outputs

    def features(self, frames: torch.Tensor, flows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(spatial (N, 512), flow (N, 512))`` feature vectors."""
        return self.spatial.features(self.spatial_input(frames)), self.flow.features(self.flow_input(flows))

    def outputs(self, frames: torch.Tensor, flows: torch.Tensor) -> TwoStreamOutput:
        """Fused and per-stream logits ``(N, K)`` and both streams' features ``(N, 512)``."""
        fs, ff = self.features(frames, flows)
        ls, lf = self.spatial.classify(fs), self.flow.classify(ff)
        return TwoStreamOutput((ls + lf) / 2, ls, lf, fs, ff)

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        """Fused logits ``(N, K)`` = ``(f_spatial + f_flow) / 2``; probabilities are their sigmoid."""
        return self.outputs(frames, flows).logits

    def init_bias(self, pos, neg) -> np.ndarray:
        """Set both final layers' biases to ``log(pos / neg)`` (DeepEthogram "Bias initialization").

        The fused logits then start at the same bias, so ``sigmoid`` of the
        initial output is each behaviour's frequency. Returns the ``(K,)`` biases.
        """
        b = bias_from_counts(pos, neg)
        if b.shape != (self.n_classes,):
            raise ValueError(f"counts for {b.shape[0]} behaviours, model has {self.n_classes}")
        with torch.no_grad():
            for stream in (self.spatial, self.flow):
                stream.fc.bias.copy_(torch.from_numpy(b))
        return b

    def pretrained_parameter_names(self) -> list[str]:
        """Names of parameters that came from ImageNet weights (the L2-SP starting points)."""
        return list(self.meta.get("pretrained_parameters", []))


def _stream(name: str, in_channels: int, n_classes: int, pretrained: bool, feature_dim: int,
            dropout: float) -> StreamClassifier:
    return StreamClassifier(build_backbone(name, in_channels, pretrained), n_classes, feature_dim, dropout)


def make_feature_extractor(n_classes: int, arch: str = "resnet18", backbone: str = "resnet", pretrained: bool = False,
                           dropout: float = DROPOUT, feature_dim: int = FEATURE_DIM, n_flows: int = N_FLOWS,
                           n_rgb: int | None = None) -> TwoStreamFeatureExtractor:
    """A two-stream extractor from names.

    Args:
        n_classes: K behaviours.
        arch: ``resnet18`` (fast), ``resnet50`` (medium) or ``resnet3d_34`` (slow).
        backbone: ``resnet`` (the ResNet named by ``arch``) or
            ``efficientnet_lite0`` (2D only; replaces the ResNet of both streams).
        pretrained: load ImageNet weights (only ``efficientnet_lite0`` has
            them offline; the flow stream's stem is adapted to 20 channels).
        dropout, feature_dim, n_flows: see :class:`StreamClassifier` / :class:`TwoStreamFeatureExtractor`.
        n_rgb: RGB frames of the spatial input; None: 1 for 2D, ``n_flows + 1`` for 3D (DeepEthogram Table 2: 11).

    Raises:
        ValueError: unknown names, ``pretrained`` ResNets, EfficientNet with a 3D arch, ``n_rgb > 1`` for 2D.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown feature extractor arch {arch!r}; choose one of {ARCHS}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    is_3d = arch == "resnet3d_34"
    if is_3d and backbone != "resnet":
        raise ValueError(f"backbone {backbone!r} is 2D; arch resnet3d_34 needs backbone 'resnet'")
    if n_rgb is None:
        n_rgb = n_flows + 1 if is_3d else 1
    if not is_3d and n_rgb != 1:
        raise ValueError(f"2D feature extractors take one RGB frame (n_rgb 1), got n_rgb {n_rgb}")
    name = backbone if backbone != "resnet" else arch
    spatial = _stream(name, 3, n_classes, pretrained, feature_dim, dropout)
    flow = _stream(name, 2 if is_3d else 2 * n_flows, n_classes, pretrained, feature_dim, dropout)
    meta = {"arch": arch, "backbone": backbone, "pretrained": bool(pretrained), "n_classes": int(n_classes),
            "feature_dim": int(feature_dim), "dropout": float(dropout), "n_flows": int(n_flows), "n_rgb": int(n_rgb)}
    model = TwoStreamFeatureExtractor(spatial, flow, is_3d=is_3d, n_flows=n_flows, n_rgb=n_rgb, meta=meta)
    if pretrained:
        model.meta["pretrained_parameters"] = sorted(
            f"{s}.backbone.{k}" for s in ("spatial", "flow") for k, _ in getattr(model, s).backbone.named_parameters())
    return model


def build_feature_extractor(cfg_features: Mapping[str, Any], n_classes: int,
                            class_counts: tuple[Sequence[int], Sequence[int]] | None = None
                            ) -> TwoStreamFeatureExtractor:
    """The extractor described by the ``features`` config section, biases set from class counts.

    Args:
        cfg_features: ``load_model_config("deepethogram", [...]).features``
            (or a plain dict with keys ``arch``, ``backbone``, ``pretrained``,
            ``dropout``, ``feature_dim``, ``n_flows``, ``n_rgb``).
        n_classes: K behaviours.
        class_counts: ``(pos (K,), neg (K,))`` training counts
            (:func:`sipec_models.deg_losses.class_counts`); None leaves the
            default bias initialisation.
    """
    cfg = dict(cfg_features)
    model = make_feature_extractor(
        n_classes, arch=str(cfg.get("arch", "resnet18")), backbone=str(cfg.get("backbone", "resnet")),
        pretrained=bool(cfg.get("pretrained", False)), dropout=float(cfg.get("dropout", DROPOUT)),
        feature_dim=int(cfg.get("feature_dim", FEATURE_DIM)), n_flows=int(cfg.get("n_flows", N_FLOWS)),
        n_rgb=None if cfg.get("n_rgb") is None else int(cfg["n_rgb"]))
    if class_counts is not None:
        model.init_bias(*class_counts)
    return model


def feature_extractor_from_meta(meta: Mapping[str, Any]) -> TwoStreamFeatureExtractor:
    """An untrained extractor of the same shape as one described by ``model.meta`` (for loading checkpoints).

    ImageNet weights are not loaded (the checkpoint's weights replace them).
    """
    model = make_feature_extractor(int(meta["n_classes"]), arch=meta["arch"], backbone=meta["backbone"],
                                   pretrained=False, dropout=float(meta["dropout"]),
                                   feature_dim=int(meta["feature_dim"]), n_flows=int(meta["n_flows"]),
                                   n_rgb=int(meta["n_rgb"]))
    model.meta = dict(meta)
    return model
