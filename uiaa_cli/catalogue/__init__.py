"""A photographer's catalogue: XMP ratings and labels in and out (``uiaa rate``, ``labels --format xmp``)."""
