"""Independent Gemma-3 reference: a numpy forward pass (float64 layers,
float32 head) following Hugging Face transformers' Gemma3 semantics, over the
weights of a GGUF file dequantized by llama.cpp's own `gguf` package, and the
SentencePiece library's BPE for the tokens.

usage: gemma3_ref.py MODEL.gguf OUT_DIR [--steps N] [--last] [--tokens-only]
                     [--continue IDS.json] PROMPT...

Writes OUT_DIR/reference.json: per prompt its token ids, its own greedy
continuation of N tokens (default 0) and the name of a raw little-endian
float32 file holding the logits at every position, [positions, vocab]
(`--last`: the last position only, [1, vocab]). `--continue` gives, per
prompt, token ids to append (teacher forcing): the logits then cover the
prompt and those tokens. `--tokens-only` writes the ids alone and loads no
weights.

What this does not take from llama.cpp or edgeforge: the tokenizer (Google's
sentencepiece builds the model from the GGUF's pieces, scores and types),
the graph (HF's modeling_gemma3: (1 + w) RMSNorm, q/k norm, rotate-half
RoPE with a local and a global base, sliding-window mask, GELU-tanh MLP,
post-attention and post-FFN norms, sqrt(d) embedding scale, tied head).
llama.cpp's converter stores Gemma norm weights with the 1 already added, so
HF's w is the stored value minus 1.
"""

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
import sentencepiece as spm

# Facts of Gemma3TextConfig that GGUF does not carry (HF defaults, 270M).
ROPE_LOCAL_BASE = 10_000.0
SLIDING_WINDOW_PATTERN = 6


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def load(path):
    r = GGUFReader(path)
    cfg = {
        "hidden": field(r, "gemma3.embedding_length"),
        "layers": field(r, "gemma3.block_count"),
        "heads": field(r, "gemma3.attention.head_count"),
        "kv_heads": field(r, "gemma3.attention.head_count_kv"),
        "head_dim": field(r, "gemma3.attention.key_length"),
        "eps": field(r, "gemma3.attention.layer_norm_rms_epsilon"),
        "rope_global": field(r, "gemma3.rope.freq_base"),
        "window": field(r, "gemma3.attention.sliding_window"),
    }
    cfg["query_pre_attn_scalar"] = cfg["head_dim"]
    weights = {}
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        w = dequantize(t.data, t.tensor_type).reshape(shape)
        # The head's 168M weights stay float32; the layers run in float64.
        weights[t.name] = w.astype(np.float32 if t.name == "token_embd.weight" else np.float64)
    return cfg, weights, load_vocab(r)


def load_vocab(r):
    tokens = field(r, "tokenizer.ggml.tokens")
    scores = field(r, "tokenizer.ggml.scores")
    types = field(r, "tokenizer.ggml.token_type")
    bos = field(r, "tokenizer.ggml.bos_token_id")
    return tokens, scores, types, bos


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(field, wire):
    return varint(field << 3 | wire)


def message(field, body):
    return tag(field, 2) + varint(len(body)) + body


def sentencepiece_model(tokens, scores, types):
    """A serialized sentencepiece ModelProto (fields of sentencepiece_model.proto),
    written by hand: sentencepiece's generated module needs a newer protobuf
    than flwr allows in the same environment."""
    unknown, by_type = 2, {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}
    out = bytearray()
    for text, score, ty in zip(tokens, scores, types):
        kind = unknown if text == "<unk>" else by_type[int(ty)]
        body = message(1, text.encode()) + tag(2, 5) + struct.pack("<f", float(score)) + tag(3, 0) + varint(kind)
        out += message(1, body)
    bpe = 2
    trainer = (tag(3, 0) + varint(bpe) + tag(4, 0) + varint(len(tokens)) + tag(35, 0) + varint(1)
               + tag(40, 0) + varint(3) + tag(41, 0) + varint(2) + tag(42, 0) + varint(1) + tag(43, 0) + varint(0))
    out += message(2, trainer)
    normalizer = (message(1, b"identity") + tag(3, 0) + varint(0) + tag(4, 0) + varint(0)
                  + tag(5, 0) + varint(1))
    out += message(3, normalizer)
    return bytes(out)


class Tokenizer:
    """sentencepiece over the GGUF vocabulary (BPE, byte fallback, no dummy
    prefix, spaces escaped to U+2581, ids: pad 0, eos 1, bos 2, unk 3).
    User-defined and control tokens are split out of the raw text first
    (longest first), as llama.cpp and HF's fast Gemma tokenizer do;
    sentencepiece encodes what is between."""

    def __init__(self, tokens, scores, types, bos):
        self.sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model(tokens, scores, types))
        self.special = sorted(
            ((t, i) for i, (t, ty) in enumerate(zip(tokens, types)) if int(ty) in (3, 4) and t),
            key=lambda p: (-len(p[0]), p[1]),
        )
        self.bos = bos

    def encode(self, text):
        ids, plain, i = [self.bos], "", 0
        while i < len(text):
            hit = next(((t, tid) for t, tid in self.special if text.startswith(t, i)), None)
            if hit is None:
                plain += text[i]
                i += 1
                continue
            if plain:
                ids += self.sp.encode(plain)
            plain = ""
            ids.append(hit[1])
            i += len(hit[0])
        if plain:
            ids += self.sp.encode(plain)
        return ids

    def decode(self, ids):
        return self.sp.decode(ids)


