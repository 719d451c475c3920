"""TensorRT Q/DQ placement for the INT8 QDQ model (``model.int8.onnx``) and opset-import clean-up.

TensorRT's *explicit* quantization runs exactly the layers the Q/DQ nodes mark as INT8, so where they sit decides
both the engine's speed and its accuracy. The rules followed here are those of the TensorRT developer guide
("Working with Quantized Types" → "Q/DQ Layer-Placement Recommendations",
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html) as NVIDIA
TensorRT Model Optimizer applies them in its ONNX PTQ (``modelopt.onnx.quantization.quantize``, int8 mode;
``modelopt/onnx/quantization/int8.py`` and ``graph_utils.py``: ``build_non_residual_input_map``,
``remove_partial_input_qdq``; compared side by side on resnet20 in ``bench/qdq_placement.py``):

* quantize the *inputs* of weighted layers — Conv/ConvTranspose activations and weights (per output channel);
* do not quantize their *outputs*: TensorRT fuses Conv + BatchNorm + ReLU (+ residual Add) and decides the output
  precision itself from the next Q (no Q/DQ on Conv, Relu, Add or pooling outputs);
* quantize the *residual* (skip) input of an element-wise Add and leave the other one — the Conv branch, fused into
  the convolution as its epilogue — in float. Which one: ModelOpt's rule, the input whose producer has a fusible
  Conv "backbone" and lies on the longer path to the two inputs' lowest common ancestor is the non-residual one;
  for a CIFAR ResNet block ``Add(conv2(...), x)`` that is ``conv2``'s output, and for an option-B block
  ``Add(conv2(...), shortcut_conv(x))`` also ``conv2``'s (three nodes from ``x``, the shortcut one);
* quantize the inputs of pooling layers (MaxPool, AveragePool, GlobalAveragePool), which TensorRT runs in INT8;
* keep the classifier head in float: the Gemm/MatMul of a CNN classifier is a GEMV at batch 1 (ModelOpt excludes
  GEMV patterns from INT8), and Flatten / the logits get no Q/DQ.

Differences from ModelOpt 0.47 (observed): it stores weights as FP32 initializers followed by a Q→DQ pair
(``AddQDQPairToWeight``; TensorRT constant-folds the Q), this module keeps onnxruntime's INT8 weight initializer +
DQ (same placement and values, a quarter of the weight bytes) — so ModelOpt counts one more Q per Conv; and
ModelOpt 0.47 also quantizes Flatten's input after a GlobalAveragePool (it lists Flatten as quantizable), one
Q/DQ pair more than this placement, which keeps Flatten in float.

Most of it is expressed through onnxruntime's quantizer options (:func:`tensorrt_quantize_options`): the op types
to quantize, no output quantization for any op type, ``ForceQuantizeNoInputCheck`` for pooling, shared Q/DQ pairs.
onnxruntime cannot quantize only one input of an Add, so :func:`apply_residual_add_rule` removes the Q/DQ of the
non-residual input after quantization (what ModelOpt's ``remove_partial_input_qdq`` does).

:func:`drop_unused_opsets` removes ``opset_import`` entries of domains no node uses (onnxruntime's optimizer, run
by ``quant_pre_process``, declares eight contrib/training domains that the saved graph never uses).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence

import onnx

QDQ = ("QuantizeLinear", "DequantizeLinear")
# Op types whose inputs the TensorRT flavour quantizes (outputs never).
TENSORRT_OP_TYPES = ("Conv", "ConvTranspose", "Add", "MaxPool", "AveragePool", "GlobalAveragePool")
# Ops TensorRT fuses into a preceding convolution (ModelOpt's ``get_fusible_backbone`` paths).
_FUSIBLE = {"BatchNormalization", "Relu", "Clip", "MaxPool", "Add", "Mul", "Sigmoid"}
DEFAULT_DOMAINS = ("", "ai.onnx")


def tensorrt_quantize_options(model: onnx.ModelProto, op_types: Sequence[str] | None = None) -> tuple[list[str], dict]:
    """``(op_types_to_quantize, extra_options)`` for onnxruntime's ``quantize_static`` that give TensorRT's placement
    on ``model`` (the FP32 graph to quantize): inputs of ``op_types`` (default :data:`TENSORRT_OP_TYPES`) quantized,
    no output of any op type quantized, one Q/DQ pair per tensor shared by its consumers, symmetric signed
    activations and weights, per-output-channel Conv weights, float biases. Add inputs still need
    :func:`apply_residual_add_rule` afterwards."""
    present = sorted({n.op_type for n in model.graph.node})
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": present,
        "ForceQuantizeNoInputCheck": True,  # quantize a pool's input even when its producer is not quantized
        "DedicatedQDQPair": False,
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
    }
    return list(op_types or TENSORRT_OP_TYPES), extra


def _graph_maps(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]], set[str]]:
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    constants = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return producer, consumers, constants


def _parents(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    return [producer[x] for x in node.input if x in producer]


def _ancestors(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> dict[int, tuple[int, onnx.NodeProto]]:
    """``{id(node): (shortest distance, node)}`` over ``node`` and everything upstream of it (breadth first)."""
    dist = {id(node): (0, node)}
    queue = deque([node])
    while queue:
        cur = queue.popleft()
        for p in _parents(cur, producer):
            if id(p) not in dist:
                dist[id(p)] = (dist[id(cur)][0] + 1, p)
                queue.append(p)
    return dist


def _backbone(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto], depth: int = 5) -> onnx.NodeProto | None:
    """The Conv/ConvTranspose that ``node`` is fused into by TensorRT (``node`` itself, or reached back through
    BatchNorm / activation / bias / pooling nodes), or None."""
    for _ in range(depth):
        if node.op_type in ("Conv", "ConvTranspose"):
            return node
        if node.op_type not in _FUSIBLE:
            return None
        parents = _parents(node, producer)
        if not parents or (node.op_type == "Add" and len(parents) > 1):
            return None  # an Add of two activations is another residual Add, not a bias
        node = parents[0]
    return None


def non_residual_add_inputs(model: onnx.ModelProto) -> dict[str, int | None]:
    """``{Add node name: index of its non-residual input, or None}`` for every Add of ``model`` (an FP32 graph).

    The non-residual input is the one TensorRT fuses into its producing convolution; the other (the skip
    connection) is the one to quantize. ModelOpt's rule (``build_non_residual_input_map``): an Add with a constant
    or graph input has none; otherwise with ``b0``/``b1`` the Conv backbones of the two producers and ``d0``/``d1``
    their distances to the lowest common ancestor: both backbones → the one farther from it (input 1 on a tie;
    none when both are the same Conv); one backbone → that input unless the ancestor is the backbone itself;
    none → not a residual Add."""
    producer, _, constants = _graph_maps(model.graph)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    result: dict[str, int | None] = {}
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        ins = list(node.input[:2])
        if not node.name or len(ins) != 2 or any(x in constants or x not in producer for x in ins):
            result[node.name] = None
            continue
        p0, p1 = producer[ins[0]], producer[ins[1]]
        b0, b1 = _backbone(p0, producer), _backbone(p1, producer)
        a0, a1 = _ancestors(p0, producer), _ancestors(p1, producer)
        common = set(a0) & set(a1)
        lca = min(common, key=lambda k: (a0[k][0], a1[k][0], order[k])) if common else None
        d0, d1 = (a0[lca][0], a1[lca][0]) if lca is not None else (-1, -1)
        if b0 is not None and b1 is not None:
            result[node.name] = None if b0 is b1 else (0 if d0 > d1 else 1)
        elif b0 is not None:
            result[node.name] = None if lca == id(b0) else 0
        elif b1 is not None:
            result[node.name] = None if lca == id(b1) else 1
        else:
            result[node.name] = None
    return result


def apply_residual_add_rule(qmodel: onnx.ModelProto, non_residual: dict[str, int | None]) -> int:
    """Bypass the Q→DQ pair on the non-residual input of each Add of the quantized ``qmodel`` (in place), given the
    map :func:`non_residual_add_inputs` computed on the FP32 graph it was quantized from (node names survive
    quantization); Q/DQ nodes and scale/zero-point initializers nothing uses any more are removed. Returns the
    number of Add inputs bypassed. Adds missing from the map, or with no non-residual input, are left alone."""
    graph = qmodel.graph
    producer, _, _ = _graph_maps(graph)
    bypassed = 0
    for node in graph.node:
        idx = non_residual.get(node.name) if node.op_type == "Add" else None
        if idx is None or idx >= len(node.input):
            continue
        dq = producer.get(node.input[idx])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        node.input[idx] = q.input[0]
        bypassed += 1
    if bypassed:
        remove_dead_qdq(qmodel)
    return bypassed


def remove_dead_qdq(model: onnx.ModelProto) -> None:
    """Remove (in place) Q/DQ nodes whose outputs nothing consumes and initializers no node uses any more."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {x for n in graph.node for x in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in QDQ and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {x for n in graph.node for x in n.input} | outputs
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def drop_unused_opsets(model: onnx.ModelProto) -> list[str]:
    """Remove (in place) the ``opset_import`` entries of domains that no node of the main graph or its subgraphs
    uses; the default domain always stays. Returns the removed domains."""
    used = set(_node_domains(model.graph.node)) | {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if o.domain in DEFAULT_DOMAINS or o.domain in used]
    dropped = [o.domain for o in model.opset_import if o not in keep]
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return dropped


