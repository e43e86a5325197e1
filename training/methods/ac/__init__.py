"""Autoregressive Clustering (Ouali, Hudelot, Tami, ECCV 2020): the method (``method.py``), its pixel orderings
(``orderings.py``), masked convolution and attention layers (``masked_conv.py``, ``masked_attention.py``) and the
autoregressive segmentation net built from them (``autoregressive.py``)."""

from training.methods.ac.method import AC, ACConfig

__all__ = ["AC", "ACConfig"]
