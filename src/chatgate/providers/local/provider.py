"""The local engine as a Provider: chat template, prompt checks, sampling, and a thread per generation."""

import asyncio
import secrets
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from chatgate.config import LocalDeployment
from chatgate.errors import ContextLengthExceeded, EngineFailure
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import FinishReason
from chatgate.providers.base import Completion, Finished, ProviderEvent, Started, TextDelta, collect
from chatgate.providers.local.decoding import TextAssembler
from chatgate.providers.local.pool import EnginePool, Slot, ThreadBudget
from chatgate.providers.local.template import ChatTemplate

# OpenAI's defaults for temperature and top_p; top_k and min_p are llama.cpp's usual safety net
# against the long tail of a small model's vocabulary, and can be set per request.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    frequency_penalty: float
    presence_penalty: float
    seed: int
    max_tokens: int
    stops: list[str]


Emit = Callable[[ProviderEvent | BaseException], None]


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
    ) -> None:
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
        await asyncio.to_thread(self.pool.load)
        llama = self.pool.tokenizer
        model = llama._model
        self._add_bos = bool(model.add_bos_token())
        self._bos = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        eos = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        self._template = ChatTemplate(
            llama.metadata.get("tokenizer.chat_template"), bos_token=self._bos, eos_token=eos
        )

    async def aclose(self) -> None:
        await asyncio.to_thread(self.pool.close)

    def stats(self) -> dict[str, int]:
        return self.pool.stats()

    async def complete(self, request: ChatCompletionRequest) -> Completion:
        return await collect(self.stream(request))

    def _prompt_tokens(self, request: ChatCompletionRequest) -> list[int]:
        assert self._template is not None, "LocalProvider.start() was not awaited"
        prompt = self._template.render(request.messages)
        add_bos = self._add_bos and not (self._bos and prompt.startswith(self._bos))
        tokens: list[int] = self.pool.tokenizer.tokenize(
            prompt.encode("utf-8"), add_bos=add_bos, special=True
        )
        return tokens

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
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{prompt_tokens + limit} tokens ({prompt_tokens} in the messages, {limit} in the completion). "
                "Please reduce the length of the messages or completion.",
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
        )

    async def stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ProviderEvent, None]:
        tokens = self._prompt_tokens(request)
        sampling = self._sampling(request, len(tokens))
        slot = await self.pool.acquire()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ProviderEvent | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: ProviderEvent | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                cancel.set()

        def release(_: object) -> None:
            try:
                loop.call_soon_threadsafe(self.pool.release, slot)
            except RuntimeError:
                pass

        running = False
        try:
            yield Started(prompt_tokens=len(tokens))
            future = self.pool.executor.submit(self._generate, slot, tokens, sampling, cancel, emit)
            running = True
            future.add_done_callback(release)
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise EngineFailure(f"The engine failed while generating: {item}") from item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            cancel.set()
            if not running:
                self.pool.release(slot)

    def _generate(
        self, slot: Slot, tokens: list[int], s: Sampling, cancel: threading.Event, emit: Emit
    ) -> None:
        """Runs on an engine thread: sample until end of text, a stop sequence, the limit, or cancellation."""
        llama = slot.llama
        vocab = llama._model.vocab
        self.pool.budget.begin()
        try:
            self.pool.rebalance(slot)
            llama.set_seed(s.seed)
            text = TextAssembler(s.stops)
            produced = 0
            reason: FinishReason = "length"
            generator = llama.generate(
                tokens,
                top_k=s.top_k,
                top_p=s.top_p,
                min_p=s.min_p,
                temp=s.temperature,
                repeat_penalty=s.repeat_penalty,
                frequency_penalty=s.frequency_penalty,
                presence_penalty=s.presence_penalty,
                reset=True,
            )
            for token in generator:
                if cancel.is_set():
                    self.pool.cancelled += 1
                    return
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    reason = "stop"
                    break
                produced += 1
                out = text.feed(llama._model.detokenize([token], special=False))
                if out:
                    emit(TextDelta(out))
                if text.matcher.stopped:
                    reason = "stop"
                    break
                if produced >= s.max_tokens:
                    break
                self.pool.rebalance(slot)
            tail = text.finish()
            if tail:
                emit(TextDelta(tail))
            emit(Finished(reason=reason, prompt_tokens=len(tokens), completion_tokens=produced))
        except Exception as exc:
            emit(exc)
        finally:
            self.pool.budget.end()
