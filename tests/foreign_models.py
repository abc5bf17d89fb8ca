"""Models built the way other projects build theirs (diffusers' own fast tests): a 64 px UNet
(latent 32, a 2x VAE), a PNDM scheduler, a BPE tokenizer from generated vocabulary files,
saved in fp16 only. Nothing here is shared with ``engine.tiny``, so the bot meets them as it
would meet a model it has never seen."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def bpe_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over the byte alphabet plus letter pairs, written as its two files."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab.update({f"{symbol}</w>": len(alphabet) + i for i, symbol in enumerate(alphabet)})
    letters = "abcdefghijklmnopqrstuvwxyz"
    merges = [f"{a} {b}</w>" for a in letters for b in letters]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def save_test_style_sd(folder: Path) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = bpe_tokenizer(Path(scratch))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=5,
                vocab_size=len(tokenizer),
            )
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    return folder


DETECTION_LABELS = {0: "cat", 1: "dog", 2: "hat"}


def save_tiny_yolos(folder: Path) -> Path:
    """A YOLOS object detector with random weights and 10 detection tokens, saved as a hub
    repository holds one (model and image processor), for DETECTOR_MODEL."""
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=[64, 64],
        patch_size=16,
        num_detection_tokens=10,
        id2label=DETECTION_LABELS,
        label2id={name: index for index, name in DETECTION_LABELS.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        YolosForObjectDetection(config).save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


NSFW_LABELS = {0: "normal", 1: "nsfw"}


def save_tiny_nsfw_classifier(folder: Path, labels: dict[int, str] | None = None) -> Path:
    """A ViT image classifier with random weights and the default model's labels ("normal",
    "nsfw"), saved as a hub repository holds one (safetensors and image processor), for
    NSFW_MODEL. Its scores sit near 0.5: tests pick the threshold for the outcome they want."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = labels or NSFW_LABELS
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        id2label=labels,
        label2id={name: index for index, name in labels.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
