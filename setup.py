"""Build of kadfast's Cython extensions.

Switches (environment variables):
  KADFAST_ANNOTATE=1  write Cython's annotated HTML next to each .pyx
  KADFAST_DEBUG=1     bounds/wraparound checks on, line tracing on, -O0 -g
  KADFAST_NO_OPENSSL=1  leave out kadfast._noise (the compiled Noise
                      transport, on OpenSSL's EVP interface); it is
                      left out anyway where OpenSSL's headers and libcrypto
                      are not found, and kadfast.noise then uses its
                      plain-Python transport on cryptography
"""

import os
import sys
import tempfile

if sys.version_info < (3, 11):  # noqa: UP036 - names the Python needed, before the build fails
    sys.exit(f"kadfast needs Python 3.11 or newer; this is Python {sys.version.split()[0]}")

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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
# a release build's modules carry no debug info or symbol table (about a sixth
# of the size); Python's own CFLAGS add -g, so it is dropped at link time
link_args = ["-Wl,-s"] if sys.platform.startswith("linux") and not DEBUG else []

extensions = [
    Extension(
        f"kadfast.{name}",
        [f"kadfast/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for name in ("_xor", "_routing", "_closer")
]


def _openssl_builds() -> bool:
    """Whether a program using OpenSSL's EVP ChaCha20-Poly1305 compiles and
    links here (headers and libcrypto present)."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CompileError, LinkError
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(
                "#include <openssl/evp.h>\n"
                "int main(void) { EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();"
                " int ok = EVP_CipherInit_ex(c, EVP_chacha20_poly1305(), 0, 0, 0, 1);"
                " EVP_CIPHER_CTX_free(c); return ok == 1 ? 0 : 1; }\n"
            )
        try:
            objs = cc.compile([src], output_dir=tmp)
            cc.link_executable(objs, os.path.join(tmp, "probe"), libraries=["crypto"])
        except (CompileError, LinkError):
            return False
    return True


if os.environ.get("KADFAST_NO_OPENSSL") == "1":
    print("kadfast: KADFAST_NO_OPENSSL=1: kadfast._noise left out", file=sys.stderr)
elif _openssl_builds():
    extensions.append(
        Extension(
            "kadfast._noise",
            ["kadfast/_noise.pyx"],
            define_macros=macros,
            extra_compile_args=compile_args,
        extra_link_args=link_args,
            libraries=["crypto"],
        )
    )
else:
    print(
        "kadfast: OpenSSL headers or libcrypto not found: kadfast._noise left out,"
        " the Noise transport is the plain-Python one on cryptography",
        file=sys.stderr,
    )

class BuildExt(build_ext):
    """Links without the run-time search path that some Pythons (pyenv's,
    built with --enable-shared) put in their link command: it names the
    build machine's Python and has no place in an installed module."""

    def build_extensions(self):
        linker = getattr(self.compiler, "linker_so", None)
        if linker:
            self.compiler.linker_so = [a for a in linker if not a.startswith(("-Wl,-rpath", "-Wl,-R"))]
        super().build_extensions()


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=ANNOTATE,
        force=DEBUG,
    ),
    zip_safe=False,
)
