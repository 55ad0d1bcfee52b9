"""Checks edgeforge's quantized bytes against llama.cpp's reference
quantizers in the `gguf` package. Usage: quant_ref.py DIR (holds cases.json,
and per case the f32 input, our encoded bytes and our decoded f32).

- `exact` cases: gguf.quants.quantize(input) must equal our bytes.
- `decode` cases (K-quants and IQ4, which gguf-py only decodes): gguf.quants.dequantize
  (our bytes) must equal our own decoded floats bit for bit."""
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

d = sys.argv[1]
cases = json.load(open(os.path.join(d, "cases.json")))
failures = []
for c in cases:
    qtype = T[c["type"]]
    ours = np.fromfile(os.path.join(d, c["ours"]), dtype=np.uint8)
    shape = c["shape"]
    if c["check"] == "exact":
        x = np.fromfile(os.path.join(d, c["input"]), dtype=np.float32).reshape(shape)
        ref = quants.quantize(x, qtype).reshape(-1)
        if qtype == T.F16:
            ref = ref.view(np.uint8)
        if ref.size != ours.size or not np.array_equal(ref.view(np.uint8), ours):
            diff = np.nonzero(ref.view(np.uint8) != ours)[0] if ref.size == ours.size else [0]
            failures.append(f"{c['name']} {c['type']}: {len(diff)} bytes differ, first at byte {diff[0]}")
    else:
        row_bytes = ours.size // shape[0]
        decoded = quants.dequantize(ours.reshape(shape[0], row_bytes), qtype).reshape(-1)
        mine = np.fromfile(os.path.join(d, c["decoded"]), dtype=np.float32)
        if not np.array_equal(decoded.astype(np.float32).view(np.uint32), mine.view(np.uint32)):
            n = int(np.sum(decoded != mine))
            failures.append(f"{c['name']} {c['type']}: gguf decodes {n} values differently")
if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
print(f"ok: {len(cases)} cases")
