"""CUDA kernels (``*.cu``) for src/ops, their CuPy loader and a g++ CPU emulation.

- ``registry``: which kernels each source holds and their dtype instantiations.
- ``toolkit``: CUDA header discovery and NVRTC compilation without a GPU.
- ``launch``: run a kernel on torch tensors (CuPy on CUDA, emulation on CPU).
- ``emulate``: build the same source as C++ with ``emu_shim.h`` and loop over the grid.
"""
