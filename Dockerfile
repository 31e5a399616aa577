# transformer-mt on a CUDA PyTorch base image, run as a non-root user. The package keeps the image's
# own CUDA build of torch: its dependency is a range that the base image already satisfies.
#   docker build -t transformer-mt .
#   docker run --gpus all -v /path/to/shared/data:/data:ro -v "$PWD/runs:/work/runs" transformer-mt \
#       train experiment=multi30k_en_de
# (the data presets read their files under data.root, which is $TRANSFORMER_MT_DATA: /data here)
# README.md ("Docker") has more: evaluate, torchrun, and running as your own user.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# A C compiler for torch.compile (trainer.compile=true, bench compile=true): Triton builds its CUDA
# launcher with one when it first compiles a kernel, and inductor's CPU kernels are C++. The runtime
# image has none; the -devel image has one too, with nvcc and cuDNN headers, several GB more.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --shell /bin/bash mt

# The dependencies first, in a layer of their own that a change to the source does not rebuild: they
# are installed from the package's metadata with a stand-in package (only the __version__ that the
# metadata reads), which is then removed. The moses extra (sacremoses) lets every preset run
# (data=wmt14_en_de_sample detokenizes Moses-tokenized text); the serve extra (Starlette, uvicorn,
# pydantic) lets the container serve a checkpoint over HTTP. The export extra (CTranslate2,
# transformers, about 290 MB) is left out: install it in a derived image where you need it.
WORKDIR /opt/transformer-mt
COPY pyproject.toml README.md LICENSE ./
RUN mkdir transformer_mt && echo '__version__ = "0"' >transformer_mt/__init__.py \
    && pip install --no-cache-dir ".[moses,serve]" \
    && pip uninstall -y transformer-mt \
    && rm -rf transformer_mt build ./*.egg-info

# Then the source, without its dependencies again.
COPY transformer_mt ./transformer_mt
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info && transformer-mt --help >/dev/null

# Caches in /tmp, writable whatever user runs the container (docker run --user UID:GID).
# The data presets' data.root: mount the data folder (multi30k/, wmt14_en_de/, ...) at /data.
ENV TRANSFORMER_MT_DATA=/data \
    PYTHONUNBUFFERED=1 \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

RUN mkdir -p /work && chown mt:mt /work
USER mt
WORKDIR /work
ENTRYPOINT ["transformer-mt"]
CMD ["--help"]
