"""tfpets: fine-grained image classification with scarce data (TensorFlow 2 / Keras 3)."""

import importlib.util
import pathlib
import re
import types

from setuptools import Extension, find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "tfpets" / "__init__.py").read_text())[1]


def load_ops_build() -> types.ModuleType:
  """tfpets/ops/build.py, loaded by path: importing `tfpets` would import TensorFlow and Keras."""
  spec = importlib.util.spec_from_file_location(
    "tfpets_ops_build", HERE / "tfpets" / "ops" / "build.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# The custom op library (tfpets/ops/build.py) is built by `build_ext`, which setuptools runs only when
# there is an extension: this placeholder is never compiled. A failed op build only logs a warning.
OPS_PLACEHOLDER = Extension("tfpets.ops._lib.tfpets_ops", sources=[])

# One tested set; see README "Dependencies" for why each is here.
INSTALL_REQUIRES = [
  "tensorflow==2.21.0",
  "keras==3.15.1",
  "keras-hub==0.32.0",
  "keras-cv==0.9.0",
  "tensorflow-datasets==4.9.10",
  "tensorboard==2.21.0",  # tf.summary writes event files only when it is installed
  "tensorflow-serving-api==2.21.0",  # PredictRequest protos of the TF Serving warmup file
  "importlib_resources>=6",  # tensorflow-datasets imports it even when nothing is downloaded
  "scipy>=1.11",  # .mat devkits (Stanford Cars), DCT for perceptual hashes
  "pillow>=10",  # the image decoder: CMYK, 16-bit, GIF, EXIF orientation
  "opencv-python-headless>=4.8",
  "absl-py>=2.1",
  "numpy>=1.26,<3",
]

setup(
  name="tfpets",
  version=VERSION,
  description=__doc__,
  long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  packages=find_packages(include=["tfpets", "tfpets.*"]),
  package_data={"tfpets.ops": ["kernels/*.cc", "kernels/*.h", "auto_table.json"]},
  ext_modules=[OPS_PLACEHOLDER],
  cmdclass={"build_ext": load_ops_build().BuildTFOps},
  install_requires=INSTALL_REQUIRES,
  extras_require={
    "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "ruff==0.17.6"]
  },
  entry_points={"console_scripts": ["tfpets=tfpets.launch:main"]},
)
