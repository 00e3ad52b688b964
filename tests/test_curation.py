"""Portrait-set building: PortraitSR-4K thresholds, identities, identity-disjoint splits, references."""

from __future__ import annotations

import json

import pytest
import torch

from headsup.data import curation as C
from headsup.data.faces import read_manifest
from headsup.models.identity import IdentityNet, load_identity_net


def _record(w, h, eye=80.0, path="x.jpg", faces=True, error=None):
    face = {"box": [0, 0, 10, 10], "landmarks": [[0, 0], [eye, 0], [0, 0], [0, 0], [0, 0]], "prob": 1.0,
            "eye_distance": eye}
    return {"path": path, "width": w, "height": h, "faces": [face] if faces else [], "error": error}


@pytest.mark.parametrize(
    "w, h, eye, faces, ok",
    [
        (3840, 2400, 80, True, True),  # 1.6, exactly the aspect bound
        (2400, 3840, 64, True, True),  # portrait orientation, eye distance exactly 64
        (3840, 2160, 80, True, False),  # 16:9 is outside 0.6-1.6
        (3839, 2400, 80, True, False),  # below 3840 on the long side
        (3840, 2159, 80, True, False),
        (4000, 3000, 63.9, True, False),
        (4000, 3000, 80, False, False),  # no face
    ],
)
def test_portraitsr4k_thresholds(w, h, eye, faces, ok):
    reasons = C.PortraitFilter().geometry_reasons(_record(w, h, eye, faces=faces))
    assert (reasons == []) == ok, reasons


def test_unreadable_records_and_missing_iqa_weights_are_reported(tmp_path):
    assert C.PortraitFilter().geometry_reasons(_record(1, 1, error="cannot read x"))[0].startswith("unreadable")
    with pytest.raises(FileNotFoundError, match="--iqa-weights"):
        C.PortraitFilter(iqa_metric="musiq", iqa_weights=str(tmp_path / "musiq.pth"), min_iqa=0.5)


def test_sharpness_ranks_a_blurred_face_below_the_sharp_one():
    from skimage.data import astronaut

    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    rec = {"faces": [{"box": [181, 62, 268, 172]}]}
    import kornia

    blurred = kornia.filters.gaussian_blur2d(img[None], (9, 9), (3.0, 3.0))[0]
    assert C.face_sharpness(blurred, rec) < 0.5 * C.face_sharpness(img, rec)
    flt = C.PortraitFilter(min_sharpness=C.face_sharpness(img, rec) * 0.8)
    assert flt.quality_reasons(img, rec) == [] and flt.quality_reasons(blurred, rec)


def test_identity_splits_are_disjoint_and_near_the_fraction():
    gen = torch.Generator().manual_seed(0)
    identities = {}
    for i in range(60):
        for j in range(int(torch.randint(1, 6, (1,), generator=gen))):
            identities[f"p{i}/{j}.jpg"] = f"p{i}"
    split = C.split_by_identity(identities, test_fraction=0.2, seed=3)
    test_ids = {identities[p] for p, s in split.items() if s == "test"}
    train_ids = {identities[p] for p, s in split.items() if s == "train"}
    assert test_ids and train_ids and not test_ids & train_ids
    assert abs(sum(s == "test" for s in split.values()) / len(split) - 0.2) < 0.05
    assert split == C.split_by_identity(dict(reversed(identities.items())), test_fraction=0.2, seed=3)
    assert split != C.split_by_identity(identities, test_fraction=0.2, seed=4)


def test_clustering_links_faces_at_the_cosine_threshold():
    def unit(angle):
        return torch.tensor([torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle)), 0.0])

    import math

    near, far = math.acos(0.66), math.acos(0.64)
    emb = {"a1": unit(0.0), "a2": unit(near), "b1": unit(near + far), "c1": torch.tensor([0.0, 0.0, 1.0])}
    ids = C.cluster_identities(emb, threshold=0.65)
    assert ids["a1"] == ids["a2"] and len({ids["a1"], ids["b1"], ids["c1"]}) == 3
    pairs = C.reference_pairs(ids)
    assert pairs["a1"] == ["a2"] and pairs["a2"] == ["a1"] and pairs["b1"] == []


