"""Models: the frozen English base, the trainable Chinese encoder, and the tiny offline preset."""

from iap.models.base import FrozenBase, load_base
from iap.models.chinese import ChineseEncoder, load_chinese_encoder

__all__ = ["FrozenBase", "ChineseEncoder", "load_base", "load_chinese_encoder"]
