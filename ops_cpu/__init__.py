"""CPU kernels (``*.cpp``) for src/ops and the one builder of run-time native code.

- ``build``: compile a C++ translation unit once into a cached shared library (also used by the
  g++ emulation of the ops_cuda kernels).
- ``resample``: the crop-and-resize and attention-drop kernels of WS-DAN's augmentation.
"""
