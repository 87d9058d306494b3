"""chatalign: supervised fine-tuning, preference training and evaluation of chat models."""

__version__ = "0.1.0"
