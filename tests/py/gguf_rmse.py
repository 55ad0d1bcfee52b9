"""Reads a GGUF written by `edgeforge quantize` with the `gguf` package,
dequantizes every tensor and checks its RMSE against the original f32
safetensors equals what edgeforge reported. Usage:
gguf_rmse.py OUT.gguf REPORT.json ORIGINAL.safetensors"""
import json
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

gguf_path, report_path, st_path = sys.argv[1:4]
report = json.load(open(report_path))
with open(st_path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    base = 8 + n
raw = np.memmap(st_path, dtype=np.uint8, mode="r")
reader = GGUFReader(gguf_path)
tensors = {t.name: t for t in reader.tensors}
checked, errors = 0, []
for row in report["tensors"]:
    t = tensors.get(row["out_name"])
    if t is None:
        errors.append(f"{row['out_name']} missing from the GGUF")
        continue
    info = header[row["name"]]
    start, end = info["data_offsets"]
    orig = raw[base + start: base + end].view(np.float32).astype(np.float64).reshape(-1)
    got = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
    rmse = float(np.sqrt(np.mean((orig - got) ** 2)))
    want = row["rmse"]
    if abs(rmse - want) > 1e-6 * max(1.0, abs(want)) + 1e-9:
        errors.append(f"{row['out_name']} ({t.tensor_type.name}): RMSE {rmse:.8g}, reported {want:.8g}")
    checked += 1
if len(tensors) != len(report["tensors"]):
    errors.append(f"GGUF holds {len(tensors)} tensors, report lists {len(report['tensors'])}")
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"ok: {checked} tensors within the reported RMSE")
