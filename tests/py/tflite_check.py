"""Runs an edgeforge .tflite export in LiteRT's interpreter on the MiniLM
reference sentences (token ids padded to the model's sequence length, with
the attention mask) and prints JSON: per-sentence cosine to the fp64
reference embeddings, their mean and minimum, and the runtime's version.

usage: tflite_check.py MODEL.tflite minilm_reference.json
"""

import json
import sys
from importlib.metadata import version

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def main(model_path, ref_path):
    ref = json.load(open(ref_path))
    interp = Interpreter(model_path=model_path, num_threads=1)
    interp.allocate_tensors()
    inputs = {d["name"]: d for d in interp.get_input_details()}
    ids_in, mask_in = inputs["input_ids"], inputs["attention_mask"]
    seq = int(ids_in["shape"][-1])
    out = interp.get_output_details()[0]
    cosines = []
    for s in ref["sentences"]:
        ids = np.zeros((1, seq), dtype=np.int32)
        mask = np.zeros((1, seq), dtype=np.int32)
        n = len(s["input_ids"])
        ids[0, :n] = s["input_ids"]
        mask[0, :n] = 1
        interp.set_tensor(ids_in["index"], ids)
        interp.set_tensor(mask_in["index"], mask)
        interp.invoke()
        got = interp.get_tensor(out["index"]).astype(np.float64).reshape(-1)
        want = np.asarray(s["embedding_fp64"], dtype=np.float64)
        cosines.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
    print(json.dumps({
        "runtime": f"ai-edge-litert {version('ai-edge-litert')}",
        "output": out["name"],
        "output_dtype": str(out["dtype"].__name__),
        "seq_len": seq,
        "cosines": cosines,
        "mean_cosine": float(np.mean(cosines)),
        "min_cosine": float(np.min(cosines)),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
