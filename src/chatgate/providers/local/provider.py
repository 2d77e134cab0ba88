"""The local engine as a Provider: chat template, request checks, sampling settings, and a thread per job.

``prepare`` renders the prompt and bounds it: a short prompt (up to EXACT_BYTES) is tokenized at
once and reserved at its exact count; a longer one at its size in bytes (no token spells less than
a byte), and is tokenized in ``run``. Grammars (response_format, tools) are converted in ``run``
too, under the host's heavy-work bound. The engine has accepted the request once an instance is
free for it (``Accepted``, with the prompt's exact count): its prompt is read from then on.
"""

import asyncio
import json
import secrets
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from chatgate.config import LocalDeployment
from chatgate.errors import ContextLengthExceeded, EngineFailure, InvalidRequest, NotImplementedFeature
from chatgate.protocol.requests import ChatCompletionRequest, JsonObjectFormat, JsonSchemaResponseFormat
from chatgate.providers.base import Accepted, Bound, Finished, Plan, ProviderEvent
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.local import tools
from chatgate.providers.local.generation import Generation, Job
from chatgate.providers.local.pool import EnginePool, ThreadBudget
from chatgate.providers.local.sampling import Sampling
from chatgate.providers.local.scheduler import Outcome
from chatgate.providers.local.template import ChatTemplate

# OpenAI's defaults for temperature and top_p; top_k and min_p are llama.cpp's usual safety net
# against the long tail of a small model's vocabulary, and can be set per request.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
MAX_CHOICES = 8
# No token of a real vocabulary spells more bytes than this, so a prompt longer than the context
# times this is over the context whatever it holds, and is refused without being tokenized.
MAX_BYTES_PER_TOKEN = 64
# Prompts up to this many bytes are tokenized in prepare (on the event loop), for an exact
# reservation: 4 KB took 2 ms of CPU on a loaded machine, so a kilobyte about half one. Longer ones
# are reserved on their size in bytes and tokenized after admission, on a worker thread.
EXACT_BYTES = 1024


def refuse_unsupported(request: ChatCompletionRequest) -> None:
    """Features the local engine cannot honour: a 400 naming each, never silently ignored."""
    unsupported: list[tuple[str, bool]] = [
        ("functions", bool(request.functions)),
        ("function_call", request.function_call is not None),
        ("audio", request.audio is not None),
        ("modalities", any(m != "text" for m in request.modalities or [])),
        ("prediction", request.prediction is not None),
        ("web_search_options", request.web_search_options is not None),
        ("chat_template_kwargs", request.chat_template_kwargs is not None),
        ("store", bool(request.store)),
        ("reasoning_effort", request.reasoning_effort is not None),
        ("verbosity", request.verbosity is not None),
    ]
    for param, used in unsupported:
        if used:
            raise NotImplementedFeature(f"'{param}' is not supported by this model.", param=param)


def response_grammar(request: ChatCompletionRequest) -> str | None:
    """The grammar that holds the answer to the requested response_format, if any."""
    fmt = request.response_format
    if isinstance(fmt, JsonObjectFormat):
        return str(JSON_GBNF)
    if isinstance(fmt, JsonSchemaResponseFormat):
        schema = fmt.json_schema.schema_ or {"type": "object"}
        try:
            return str(json_schema_to_gbnf(json.dumps(schema)))
        except Exception as exc:  # the converter raises plain exceptions for schemas it cannot express
            raise InvalidRequest(f"Cannot enforce this JSON schema: {exc}", param="response_format") from exc
    return None


@dataclass(frozen=True)
class LocalPlan(Plan):
    n: int
    pieces: list[tuple[bytes, bool]]  # the rendered prompt: (bytes, is the caller's literal text)
    add_bos: bool
    prompt: list[int] | None  # tokenized already (a short prompt)
    sampling: Sampling | None  # worked out already (a short prompt)


