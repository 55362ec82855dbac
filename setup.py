"""Builds the optional compiled BVH motion parser; everything else is in
pyproject.toml. Without a C compiler the install still succeeds and
motionode.bvh reads with numpy instead (slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "motionode._bvhmotion",
            sources=["motionode/_bvhmotion.c"],
            optional=True,
        )
    ]
)
