# transformer-mt on a CUDA PyTorch base image. The package keeps the image's own (CUDA) torch build:
# its dependency is a range that the base image already satisfies.
#   docker build -t transformer-mt .
#   docker run --gpus all -v $PWD/runs:/work/runs transformer-mt train experiment=multi30k_en_de
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /opt/transformer-mt
COPY pyproject.toml README.md ./
COPY transformer_mt ./transformer_mt
RUN pip install --no-cache-dir . && transformer-mt --help

WORKDIR /work
ENTRYPOINT ["transformer-mt"]
CMD ["--help"]
