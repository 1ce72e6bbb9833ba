"""Evaluation: score a model's completions on held-out problems. `posttrain.eval.gsm8k` loads
GSM8K, builds zero- and few-shot chat prompts and scores completions (accuracy under the
strict "#### n" and the flexible answer extraction of `posttrain.rewards.math`, pass@k, and
corpus BLEU against the reference solutions); `posttrain.eval.passk` holds the unbiased
pass@k estimator; `posttrain.eval.structeval` scores structured-output tasks. Submodules are
imported by name, so importing this package loads nothing."""
