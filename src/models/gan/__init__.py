"""GAN networks shared by the image-to-image trainers: U-Net and ResNet generators, PatchGAN,
pixel and multi-scale discriminators, the image pool, ONNX export; pix2pixHD's global
generator and local enhancer (``pix2pixhd.py``)."""

from src.models.gan.discriminators import (
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    PixelDiscriminator,
    build_discriminator,
)
from src.models.gan.export import export_generator_onnx
from src.models.gan.generators import (
    GeneratorSizeError,
    ResnetGenerator,
    UnetGenerator,
    build_generator,
    check_input_size,
)
from src.models.gan.layers import count_parameters, init_weights, norm_layer
from src.models.gan.pix2pixhd import (
    GlobalGenerator,
    LocalEnhancer,
    build_hd_generator,
    load_global_weights,
)
from src.models.gan.pool import ImagePool

__all__ = [
    "GeneratorSizeError",
    "GlobalGenerator",
    "LocalEnhancer",
    "ImagePool",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "PixelDiscriminator",
    "ResnetGenerator",
    "UnetGenerator",
    "build_discriminator",
    "build_generator",
    "build_hd_generator",
    "check_input_size",
    "count_parameters",
    "export_generator_onnx",
    "init_weights",
    "load_global_weights",
    "norm_layer",
]
