"""PickScore (Kirstain et al. 2023): a CLIP model fine-tuned on human preferences; the score is
logit_scale * cos(image embedding, prompt embedding). The training reward divides it by 26, as the
official scorer (Flow-GRPO's and DGPO's ``pickscore_scorer.py``): it sets the scale that the
advantages' +1e-4 and a multi-reward's weights see. Paper tables report the raw score (e.g. 21.7 ->
23.9): ``dgpo eval --protocol`` builds it with ``divisor=1``. Loaded with transformers from a local
folder or hub id (official: yuvalkirstain/PickScore_v1 with the processor of
laion/CLIP-ViT-H-14-laion2B-s32B-b79K)."""

from __future__ import annotations

import torch

from dgpo.errors import InputError

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
OFFICIAL_DIVISOR = 26.0  # the official training reward's scores / 26


class PickScoreReward:
    def __init__(self, model_path: str = "", processor_path: str = "", device: str | torch.device = "cpu",
                 divisor: float = OFFICIAL_DIVISOR):
        from transformers import CLIPModel, CLIPProcessor

        processor_path = processor_path or (model_path or PICKSCORE_PROCESSOR)
        model_path = model_path or PICKSCORE_MODEL
        try:
            self.processor = CLIPProcessor.from_pretrained(processor_path)
            self.model = CLIPModel.from_pretrained(model_path).eval().requires_grad_(False).to(device)
        except (OSError, ValueError) as e:  # ValueError: huggingface_hub's "not a repo id" for a missing folder
            raise InputError(f"PickScore reward: cannot load {model_path!r} (reward.model_path): {e}") from None
        self.device, self.divisor = torch.device(device), divisor

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
        pixels = list((images.clamp(0, 1).float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8"))
        inputs = self.processor(images=pixels, text=[m["prompt"] for m in metas], return_tensors="pt",
                                padding=True, truncation=True, max_length=77).to(self.device)
        img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img, txt = (getattr(f, "pooler_output", f) for f in (img, txt))
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (self.model.logit_scale.exp() * (img * txt).sum(-1)).float().cpu() / self.divisor
