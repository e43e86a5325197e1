"""PiCIE (Cho et al., CVPR 2021): the method, its mini-batch k-means, views and inference graph."""

from training.methods.picie.kmeans import MiniBatchKMeans
from training.methods.picie.method import PiCIE, PiCIEConfig

__all__ = ["MiniBatchKMeans", "PiCIE", "PiCIEConfig"]
