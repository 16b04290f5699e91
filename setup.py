"""The one C extension: the OTLP span walk (tokenpulse/otlp/_otlpwalk.c).

Optional: without a C compiler the install still succeeds and decode.py walks the parsed
message in Python (decode takes about twice as long; README "Performance"). Everything else is in
pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tokenpulse.otlp._otlpwalk", ["tokenpulse/otlp/_otlpwalk.c"],
                             extra_compile_args=["-O2", "-std=c11"], optional=True)])
