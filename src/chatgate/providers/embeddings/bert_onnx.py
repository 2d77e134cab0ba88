"""A BERT encoder's weights written as an ONNX graph, for ONNX Runtime: no framework export needed.

The graph follows the Hugging Face ``BertModel`` forward pass (post-layer-norm blocks, exact erf
GELU), with the inputs and output an ONNX export of such a model has: ``input_ids`` and
``attention_mask`` (int64, batch x tokens) in, ``last_hidden_state`` (float32, batch x tokens x
hidden) out. Token types are all 0, as they are for one text. The query, key and value
projections are one matrix product.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from chatgate.errors import AssetError
from chatgate.providers.embeddings.weights import Tensors

OPSET = 17  # LayerNormalization is in the standard domain from 17


@dataclass(frozen=True)
class BertShape:
    hidden: int
    layers: int
    heads: int
    epsilon: float
    positions: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "BertShape":
        if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
            raise AssetError("only BERT encoders with GELU activations can be converted")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise AssetError("only BERT encoders with absolute position embeddings can be converted")
        return cls(
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=int(config["num_attention_heads"]),
            epsilon=float(config.get("layer_norm_eps", 1e-12)),
            positions=int(config["max_position_embeddings"]),
        )


class _Graph:
    def __init__(self, weights: Tensors) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def constant(self, name: str, value: npt.ArrayLike) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, *, transpose: bool = False) -> str:
        try:
            array = self.weights[name]
        except KeyError:
            raise AssetError(f"the model has no tensor {name}") from None
        return self.constant(name, np.ascontiguousarray(array.T) if transpose else array)

    def op(self, kind: str, *inputs: str, output: str | None = None, **attributes: Any) -> str:
        self._count += 1
        name = output or f"{kind.lower()}_{self._count}"
        self.nodes.append(helper.make_node(kind, list(inputs), [name], **attributes))
        return name

    def linear(self, x: str, prefix: str) -> str:
        product = self.op("MatMul", x, self.weight(f"{prefix}.weight", transpose=True))
        return self.op("Add", product, self.weight(f"{prefix}.bias"))

    def layer_norm(self, x: str, prefix: str, epsilon: float) -> str:
        scale, bias = self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=epsilon)


def build(weights: Tensors, shape: BertShape) -> onnx.ModelProto:
    """The encoder as an ONNX model (weights included), checked by ONNX's own checker."""
    weights = {name.removeprefix("bert."): array for name, array in weights.items()}
    g = _Graph(weights)
    head = shape.hidden // shape.heads
    ids, mask = "input_ids", "attention_mask"

    # Embeddings: word + position + token type 0, then a layer norm.
    length = g.op("Shape", ids, start=1, end=2)
    positions = g.op(
        "Range",
        g.constant("zero", np.array(0, np.int64)),
        g.op("Squeeze", length, g.constant("axis_0", np.array([0], np.int64))),
        g.constant("one", np.array(1, np.int64)),
    )
    x = g.op("Gather", g.weight("embeddings.word_embeddings.weight"), ids)
    x = g.op("Add", x, g.op("Gather", g.weight("embeddings.position_embeddings.weight"), positions))
    token_type = weights["embeddings.token_type_embeddings.weight"][0]
    x = g.op("Add", x, g.constant("token_type_0", token_type))
    x = g.layer_norm(x, "embeddings.LayerNorm", shape.epsilon)

    # Padding is masked out of attention: -10000 (as BERT does) added to the scores of padded keys.
    padded = g.op(
        "Sub", g.constant("one_f", np.array(1, np.float32)), g.op("Cast", mask, to=TensorProto.FLOAT)
    )
    mask_bias = g.op(
        "Mul",
        g.op("Unsqueeze", padded, g.constant("axes_1_2", np.array([1, 2], np.int64))),
        g.constant("minus_big", np.array(-10000.0, np.float32)),
    )
    split_heads = g.constant("split_heads", np.array([0, 0, 3, shape.heads, head], np.int64))
    merge_heads = g.constant("merge_heads", np.array([0, 0, shape.hidden], np.int64))
    scale = g.constant("scale", np.array(1 / math.sqrt(head), np.float32))
    half = g.constant("half", np.array(0.5, np.float32))
    root2 = g.constant("root2", np.array(math.sqrt(2), np.float32))

    for i in range(shape.layers):
        p = f"encoder.layer.{i}"
        qkv_w = np.concatenate([weights[f"{p}.attention.self.{n}.weight"] for n in ("query", "key", "value")])
        qkv_b = np.concatenate([weights[f"{p}.attention.self.{n}.bias"] for n in ("query", "key", "value")])
        qkv = g.op("MatMul", x, g.constant(f"{p}.qkv.weight", np.ascontiguousarray(qkv_w.T)))
        qkv = g.op("Add", qkv, g.constant(f"{p}.qkv.bias", qkv_b))
        # batch x tokens x 3 x heads x head -> 3 x batch x heads x tokens x head
        qkv = g.op("Transpose", g.op("Reshape", qkv, split_heads), perm=[2, 0, 3, 1, 4])
        q, k, v = (
            g.op("Gather", qkv, g.constant(f"{p}.pick{j}", np.array(j, np.int64)), axis=0) for j in range(3)
        )
        scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), scale)
        weights_ = g.op("Softmax", g.op("Add", scores, mask_bias), axis=-1)
        context = g.op("Transpose", g.op("MatMul", weights_, v), perm=[0, 2, 1, 3])
        attended = g.linear(g.op("Reshape", context, merge_heads), f"{p}.attention.output.dense")
        x = g.layer_norm(g.op("Add", x, attended), f"{p}.attention.output.LayerNorm", shape.epsilon)
        h = g.linear(x, f"{p}.intermediate.dense")
        gelu = g.op(
            "Mul",
            g.op("Mul", h, half),
            g.op("Add", g.constant(f"{p}.one", np.array(1, np.float32)), g.op("Erf", g.op("Div", h, root2))),
        )
        out = g.linear(gelu, f"{p}.output.dense")
        last = "last_hidden_state" if i == shape.layers - 1 else None
        x = g.op(
            "LayerNormalization",
            g.op("Add", x, out),
            g.weight(f"{p}.output.LayerNorm.weight"),
            g.weight(f"{p}.output.LayerNorm.bias"),
            axis=-1,
            epsilon=shape.epsilon,
            output=last,
        )

    graph = helper.make_graph(
        g.nodes,
        "bert-encoder",
        [
            helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "tokens"]),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", shape.hidden]
            )
        ],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="chatgate")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
