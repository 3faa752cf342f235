"""Offline assets for the axolotl end-to-end test; run with the training venv's python.

    python make_assets.py OUT_DIR

Writes OUT_DIR/model (a tiny random Llama, hidden 64, 2 layers, plus a BPE tokenizer trained here
with a chat template) and OUT_DIR/data.jsonl (chat conversations in the `conversations` field).
Nothing is downloaded.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = [
    "the", "a", "model", "cluster", "node", "job", "train", "step",
    "loss", "merge", "copy", "check", "data", "token", "run", "epoch",
]  # fmt: skip


def conversations(n: int, rng: random.Random) -> list[dict[str, list[dict[str, str]]]]:
    rows = []
    for i in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
        rows.append(
            {
                "conversations": [
                    {"role": "user", "content": f"question {i}: {question}?"},
                    {"role": "assistant", "content": f"answer {i}: {answer}."},
                ]
            }
        )
    return rows


def main(out: Path) -> None:
    rng = random.Random(1234)
    torch.manual_seed(1234)
    out.mkdir(parents=True, exist_ok=True)
    rows = conversations(64, rng)
    with (out / "data.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")

    texts = [m["content"] for row in rows for m in row["conversations"]]
    texts += ["<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Untied, so every tensor is stored once and FSDP / safetensors see no shared storage.
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
