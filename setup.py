"""Build the Cython core.

QUOTA_DEBUG=1 at build time compiles the invariant sweep that runs after every batch
(see _fastledger/README.md); CI runs the suite on both builds. The flag is a C macro, so the
generated C is the same for both builds; every build recompiles, so switching the flag never
reuses a stale object file.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("QUOTA_DEBUG", "0") not in ("", "0", "false", "no")


class BuildExt(build_ext):
    def initialize_options(self):
        super().initialize_options()
        self.force = True


extensions = [
    Extension(
        "_fastledger._ledger",
        ["_fastledger/_ledger.pyx"],
        depends=[os.path.join("_fastledger", f) for f in os.listdir("_fastledger") if f.endswith((".pxi", ".pxd"))],
        define_macros=[("QUOTA_DEBUG", "1" if DEBUG else "0")],
        extra_compile_args=["-O2", "-g0"] if not DEBUG else ["-O1", "-g"],
    ),
    # SQLite appends on a C thread that never takes the GIL (storage/sqlite.py's fast path);
    # libsqlite3 is looked up at run time, so no SQLite headers are needed to build it.
    Extension(
        "quota_server._sqlwriter",
        ["quota_server/_sqlwriter.pyx"],
        extra_compile_args=["-O2", "-g0"] if not DEBUG else ["-O1", "-g"],
    ),
    # Redis appends (zstd included) on a C thread that never takes the GIL (storage/redis.py's
    # fast path); libzstd is looked up at run time, so no zstd headers are needed to build it.
    Extension(
        "quota_server._rediswriter",
        ["quota_server/_rediswriter.pyx"],
        extra_compile_args=["-O2", "-g0"] if not DEBUG else ["-O1", "-g"],
    ),
    # The protobuf wire fast path of QuotaService (quota_server/dataplane.py is its reference).
    Extension(
        "quota_server._wire",
        ["quota_server/_wire.pyx"],
        extra_compile_args=["-O2", "-g0"] if not DEBUG else ["-O1", "-g"],
    ),
]

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
