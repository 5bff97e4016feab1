from setuptools import find_packages, setup

STAGES = ("pxe", "hammer_proxy", "nsq_consumer", "switch", "ipmi")

setup(
    name="metalcore",
    version="0.1.0",
    description="The per-rack sidecar of a bare-metal cloud: a Python Metal Core.",
    python_requires=">=3.11",
    packages=find_packages(include=["metalcore", "metalcore.*", "stages"]),
    package_data={"metalcore": ["lab/*.sh", "lab/yang/*.yang", "lab/initrd/*", "lab/metal_api/*.json", "hammer/*.json",
                                "protocol/README.md"]},
    install_requires=[
        "pynsq>=0.9.1,<0.10",
        "tornado>=6,<7",            # pynsq 0.9.1 fails to import with tornado 4/5 on Python >= 3.10
        "pyzmq>=25,<28",
        "flask>=3,<4",
        "waitress>=3,<4",
        "aiohttp>=3.9,<4",          # the PXE stage's HTTP: sendfile for kernels and initrds
        "pyghmi>=1.6,<2",
        "ncclient>=0.6.15,<0.8",
        "loguru>=0.7,<0.8",
        "supervisor>=4.2,<5",
        "prometheus_client>=0.17,<1",
        "tftpy>=0.8.2,<0.9",
        "httpx>=0.27,<0.29",
        "jsonschema>=4.18,<5",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-timeout>=2,<3", "hypothesis>=6,<7", "schemathesis>=3.30,<5",
                 "atheris>=2.3,<4", "requests>=2.31,<3"],
    },
    entry_points={
        "console_scripts": ["metalcore=metalcore.cli:main"]
        + [f"metalcore-{s.replace('_', '-')}=stages.{s}:main" for s in STAGES],
    },
)