def test_reference_pairs_hold_the_threshold_pair_by_pair_along_a_chain():
    """a~b and b~c link one identity, but a and c (cosine 0.30) are not each other's reference."""
    import math

    def unit(angle):
        return torch.tensor([math.cos(angle), math.sin(angle), 0.0])

    step = math.acos(0.7)  # neighbours at cosine 0.7; a and c at cos(2 step) = 0.3
    emb = {"a": unit(0.0), "b": unit(step), "c": unit(2 * step)}
    ids = C.cluster_identities(emb, threshold=0.65)
    assert len(set(ids.values())) == 1  # one chain-linked identity
    pairs = C.reference_pairs(ids, emb, threshold=0.65)
    assert pairs == {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    assert C.reference_pairs(ids)["a"] == ["b", "c"]  # folder identities (no embeddings): the whole group


def test_identity_net_from_a_local_state_dict(tmp_path, facenet_file):
    from skimage.data import astronaut

    net = IdentityNet(str(facenet_file))
    from PIL import Image

    Image.fromarray(astronaut()).save(tmp_path / "a.png")
    rec = {"path": "a.png", "faces": [{"box": [181.05, 62.16, 267.75, 172.05],  # MTCNN's, as prepare faces writes
                                       "landmarks": [[205.0, 101.7], [246.8, 103.7], [224.7, 129.0],
                                                     [201.7, 139.2], [245.3, 141.9]]}]}
    emb = C.face_embeddings([rec, {"path": "none.png", "faces": []}], tmp_path, net)
    assert list(emb) == ["a.png"] and emb["a.png"].shape == (512,)
    assert torch.linalg.norm(emb["a.png"]) == pytest.approx(1.0, abs=1e-5)
    image = torch.from_numpy(astronaut()).permute(2, 0, 1).float()[None] / 255
    face = rec["faces"][0]
    direct = net(image, torch.tensor(face["landmarks"])[None], torch.tensor(face["box"])[None])[0]
    assert torch.allclose(emb["a.png"], direct, atol=1e-5)  # the same crop and embedding as the loss uses
    seen = []
    crops = net.crops
    net.crops = lambda images, landmarks, boxes=None: seen.append(boxes) or crops(images, landmarks, boxes)
    C.face_embeddings([rec], tmp_path, net)
    assert seen[0].tolist() == [pytest.approx(face["box"])]  # the manifest's MTCNN box is used
    with pytest.raises(FileNotFoundError, match="face-recognition weights.*missing.pt"):
        load_identity_net(tmp_path / "missing.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not InceptionResnetV1"):
        load_identity_net(tmp_path / "other.pt")


def test_build_portrait_set_from_a_manifest(tmp_path):
    root = tmp_path / "photos"
    records = []
    for person in range(12):
        for k in range(3):
            records.append(_record(4000, 3000, path=f"person{person}/{k}.jpg"))
    records[0] = _record(3840, 2160, path="person0/0.jpg")  # rejected (aspect)
    records.append(_record(1, 1, path="broken.jpg", error="cannot read broken.jpg"))
    root.mkdir()
    (root / "faces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "set"
    counts = C.build_portrait_set(root / "faces.jsonl", out, test_fraction=0.25, progress=False)
    train, test = read_manifest(out / "train.jsonl"), read_manifest(out / "test.jsonl")
    rejected = {r["path"]: r["reasons"] for r in read_manifest(out / "rejected.jsonl")}
    assert counts == {"train": len(train), "test": len(test), "rejected": 2}
    assert set(rejected) == {"../photos/person0/0.jpg", "../photos/broken.jpg"}
    assert not {r["identity"] for r in train} & {r["identity"] for r in test}
    for r in train + test:
        assert (out / r["path"]).resolve() == (root / r["path"].removeprefix("../photos/")).resolve()
        refs = [q["path"] for q in r["references"]]
        assert r["path"] not in refs and refs  # other photos of the person, never itself
        assert all(q.split("/")[2] == r["path"].split("/")[2] for q in refs)  # same person folder
    with pytest.raises(FileExistsError, match="--overwrite"):
        C.build_portrait_set(root / "faces.jsonl", out)
