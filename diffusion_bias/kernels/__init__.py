"""Exact nearest-neighbour search: the driver (`search`) and its Hamming and Euclidean kernels."""
