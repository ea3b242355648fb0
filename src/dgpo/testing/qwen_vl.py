"""Qwen2-VL's processor without its video processor, for the tiny Qwen-Image-Edit pipelines of the tests:
transformers' video processors need torchvision, which the tests do without. A saved pipeline names this
module in its model_index.json; diffusers imports it from there and looks the loader base class
(``ProcessorMixin``) up in it, hence the module-level import."""

from __future__ import annotations

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

__all__ = ["ProcessorMixin", "TinyQwen2VLProcessor"]


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    """Images and text processed as Qwen2VLProcessor does; no videos."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
