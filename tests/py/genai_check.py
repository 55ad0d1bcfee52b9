#!/usr/bin/env python3
"""Runs a folder edgeforge exported for onnxruntime-genai: loads it with onnxruntime_genai (its own
genai_config.json and tokenizer files), greedy-generates new tokens for a prompt, and prints JSON with the
prompt's token ids, the new token ids and their text.

Usage: genai_check.py FOLDER PROMPT MAX_NEW_TOKENS
"""
import json
import sys

import onnxruntime_genai as og


def main():
    folder, prompt, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = og.Model(folder)
    tokenizer = og.Tokenizer(model)
    prompt_ids = [int(t) for t in tokenizer.encode(prompt)]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    tokens = []
    while not generator.is_done() and len(tokens) < new_tokens:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    print(json.dumps({
        "genai": og.__version__,
        "prompt_tokens": prompt_ids,
        "tokens": tokens,
        "text": tokenizer.decode(tokens),
    }))


if __name__ == "__main__":
    main()
