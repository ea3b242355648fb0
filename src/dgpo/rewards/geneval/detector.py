"""GenEval's object detector on transformers: Mask2Former (Swin-S, COCO instance segmentation) with the
pre- and post-processing of the mmdetection 2.x test pipeline that the official evaluator runs.

Preprocessing: the image as 8-bit RGB (as a PNG file holds it), resized keeping its aspect ratio to fit
(1333, 800) with OpenCV's 8-bit bilinear interpolation (reproduced bit for bit), normalised with the
ImageNet statistics, zero-padded at the bottom/right to a multiple of 32.

Post-processing (mmdet's ``MaskFormerFusionHead.instance_postprocess``, written here on the model's
``class_queries_logits`` / ``masks_queries_logits``): class probabilities = softmax over the C + 1
outputs without the last (no-object) column; the top 100 of queries x classes; the mask logits of
those queries upsampled bilinearly to the padded input, the padding cropped, bilinear to the image
size; binary mask = logit > 0; score = class probability x mean sigmoid over the mask's pixels; box =
the mask's tight box [x_min, y_min, x_max + 1, y_max + 1] (an empty mask: a zero box).
transformers' ``post_process_instance_segmentation`` is not used: it resizes masks through a fixed
384 x 384 grid with nearest-neighbour, never crops the padding and returns no boxes.

Default weights: ``facebook/mask2former-swin-small-coco-instance``, converted from the Detectron2 model
zoo, licensed CC BY-NC 4.0 (non-commercial). The official evaluator uses mmdetection's own training of
the same architecture (Apache-2.0); scores differ slightly between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dgpo.errors import InputError

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
TEST_SCALE = (1333, 800)  # (longest edge, shortest edge) the resized image must fit in
SIZE_DIVISOR = 32
MAX_PER_IMAGE = 100
# COCO label names whose GenEval spelling differs (detectron2 / transformers' label files use the left)
ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
           "hair dryer": "hair drier", "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch",
           "pottedplant": "potted plant", "diningtable": "dining table", "tvmonitor": "tv"}


def class_names(id2label: dict, names: list[str] | None = None) -> list[str]:
    """GenEval's name of each detector class id. Label names are mapped through :data:`ALIASES`;
    generic labels (``LABEL_0``...) are taken to be the COCO classes in order."""
    from dgpo.data.geneval import object_names

    names = names or object_names()
    labels = [str(id2label[i]) for i in range(len(id2label))]
    if len(labels) != len(names):
        raise InputError(f"GenEval detector: the model has {len(labels)} classes, expected the {len(names)} "
                         "COCO classes (reward.model_path must be a COCO instance-segmentation Mask2Former)")
    if all(lab == f"LABEL_{i}" for i, lab in enumerate(labels)):
        return list(names)
    mapped = [ALIASES.get(lab.strip().lower(), lab.strip().lower()) for lab in labels]
    unknown = [lab for lab, m in zip(labels, mapped) if m not in names]
    if unknown or len(set(mapped)) != len(names):
        raise InputError(f"GenEval detector: labels {unknown or sorted(labels)} do not map one-to-one onto "
                         "GenEval's 80 COCO object names")
    return mapped


def resized_shape(h: int, w: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """mmcv's ``imrescale`` size: the largest aspect-preserving size inside (long, short) ``scale``."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _linear_taps(dst: int, src: int, clamp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's bilinear taps for one axis: source indices (i0, i1) and 11-bit weights w0 (w1 = 2048 - w0).
    Half-pixel centres in float32; ``clamp`` (x axis) pins out-of-range taps to the edge with weight 1,
    on the y axis the rows are clipped instead (both taps read the edge row)."""
    f = ((torch.arange(dst, dtype=torch.float64) + 0.5) * (src / dst) - 0.5).float()
    i0 = torch.floor(f)
    w0 = torch.round((1 - (f - i0)) * 2048).long()
    i0 = i0.long()
    if clamp:
        edge = (i0 < 0) | (i0 >= src - 1)
        w0 = torch.where(edge, 2048, w0)
        i0 = torch.where(i0 < 0, 0, torch.where(i0 >= src - 1, src - 1, i0))
    return i0.clamp(0, src - 1), (i0 + 1).clamp(0, src - 1), w0


def resize_uint8(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(..., INTER_LINEAR)`` of 8-bit images [B, C, H, W] (float 0..255), bit-exact with
    OpenCV's fixed-point x86 path (what mmcv's ``imrescale`` runs): 11-bit weights, horizontal sums
    kept as integers, the vertical pass rounded as OpenCV's vectorised kernel does."""
    (h, w), (src_h, src_w) = size, pixels.shape[-2:]
    dev = pixels.device
    x0, x1, wx = (t.to(dev) for t in _linear_taps(w, src_w, clamp=True))
    y0, y1, wy = (t.to(dev) for t in _linear_taps(h, src_h, clamp=False))
    wx, wy = wx.int(), wy.int()
    img = pixels.round().int()  # int32 suffices: at most 2048 * (255 * 2048 >> 4) < 2**31
    rows = img[..., x0] * wx + img[..., x1] * (2048 - wx)  # [B, C, H, w], scaled by 2048
    top, bottom = rows[..., y0, :] >> 4, rows[..., y1, :] >> 4
    wy = wy.view(-1, 1)
    out = (((wy * top) >> 16) + (((2048 - wy) * bottom) >> 16) + 2) >> 2
    return out.clamp(0, 255).float()


