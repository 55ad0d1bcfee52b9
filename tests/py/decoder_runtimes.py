#!/usr/bin/env python3
"""Runs a decoder graph edgeforge wrote (an onnxruntime-genai folder's model.onnx) with onnxruntime and
with OpenVINO on the CPU, over the token ids given, with an empty KV cache, and prints JSON: each
runtime's argmax per position and the largest absolute difference between their logits.

Usage: decoder_runtimes.py FOLDER TOKEN_ID...
"""
import json
import sys

import numpy as np
import onnxruntime as ort
import openvino as ov


def feeds(config, ids):
    d = config["model"]["decoder"]
    n = len(ids)
    out = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, n), dtype=np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None, :],
    }
    empty = np.zeros((1, d["num_key_value_heads"], 0, d["head_size"]), dtype=np.float16)
    for i in range(d["num_hidden_layers"]):
        out[f"past_key_values.{i}.key"] = empty
        out[f"past_key_values.{i}.value"] = empty
    return out


def main():
    folder, ids = sys.argv[1], [int(t) for t in sys.argv[2:]]
    config = json.load(open(f"{folder}/genai_config.json"))
    path = f"{folder}/{config['model']['decoder']['filename']}"
    inputs = feeds(config, ids)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    theirs = session.run(["logits"], inputs)[0][0]
    compiled = ov.Core().compile_model(path, "CPU")
    request = compiled.create_infer_request()
    request.infer(inputs)
    vino = np.asarray(request.get_tensor("logits").data)[0]
    print(json.dumps({
        "onnxruntime": [int(a) for a in theirs.argmax(-1)],
        "openvino": [int(a) for a in vino.argmax(-1)],
        "max_abs_diff": float(np.abs(theirs - vino).max()),
        "openvino_version": ov.get_version(),
    }))


if __name__ == "__main__":
    main()