def rms_norm(x, w_gguf, eps):
    w_hf = w_gguf - 1.0
    x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * (1.0 + w_hf)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def rope(x, positions, base):
    """HF apply_rotary_pos_emb: x [heads, n, d], rotate_half pairing."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    freqs = np.outer(positions, inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    rotated = np.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def forward(cfg, w, ids, last_only=False):
    """Logits [n, vocab] (or [1, vocab]) for token ids, no cache."""
    n, hd, heads, kv_heads = len(ids), cfg["head_dim"], cfg["heads"], cfg["kv_heads"]
    eps = cfg["eps"]
    lin = lambda x, name: x @ w[name].T
    x = w["token_embd.weight"][ids].astype(np.float64) * math.sqrt(cfg["hidden"])
    positions = np.arange(n, dtype=np.float64)
    q_idx, k_idx = np.arange(n)[:, None], np.arange(n)[None, :]
    for i in range(cfg["layers"]):
        p = f"blk.{i}."
        sliding = (i + 1) % SLIDING_WINDOW_PATTERN != 0
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = lin(h, p + "attn_q.weight").reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(h, p + "attn_k.weight").reshape(n, kv_heads, hd).transpose(1, 0, 2)
        v = lin(h, p + "attn_v.weight").reshape(n, kv_heads, hd).transpose(1, 0, 2)
        q = rms_norm(q, w[p + "attn_q_norm.weight"], eps)
        k = rms_norm(k, w[p + "attn_k_norm.weight"], eps)
        base = ROPE_LOCAL_BASE if sliding else cfg["rope_global"]
        q, k = rope(q, positions, base), rope(k, positions, base)
        group = heads // kv_heads
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) * cfg["query_pre_attn_scalar"] ** -0.5
        visible = k_idx <= q_idx
        if sliding:
            visible &= (q_idx - k_idx) < cfg["window"]
        scores = np.where(visible, scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        ctx = (scores @ v).transpose(1, 0, 2).reshape(n, heads * hd)
        h = rms_norm(lin(ctx, p + "attn_output.weight"), w[p + "post_attention_norm.weight"], eps)
        x = x + h
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        h = gelu_tanh(lin(h, p + "ffn_gate.weight")) * lin(h, p + "ffn_up.weight")
        h = rms_norm(lin(h, p + "ffn_down.weight"), w[p + "post_ffw_norm.weight"], eps)
        x = x + h
    if last_only:
        x = x[-1:]
    x = rms_norm(x, w["output_norm.weight"], eps).astype(np.float32)
    return x @ w["token_embd.weight"].T


def main():
    args = sys.argv[1:]
    steps, last, tokens_only, continuations = 0, False, False, None
    if "--steps" in args:
        at = args.index("--steps")
        steps = int(args[at + 1])
        del args[at : at + 2]
    if "--continue" in args:
        at = args.index("--continue")
        continuations = json.loads(Path(args[at + 1]).read_text())
        del args[at : at + 2]
    for flag in ("--last", "--tokens-only"):
        if flag in args:
            args.remove(flag)
            last, tokens_only = last or flag == "--last", tokens_only or flag == "--tokens-only"
    model, out_dir, prompts = args[0], Path(args[1]), args[2:]
    if tokens_only:
        tok = Tokenizer(*load_vocab(GGUFReader(model)))
        ids = [{"prompt": p, "ids": tok.encode(p)} for p in prompts]
        (out_dir / "reference.json").write_text(json.dumps({"prompts": ids}, ensure_ascii=False))
        return
    cfg, w, vocab = load(model)
    tok = Tokenizer(*vocab)
    report = {"model": model, "prompts": []}
    for k, prompt in enumerate(prompts):
        ids = tok.encode(prompt)
        forced = continuations[k] if continuations else []
        logits = forward(cfg, w, ids + forced, last_only=last)
        name = f"logits_{k}.f32"
        logits.astype("<f4").tofile(out_dir / name)
        seq, greedy = list(ids), []
        next_logits = logits[len(ids) - 1] if not last else logits[-1]
        for _ in range(steps):
            nxt = int(np.argmax(next_logits))
            if nxt == 1:  # <eos>
                break
            greedy.append(nxt)
            seq.append(nxt)
            next_logits = forward(cfg, w, seq, last_only=True)[0]
        report["prompts"].append({
            "prompt": prompt,
            "ids": ids,
            "continuation_text": tok.decode(forced),
            "vocab": int(logits.shape[1]),
            "logits_file": name,
            "greedy": greedy,
            "greedy_text": tok.decode(greedy),
        })
    (out_dir / "reference.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