def _node_domains(nodes: Iterable[onnx.NodeProto]) -> Iterable[str]:
    for n in nodes:
        yield n.domain
        for attr in n.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _node_domains(attr.g.node)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _node_domains(g.node)


def qdq_placement(model: onnx.ModelProto) -> dict[str, int]:
    """Where the Q/DQ of a QDQ ``model`` sit: ``{"<consumer op>[<input index>]:<what>": count}`` per DequantizeLinear
    output edge, ``<what>`` being ``weight`` (a constant) or ``act`` (an activation), plus
    ``"<graph output>:act"`` when a DQ writes a graph output. Used by the tests and ``bench/qdq_placement.py``."""
    producer, consumers, constants = _graph_maps(model.graph)
    outputs = {o.name for o in model.graph.output}
    counts: Counter[str] = Counter()
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        src = dq.input[0]
        q = producer.get(src)
        weight = src in constants or (q is not None and q.op_type == "QuantizeLinear" and q.input[0] in constants)
        what = "weight" if weight else "act"
        for c in consumers.get(dq.output[0], []):
            for i, x in enumerate(c.input):
                if x == dq.output[0]:
                    counts[f"{c.op_type}[{i}]:{what}"] += 1
        if dq.output[0] in outputs:
            counts[f"<graph output>:{what}"] += 1
    return dict(sorted(counts.items()))
