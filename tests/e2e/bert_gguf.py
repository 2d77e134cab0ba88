"""all-MiniLM-L6-v2 written as a GGUF file for llama.cpp (its ``bert`` architecture), from the package's
safetensors and tokenizer: a real embedding model for llama.cpp's server in the relay tests and the
engine comparison in bench/embeddings.py.

llama.cpp's BERT vocabulary marks a word's first piece with a leading "▁" (U+2581) where WordPiece marks
the pieces after it with "##"; bracketed special tokens stay as they are.
"""

import json
from pathlib import Path

import gguf
import numpy as np

from chatgate.providers.embeddings import assets
from chatgate.providers.embeddings.weights import read_safetensors

LAYER_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
EMBEDDING_TENSORS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}


def _piece(token: str) -> str:
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def write(target: Path, asset_name: str = "all-minilm-l6-v2") -> Path:
    """The asset's model as float32 GGUF at ``target`` (mean pooling, as the model is used)."""
    folder = assets.package_dir(assets.resolve(asset_name))
    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = {t["content"] for t in tokenizer["added_tokens"] if t.get("special")}

    writer = gguf.GGUFWriter(str(target), "bert")
    writer.add_name(asset_name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("bert")
    writer.add_token_list([_piece(t) for t in tokens])
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_type_count(config["type_vocab_size"])
    writer.add_bos_token_id(vocab["[CLS]"])
    writer.add_sep_token_id(vocab["[SEP]"])
    writer.add_unk_token_id(vocab["[UNK]"])
    writer.add_pad_token_id(vocab["[PAD]"])
    writer.add_mask_token_id(vocab["[MASK]"])
    names = dict(EMBEDDING_TENSORS)
    for i in range(config["num_hidden_layers"]):
        for ours, theirs in LAYER_TENSORS.items():
            for kind in ("weight", "bias"):
                names[f"encoder.layer.{i}.{ours}.{kind}"] = f"blk.{i}.{theirs}.{kind}"
    for name, array in read_safetensors(folder / "model.safetensors").items():
        if name in names:  # the pooler head is not used for sentence embeddings
            writer.add_tensor(names[name], np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
