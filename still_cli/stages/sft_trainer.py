"""`still sft`'s trainer: TRL's SFTTrainer with the model's own loss on CPU and length-sorted chunks of a
batch (`--length-chunks`). Written by hand: none of the libraries splits a micro-batch by length."""

from __future__ import annotations

import contextlib
from typing import Any


def sft_trainer_class(length_chunks: int = 1) -> type:
    """TRL's SFTTrainer, with the plain loss on CPU and `length_chunks` (see training_step).

    TRL computes the SFT loss through its fused LM head (`add_fused_lm_head`: per-token log-probs in
    vocabulary tiles, never the full logits). On GPUs that is a Triton kernel and saves memory; on CPU it
    runs the kernel's torch fallback, a chain of tile-wise ops. Measured on the demo's tiny model (CPU,
    32 rows x ~100 tokens, vocab 1,024): 230 ms per step through the fused head vs 168 ms with the model's
    own forward + cross-entropy. So on CPU, single process, plain NLL (no label smoothing, DFT, aux loss
    or custom loss) this computes the loss the model's own way: the same mean NLL over the label tokens
    (sum / TRL's `num_items_in_batch`), and logs the same entropy / mean_token_accuracy / num_tokens
    metrics from the logits. Everything else (GPUs, other losses) is TRL's own path, untouched."""
    import torch
    from trl import SFTTrainer

    class CPUFriendlySFTTrainer(SFTTrainer):
        def _plain_loss(self, model: Any) -> bool:
            return (model.device.type == "cpu" and self.args.loss_type == "nll" and not self.aux_loss_enabled
                    and self.label_smoother is None and self.compute_loss_func is None
                    and self.accelerator.num_processes == 1)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not self._plain_loss(model):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            outputs = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch)
            with torch.no_grad():  # TRL's metrics, from the logits this path has anyway
                labels = inputs["labels"][:, 1:]
                mask = labels != -100
                logits = outputs.logits[:, :-1][mask].float()
                logp = logits.log_softmax(-1)
                n = max(int(mask.sum()), 1)
                self._metrics[mode]["entropy"].append(float(-(logp.exp() * logp).sum()) / n)
                self._metrics[mode]["mean_token_accuracy"].append(
                    float((logits.argmax(-1) == labels[mask]).sum()) / n)
                if mode == "train":
                    if "attention_mask" in inputs:
                        self._total_train_tokens += int(inputs["attention_mask"].sum())
                    else:  # padding-free batches carry position_ids instead
                        self._total_train_tokens += inputs["position_ids"].size(1)
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return outputs.loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            """`length_chunks` > 1: the micro-batch in chunks of rows of similar length (none of the libraries
            splits a batch this way; transformers' group_by_length changes which rows share a step instead).
            Each chunk's loss is its share of the whole batch's token mean (sum / the batch's label count),
            so the summed gradients are the unsplit batch's."""
            att = inputs.get("attention_mask")
            if self.length_chunks <= 1 or att is None or "labels" not in inputs or att.size(0) < 2:
                return super().training_step(model, inputs, num_items_in_batch)
            if num_items_in_batch is None:
                num_items_in_batch = int((inputs["labels"][:, 1:] != -100).sum())
            order = att.sum(1).argsort(stable=True)
            chunks = list(order.tensor_split(min(self.length_chunks, att.size(0))))
            metrics = self._metrics["train"]
            start = {key: len(metrics[key]) for key in ("entropy", "mean_token_accuracy")}
            weights, loss = [], 0.0
            for i, rows in enumerate(chunks):
                cols = att[rows].any(0)  # the chunk's own width: columns where any of its rows has a token
                chunk = {k: v[rows][:, cols] if torch.is_tensor(v) and v.shape[:2] == att.shape
                         else v[rows] if torch.is_tensor(v) and v.dim() and v.size(0) == att.size(0) else v
                         for k, v in inputs.items()}
                weights.append(int((chunk["labels"][:, 1:] != -100).sum()))
                # data parallel: gradients are all-reduced once, after the last chunk
                sync = i == len(chunks) - 1 or self.accelerator.num_processes == 1
                with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                    loss = loss + super().training_step(model, chunk, num_items_in_batch)
            for key, n in start.items():  # one token-weighted value per step, as an unsplit batch logs
                values = metrics[key][n:]
                if len(values) == len(weights) and sum(weights):
                    metrics[key][n:] = [sum(v * w for v, w in zip(values, weights)) / sum(weights)]
            return loss

    CPUFriendlySFTTrainer.length_chunks = length_chunks
    return CPUFriendlySFTTrainer
