#!/usr/bin/env python3
"""Independent check of an ONNX file edgeforge wrote: onnx.checker, then onnxruntime (and OpenVINO when
installed) embed the fp64 reference sentences; prints JSON with each runtime's cosines to the reference.

Usage: onnx_check.py MODEL.onnx REFS_JSON [EVAL_JSON]
EVAL_JSON (optional): {"texts": [...], "embeddings": [[...], ...]}: edgeforge's eval texts and its f32
engine's embeddings of them; the texts are tokenized with the tokenizer.json beside MODEL.onnx, and the
JSON then also has onnxruntime's mean cosine to those embeddings (`eval_cosine_mean`; `eval_cosine_mean_unfused`
with graph optimizations off, i.e. the graph's reference semantics without onnxruntime's integer-kernel
fusions), to compare with the figure edgeforge computed from the file.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def feeds(ids):
    ids = np.array([ids], np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def activation_zero_points(model):
    """The element types and the number of nonzero values of every QuantizeLinear's zero point."""
    inits = {t.name: t for t in model.graph.initializer}
    types, nonzero = set(), 0
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            z = onnx.numpy_helper.to_array(inits[n.input[2]])
            types.add(str(z.dtype))
            nonzero += int(np.count_nonzero(z))
    return {"types": sorted(types), "nonzero": nonzero}


def main():
    path, refs = sys.argv[1], json.load(open(sys.argv[2]))
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    out = {
        "opset": [(o.domain, o.version) for o in model.opset_import],
        "ops": sorted({n.op_type for n in model.graph.node}),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "onnxruntime": ort.__version__,
        "activation_zero_points": activation_zero_points(model),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    run = lambda ids: sess.run(["sentence_embedding"], feeds(ids))[0][0]
    out["ort_cosines"] = [cosine(run(s["input_ids"]), s["embedding_fp64"]) for s in refs["sentences"]]
    # Padded batch: padding must not change the embeddings.
    batch = [s["input_ids"] for s in refs["sentences"]]
    n = max(map(len, batch))
    ids = np.array([b + [0] * (n - len(b)) for b in batch], np.int64)
    mask = np.array([[1] * len(b) + [0] * (n - len(b)) for b in batch], np.int64)
    embs = sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})[0]
    out["ort_batch_cosines"] = [cosine(e, s["embedding_fp64"]) for e, s in zip(embs, refs["sentences"])]
    if len(sys.argv) > 3:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(Path(path).parent / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        ev = json.load(open(sys.argv[3]))
        cos = [cosine(run(tok.encode(t).ids), e) for t, e in zip(ev["texts"], ev["embeddings"])]
        out["eval_cosine_mean"] = float(np.mean(cos))
        # The graph's own semantics: no fusion into onnxruntime's integer kernels.
        plain = ort.SessionOptions()
        plain.intra_op_num_threads = 1
        plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ref_sess = ort.InferenceSession(path, plain, providers=["CPUExecutionProvider"])
        cos = [cosine(ref_sess.run(["sentence_embedding"], feeds(tok.encode(t).ids))[0][0], e)
               for t, e in zip(ev["texts"], ev["embeddings"])]
        out["eval_cosine_mean_unfused"] = float(np.mean(cos))
    try:
        import openvino as ov
    except ImportError:
        out["openvino"] = None
    else:
        # OpenVINO's CPU plugin runs in bf16 by default on CPUs with native bf16 (AMX,
        # AVX512-BF16): a speed choice of the runtime, not what the file says. Ask for f32
        # so the check measures the file, on whatever CPU the tests land.
        core = ov.Core()
        compiled = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out["openvino"] = ov.__version__
        out["openvino_precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        out["openvino_cosines"] = [
            cosine(compiled(feeds(s["input_ids"]))["sentence_embedding"][0], s["embedding_fp64"])
            for s in refs["sentences"]
        ]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
