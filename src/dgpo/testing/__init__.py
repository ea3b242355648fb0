"""Helpers for dgpo's tests and benchmarks, built offline (no hub access, no downloads): not part of
training, evaluation or the command line.

* :mod:`dgpo.testing.random_pipelines`: random-weight tokenizers, text encoders and VAEs, the parts
  of tiny (or full-sized, for GPU timing) diffusers pipelines, and the tiny editing pipelines (FLUX.1
  Kontext, Qwen-Image-Edit and Plus; their Qwen2-VL processor without torchvision:
  :mod:`dgpo.testing.qwen_vl`);
* :func:`dgpo.testing.toy.tiny_toy_checkpoint`: a small random toy checkpoint folder;
* :func:`dgpo.testing.reference.bradley_terry_objective`: the objective DGPO's loss is the gradient
  of, written out directly, for the tests.
"""