def preprocess(pixels: torch.Tensor, size_divisor: int = SIZE_DIVISOR) -> tuple[torch.Tensor, tuple[int, int]]:
    """8-bit RGB values [B, 3, H, W] (float, 0..255) -> (normalised, padded input, resized (h, w))."""
    h, w = resized_shape(*pixels.shape[-2:])
    x = resize_uint8(pixels, (h, w))
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    ph, pw = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    return F.pad(x, (0, pw - w, 0, ph - h)), (h, w)


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[K, H, W] bool -> [K, 4] float boxes [x_min, y_min, x_max + 1, y_max + 1]; empty masks -> 0."""
    k, h, w = masks.shape
    cols, rows = masks.any(1), masks.any(2)  # [K, W], [K, H]
    idx_w = torch.arange(w, device=masks.device)
    idx_h = torch.arange(h, device=masks.device)
    x0 = torch.where(cols, idx_w, w).amin(1)
    x1 = torch.where(cols, idx_w, -1).amax(1) + 1
    y0 = torch.where(rows, idx_h, h).amin(1)
    y1 = torch.where(rows, idx_h, -1).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(cols.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


@dataclass
class RawDetections:
    """The top-``max_per_image`` (query, class) pairs of one image, unsorted as mmdet returns them."""

    labels: torch.Tensor  # [K] class ids
    queries: torch.Tensor  # [K] the query each detection comes from
    scores: torch.Tensor  # [K] class probability x mean mask sigmoid
    boxes: torch.Tensor  # [K, 4] x1, y1, x2, y2 in pixels
    masks: torch.Tensor  # [K, H, W] bool


def instance_postprocess(class_logits: torch.Tensor, mask_logits: torch.Tensor, padded_hw: tuple[int, int],
                         resized_hw: tuple[int, int], image_hw: tuple[int, int],
                         max_per_image: int = MAX_PER_IMAGE) -> RawDetections:
    """One image's detections from [Q, C + 1] class logits and [Q, h, w] mask logits (see module doc)."""
    probs = class_logits.float().softmax(-1)[:, :-1]
    num_classes = probs.shape[1]
    top, idx = probs.flatten().topk(min(max_per_image, probs.numel()))
    labels, queries = idx % num_classes, idx // num_classes
    # each selected query's mask once (a query can be selected for several classes)
    used, which = queries.unique(return_inverse=True)
    masks = F.interpolate(mask_logits[used][None].float(), size=padded_hw, mode="bilinear", align_corners=False)
    masks = masks[..., : resized_hw[0], : resized_hw[1]]
    masks = F.interpolate(masks, size=image_hw, mode="bilinear", align_corners=False)[0]
    binary = masks > 0
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return RawDetections(labels, queries, top * mask_scores[which], tight_boxes(binary)[which], binary[which])


def to_uint8_values(images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> the 8-bit values a PNG of them holds (as float 0..255)."""
    return (images.float().clamp(0, 1) * 255).round()


class GenEvalDetector:
    """Mask2Former instance segmentation; ``detect(images)`` -> per image its top-100 detections."""

    def __init__(self, path: str = "", device: str | torch.device = "cpu", batch_size: int = 8):
        from transformers import Mask2FormerForUniversalSegmentation

        path = path or DEFAULT_DETECTOR
        try:
            model = Mask2FormerForUniversalSegmentation.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise InputError(f"GenEval detector: cannot load {path!r} (reward.model_path) as a Mask2Former "
                             f"instance-segmentation model: {e}") from None
        self.model = model.eval().requires_grad_(False).to(device)
        self.names = class_names(model.config.id2label)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def raw(self, pixels: torch.Tensor) -> list[RawDetections]:
        """8-bit values [B, 3, H, W] (one image size per call) -> :class:`RawDetections` per image."""
        out = []
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start : start + self.batch_size].to(self.device)
            x, resized = preprocess(chunk)
            pred = self.model(pixel_values=x.to(self.model.dtype))
            for cls, msk in zip(pred.class_queries_logits, pred.masks_queries_logits):
                out.append(instance_postprocess(cls, msk, tuple(x.shape[-2:]), resized, tuple(chunk.shape[-2:])))
        return out

    def detect(self, images: torch.Tensor, mask_min_score: float = 0.0) -> list[list]:
        """Images [B, 3, H, W] in [0, 1] -> per image a list of ``Detection`` (all top-100, unsorted).
        Only detections scoring above ``mask_min_score`` carry their mask (the others' masks are never
        used by GenEval's rules, and 100 full-size masks per image are large)."""
        from dgpo.rewards.geneval.rules import Detection

        result = []
        for raw in self.raw(to_uint8_values(images)):
            keep = (raw.scores > mask_min_score).cpu()
            masks = raw.masks[keep.to(raw.masks.device)].cpu().numpy()
            it = iter(masks)
            result.append([
                Detection(cls=self.names[int(lab)], score=float(s), box=tuple(float(v) for v in box),
                          mask=next(it) if k else None)
                for lab, s, box, k in zip(raw.labels.tolist(), raw.scores.tolist(), raw.boxes.tolist(), keep.tolist())
            ])
        return result
