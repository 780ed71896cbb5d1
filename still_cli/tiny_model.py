"""`still init-model`: a small Qwen2-architecture model and tokenizer built locally, no download.

Tests, CI and the demo need a real causal LM that goes through exactly the code paths a hub model
does (`AutoModelForCausalLM` / `AutoTokenizer`, chat template, `generate`, TRL trainers). This builds
one from random init. The tokenizer is a byte-level BPE trained here on the shipped math text with
*the same* pipeline `Qwen2Tokenizer` re-applies on load (NFC, Qwen's split regex, byte-level), so a
reloaded tokenizer encodes exactly as the trained one; decode(encode(t)) == t for any NFC text.
The chat template is TRL's `qwen3.jinja` (system/user/assistant, `<think>` tags, tools), which TRL
recognises, so assistant-only loss and its training template work unchanged.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import require

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added (not special) like Qwen3's: they survive decode(skip_special_tokens=True).
ADDED_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


@dataclass
class InitModelConfig:
    output: str = field(default="", metadata={"help": "Folder to write the model and tokenizer to."})
    hidden_size: int = field(default=128, metadata={"help": "Width of the residual stream."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    num_attention_heads: int = field(default=2, metadata={"help": "Query heads; must divide hidden_size."})
    num_key_value_heads: int = field(default=1, metadata={"help": "KV heads (GQA); must divide the query heads."})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width."})
    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size to train (>= 300)."})
    max_position_embeddings: int = field(default=4096, metadata={"help": "Longest sequence the model accepts."})
    seed: int = field(default=0, metadata={"help": "Seed for the random weights."})
    corpus: str | None = field(default=None, metadata={
        "help": "Extra text (a .txt file, or a dataset whose `problem`/`solution`/`completion`/`text` fields are "
                "used) to train the tokenizer on, e.g. the task's own traces; None = the shipped MATH training "
                "text only."})

    def __post_init__(self):
        require(bool(self.output), "init-model needs an output folder; give OUT_DIR, e.g. still init-model runs/tiny")
        require(self.hidden_size % self.num_attention_heads == 0,
                f"hidden_size {self.hidden_size} must be divisible by num_attention_heads "
                f"{self.num_attention_heads}; pick e.g. --num-attention-heads 2")
        require(self.num_attention_heads % self.num_key_value_heads == 0,
                f"num_attention_heads {self.num_attention_heads} must be divisible by num_key_value_heads "
                f"{self.num_key_value_heads}")
        require(self.vocab_size >= 300, f"vocab_size {self.vocab_size} is too small; byte-level BPE needs >= 300")


def chat_template() -> str:
    spec = importlib.util.find_spec("trl")  # read the file without importing trl (keeps start-up fast)
    assert spec is not None and spec.submodule_search_locations
    return (Path(spec.submodule_search_locations[0]) / "chat_templates" / "qwen3.jinja").read_text()


def _corpus_texts(corpus: str | None) -> list[str]:
    from .data import iter_rows

    texts: list[str] = []
    for i, row in enumerate(iter_rows("math_train")):
        if i >= 3000:
            break
        texts += [row["problem"], row.get("solution") or ""]
    if corpus:
        p = Path(corpus)
        if p.suffix == ".txt":
            texts += p.read_text(encoding="utf-8").splitlines()
        else:
            for row in iter_rows(corpus):
                texts += [str(row.get(k, "")) for k in ("problem", "solution", "completion", "text")]
    texts += ["Okay, let me think step by step. Wait, let me check. The answer is \\boxed{42}."] * 50
    texts += ["```python\nprint(12 * 34)\n```\n```output\n408\n```"] * 50
    return texts


def build_tokenizer(vocab_size: int, corpus: str | None = None):
    """Train a byte-level BPE with Qwen2's exact pre-tokenisation and wrap it as a Qwen2Tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus_texts(corpus), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    qtok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None,
                          additional_special_tokens=SPECIAL_TOKENS[1:])
    qtok.add_tokens(ADDED_TOKENS)
    qtok.eos_token = "<|im_end|>"  # chat models end a turn with <|im_end|>, as Qwen2.5/3 instruct do
    qtok.pad_token = "<|endoftext|>"
    qtok.chat_template = chat_template()
    return qtok


def init_model(config: InitModelConfig) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(config.output)
    tokenizer = build_tokenizer(config.vocab_size, config.corpus)
    torch.manual_seed(config.seed)
    mcfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(mcfg)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(config: InitModelConfig) -> None:
    """CLI entry: build, then print the folder on stdout (so `$(still init-model runs/tiny)` works)."""
    import logging

    logging.getLogger(__name__).info("building tiny model in %s", config.output)
    print(init_model(config))
