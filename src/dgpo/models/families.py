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
    "flux_kontext": ("dgpo.models.flux_kontext", "FluxKontextFlowModel", "FluxKontextPipeline"),
    "qwenimage_edit": ("dgpo.models.qwenimage_edit", "QwenImageEditFlowModel", "QwenImageEditPipeline"),
    "qwenimage_edit_plus": ("dgpo.models.qwenimage_edit", "QwenImageEditPlusFlowModel", "QwenImageEditPlusPipeline"),
}
VIDEO_KINDS = ("wan",)  # the diffusers families that make videos (modality "video"; model.frames, model.width)
# the diffusers families that edit images: a prompt row's condition is its instruction and source images
# (``source_images`` of an edit prompt file, dgpo.data.edits; the adapter's ``encode_metas``)
EDIT_KINDS = ("flux_kontext", "qwenimage_edit", "qwenimage_edit_plus")
MODEL_KINDS = ("toy", "toy_video", "toy_edit", *FAMILIES)  # the toy worlds (image, video, editing), then diffusers
PIPELINE_KINDS = {pipeline: kind for kind, (_, _, pipeline) in FAMILIES.items()}
