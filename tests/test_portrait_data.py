"""Face-aware training crops, references, face sets, evaluation faces and weighted mixing under DDP."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.data import astronaut, coffee

from headsup.data import faces as Fc
from headsup.data.datamodule import SRDataModule, collate
from headsup.data.datasets import EvalDataset, RandomCropDataset
from headsup.data.geometry import _FLIP_ORDER
from headsup.data.sampling import MixtureSampler
from headsup.data.specs import DatasetSpec

FACE = {
    "box": [181.05, 62.16, 267.75, 172.05],
    "landmarks": [[205.01, 101.73], [246.76, 103.71], [224.67, 128.96], [201.72, 139.25], [245.27, 141.86]],
    "prob": 1.0,
    "eye_distance": 41.8,
}


@pytest.fixture(scope="module")
def portrait_set(tmp_path_factory):
    """A manifest like `prepare portrait-set` writes: the astronaut twice, one pointing at the other."""
    root = tmp_path_factory.mktemp("portrait")
    (root / "img").mkdir()
    Image.fromarray(astronaut()).save(root / "img" / "a.png")
    Image.fromarray(astronaut()[:, ::-1].copy()).save(root / "img" / "b.png")
    flipped = {**FACE, "box": [512 - 267.75, 62.16, 512 - 181.05, 172.05],
               "landmarks": [[512 - x, y] for x, y in (FACE["landmarks"][i] for i in _FLIP_ORDER)]}
    rows = [
        {"path": "img/a.png", "width": 512, "height": 512, "faces": [FACE], "identity": "astro",
         "references": [{"path": "img/b.png", "landmarks": flipped["landmarks"]}]},
        {"path": "img/b.png", "width": 512, "height": 512, "faces": [flipped], "identity": "astro", "references": []},
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _sample(image: torch.Tensor, x: float, y: float, mirror: bool = False) -> torch.Tensor:
    """Bilinear 9x9 patch around a continuous point (pixel i covers [i, i + 1))."""
    offsets = torch.arange(-4, 5, dtype=torch.float32)
    dx = -offsets if mirror else offsets
    gx = (x + dx[None, :].expand(9, 9)) / image.shape[-1] * 2 - 1
    gy = (y + offsets[:, None].expand(9, 9)) / image.shape[-2] * 2 - 1
    grid = torch.stack([gx, gy], -1)[None]
    return F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0]


def test_face_crops_keep_the_face_and_its_landmarks_match_the_pixels(portrait_set):
    spec = DatasetSpec(name="p", manifest=str(portrait_set / "train.jsonl"), kind="portrait")
    ds = RandomCropDataset(spec, crop_size=160, face_crop_prob=1.0)
    full = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    orig = torch.tensor(FACE["landmarks"])
    torch.manual_seed(0)
    flips = set()
    for _ in range(12):
        item = ds[0]
        assert item["face_valid"].tolist() == [True, False, False, False]
        x1, y1, x2, y2 = item["face_boxes"][0].tolist()
        assert 0 <= x1 and 0 <= y1 and x2 <= 160 and y2 <= 160  # the whole face is in the crop
        assert (x2 - x1, y2 - y1) == pytest.approx((267.75 - 181.05, 172.05 - 62.16), abs=1e-3)
        matches = {}
        for mirror in (False, True):
            order = _FLIP_ORDER if mirror else range(5)
            errors = [_sample(item["hq"], *item["face_landmarks"][0, j].tolist(), mirror) - _sample(full, *orig[k])
                      for j, k in enumerate(order)]
            matches[mirror] = max(float(e.abs().max()) for e in errors)
        assert min(matches.values()) < 1e-4, matches  # same pixels around every landmark
        flips.add(min(matches, key=matches.get))
    assert flips == {False, True}  # both flipped and unflipped crops were checked


def test_without_face_crops_faces_leave_or_stay_consistently(portrait_set):
    spec = DatasetSpec(name="p", manifest=str(portrait_set / "train.jsonl"), kind="portrait")
    ds = RandomCropDataset(spec, crop_size=128, face_crop_prob=0.0, flip=False)
    torch.manual_seed(1)
    items = [ds[0] for _ in range(60)]
    kept = [bool(it["face_valid"][0]) for it in items]
    assert 0 < sum(kept) < 60  # uniform crops mostly miss the 87x110 face, sometimes hold half of it
    for it in items:
        if it["face_valid"][0]:
            assert it["face_boxes"][0].min() >= 0 and it["face_boxes"][0].max() <= 128  # clipped to the crop
        else:
            assert it["face_boxes"][0].abs().sum() == 0


def test_reference_is_the_aligned_face_of_the_other_photo(portrait_set):
    spec = DatasetSpec(name="p", manifest=str(portrait_set / "train.jsonl"), kind="portrait")
    ds = RandomCropDataset(spec, crop_size=128, reference_size=256)
    item = ds[0]
    assert item["has_reference"] and item["reference"].shape == (3, 256, 256)
    other = torch.from_numpy(astronaut()[:, ::-1].copy()).permute(2, 0, 1).float() / 255
    rec = ds.records[0]["references"][0]
    expected = Fc.align_faces(other[None], torch.tensor(rec["landmarks"])[None], 256)[0]
    assert torch.allclose(item["reference"], expected.clamp(0, 1), atol=1e-6)
    none = ds[1]  # b.png has no reference
    assert not none["has_reference"] and none["reference"].abs().sum() == 0
    batch = collate([item, none])
    assert batch["reference"].shape == (2, 3, 256, 256) and batch["has_reference"].tolist() == [True, False]


def test_missing_reference_file_is_reported_and_skipped(portrait_set, tmp_path):
    row = json.loads((portrait_set / "train.jsonl").read_text().splitlines()[0])
    row["path"] = str(portrait_set / "img" / "a.png")
    row["references"][0]["path"] = str(tmp_path / "gone.png")
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    ds = RandomCropDataset(DatasetSpec(name="m", manifest=str(tmp_path / "m.jsonl")), 128, reference_size=64)
    with pytest.warns(UserWarning, match="gone.png"):
        assert not ds[0]["has_reference"]


def test_aligned_face_sets_carry_the_template(tmp_path):
    full = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    aligned = Fc.align_faces(full[None], torch.tensor(FACE["landmarks"])[None], 512)[0]
    Image.fromarray((aligned.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / "00000.png")
    ds = RandomCropDataset(DatasetSpec(name="ffhq", hq=str(tmp_path), kind="face"), crop_size=256, flip=False)
    item = ds[0]
    assert item["hq"].shape == (3, 256, 256) and item["face_valid"][0]
    assert torch.allclose(item["face_landmarks"][0], Fc.template(256), atol=1e-4)
    x1, y1, x2, y2 = item["face_boxes"][0].tolist()
    assert 0 < x1 < x2 < 256 and 0 < y1 < y2 < 256


def test_datamodule_masks_faces_and_pools_them_with_their_pairs(portrait_set):
    spec = DatasetSpec(name="p", manifest=str(portrait_set / "train.jsonl"), kind="portrait")
    dm = SRDataModule(train=[spec], crop_size=128, batch_size=2, num_workers=0, face_crop_prob=1.0, pool_size=4,
                      reference_size=64)
    dm.trainer = SimpleNamespace(training=True, global_rank=0)
    batch = next(iter(dm.train_dataloader()))
    batch = dm.on_after_batch_transfer(batch, 0)
    assert batch["lq"].shape == (2, 3, 32, 32) and batch["face_mask"].shape == (2, 1, 128, 128)
    for i in range(2):
        x1, y1, x2, y2 = batch["face_boxes"][i, 0].tolist()
        assert batch["face_mask"][i, 0, int((y1 + y2) / 2), int((x1 + x2) / 2)] > 0.99
        assert batch["face_mask"][i, 0].mean() < 0.9
    travelling = {"face_boxes", "face_landmarks", "face_valid", "face_mask", "reference", "has_reference"}
    assert travelling <= set(dm.pool.keys)


def test_evaluation_items_carry_faces_in_crop_coordinates(portrait_set):
    spec = DatasetSpec(name="p", manifest=str(portrait_set / "train.jsonl"), kind="portrait", center_crop=400)
    item = EvalDataset(spec, scale=4)[0]
    assert item["hq"].shape == (3, 400, 400)
    assert torch.allclose(item["face_boxes"][0], torch.tensor(FACE["box"]) - 56, atol=1e-4)  # (512 - 400) / 2
    assert torch.allclose(item["face_landmarks"][0], torch.tensor(FACE["landmarks"]) - 56, atol=1e-4)


def test_mixed_sources_follow_their_weights_and_shard_under_ddp(tmp_path, portrait_set):
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    sampler = MixtureSampler([10, 1000], [3.0, 1.0], num_samples=4000, seed=0)
    first = list(sampler)
    share = sum(i < 10 for i in first) / len(first)
    assert abs(share - 0.75) < 0.03 and max(first) < 1010
    assert list(sampler) != first  # a new draw each epoch

    ranks = []
    for rank in (0, 1):
        inner = MixtureSampler([10, 1000], [3.0, 1.0], num_samples=4000, seed=0)
        wrapper = DistributedSamplerWrapper(inner, num_replicas=2, rank=rank, shuffle=True)
        wrapper.set_epoch(0)
        ranks.append(list(wrapper))
    assert len(ranks[0]) == len(ranks[1]) == 2000
    assert sorted(ranks[0] + ranks[1]) == sorted(first)  # together exactly the one draw, split in two

    general = tmp_path / "general"
    general.mkdir()
    Image.fromarray(coffee()).save(general / "coffee.png")
    specs = [DatasetSpec(name="p", manifest=str(portrait_set / "train.jsonl"), kind="portrait", weight=1.0),
             DatasetSpec(name="g", hq=str(general), weight=1.0)]
    dm = SRDataModule(train=specs, crop_size=128, batch_size=4, num_workers=0, samples_per_epoch=8,
                      reference_size=32)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, MixtureSampler) and len(loader) == 2
    batch = next(iter(loader))  # portrait and general items collate together
    assert batch["hq"].shape == (4, 3, 128, 128) and batch["face_boxes"].shape == (4, 4, 4)


def test_evaluation_references_and_identity_against_them(portrait_set, facenet_file):
    from headsup.metrics.extra import ReferenceIdentityCosine

    spec = DatasetSpec(name="p", manifest=str(portrait_set / "train.jsonl"), kind="portrait")
    ds = EvalDataset(spec, scale=4, reference_size=128)
    first, again = ds[0], ds[0]
    assert first["has_reference"] and torch.equal(first["reference"], again["reference"])  # deterministic
    assert not ds[1]["has_reference"]
    batch = collate([first, ds[1]])
    metric = ReferenceIdentityCosine(str(facenet_file))
    scores = metric.scores(batch["hq"], batch["hq"], batch)
    assert scores.shape == (1,) and -1 <= float(scores[0]) <= 1  # only the image that has a reference
    own = dict(batch, reference=Fc.align_faces(batch["hq"], batch["face_landmarks"][:, 0], 128))
    assert float(metric.scores(batch["hq"], batch["hq"], own)[0]) > 0.95  # its own face as reference


def test_no_reference_when_the_main_face_is_cropped_away(portrait_set):
    spec = DatasetSpec(name="p", manifest=str(portrait_set / "train.jsonl"), kind="portrait")
    ds = RandomCropDataset(spec, crop_size=64, face_crop_prob=0.0, reference_size=32)  # never holds the face
    torch.manual_seed(0)
    items = [ds[0] for _ in range(10)]
    assert not any(bool(it["face_valid"][0]) for it in items)
    assert not any(bool(it["has_reference"]) for it in items)  # the reference would land on no face
    with_face = RandomCropDataset(spec, crop_size=128, face_crop_prob=1.0, reference_size=32)[0]
    assert with_face["face_valid"][0] and with_face["has_reference"]
