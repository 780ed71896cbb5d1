import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_cli

TEXTS = [
    "What is $\\frac{1}{2} + 3^{10}$?  Résumé: naïve café 日本語 — ∑_{i=1}^n i\n\n\ttabs and   spaces ",
    "<think>\nLet me check. Wait, 7 + 15 = 22.\n</think>\n\nThe answer is \\boxed{22}.",
    "```python\nprint(8639 * 8864)\n```\n```output\n76576096\n```",
]


def test_tokenizer_round_trips_after_reload(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(tok("<think></think>")["input_ids"]) == ["<think>", "</think>"]


def test_chat_template_has_roles_and_think(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "<think>\nT\n</think>\n\nA"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert "<|im_start|>system\nS<|im_end|>" in text and "<|im_start|>user\nU<|im_end|>" in text
    assert "<|im_start|>assistant\n<think>\nT\n</think>\n\nA<|im_end|>" in text


def test_save_reload_generate(tiny_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert model.config.model_type == "qwen2"
    enc = tok("What is 2+2?", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    model.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, again(**enc).logits)


def test_init_model_cli_sizes(tmp_path):
    out = tmp_path / "m"
    r = run_cli("init-model", str(out), "--hidden-size", "32", "--num-hidden-layers", "1",
                "--num-attention-heads", "2", "--num-key-value-heads", "1", "--vocab-size", "400")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (32, 1)
    r = run_cli("init-model", str(tmp_path / "x"), "--hidden-size", "30", "--num-attention-heads", "4")
    assert r.returncode == 1 and "divisible" in r.stderr
