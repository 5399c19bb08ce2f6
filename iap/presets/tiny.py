"""The tiny presets: small random-init models saved as ordinary diffusers/transformers folders.

`write_tiny(DIR, cfg)` writes DIR/base (a StableDiffusionPipeline folder) and DIR/zh_encoder (a BertModel +
BertTokenizer). Everything else loads them through the same code as real models. TINY is SD-1.x-shaped (the
Chinese encoder as wide as the cross-attention); TINY_SD2 is SD-2.x-shaped: a wider cross-attention than the
Chinese encoder (as SD 2's 1024 against a 768-wide RoBERTa), linear transformer projections, upcast
attention, a GELU text tower and a v-prediction schedule. TINY_SDXL is SDXL-shaped: a
StableDiffusionXLPipeline folder with two English towers (32 + 64 = the 96-wide context; tower 2's 64-wide
pooled embedding), the added time embedding, no cross-attention in the first block and two transformer
layers per block after it; its Chinese side is built from those towers with the BERT's vocabulary.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from iap import shapes
from iap.models.vocab import write_bert_vocab, write_clip_bpe


@dataclass(frozen=True)
class TinyConfig:
    seed: int = 0
    image_size: int = 32  # VAE downsamples 2x -> 16x16 latents
    channels: tuple[int, int] = (32, 64)
    cross_attention_dim: int = 64  # = the English text tower's hidden size
    zh_hidden_size: int = 64  # the Chinese encoder's; another width trains through a learned projection
    text_layers: int = 2
    max_length: int = 77
    prediction_type: str = "epsilon"
    use_linear_projection: bool = False
    upcast_attention: bool = False
    text_act: str = "quick_gelu"
    xl_tower_2: int = 0  # SDXL: the second English tower's width (and its pooled embedding's); 0: one tower


TINY = TinyConfig()
TINY_SD2 = TinyConfig(cross_attention_dim=96, prediction_type="v_prediction", use_linear_projection=True,
                      upcast_attention=True, text_act="gelu")
TINY_SDXL = TinyConfig(cross_attention_dim=96, xl_tower_2=64, use_linear_projection=True)
TINY_PRESETS = {"tiny": TINY, "tiny-sd2": TINY_SD2, "tiny-sdxl": TINY_SDXL}  # preset name -> config
TIME_EMBED = 8  # SDXL's addition_time_embed_dim (256 in the real one)


def _unet(cfg: TinyConfig) -> UNet2DConditionModel:
    if cfg.xl_tower_2:
        return UNet2DConditionModel(
            sample_size=cfg.image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=cfg.channels, norm_num_groups=32, attention_head_dim=(2, 4),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), cross_attention_dim=cfg.cross_attention_dim, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
            projection_class_embeddings_input_dim=cfg.xl_tower_2 + 6 * TIME_EMBED,
        )
    return UNet2DConditionModel(
        sample_size=cfg.image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=cfg.channels, norm_num_groups=32, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cfg.cross_attention_dim, use_linear_projection=cfg.use_linear_projection,
        upcast_attention=cfg.upcast_attention,
    )


def _vae(cfg: TinyConfig) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=cfg.channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=cfg.image_size,
    )


def _english(cfg: TinyConfig, tmp: Path, width: int | None = None, projected: bool = False):
    """An English CLIP tower (`projected`: with SDXL's text projection) and its tokenizer."""
    width = width or cfg.cross_attention_dim
    write_clip_bpe(tmp / "clip_tok", shapes.english_words())
    tok = CLIPTokenizer.from_pretrained(tmp / "clip_tok", model_max_length=cfg.max_length)
    config = CLIPTextConfig(
        vocab_size=len(tok.get_vocab()), hidden_size=width,
        intermediate_size=2 * width, num_attention_heads=4,
        num_hidden_layers=cfg.text_layers, max_position_embeddings=cfg.max_length, hidden_act=cfg.text_act,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **({"projection_dim": width} if projected else {}),
    )
    return (CLIPTextModelWithProjection if projected else CLIPTextModel)(config), tok


def _chinese(cfg: TinyConfig, tmp: Path) -> tuple[BertModel, BertTokenizer]:
    write_bert_vocab(tmp / "bert_tok", shapes.chinese_characters())
    tok = BertTokenizer.from_pretrained(tmp / "bert_tok", model_max_length=cfg.max_length)
    config = BertConfig(
        vocab_size=len(tok.get_vocab()), hidden_size=cfg.zh_hidden_size,
        num_hidden_layers=cfg.text_layers, num_attention_heads=4,
        intermediate_size=2 * cfg.zh_hidden_size, max_position_embeddings=cfg.max_length,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id,
    )
    return BertModel(config, add_pooling_layer=False), tok


def write_tiny(folder: str | Path, cfg: TinyConfig = TINY, name: str = "tiny") -> Path:
    """Build the tiny preset deterministically from cfg.seed and save it under folder."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(cfg.seed)
        unet, vae = _unet(cfg), _vae(cfg)
        if cfg.xl_tower_2:
            text_encoder, tokenizer = _english(cfg, Path(tmp), cfg.cross_attention_dim - cfg.xl_tower_2)
            text_encoder_2, _ = _english(cfg, Path(tmp), cfg.xl_tower_2, projected=True)
        else:
            text_encoder, tokenizer = _english(cfg, Path(tmp))
        zh_model, zh_tok = _chinese(cfg, Path(tmp))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=cfg.prediction_type,
    )
    if cfg.xl_tower_2:
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
            unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.save_pretrained(folder / "base", safe_serialization=True)
    zh_model.save_pretrained(folder / "zh_encoder", safe_serialization=True)
    zh_tok.save_pretrained(folder / "zh_encoder")
    (folder / "preset.json").write_text(json.dumps({"preset": name, **asdict(cfg)}, indent=2))
    return folder


def write_tiny_translator(folder: Path, seed: int = 0, vocab_size: int = 200) -> Path:
    """A MarianMTModel (random weights, 1+1 layers, d_model 32) with MarianTokenizer files; written once."""
    if (folder / "config.json").exists():
        return folder
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    samples = shapes.samples(300, seed)
    with tempfile.TemporaryDirectory() as tmp:
        for side, lines in (("source", [s.caption_zh for s in samples]), ("target", [s.caption_en for s in samples])):
            (Path(tmp) / f"{side}.txt").write_text("\n".join(lines))
            spm.SentencePieceTrainer.train(input=str(Path(tmp) / f"{side}.txt"), model_prefix=str(folder / side),
                                           vocab_size=vocab_size // 2, hard_vocab_limit=False, character_coverage=1.0,
                                           model_type="unigram", bos_id=-1, eos_id=1, unk_id=2, pad_id=0, minloglevel=2)
            (folder / f"{side}.model").rename(folder / f"{side}.spm")
            (folder / f"{side}.vocab").unlink()
    pieces = ["<pad>", "</s>", "<unk>"]
    for side in ("source", "target"):
        sp = spm.SentencePieceProcessor(model_file=str(folder / f"{side}.spm"))
        pieces += [p for p in (sp.id_to_piece(i) for i in range(sp.get_piece_size())) if p not in pieces]
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, ensure_ascii=False))
    tokenizer = MarianTokenizer(source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
                                vocab=str(folder / "vocab.json"), source_lang="zh", target_lang="en")
    torch.manual_seed(seed)
    config = MarianConfig(vocab_size=len(pieces), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                          forced_eos_token_id=1)
    model = MarianMTModel(config)
    target = spm.SentencePieceProcessor(model_file=str(folder / "target.spm"))
    english = {target.id_to_piece(i) for i in range(target.get_piece_size())} | {"</s>"}
    with torch.no_grad():  # random weights, but English pieces only: its noise passes the English filters
        model.final_logits_bias[0] = torch.tensor([0.0 if p in english else -1e4 for p in pieces])
    model.generation_config.max_length = 16
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
