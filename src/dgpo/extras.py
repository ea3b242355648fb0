"""Optional parts and the pip extra that installs each: a missing package gives one clear error."""

from __future__ import annotations

import importlib

from dgpo.errors import MissingExtraError

# extra -> the modules its packages provide (see pyproject.toml's optional-dependencies)
EXTRAS = {
    "ocr": ("rapidocr", "onnxruntime", "cv2"),
    "hps": ("open_clip",),
    "wandb": ("wandb",),
    "fp8": ("torchao.float8",),
    "video": ("imageio_ffmpeg",),
}
NOTES = {"hps": "; open-clip-torch needs torchvision: install the one matching your torch first"}


def require(extra: str, what: str) -> None:
    """Import the modules of ``extra``; if one is missing, an ImportError that says what needs it and
    ``pip install 'dgpo[extra]'``."""
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingExtraError(f"{what} needs the {module!r} module ({e}): pip install 'dgpo[{extra}]'"
                              f"{NOTES.get(extra, '')}", name=module) from None
