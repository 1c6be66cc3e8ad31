"""Lowerings: recognised operators turned into generated Numba kernels."""
