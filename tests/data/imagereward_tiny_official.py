"""How tests/data/imagereward_tiny.json was made: the official ImageReward code on a tiny architecture.

Run with a checkout of https://github.com/THUDM/ImageReward (its ImageReward/ package: ImageReward.py
and models/BLIP/{blip,blip_pretrain,med,vit}.py, with empty __init__.py files) and transformers 4.46
(the official med.py needs the 4.x internals), from an empty folder:

    python tests/data/imagereward_tiny_official.py /path/to/ImageReward-checkout

timm, fairscale and torchvision are replaced by the trivial pieces the score path uses (timm's
PatchEmbed: a strided conv, flattened; trunc_normal_; an identity DropPath; no checkpointing); the
official init_tokenizer, create_vit and MLP(768) are swapped for tiny ones. Weights: every tensor
drawn in key order from one seeded generator (weight() below; tests/test_imagereward.py draws the
same); the scores come from the official ``ImageReward.score_gard``.
"""

import importlib.machinery
import json
import math
import sys
import types

import torch

# transformers first: it probes for timm and torchvision, which are stand-ins below
import transformers.modeling_utils  # noqa: F401
from torch import nn
from transformers import BertTokenizer


def stand_in(name: str, **kw) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(kw)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = m
    return m


class PatchEmbed(nn.Module):  # timm's, as BLIP's VisionTransformer builds it (no norm, flattened)
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


unused = lambda *a, **k: None
for name in ("timm", "timm.models", "fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
    stand_in(name)
stand_in("timm.models.vision_transformer", _cfg=unused, PatchEmbed=PatchEmbed)
stand_in("timm.models.registry", register_model=lambda f: f)
stand_in("timm.models.layers", trunc_normal_=lambda t, std=1.0: nn.init.trunc_normal_(t, std=std),
         DropPath=lambda p: nn.Identity())
stand_in("timm.models.helpers", named_apply=None, adapt_input_conv=None)
stand_in("timm.models.hub", download_cached_file=None)
stand_in("fairscale.nn.checkpoint.checkpoint_activations", checkpoint_wrapper=lambda m: m)
stand_in("torchvision")
stand_in("torchvision.transforms", Compose=unused, Resize=unused, CenterCrop=unused, ToTensor=unused,
         Normalize=unused, InterpolationMode=types.SimpleNamespace(BICUBIC=None))
sys.path.insert(0, sys.argv[1])
import ImageReward.ImageReward as official  # noqa: E402 - after the stand-ins above
from ImageReward.models.BLIP import blip_pretrain, vit  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "red", "blue", "two",
         "on", "the", "table", "##s", "green", "apple", "and", "with", "in", "car", "tree", "big", "small"]
V = {"embed_dim": 48, "depth": 2, "num_heads": 3}
T = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
     "max_position_embeddings": 64, "vocab_size": len(VOCAB) + 2}
MED = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
       "hidden_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "model_type": "bert",
       "pad_token_id": 0, "type_vocab_size": 2, "encoder_width": 768, "add_cross_attention": True, **T}


def tiny_tokenizer():
    t = BertTokenizer("vocab.txt")
    t.add_special_tokens({"bos_token": "[DEC]"})
    t.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    t.enc_token_id = t.additional_special_tokens_ids[0]
    return t


def weight(name, shape, g):
    w = torch.randn(shape, generator=g)
    if len(shape) >= 2 and not (len(shape) == 3 and shape[0] == 1):
        return w / math.sqrt(math.prod(shape[1:]))
    if name.endswith("weight") and "norm" in name.lower():
        return 1 + 0.1 * w
    return 0.1 * w


def main() -> None:
    with open("vocab.txt", "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    with open("med_config.json", "w") as f:
        json.dump(MED, f)
    blip_pretrain.init_tokenizer = tiny_tokenizer
    blip_pretrain.create_vit = lambda *a, **k: (vit.VisionTransformer(img_size=224, patch_size=16, **V), V["embed_dim"])
    model = official.ImageReward(med_config="med_config.json", device="cpu")
    model.mlp = official.MLP(T["hidden_size"])
    model.eval()
    sd = model.state_dict()
    keys = sorted(k for k in sd if not k.endswith("position_ids"))
    g = torch.Generator().manual_seed(0)
    model.load_state_dict({k: weight(k, tuple(sd[k].shape), g) for k in keys}, strict=False)

    tok = model.blip.tokenizer
    prompts = ["a photo of a cat", "two red apples on the table",
               "a big green car with a small tree in the dog park and more words to cut " * 3]
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    pixels = ((images * 255).round().clamp(0, 255) / 255 - mean) / std  # ToTensor + Normalize of the 8-bit image
    ids, scores = [], []
    with torch.no_grad():
        for p, px in zip(prompts, pixels):
            t = tok(p, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            ids.append(t.input_ids[0].tolist())
            scores.append(model.score_gard(t.input_ids, t.attention_mask, px[None]).item())
    print(scores)
    out = {"source": "THUDM/ImageReward ImageReward.py (score_gard) + BLIP med.py/vit.py, transformers 4.46.3",
           "vision": {"hidden_size": 48, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 3},
           "text": T, "vocab": VOCAB, "keys": [[k, list(sd[k].shape)] for k in keys],
           "prompts": prompts, "input_ids": ids, "scores": scores}
    with open("imagereward_tiny.json", "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
