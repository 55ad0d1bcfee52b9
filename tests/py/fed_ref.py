"""Reference side of the `fed aggregate` tests: writes client updates in the
documented format (docs/federated.md) with numpy + safetensors, and what
Flower's own aggregation functions make of the same clients.

  fed_ref.py model OUT_DIR
      a small model folder with odd tensor shapes (OUT_DIR/model.safetensors)
  fed_ref.py updates GLOBAL_DIR OUT_DIR N SEED
      N updates against the global version in GLOBAL_DIR (u<i>.safetensors),
      and expected_<strategy>.safetensors: Flower's aggregate, aggregate_median,
      aggregate_trimmed_avg (0.2), aggregate_krum (1 malicious; Krum and
      Multi-Krum keeping 3) on weights = global + delta, in float32.
      Also partial.safetensors (only some tensors) and expected_partial.
  fed_ref.py bad GLOBAL_DIR OUT_DIR
      updates that must be rejected, one per file, named by the case.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from flwr.server.strategy.aggregate import (
    aggregate,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

SHAPES = {"a.weight": (7, 5), "b.bias": (3,), "c.cube": (2, 3, 4), "d.scalar": (1,), "e.long": (4097,)}


def global_state(gdir):
    lineage_bytes = (gdir / "lineage.json").read_bytes()
    lineage = json.loads(lineage_bytes)
    weights = load_file(str(gdir / "model" / "model.safetensors"))
    return hashlib.sha256(lineage_bytes).hexdigest(), lineage, weights


def meta(gid, lineage, client, examples, **over):
    m = {
        "schema": "edgeforge.fed.update/v1",
        "base": gid,
        "tokenizer_sha256": lineage["tokenizer_sha256"],
        "recipe_sha256": lineage["recipe_sha256"],
        "client": client,
        "target": "rpi5-8gb",
        "examples": str(examples),
        "local_steps": "10",
        "tool": "fed_ref.py",
        "encoding": "f32",
    }
    m.update(over)
    return m


def main():
    mode = sys.argv[1]
    if mode == "model":
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(7)
        save_file(
            {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()},
            str(out / "model.safetensors"),
            metadata={"format": "pt"},
        )
        return
    gdir, out = Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    gid, lineage, weights = global_state(gdir)
    names = sorted(weights)
    if mode == "updates":
        n, seed = int(sys.argv[4]), int(sys.argv[5])
        rng = np.random.default_rng(seed)
        results = []
        for i in range(n):
            delta = {k: (rng.standard_normal(weights[k].shape) * 0.1 * (1 + i % 3)).astype(np.float32) for k in names}
            examples = int(rng.integers(1, 500))
            save_file(delta, str(out / f"u{i}.safetensors"), metadata=meta(gid, lineage, f"client-{i}", examples))
            results.append(([weights[k] + delta[k] for k in names], examples))
        expected = {
            "fedavg": aggregate(results),
            "median": aggregate_median(results),
            "trimmed-mean": aggregate_trimmed_avg(results, 0.2),
            "krum": aggregate_krum(results, 1, 0),
            "multikrum": aggregate_krum(results, 1, 3),
        }
        for name, arrays in expected.items():
            save_file(
                {k: np.asarray(a, dtype=np.float32) for k, a in zip(names, arrays)},
                str(out / f"expected_{name}.safetensors"),
            )
        # One more client that trained only two tensors: FedAvg averages each
        # tensor over the clients that carry it.
        carried = ["a.weight", "e.long"]
        partial = {k: (rng.standard_normal(weights[k].shape) * 0.1).astype(np.float32) for k in carried}
        examples = 123
        save_file(partial, str(out / "partial.safetensors"), metadata=meta(gid, lineage, "client-partial", examples))
        with_partial = {}
        for j, k in enumerate(names):
            layer = [([r[0][j]], r[1]) for r in results]
            if k in carried:
                layer.append(([weights[k] + partial[k]], examples))
            with_partial[k] = np.asarray(aggregate(layer)[0], dtype=np.float32)
        save_file(with_partial, str(out / "expected_partial.safetensors"))
        return
    if mode == "bad":
        rng = np.random.default_rng(1)

        def delta(shapes=None):
            return {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in (shapes or SHAPES).items()}

        cases = {
            "other-base": (delta(), meta("0" * 64, lineage, "c-base", 10)),
            "other-tokenizer": (delta(), meta(gid, lineage, "c-tok", 10, tokenizer_sha256="1" * 64)),
            "other-recipe": (delta(), meta(gid, lineage, "c-recipe", 10, recipe_sha256="2" * 64)),
            "unknown-tensor": (delta({"z.extra": (3,)}), meta(gid, lineage, "c-name", 10)),
            "other-shape": (delta({"a.weight": (5, 7)}), meta(gid, lineage, "c-shape", 10)),
            "huge-norm": ({k: v * 1000 for k, v in delta().items()}, meta(gid, lineage, "c-norm", 10)),
            "dup-1": (delta(), meta(gid, lineage, "c-dup", 10)),
            "dup-2": (delta(), meta(gid, lineage, "c-dup", 20)),
            # Hostile metadata (issue 20): an example count that would take all
            # the weight, client ids and targets that are not names.
            "all-examples": (delta(), meta(gid, lineage, "c-greedy", 2**64 - 1)),
            "empty-client": (delta(), meta(gid, lineage, "", 10)),
            "path-client": (delta(), meta(gid, lineage, "../../etc/passwd", 10)),
            "path-target": (delta(), meta(gid, lineage, "c-target", 10, target="../x")),
        }
        nan = delta()
        nan["b.bias"][1] = np.nan
        cases["nan"] = (nan, meta(gid, lineage, "c-nan", 10))
        for name, (tensors, m) in cases.items():
            save_file(tensors, str(out / f"{name}.safetensors"), metadata=m)
        (out / "truncated.safetensors").write_bytes((out / "nan.safetensors").read_bytes()[:100])
        return
    if mode == "overflow":
        # One finite update whose values overflow f32 once scaled by the server lr.
        big = {k: np.full(s, 3.0e38, dtype=np.float32) for k, s in SHAPES.items()}
        save_file(big, str(out / "big.safetensors"), metadata=meta(gid, lineage, "c-big", 10))
        return
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
