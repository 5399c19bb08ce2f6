"""Captions that are not captions: file names, spam, mojibake. RE2 patterns over the caption as it came.

Each is a filter rule of its own (on by default), matched against the original caption so that what
normalisation removes (U+FFFD, markup) can still mark a row as junk.
"""

from __future__ import annotations

IMAGE_EXT = r"(?i)\.(jpe?g|png|gif|webp|bmp|tiff?|heic)\s*$"
CAMERA_NAME = r"(?i)^\s*(img|dsc|dscn|dcim|pxl|mmexport|wx_camera|screenshot|微信图片|截图|屏幕截图)[_ -]?[0-9]"
FILE_NAME = f"{IMAGE_EXT}|{CAMERA_NAME}"

URL = r"(?i)(https?://|www\.|\.(com|cn|net|org|top|cc)(/|\s|$))"
EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z]{2,}"
PHONE = r"(^|[^0-9])1[3-9][0-9]{9}([^0-9]|$)"  # a mainland mobile number
CONTACT = r"(?i)(微信|vx|wx|qq|v信|薇信|威信|电话|手机|tel|whatsapp)号?[:：]?\s*[a-z0-9_-]*[0-9]{5,}"
SPAM = f"{URL}|{EMAIL}|{PHONE}|{CONTACT}"

# UTF-8 read as GBK (锟斤拷) or an uninitialised buffer (烫烫烫, 屯屯屯), UTF-8 read as Latin-1 (Ã©, â€),
# or several replacement characters.
MOJIBAKE = r"锟斤拷|烫烫烫|屯屯屯|Ã[\x{80}-\x{BF}]|â€|\x{FFFD}.*\x{FFFD}"


def sql_matches(col: str, pattern: str) -> str:
    return f"coalesce(regexp_matches({col}, '{pattern}'), false)"
