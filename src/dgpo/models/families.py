"""The model families: ``model.kind`` -> its adapter class and the diffusers pipeline it loads. Adding a
family is its adapter file plus one line here (and a tiny pipeline for the tests). Kept free of heavy
imports: the config and the CLI read the names."""

from __future__ import annotations

# kind: (module, adapter class, diffusers pipeline class whose folders it loads)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "sd3": ("dgpo.models.sd3", "SD3FlowModel", "StableDiffusion3Pipeline"),
    "flux": ("dgpo.models.flux", "FluxFlowModel", "FluxPipeline"),
    "sana": ("dgpo.models.sana", "SanaFlowModel", "SanaPipeline"),
    "qwenimage": ("dgpo.models.qwenimage", "QwenImageFlowModel", "QwenImagePipeline"),
    "wan": ("dgpo.models.wan", "WanFlowModel", "WanPipeline"),
}
VIDEO_KINDS = ("wan",)  # the diffusers families that make videos (modality "video"; model.frames, model.width)
MODEL_KINDS = ("toy", "toy_video", *FAMILIES)  # the toy worlds (image, video), then the diffusers families
PIPELINE_KINDS = {pipeline: kind for kind, (_, _, pipeline) in FAMILIES.items()}
