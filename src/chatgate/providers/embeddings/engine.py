"""An encoder in ONNX Runtime with its own tokenizer: token ids in, pooled vectors out (on the calling thread)."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from chatgate.errors import AssetError
from chatgate.providers.embeddings.assets import MODEL_FILE, TOKENIZER_FILE

if TYPE_CHECKING:
    from chatgate.providers.embeddings.base import Vectors

# Padded tokens one batch may hold. Batches of sequences of similar length are cheaper per token than
# one sequence at a time, up to about this size (see docs/embeddings.md); longer sequences go alone.
BATCH_TOKENS = 2048
BATCH_SEQUENCES = 64


@dataclass(frozen=True)
class Pooling:
    kind: Literal["mean", "cls"]
    normalize: bool


class Encoder:
    """One model loaded once: a session that several threads may run at once, one thread each."""

    def __init__(self, directory: Path, pooling: Pooling) -> None:
        self.pooling = pooling
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallelism comes from batches running side by side
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(directory / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
            self._tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as exc:  # ONNX Runtime and tokenizers raise their own plain exceptions
            raise AssetError(f"cannot load the embedding model in {directory}: {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        # The caller's text is text: "[SEP]" written in it is five characters, not the separator.
        self._tokenizer.encode_special_tokens = True
        names = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise AssetError(f"{directory / MODEL_FILE} does not take input_ids and attention_mask")
        self._types = "token_type_ids" in names
        self.vocabulary = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_tokens = self._tokenizer.num_special_tokens_to_add(is_pair=False)
        self.dimensions = int(self.encode([self.tokenize(["dimensions"])[0]]).shape[1])

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=True)]

    def encode(self, batch: list[list[int]]) -> "Vectors":
        """One batch's vectors (sequences padded to the longest)."""
        width = max(len(ids) for ids in batch)
        ids = np.zeros((len(batch), width), np.int64)
        mask = np.zeros((len(batch), width), np.int64)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1
        feed: dict[str, npt.NDArray[np.int64]] = {"input_ids": ids, "attention_mask": mask}
        if self._types:
            feed["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self._session.run(["last_hidden_state"], feed)
        if self.pooling.kind == "cls":
            pooled = hidden[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        pooled = np.ascontiguousarray(pooled, dtype=np.float32)
        if self.pooling.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled /= np.where(norms == 0, 1, norms)
        return pooled


def batches(sequences: list[list[int]]) -> list[list[int]]:
    """The sequences' indices grouped for ``Encoder.encode``: by length, so little is padding."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = len(sequences[index])  # the longest so far: sorted
        if current and ((len(current) + 1) * width > BATCH_TOKENS or len(current) >= BATCH_SEQUENCES):
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups
