"""Builds the Cython extension ``fastq._core``; everything else is in pyproject.toml.

FASTQ_NO_EXTENSIONS=1  build a pure-Python package (fastq uses ``_core_py``)
FASTQ_DEBUG=1          build with -O0 -g, line tracing and an annotated HTML report
"""

import os

from setuptools import setup

NO_EXTENSIONS = bool(os.environ.get("FASTQ_NO_EXTENSIONS"))
DEBUG = bool(os.environ.get("FASTQ_DEBUG"))


def extensions():
    if NO_EXTENSIONS:
        print("*** fastq: FASTQ_NO_EXTENSIONS is set: pure-Python build ***")
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    macros = [("CYTHON_TRACE", "1")] if DEBUG else []
    ext = Extension(
        "fastq._core",
        ["src/fastq/_core.pyx"],
        define_macros=macros,
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2", "-g0"],  # -g0: Python's CFLAGS add -g
    )
    print("*** fastq: building the compiled core (fastq._core) ***")
    return cythonize(
        [ext],
        annotate=DEBUG,
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "linetrace": DEBUG,
        },
    )


setup(ext_modules=extensions())
