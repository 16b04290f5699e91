"""The two C extensions: the OTLP span walk (tokenpulse/otlp/_otlpwalk.c) and the attributes
column's Arrow buffers (tokenpulse/storage/_mapcols.c).

Both optional: without a C compiler the install still succeeds, decode.py walks the parsed
message in Python (decode takes about twice as long; README "Performance") and schema.py builds
the attributes column with pyarrow from flattened lists. Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tokenpulse.otlp._otlpwalk", ["tokenpulse/otlp/_otlpwalk.c"],
                             extra_compile_args=["-O2", "-std=c11"], optional=True),
                   Extension("tokenpulse.storage._mapcols", ["tokenpulse/storage/_mapcols.c"],
                             extra_compile_args=["-O2", "-std=c11"], optional=True)])
