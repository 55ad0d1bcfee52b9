"""Writes tests/fixtures/refs/gemma3_llamacpp_reference.json (run through
scripts/make-gemma3-reference): what llama.cpp itself computes on
Gemma-3-270M's Q4_K_M GGUF and on edgeforge's F32 and Q8_0 re-quantizations
of it.

usage: gemma3_llamacpp.py GEMMA3_GGUF OUT_JSON [NAME=GGUF ...]

Per file (the Q4_K_M as `q4_k_m`, then each NAME=GGUF, edgeforge's own
outputs) its sha256 and per prompt: llama.cpp's token ids (BOS added, as
llama.cpp does for Gemma), its 16 greedy tokens, and the top-50 token ids
and logits (rounded to 1e-4) of every position (the prompt's positions from one batch, then
each greedy decode step).
"""

import hashlib
import json
import pathlib
import sys

import numpy as np
import llama_cpp

# ggml's AMX weight buffers segfault on hosts with AMX that do not grant the
# tiles; keep llama.cpp on its AVX2 kernels (as scripts/bench-decode does).
_defaults = llama_cpp.llama_cpp.llama_model_default_params


def _no_extra_buffers():
    p = _defaults()
    p.use_extra_bufts = False
    return p


llama_cpp.llama_cpp.llama_model_default_params = _no_extra_buffers

PROMPTS = [
    "The capital of France is",
    "Schnee fällt leise auf die Dächer von Zürich, und",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]
GREEDY = 16
TOP = 50
SETTINGS = {
    "n_ctx": 128,
    "n_batch": 128,
    "n_threads": 2,
    "flash_attn": False,
    "use_extra_bufts": False,
    "kv_cache": "f16 (default)",
}


def load(path):
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=SETTINGS["n_ctx"],
        n_batch=SETTINGS["n_batch"],
        n_threads=2,
        n_threads_batch=2,
        logits_all=True,
        flash_attn=False,
        seed=0,
        verbose=False,
    )


def run(llm, prompt):
    """Token ids, greedy tokens, and the [positions, vocab] logits."""
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    greedy = []
    for _ in range(GREEDY):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(tok)
        llm.eval([tok])
    logits = np.asarray(llm.scores[: llm.n_tokens], dtype=np.float32)
    return ids, greedy, logits


def top(row):
    order = np.argsort(-row, kind="stable")[:TOP]
    return [int(i) for i in order], [round(float(row[i]), 4) for i in order]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record(path):
    """llama.cpp's run of every prompt on the GGUF at `path`."""
    llm = load(path)
    assert llm.n_vocab() == 262144, llm.n_vocab()
    prompts = []
    for prompt in PROMPTS:
        ids, greedy, logits = run(llm, prompt)
        rows = [top(r) for r in logits]
        top2 = np.sort(logits, axis=1)[:, -2:]
        prompts.append(
            {
                "prompt": prompt,
                "ids": ids,
                "greedy": greedy,
                "greedy_text": llm.detokenize(greedy).decode("utf-8", "replace"),
                "top_ids": [r[0] for r in rows],
                "top_logits": [r[1] for r in rows],
            }
        )
        gap = float((top2[:, 1] - top2[:, 0]).min())
        print(f"{path.name} {prompt!r}: {len(ids)} ids, smallest top-2 gap {gap:.3f}, greedy {prompts[-1]['greedy_text']!r}", file=sys.stderr)
    del llm
    return {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size, "prompts": prompts}


def main():
    model, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    runs = {"q4_k_m": record(model)}
    for arg in sys.argv[3:]:
        name, path = arg.split("=", 1)
        runs[name] = record(pathlib.Path(path))
    report = {
        "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, CPU",
        "settings": SETTINGS,
        "rows": "per prompt: top-50 (ids, logits) of each position: the prompt's positions (one batch), then after feeding each of the 16 greedy tokens",
        "runs": runs,
    }
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
