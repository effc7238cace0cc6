"""tfpets: fine-grained image classification with scarce data (TensorFlow 2 / Keras 3)."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "tfpets" / "__init__.py").read_text())[1]

# One tested set; see README "Dependencies" for why each is here.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "keras-hub==0.32.0",
    "keras-cv==0.9.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources>=6",   # tensorflow-datasets needs it offline (datasets.md §4.3)
    "scipy>=1.11",              # .mat devkits (Stanford Cars), DCT for perceptual hashes
    "pillow>=10",               # the image decoder: CMYK, 16-bit, GIF, EXIF orientation
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
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.3"]},
    entry_points={"console_scripts": ["tfpets=tfpets.cli:run"]},
)