class LocalProvider:
    """Serves one catalogue model from a pool of llama.cpp instances."""

    def __init__(
        self,
        *,
        path: Path,
        deployment: LocalDeployment,
        budget: ThreadBudget,
        max_queue: int,
        fingerprint: str,
        heavy: HeavyWork | None = None,
        plans_only: bool = False,
    ) -> None:
        self.heavy = heavy or HeavyWork(None, slots=2)
        # Plans only: the vocabulary and template, to check and bound requests (``prepare``) that an
        # engine process runs; no instance is loaded and ``run`` is not called.
        self.plans_only = plans_only
        self.context_length = deployment.context_length
        self.fingerprint = fingerprint
        self.pool = EnginePool(
            path=path,
            context_length=deployment.context_length,
            instances=deployment.instances,
            budget=budget,
            max_queue=max_queue,
        )
        self._template: ChatTemplate | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.pool.load_vocabulary if self.plans_only else self.pool.load)
        llama = self.pool.tokenizer
        model = llama._model
        self._add_bos = bool(model.add_bos_token())
        self._bos = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        eos = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        source = llama.metadata.get("tokenizer.chat_template")
        self._template = ChatTemplate(source, bos_token=self._bos, eos_token=eos, specials=_specials(llama))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.pool.close)

    def stats(self) -> dict[str, int]:
        return self.pool.stats()

    def health(self) -> list[dict[str, object]]:
        return [
            {"deployment": f"local:{self.pool.path.name}", "up": bool(self.pool.slots), **self.pool.stats()}
        ]

    def prepare(self, request: ChatCompletionRequest) -> LocalPlan:
        """Everything about a request that can be refused cheaply, checked before it is admitted."""
        assert self._template is not None, "LocalProvider.start() was not awaited"
        refuse_unsupported(request)
        n = request.n or 1
        if n > MAX_CHOICES:
            raise InvalidRequest(f"n must be at most {MAX_CHOICES} on this model.", param="n")
        plan = tools.plan(request, grammars=False)
        if plan is not None and request.response_format is not None and plan.required:
            if isinstance(request.response_format, JsonObjectFormat | JsonSchemaResponseFormat):
                raise InvalidRequest(
                    "A forced tool call cannot also follow response_format.", param="response_format"
                )
        prompt = self._template.render(request.messages, plan)
        # The template's own spellings are special tokens; the caller's text (literal) never is.
        pieces = [(text.encode("utf-8"), literal) for text, literal in prompt.pieces()]
        size = sum(len(raw) for raw, _ in pieces)
        if size > self.context_length * MAX_BYTES_PER_TOKEN:  # refused without tokenizing it all
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens. However, your "
                f"messages are {size} bytes long, more than that many tokens can hold. Please reduce "
                "the length of the messages.",
                param="messages",
            )
        add_bos = self._add_bos and not (self._bos and prompt.text.startswith(self._bos))
        tokens = self._tokenize(pieces, add_bos) if size <= EXACT_BYTES else None
        sampling = self._sampling(request, len(tokens)) if tokens is not None else None
        if tokens is not None and sampling is not None:
            bound = Bound(len(tokens), sampling.max_tokens * n)
        else:  # a token is at least a byte, but for a BOS and each piece's leading space
            most = min(size + len(pieces) + 1, self.context_length - 1)
            limit = request.token_limit
            bound = Bound(most, n * min(limit or self.context_length, self.context_length - 1))
        return LocalPlan(
            request, bound, n=n, pieces=pieces, add_bos=add_bos, prompt=tokens, sampling=sampling
        )

    def _tokenize(self, pieces: list[tuple[bytes, bool]], add_bos: bool) -> list[int]:
        llama: Any = self.pool.tokenizer
        tokens: list[int] = []
        for raw, literal in pieces:
            tokens += llama.tokenize(raw, add_bos=add_bos and not tokens, special=not literal)
        return tokens

    async def count_prompt(self, plan: LocalPlan) -> int:
        """The prompt's exact count; a long prompt is tokenized off the event loop, as in ``run``."""
        if plan.prompt is not None:
            return len(plan.prompt)
        return len(await asyncio.to_thread(self._tokenize, plan.pieces, plan.add_bos))

    async def _job(self, plan: LocalPlan) -> Job:
        """The work ``prepare`` left for after admission: the grammars, a long prompt's tokens."""
        request = plan.request
        grammar = await self.heavy.run(response_grammar, request) if request.response_format else None
        tool_plan = await self.heavy.run(tools.plan, request) if request.tools else None
        prompt = plan.prompt
        if prompt is None:  # tokenising stays off the event loop
            prompt = await asyncio.to_thread(self._tokenize, plan.pieces, plan.add_bos)
        sampling = plan.sampling or self._sampling(request, len(prompt))
        return Job(
            prompt=prompt,
            sampling=sampling,
            n=plan.n,
            grammar=grammar,
            tools=tool_plan,
            exact=request.seed is not None,  # a seeded answer never shares a call with another's tokens
        )

    def _sampling(self, request: ChatCompletionRequest, prompt_tokens: int) -> Sampling:
        room = self.context_length - prompt_tokens
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens. However, your "
                f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
                param="messages",
            )
        limit = request.token_limit
        if limit is not None and limit > room:
            param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens. However, you "
                f"requested {prompt_tokens + limit} tokens ({prompt_tokens} in the messages, {limit} in "
                "the completion). Please reduce the length of the messages or completion.",
                param=param,
            )
        return Sampling(
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
            top_k=DEFAULT_TOP_K if request.top_k is None else request.top_k,
            min_p=DEFAULT_MIN_P if request.min_p is None else request.min_p,
            repeat_penalty=request.repetition_penalty or 1.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            presence_penalty=request.presence_penalty or 0.0,
            seed=secrets.randbits(31) if request.seed is None else request.seed & 0xFFFFFFFF,
            max_tokens=room if limit is None else limit,
            stops=request.stop_sequences,
            logit_bias=self._logit_bias(request),
            top_logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        )

    def _logit_bias(self, request: ChatCompletionRequest) -> dict[int, float]:
        n_vocab: int = self.pool.tokenizer.n_vocab()
        bias = {int(token): value for token, value in (request.logit_bias or {}).items()}
        unknown = [token for token in bias if token >= n_vocab]
        if unknown:
            raise InvalidRequest(
                f"logit_bias names token {unknown[0]}, beyond this model's vocabulary.", param="logit_bias"
            )
        return bias

    async def run(self, plan: LocalPlan) -> AsyncGenerator[ProviderEvent, None]:
        job = await self._job(plan)
        slot = await self.pool.acquire(
            job.prompt, exact=job.exact
        )  # a full queue refuses here, still before any output
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ProviderEvent | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: ProviderEvent | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                cancel.set()

        def done(outcome: Outcome) -> None:
            """On the engine's thread: a failure goes to the stream; the sequence goes back to the pool."""
            if isinstance(outcome, BaseException):
                emit(outcome)
            try:
                loop.call_soon_threadsafe(self.pool.release, slot)
            except RuntimeError:
                pass

        running = False
        try:
            yield Accepted(len(job.prompt), self.fingerprint)
            self.pool.run(slot, Generation(slot.sequence, job, cancel, emit), done)
            running = True
            finished = 0
            while finished < job.n:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise EngineFailure(f"The engine failed while generating: {item}") from item
                yield item
                finished += isinstance(item, Finished)
        finally:
            cancel.set()
            if not running:
                self.pool.release(slot)


def _specials(llama: Any) -> list[str]:
    """How the model's control and user-defined tokens are spelled: what ``special=True`` reads as them."""
    vocab = llama._model.vocab
    kinds = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    kinds |= llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    return [
        llama._model.token_get_text(token)
        for token in range(llama.n_vocab())
        if llama_cpp.llama_vocab_get_attr(vocab, token) & kinds
    ]
