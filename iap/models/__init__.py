"""Models: the frozen English base, the trainable Chinese encoder, and the tiny offline preset."""

from iap.models.base import BaseModel, load_base
from iap.models.chinese import ChineseEncoder, load_chinese_encoder

__all__ = ["BaseModel", "ChineseEncoder", "load_base", "load_chinese_encoder"]
