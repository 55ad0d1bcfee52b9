#!/usr/bin/env python3
"""Runs the decoder graph edgeforge wrote for onnxruntime-genai (model.onnx) with plain onnxruntime on token
sequences, each from an empty KV cache (batch 1, attention_mask all ones, position_ids 0..n), and writes
each sequence's logits [n, vocab] as little-endian float32, twice: with onnxruntime's default graph
optimizations (`OUT.optimized.I.f32` for sequence I) and with them off (`OUT.unfused.I.f32`, each op's own
kernel: the graph's reference semantics). Prints JSON with onnxruntime's version and the logits' shapes.

Usage: onnx_decoder_logits.py MODEL.onnx TOKEN_IDS OUT
TOKEN_IDS: sequences separated by `;`, ids by `,` (e.g. `1,2,3;4,5`).
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def feeds(session, ids):
    n = len(ids)
    inputs = {
        "input_ids": np.array([ids], np.int64),
        "attention_mask": np.ones((1, n), np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None, :],
    }
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            _, kv_heads, _, head_dim = i.shape
            inputs[i.name] = np.zeros((1, kv_heads, 0, head_dim), np.float16)
    return {k: v for k, v in inputs.items() if k in {i.name for i in session.get_inputs()}}


def session(path, level):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main():
    path, out = sys.argv[1], sys.argv[3]
    seqs = [[int(t) for t in s.split(",")] for s in sys.argv[2].split(";")]
    shapes = []
    for name, level in [
        ("optimized", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        ("unfused", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    ]:
        s = session(path, level)
        shapes = []
        for i, ids in enumerate(seqs):
            (logits,) = s.run(["logits"], feeds(s, ids))
            rows = np.ascontiguousarray(logits[0], dtype="<f4")
            shapes.append(list(rows.shape))
            rows.tofile(f"{out}.{name}.{i}.f32")
    print(json.dumps({"onnxruntime": ort.__version__, "shapes": shapes}))


if __name__ == "__main__":
    main()
