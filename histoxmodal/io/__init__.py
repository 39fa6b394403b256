"""Readers only: files in, arrays and metadata out. No torch, no segmentation."""

from histoxmodal.io.slide import MppInfo, SlideReader, list_readers, open_slide

__all__ = ["MppInfo", "SlideReader", "list_readers", "open_slide"]
