"""Installs the `diffusion_bias` package.

The ranges admit the set tested together on Python 3.11 (README.md, "Tested versions"),
which constraints.txt pins.
"""
import setuptools

setuptools.setup(
    name="diffusion_bias",
    version="0.1.0",
    description=(
        "Reference implementation of biased generalization in diffusion models: "
        "twin models on disjoint splits, exact belief propagation, bias statistics."
    ),
    packages=setuptools.find_packages(include=["diffusion_bias", "diffusion_bias.*"]),
    # jax, jaxlib, numpy, scipy and orbax-checkpoint of the tested set need 3.11.
    python_requires=">=3.11",
    # Lower bounds: the tested versions; upper bounds: the next major release, so
    # that an accelerator JAX already installed (Colab, a cluster image) stays.
    # constraints.txt pins the exact tested set.
    install_requires=[
        "jax>=0.10.2,<1",
        "flax>=0.12.8,<1",
        "optax>=0.2.8,<1",
        "orbax-checkpoint>=0.12.8,<1",
        "numpy>=2.4.6,<3",
        "scipy>=1.17.1,<2",
        "ml-collections>=1.1.0,<2",
        "absl-py>=2.5.1,<3",
        "scikit-learn>=1.9.1,<2",
        "matplotlib>=3.11.2,<4",
        "tensorboardX>=2.6.5,<3",
        # Decodes a folder of images (data/image_folder.py; matplotlib needs it too).
        "pillow>=13.0,<14",
        # The membership audit's metrics and epsilon bounds (statistics/privacy.py).
        "jax-privacy>=2.0.0,<3",
    ],
    extras_require={
        "tfds": ["tensorflow-datasets>=4.9.10,<5", "array_record>=0.8"],
        "test": [
            "pytest>=9.2,<10",
            "pytest-xdist>=3.8,<4",
            "ipython>=9.18,<10",
            # The notebook's test runs it in a Jupyter kernel.
            "nbclient>=0.11,<1",
            "ipykernel>=7.4,<8",
        ],
    },
)
