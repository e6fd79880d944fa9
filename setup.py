"""easynlp-artist: knowledge-enhanced Chinese text-to-image (ARTIST) as an EasyNLP-style app.

Install on a CPU machine with the pinned constraints so pip never pulls a CUDA build of torch:

    pip install -c constraints.txt -e ".[test]"
"""

from setuptools import find_packages, setup

setup(
    name="easynlp-artist",
    version="0.1.0",
    description="ARTIST: knowledge-enhanced Chinese text-to-image generation (VQGAN + GPT) "
    "with an EasyNLP-compatible AppZoo command and a ModelZoo checkpoint registry",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["easynlp_artist*", "appzoo*", "modelzoo*"]),
    include_package_data=True,
    package_data={
        "modelzoo": ["*.json"],
        "easynlp_artist": ["resources/**/*"],
    },
    install_requires=[
        "torch>=2.1",
        "transformers>=4.40",
        "diffusers>=0.27",
        "safetensors>=0.4",
        "pyahocorasick>=2.0",
        "jieba>=0.42",
        "fsspec>=2023.1",
        "s3fs>=2023.1",
        "oss2>=2.17",
        "ossfs>=2023.1",
        "requests>=2.28",
        "filelock>=3.12",
        "pykeen>=1.10",
        "torchmetrics>=1.0",
        "scipy>=1.10",
        "pillow>=9.0",
        "numpy>=1.23",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "ruff>=0.4",
            "moto[server]>=5.0",
            "nbclient>=0.9",
            "nbformat>=5.9",
            "ipykernel>=6",
        ],
    },
    entry_points={
        "console_scripts": [
            "easynlp=appzoo.cli:main",
            "modelzoo=modelzoo.cli:main",
        ],
        # AppZoo discovers applications through this group; appzoo never imports them directly.
        "easynlp.appzoo": [
            "text2image_artist=easynlp_artist.app:Text2ImageArtistApp",
        ],
    },
)
