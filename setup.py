"""Package discovery, the one thing pyproject.toml cannot declare here.

The four import packages live in folders named by role (``runtime/`` is ``lame_runtime``);
setuptools' declarative ``packages.find`` finds folders but cannot map them to other import
names, so the sub-packages are found here. Everything else is declared in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "lame": "lame",
    "lame_export": "export",
    "lame_calibration": "calibration",
    "lame_runtime": "runtime",
}

setup(
    package_dir=FOLDERS,
    packages=[
        f"{name}.{sub}" if sub else name
        for name, folder in FOLDERS.items()
        for sub in ["", *find_packages(folder)]
    ],
)
