"""easynlp-artist: knowledge-enhanced Chinese text-to-image (ARTIST) as an EasyNLP-style app.

The core installs what predict and fine-tuning need; the rest are extras, and every command that
needs one names it in its error (``pip install "easynlp-artist[transe]"``). On a CPU machine pin
everything with the constraints file so pip never pulls a CUDA build of torch:

    pip install -c constraints.txt -e ".[test]"      # everything, as CI installs it

On a machine whose torch is already installed (a CUDA image), leave the constraints out to keep it.
"""

from setuptools import find_packages, setup

EXTRAS = {
    "transe": ["pykeen>=1.10"],  # python -m easynlp_artist.knowledge.transe
    "s3": ["boto3>=1.28"],  # s3:// tables, checkpoints and outputs
    "fid": ["torchmetrics>=1.0", "scipy>=1.10"],  # evaluate with fid_feature_extractor=
    "serve": ["fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20"],
    "notebook": ["jupyterlab>=4.0", "ipykernel>=6"],  # examples/quickstart.ipynb
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
EXTRAS["test"] = EXTRAS["all"] + [
    "pytest>=7",
    "ruff>=0.4",
    "moto[server]>=5.0",
    "nbclient>=0.9",
    "nbformat>=5.9",
    "openai>=1.0",
    "httpx>=0.27",
    "playwright>=1.40",
]

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
        "oss2>=2.17",
        "requests>=2.28",
        "filelock>=3.12",
        "pillow>=9.0",
        "numpy>=1.23",
        "tqdm>=4.60",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "easynlp=appzoo.cli:main",
            # pai-easynlp installs an `easynlp` command too; this name is always ours
            "easynlp-artist=appzoo.cli:main",
            "modelzoo=modelzoo.cli:main",
        ],
        # AppZoo discovers applications through this group; appzoo never imports them directly.
        "easynlp.appzoo": [
            "text2image_artist=easynlp_artist.app:Text2ImageArtistApp",
        ],
    },
)
