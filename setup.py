"""Installs the `diffusion_bias` package.

The ranges admit the set tested together on Python 3.11 (see README.md, "Tested versions").
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
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "numpy>=2.0,<3",
        "scipy>=1.13,<2",
        "ml-collections>=1.1,<2",
        "absl-py>=2.1,<3",
        "scikit-learn>=1.5,<2",
        "matplotlib>=3.9,<4",
    ],
    extras_require={
        "tfds": ["tensorflow-datasets>=4.9.10,<5", "array_record>=0.8"],
        "test": ["pytest>=8", "ipython>=8"],
    },
)
