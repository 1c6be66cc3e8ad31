"""The installed willow version; saved plans record it and refuse to load under another."""

__version__ = "0.1.0"
