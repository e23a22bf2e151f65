"""Pixel codecs: decode, encode, render. Only this package imports the pylibjpeg plugins
and Pillow; its work runs in a process pool, off the event loop (DESIGN.md decision 6)."""
