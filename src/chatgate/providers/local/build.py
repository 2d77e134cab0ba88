"""What a local model's answers depend on besides the request: the model file, llama.cpp's build, this CPU, chatgate.

A seeded request gives the same answer as long as all of these stay the same (docs/parameters.md),
so ``system_fingerprint`` is a digest of them: it changes with another model file, another
llama-cpp-python or llama.cpp build, a CPU with other vector instructions (llama.cpp picks its
kernels by them), another chatgate release, or another schedule of calls (``SCHEDULE``).
"""

import ctypes
import functools
import hashlib
from importlib import metadata

import llama_cpp
from llama_cpp import _ggml

from chatgate.providers.local.sequence import CHUNK

# Bump when chatgate changes how it feeds llama.cpp in a way that changes the numbers.
SCHEDULE = (
    f"a KV stream per sequence in one context; prompts alone in chunks of {CHUNK} from position 0; "
    "a seeded request's generated tokens one a call"
)


def _ggml_string(name: str) -> str:
    try:
        function = getattr(_ggml.libggml, name)
    except AttributeError:  # a build that does not export it
        return "unknown"
    function.restype, function.argtypes = ctypes.c_char_p, []
    return (function() or b"unknown").decode(errors="replace")


@functools.cache
def engine_build() -> str:
    """llama-cpp-python's version, ggml's version and commit, the CPU features llama.cpp uses, and
    chatgate's version and prompt schedule (a release may render prompts differently)."""
    system = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return (
        f"llama-cpp-python {llama_cpp.__version__}; ggml {_ggml_string('ggml_version')} "
        f"({_ggml_string('ggml_commit')}); {system}; chatgate {metadata.version('chatgate')}, {SCHEDULE}"
    )


def fingerprint(model: str) -> str:
    """``system_fingerprint`` for a model file identified by ``model`` (its sha256, or path, size and time)."""
    return "fp_" + hashlib.sha256(f"{model}\n{engine_build()}".encode()).hexdigest()[:10]
