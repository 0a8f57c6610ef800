# The image every node of a Ray cluster runs (docs/kubernetes.md, docs/cluster.md): Ray's own image for the Ray and
# Python this project pins (ray 2.60.0, Python 3.11), with torch and every other package at the exact versions of
# constraints.txt, as `make setup` installs them, and this repository installed in /home/ray/ray-unlearn.
#
#   docker build -t YOUR-REGISTRY/ray-unlearn:0.1.0 .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu \
#       --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu -t ray-unlearn:cpu .      # a CPU-only image
#
# Configs are data, not part of the image's identity: pass them at run time (an s3:// URI, or a ConfigMap mounted
# over /home/ray/ray-unlearn/configs), never by editing the copy baked in here.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# PyTorch's own wheel index: torch 2.14.1 for CUDA 13.0, the build constraints.txt was made with (its nvidia-*-cu13
# pins). The CUDA libraries come inside the wheels; the node needs an NVIDIA driver new enough for CUDA 13.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 RAY_USAGE_STATS_ENABLED=0

# Made by the image's user (ray) before WORKDIR, which would make it root's: `pip install -e` writes into it.
RUN mkdir -p /home/ray/ray-unlearn
WORKDIR /home/ray/ray-unlearn

# The pins first, alone: changing the code does not reinstall torch (a layer of several GB).
COPY --chown=ray constraints.txt ./
RUN pip install -c constraints.txt --extra-index-url "${TORCH_INDEX}" torch==2.14.1 torchvision==0.29.1

# Then the project, editable as `make setup` installs it: jobs find configs/ and the sweep spaces beside the code.
# [mlflow] for --mlflow; ray[default] for the dashboard and job server every head node needs.
COPY --chown=ray pyproject.toml ./
COPY --chown=ray pipeline ./pipeline
COPY --chown=ray jobs ./jobs
COPY --chown=ray tuning ./tuning
COPY --chown=ray configs ./configs
RUN pip install -c constraints.txt --extra-index-url "${TORCH_INDEX}" -e ".[mlflow]" "ray[default]==2.60.0"

# The build fails here, not on the cluster, if a pin did not take or the command line does not start.
RUN python -c "import ray, torch, torchvision; \
assert ray.__version__ == '2.60.0', ray.__version__; \
assert torch.__version__.split('+')[0] == '2.14.1', torch.__version__; \
assert torchvision.__version__.split('+')[0] == '0.29.1', torchvision.__version__" \
 && unlearn --help > /dev/null && unlearn run --help > /dev/null && unlearn methods > /dev/null
