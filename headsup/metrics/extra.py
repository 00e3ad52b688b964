"""Evaluation metrics beyond PSNR/SSIM, configured by name for `headsup test` (`model.metrics`).

Each entry is a factory of torchmetrics `Metric`s (one per set and method, mean of per-image
or per-face scores, summed across DDP ranks). Anything that needs weights loads them from a
local file; a missing file makes the metric *unavailable* (named in results.json with the path
to put the file) instead of stopping the sweep. No-reference metrics also score LQ-only sets.

- `LPIPSMetric`: LPIPS-VGG (our module: local VGG16, LPIPS v0.1 linear layers torchmetrics ships), lower
  is better.
- `PyiqaMetric`: any pyiqa metric by name with its local weights: no-reference NIQE, MUSIQ,
  MANIQA, CLIPIQA; full-reference DISTS.
- `IdentityCosine` ("Deg"): cosine of InceptionResnetV1 embeddings of SR and HQ faces aligned at
  the HQ landmarks; `ReferenceIdentityCosine` the same against the person's reference photo.
- `FIDMetric`: FID of SR against the set's HQ (standard FID Inception from a local file).
- `LandmarkDistance` ("LMD"): mean distance (px) between MTCNN landmarks found on the SR face and
  the HQ landmarks; faces MTCNN misses on SR are left out.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn
from torchmetrics import Metric


class MeanScore(Metric):
    """Mean of the scores passed to `update` (per image or per face)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor) -> None:
        self.total += scores.detach().double().sum()
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


