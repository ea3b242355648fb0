"""GenEval's detector on transformers: mmdet-style preprocessing and post-processing on a tiny random
Mask2Former, checked against OpenCV (mmcv's resize backend) and a direct, loop-by-loop computation."""

import numpy as np
import pytest
import torch
from geneval_tiny import build_mask2former, make_constant

from dgpo.data.geneval import object_names
from dgpo.rewards.geneval.detector import (
    PIXEL_MEAN,
    PIXEL_STD,
    GenEvalDetector,
    class_names,
    preprocess,
    resize_uint8,
    resized_shape,
    tight_boxes,
)


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    return build_mask2former(tmp_path_factory.mktemp("m2f") / "det")


def test_resized_shape_is_mmcv_imrescale_to_1333x800():
    assert resized_shape(512, 512) == (800, 800)  # GenEval's 512 px images
    assert resized_shape(1024, 1024) == (800, 800)
    assert resized_shape(512, 768) == (800, 1200)  # short side binds
    assert resized_shape(300, 1000) == (400, 1333)  # long side binds: int(1333.33 * 300 / 1000 + 0.5)
    assert resized_shape(45, 40) == (900, 800)


@pytest.mark.parametrize("src,dst", [((45, 40), (900, 800)), ((512, 512), (800, 800)),
                                     ((1024, 1024), (800, 800)), ((37, 53), (800, 1146))])
def test_resize_is_bit_exact_with_opencv_on_uint8(src, dst):
    cv2 = pytest.importorskip("cv2")  # mmcv.imrescale's backend
    img = np.random.default_rng(0).integers(0, 256, (*src, 3), dtype=np.uint8)
    ours = resize_uint8(torch.from_numpy(img).permute(2, 0, 1)[None].float(), dst)[0].permute(1, 2, 0).numpy()
    ref = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(ours.astype(np.uint8), ref)


def test_preprocess_normalises_and_pads_like_mmdet():
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 45, 40))).float()
    x, (h, w) = preprocess(img)
    assert (h, w) == (900, 800) and x.shape == (1, 3, 928, 800)  # padded to a multiple of 32
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    assert torch.allclose(x[0, :, :h, :w] * std + mean, resize_uint8(img, (h, w))[0], atol=1e-3)
    assert (x[0, :, h:] == 0).all()  # padding: zeros after normalisation, as mmdet's Pad


def test_tight_boxes_follow_mmdet_mask2bbox():
    m = torch.zeros(3, 6, 8, dtype=torch.bool)
    m[0, 2:4, 1:5] = True
    m[1, 5, 7] = True
    boxes = tight_boxes(m)
    assert boxes.tolist() == [[1, 2, 5, 4], [7, 5, 8, 6], [0, 0, 0, 0]]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_postprocess_equals_a_direct_computation(tiny_detector):
    cv2 = pytest.importorskip("cv2")
    det = GenEvalDetector(str(tiny_detector))
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.integers(0, 256, (1, 3, 45, 40)).astype(np.float32))
    raw = det.raw(img)[0]
    with torch.no_grad():
        x, (h, w) = preprocess(img)
        out = det.model(pixel_values=x)
    logits = out.class_queries_logits[0].double().numpy()
    mask_logits = out.masks_queries_logits[0].numpy()
    # every (query, class) pair, sorted by probability: the top 100 (no-object column dropped)
    probs = _softmax(logits)[:, :-1]
    pairs = sorted(((probs[q, c], q, c) for q in range(probs.shape[0]) for c in range(80)), reverse=True)[:100]
    assert sorted(zip(raw.queries.tolist(), raw.labels.tolist())) == sorted((q, c) for _, q, c in pairs)
    ours = {(q, c): i for i, (q, c) in enumerate(zip(raw.queries.tolist(), raw.labels.tolist()))}
    for p, q, c in pairs:
        up = cv2.resize(mask_logits[q], (x.shape[-1], x.shape[-2]), interpolation=cv2.INTER_LINEAR)
        full = cv2.resize(np.ascontiguousarray(up[:h, :w]), (40, 45), interpolation=cv2.INTER_LINEAR)
        binary = full > 0
        i = ours[(q, c)]
        sure = np.abs(full) > 1e-4
        assert (raw.masks[i].numpy() == binary)[sure].all()
        score = p * (1 / (1 + np.exp(-full)))[binary].sum() / (binary.sum() + 1e-6)
        assert float(raw.scores[i]) == pytest.approx(score, rel=1e-4, abs=1e-6)
        ys, xs = np.where(raw.masks[i].numpy())
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
        assert raw.boxes[i].tolist() == box
    assert len({(q, c) for _, q, c in pairs}) == 100 and raw.masks.shape == (100, 45, 40)


def test_detect_names_scores_boxes_and_masks(tmp_path):
    folder = make_constant(build_mask2former(tmp_path / "det"), cls_id=16)  # every query: a full-image dog
    det = GenEvalDetector(str(folder))
    images = torch.rand(2, 3, 48, 40)
    dets = det.detect(images, mask_min_score=0.3)
    assert [len(d) for d in dets] == [100, 100]
    dogs = [d for d in dets[0] if d.cls == "dog"]
    assert len(dogs) == 10  # one per query
    p_dog = 1 / (1 + 80 * np.exp(-12.0))  # class logits (0, ..., 12 for dog, ..., 0)
    for d in dogs:
        assert d.score == pytest.approx(p_dog / (1 + np.exp(-5.0)), rel=1e-5)
        assert d.box == (0.0, 0.0, 40.0, 48.0) and d.mask.shape == (48, 40) and d.mask.all()
    assert all(d.mask is None for d in dets[0] if d.cls != "dog")  # below mask_min_score: no mask kept


def test_class_names_map_coco_labels_to_geneval_spelling():
    names = object_names()
    assert len(names) == 80 and names[0] == "person" and names[64] == "computer mouse"
    assert class_names({i: f"LABEL_{i}" for i in range(80)}) == names
    coco = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}
    labels = {i: coco.get(n, n) for i, n in enumerate(names)}  # the COCO spelling of the hub config
    assert class_names(labels) == names
    with pytest.raises(ValueError, match="do not map"):
        class_names({**labels, 3: "unicorn"})
    with pytest.raises(ValueError, match="80 COCO classes"):
        class_names({i: f"LABEL_{i}" for i in range(133)})  # e.g. a panoptic model
