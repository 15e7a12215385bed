"""Build of kadfast's Cython extensions.

Switches (environment variables):
  KADFAST_ANNOTATE=1  write Cython's annotated HTML next to each .pyx
  KADFAST_DEBUG=1     bounds/wraparound checks on, line tracing on, -O0 -g
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ANNOTATE = os.environ.get("KADFAST_ANNOTATE") == "1"
DEBUG = os.environ.get("KADFAST_DEBUG") == "1"

directives = {"language_level": 3, "embedsignature": True}
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if DEBUG:
    directives.update(boundscheck=True, wraparound=True, initializedcheck=True, linetrace=True)
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
    compile_args = ["-O0", "-g"]
else:
    compile_args = ["-O3"]

extensions = [
    Extension(
        f"kadfast.{name}",
        [f"kadfast/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=macros,
        extra_compile_args=compile_args,
    )
    for name in ("_xor", "_routing")
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=ANNOTATE,
        force=DEBUG,
    ),
    zip_safe=False,
)