class ExtraMetric(nn.Module):
    """A named evaluation metric. Subclasses set `needs_hq` and `needs_faces`, implement `scores`."""

    needs_hq = True
    needs_faces = False

    def __init__(self) -> None:
        super().__init__()
        self.unavailable: str | None = None

    def scores(self, sr: torch.Tensor, hq: torch.Tensor | None, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def make(self) -> Metric:
        """A fresh accumulator for one set and method (default: mean of `scores`)."""
        return MeanScore()

    def describe(self) -> str:
        """The implementation and the weights files behind the numbers (recorded in results.json)."""
        files = ", ".join(str(getattr(self, a)) for a in ("weights", "vgg_weights", "lpips_weights")
                          if getattr(self, a, None))
        name = type(self).__name__ + (f"({self.metric_name})" if hasattr(self, "metric_name") else "")
        return f"headsup {name}; weights: {files or 'none'}"

    def update(self, metric: Metric, sr: torch.Tensor, hq: torch.Tensor | None, batch: dict) -> torch.Tensor | None:
        """Add one batch to `metric`; returns the per-image scores (None for per-face or per-set metrics)."""
        scores = self.scores(sr, hq, batch)
        metric.update(scores)
        return None if self.needs_faces else scores


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def _missing(path: str | None, what: str) -> str | None:
    if path is None:
        return f"{what}: no local weights given (nothing is downloaded)"
    if not Path(path).is_file():
        return f"{what}: weights not found at {path} (put the file there)"
    return None


class LPIPSMetric(ExtraMetric):
    """LPIPS-VGG between SR and HQ (lower is better); the same network as the `LPIPSLoss` objective
    (shared with it when both use the same files).

    Args:
        vgg_weights: torchvision VGG16 state dict (`vgg16-397923af.pth`).
        lpips_weights: LPIPS v0.1 linear weights; default (None): the `vgg.pth` torchmetrics ships.
    """

    def __init__(self, vgg_weights: str | None = None, lpips_weights: str | None = None) -> None:
        super().__init__()
        from headsup.models.lpips import LPIPS, shipped_lpips_weights

        if lpips_weights is None:
            try:
                lpips_weights = str(shipped_lpips_weights())
            except FileNotFoundError as err:
                lpips_weights, self.unavailable = None, f"lpips (LPIPSMetric {err})"
        self.unavailable = (self.unavailable or _missing(vgg_weights, "lpips (LPIPSMetric vgg_weights, VGG16)")
                            or _missing(lpips_weights, "lpips (LPIPSMetric lpips_weights, linear layers)"))
        self.vgg_weights, self.lpips_weights = vgg_weights, lpips_weights
        self.net = None
        if self.unavailable is None:
            self.net = LPIPS.shared(vgg_weights, lpips_weights, owner="LPIPSMetric")

    def scores(self, sr, hq, batch):
        return self.net(sr * 1.0, hq).flatten()


# pyiqa metrics computed from the images alone (no weights file)
WEIGHTLESS = frozenset({"psnr", "psnry", "ssim", "ssimc", "ms_ssim", "cw_ssim", "fsim", "vif", "gmsd", "nlpd",
                        "mad", "vsi"})


# Backbone files pyiqa fetches into torch hub's cache for these metrics (besides `weights`), relative
# to that cache folder; with `torch_hub` given they are read from there, and nothing is downloaded.
HUB_FILES = {"lpips": ("checkpoints/alexnet-owt-7be5be79.pth",), "lpips-vgg": ("checkpoints/vgg16-397923af.pth",),
             "dists": ("checkpoints/vgg16-397923af.pth",), "clipiqa": ("clip/RN50.pt",)}
# pyiqa's LPIPS linear layers default to the copies of the LPIPS v0.1 release torchmetrics ships (same keys)
SHIPPED_LPIPS = {"lpips": "alex.pth", "lpips-vgg": "vgg.pth"}
# metrics whose only weights are such backbones (CLIP-IQA: OpenAI's CLIP RN50 and fixed prompts)
HUB_ONLY = frozenset({"clipiqa"})


def _unsafe_pickle(path: str) -> str | None:
    """Why a torch file is refused (it would run code when unpickled, or does not load), or None."""
    if Path(path).suffix not in (".pth", ".pt", ".ckpt", ".pkl"):
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - reported as unavailable, naming the file
        return f"{path} holds more than tensors and plain values (loading it could run code) or is unreadable: {err}"
    return None


@contextlib.contextmanager
def torch_hub_dir(folder: str | None):
    """torch hub's cache folder set to `folder` (if given) while metrics are built."""
    if folder is None:
        yield
        return
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


class PyiqaMetric(ExtraMetric):
    """A pyiqa metric from local weights (full-reference ones compare with HQ).

    Args:
        metric: pyiqa metric name (niqe, musiq, maniqa, clipiqa, dists, psnr, ssim, ...).
        weights: Local weights file of the metric (NIQE: its pristine-parameter .mat); none for the
            metrics pyiqa computes from the images alone (psnr, ssim, ...); for lpips / lpips-vgg the
            default is the LPIPS v0.1 linear layers torchmetrics ships.
        options: Options of the pyiqa metric, e.g. {test_y_channel: true, color_space: ycbcr}
            (OSEDiff's `test_metrics.py` PSNR/SSIM).
        torch_hub: A folder laid out as torch hub's cache holding the backbones pyiqa would download
            (`HUB_FILES`: LPIPS's AlexNet/VGG16 and DISTS's VGG16 under `checkpoints/`, CLIP-IQA's
            `clip/RN50.pt`).
    """

    def __init__(self, metric: str, weights: str | None = None, options: dict | None = None,
                 torch_hub: str | None = None) -> None:
        super().__init__()
        self.metric_name = metric
        self.options = dict(options or {})
        if weights is None and metric in SHIPPED_LPIPS:  # the LPIPS v0.1 release's linear layers, in torchmetrics
            import torchmetrics.functional.image.lpips as tm_lpips

            weights = str(Path(tm_lpips.__file__).parent / "lpips_models" / SHIPPED_LPIPS[metric])
        self.weights, self.torch_hub = weights, torch_hub
        weightless = metric in WEIGHTLESS | HUB_ONLY and weights is None
        self.unavailable = None if weightless else _missing(weights, metric)
        hub = [f for f in HUB_FILES.get(metric, ()) if torch_hub is None or not (Path(torch_hub) / f).is_file()]
        if hub and self.unavailable is None:
            self.unavailable = (f"{metric}: needs {', '.join(hub)} in torch_hub "
                                f"({torch_hub or 'not given'}; torch hub's cache layout, nothing is downloaded)")
        if self.unavailable is None:  # pyiqa unpickles its files in full: only tensors and plain values pass here
            files = [weights] + [str(Path(torch_hub) / f) for f in HUB_FILES.get(metric, ()) if f.endswith(".pth")]
            self.unavailable = next((m for m in map(_unsafe_pickle, filter(None, files)) if m), None)
        self.net = None
        self.needs_hq = False
        if self.unavailable is None:
            import pyiqa

            given = {"pretrained_model_path": weights} if weights is not None else {}
            try:
                with torch_hub_dir(torch_hub):
                    self.net = pyiqa.create_metric(metric, as_loss=False, device=torch.device("cpu"),
                                                   **given, **self.options)
            except Exception as err:  # noqa: BLE001 - reported as unavailable, the sweep goes on
                self.unavailable = f"{metric}: could not be built from {weights}: {err}"
                return
            self.net.requires_grad_(False)
            self.needs_hq = getattr(self.net, "metric_mode", "NR") == "FR"

    def describe(self) -> str:
        options = "".join(f", {k}={v}" for k, v in self.options.items())
        hub = "".join(f", {self.torch_hub}/{f}" for f in HUB_FILES.get(self.metric_name, ()))
        return f"pyiqa {_version('pyiqa')} '{self.metric_name}'{options}; weights: {self.weights or 'none'}{hub}"

    def scores(self, sr, hq, batch):
        self.net.to(sr.device)
        self.net.device = sr.device
        out = self.net(sr, hq) if self.needs_hq else self.net(sr)
        return out.float().flatten()


class IdentityCosine(ExtraMetric):
    """Deg: cosine similarity of face-recognition embeddings of SR and HQ faces (higher is better).

    Args:
        weights: Local InceptionResnetV1 state dict (facenet-pytorch).
        alignment: How faces are cut out for the net ("facenet" or "ffhq"; `IdentityNet`).
    """

    needs_faces = True

    def __init__(self, weights: str | None = None, alignment: str = "facenet") -> None:
        super().__init__()
        self.metric_name = f"alignment={alignment}"  # recorded in results.json's settings
        self.unavailable = _missing(weights, "deg (InceptionResnetV1)")
        self.weights = weights
        self.net = None
        if self.unavailable is None:
            from headsup.models.identity import IdentityNet

            self.net = IdentityNet(weights, alignment=alignment)

    def scores(self, sr, hq, batch):
        b_idx, f_idx = batch["face_valid"].nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            return sr.new_zeros(0)
        landmarks = batch["face_landmarks"][b_idx, f_idx]
        boxes = batch["face_boxes"][b_idx, f_idx] if "face_boxes" in batch else None
        return (self.net(sr[b_idx], landmarks, boxes) * self.net(hq[b_idx], landmarks, boxes)).sum(1)


class LandmarkDistance(ExtraMetric):
    """LMD: mean pixel distance of MTCNN's 5 landmarks on the SR face to the HQ landmarks (the
    nearest detection to each face; faces MTCNN misses on SR are left out)."""

    needs_faces = True

    def __init__(self) -> None:
        super().__init__()
        self._annotator = None

    def describe(self) -> str:
        return "headsup LandmarkDistance; weights: facenet-pytorch's MTCNN (shipped in the package)"

    def scores(self, sr, hq, batch):
        from headsup.data.faces import FaceAnnotator

        if self._annotator is None:
            self._annotator = FaceAnnotator(device=sr.device, detect_size=10**6, min_prob=0.5)
        b_idx, f_idx = batch["face_valid"].nonzero(as_tuple=True)
        out = []
        found = self._annotator.detect([sr[b] for b in b_idx.tolist()])
        for k, faces in enumerate(found):
            truth = batch["face_landmarks"][b_idx[k], f_idx[k]].float().cpu()
            if not faces:
                continue
            cands = torch.stack([torch.tensor(f.landmarks) for f in faces])
            dist = (cands - truth).norm(dim=-1).mean(-1)  # the detection nearest to this face
            out.append(dist.min())
        return torch.stack(out) if out else sr.new_zeros(0)


class ReferenceIdentityCosine(IdentityCosine):
    """Deg vs reference: cosine of the embeddings of the SR face (slot 0, the largest) and of the
    same person's reference photo (`reference`, FFHQ-aligned), where the batch has one.

    Args:
        weights: Local InceptionResnetV1 state dict (facenet-pytorch).
    """

    def scores(self, sr, hq, batch):
        from headsup.data.faces import template

        if "reference" not in batch:
            return sr.new_zeros(0)
        idx = (batch["has_reference"] & batch["face_valid"][:, 0]).nonzero().flatten()
        if idx.numel() == 0:
            return sr.new_zeros(0)
        ref = batch["reference"][idx]
        ref_points = template(ref.shape[-1], ref.device)[None].expand(len(idx), -1, -1)
        boxes = batch["face_boxes"][idx, 0] if "face_boxes" in batch else None
        return (self.net(sr[idx], batch["face_landmarks"][idx, 0], boxes) * self.net(ref, ref_points)).sum(1)


class FIDMetric(ExtraMetric):
    """FID between a set's SR outputs and a reference (lower is better): torchmetrics'
    FrechetInceptionDistance with the standard FID Inception (torch-fidelity) from a local file. The
    reference is each set's own HQ images, or a named folder of images (e.g. FFHQ for face sets),
    whose features are computed once. FID over a few images is not comparable with the literature's
    (thousands); results.json records the image count next to it.

    Args:
        weights: Local `weights-inception-2015-12-05-6726825d.pth` (torch-fidelity's FID Inception).
        reference: Folder of reference images (searched recursively); None: each set's HQ.
        reference_name: Name of the reference in results.json (default: the folder's name).
    """

    def __init__(self, weights: str | None = None, reference: str | None = None,
                 reference_name: str | None = None) -> None:
        super().__init__()
        self.unavailable = _missing(weights, "fid (FID Inception)")
        if self.unavailable is None and reference is not None and not Path(reference).is_dir():
            self.unavailable = f"fid: reference folder not found: {reference}"
        self.weights, self.reference = weights, reference
        self.reference_name = reference_name or (Path(reference).name if reference else None)
        self._reference_state: dict[str, torch.Tensor] | None = None
        self.feature = None
        if self.unavailable is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.feature = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                              feature_extractor_weights_path=weights)
            self.feature.requires_grad_(False)

    @property
    def reference_description(self) -> str:
        if self.reference is None:
            return "each set's own HQ images (as many as its 'images')"
        return f"'{self.reference_name}': the images of {self.reference}"

    def describe(self) -> str:
        return f"headsup FIDMetric vs {self.reference_description}; weights: {self.weights}"

    def make(self) -> Metric:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=self.feature, reset_real_features=False)

    def _reference_features(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The reference folder's real-image statistics, computed once."""
        if self._reference_state is None:
            from headsup.data.io import list_images, read_image

            metric = self.make().to(device)
            for path in list_images(self.reference):
                metric.update(_as_uint8(read_image(path).rgb[None].to(device)), real=True)
            self._reference_state = {k: getattr(metric, k).clone() for k in REAL_STATES}
        return self._reference_state

    def update(self, metric, sr, hq, batch) -> None:  # the FID Inception takes 8-bit images
        if self.reference is None:
            metric.update(_as_uint8(hq), real=True)
        elif not int(metric.real_features_num_samples) and _first_rank():  # DDP: counted once, on rank 0
            for key, value in self._reference_features(sr.device).items():
                setattr(metric, key, value.clone())
        metric.update(_as_uint8(sr), real=False)


REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _first_rank() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0
