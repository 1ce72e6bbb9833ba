"""posttrain <command> [RECIPE.yaml] [key.sub=value ...] [--out DIR] [--resume]

Errors a user can cause (a bad recipe, a bad data row, a missing file) print one line
naming the file, row or key and exit with status 2, never a bare traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from . import __version__
from .config import RECIPES, ConfigError, ModelConfig, find_recipe, load_recipe

console = Console(stderr=True)
log = logging.getLogger("posttrain")


def _stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file, or the name of a shipped recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4")
    p.add_argument("--out", help="output directory (default: the recipe's `out`)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"posttrain {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny-model", help="build the embedded tiny model offline")
    p.add_argument("--out", required=True, help="directory to write the model and tokenizer to")
    p.add_argument("--moe", action="store_true", help="the Qwen3-MoE variant")
    p.add_argument("--seed", type=int, default=0)

    _stage_args(sub.add_parser("sft", help="supervised fine-tuning"))
    _stage_args(sub.add_parser("rl", help="RL from verifiable rewards (grpo, dapo, gspo, sapo, ...)"))
    _stage_args(sub.add_parser("prefer", help="preference optimisation (dpo, orpo, simpo)"))
    _stage_args(sub.add_parser("distill", help="train a speculative-decoding draft (DFlash block "
                                              "drafter) from a target, then measure tau and speedup"))

    p = sub.add_parser("eval", help="generate and score (or score given predictions) on a benchmark")
    p.add_argument("task", help="gsm8k, structeval, structured, arithmetic, or spec (speculative "
                                "decoding: --target, --draft, --prompts, --block-size)")
    p.add_argument("--model", help="model directory or hub name (needed unless --predictions)")
    p.add_argument("--data", help="dataset file (gsm8k: JSONL question/answer; structeval: JSON records)")
    p.add_argument("--predictions", help="JSONL of completions made elsewhere, one row per example")
    p.add_argument("--out", default="runs/eval", help="directory for eval_results.json")
    p.add_argument("--n", type=int, help="only the first n examples")
    p.add_argument("--samples", type=int, default=1, help="completions per example (pass@k)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--few-shot", type=int, default=0, help="gsm8k: solved examples before the question")
    p.add_argument("--few-shot-data", help="gsm8k: file the few-shot examples come from (e.g. train)")
    p.add_argument("--corrected", action="store_true", help="structeval: fix the reference scorer's quirks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="sequences generated together")
    p.add_argument("--target", help="spec: the target model (directory, hub name or builtin:tiny)")
    p.add_argument("--draft", help="spec: a block-drafter directory (drafter.json) or an AR draft model")
    p.add_argument("--prompts", nargs="+", metavar="FILE", help="spec: JSONL prompt files (messages or prompt)")
    p.add_argument("--block-size", type=int, default=16, help="spec: verify block size B (tau ceiling)")

    p = sub.add_parser("export", help="merge an adapter into full weights and/or write GGUF for llama.cpp")
    p.add_argument("ckpt", help="a run's final/ directory (PEFT adapter or full model)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--merge", action="store_true", help="write --out as full HF weights (adapter merged)")
    p.add_argument("--gguf", metavar="FILE", help="write a GGUF file (relative to --out unless absolute)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "f32", "f16", "bf16"],
                   help="weight dtype (default: bfloat16 for --merge, f16 for --gguf)")

    p = sub.add_parser("report", help="plots of a run's metrics: PNGs and one offline HTML page")
    p.add_argument("run_dir", help="a run's output directory (one stage, or a demo with sft/ and rl/)")
    p.add_argument("--out", help="directory for the PNGs and report.html (default: RUN_DIR/report)")

    p = sub.add_parser("demo", help="the main job: SFT then RL of the embedded tiny model")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("overrides", nargs="*", help="stage overrides: sft:train.max_steps=100 rl:train.lr=1e-4")
    return parser


def cmd_tiny_model(args) -> None:
    from .models.tiny import build_tiny
    path = build_tiny(args.out, moe=args.moe, seed=args.seed)
    console.print(f"tiny {'MoE ' if args.moe else ''}model written to {path}")


def cmd_sft(args) -> None:
    from .train.sft import run_sft
    recipe = load_recipe(RECIPES["sft"], find_recipe(args.recipe), args.overrides)
    out = args.out or recipe.out
    result = run_sft(recipe, out, resume=args.resume)
    _summary("sft", out, result)


def cmd_prefer(args) -> None:
    from .train.prefer import run_prefer
    recipe = load_recipe(RECIPES["prefer"], find_recipe(args.recipe), args.overrides)
    out = args.out or recipe.out
    result = run_prefer(recipe, out, resume=args.resume)
    _prefer_summary(recipe.prefer.objective, out, result)


def _prefer_summary(title: str, out, result) -> None:
    from .train import dist
    from .train.metrics import read_metrics
    if not dist.is_main():
        return
    rows = [r for r in read_metrics(out) if "eval/accuracy" in r]
    table = Table(title=f"{title}: held-out pairs")
    for col in ("step", "loss", "accuracy", "margin"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["step"]), f"{r['eval/loss']:.4f}", f"{r['eval/accuracy']:.3f}", f"{r['eval/margin']:.3f}")
    console.print(table)
    console.print(f"outputs: {out}  (final model: {Path(out) / 'final'})")


def cmd_rl(args) -> None:
    from .train.rl import run_rl
    recipe = load_recipe(RECIPES["rl"], find_recipe(args.recipe), args.overrides)
    out = args.out or recipe.out
    result = run_rl(recipe, out, resume=args.resume)
    _rl_summary("rl", out, result)


def _rl_summary(title: str, out, result) -> None:
    from .train import dist
    from .train.metrics import read_metrics
    if not dist.is_main():
        return
    rows = [r for r in read_metrics(out) if "reward/mean" in r]
    table = Table(title=title)
    for col in ("step", "reward", "reward std", "zero-std groups", "entropy", "len", "s/step"):
        table.add_column(col, justify="right")
    every = max(1, len(rows) // 10)
    for r in rows[::every] + ([rows[-1]] if rows and (len(rows) - 1) % every else []):
        table.add_row(str(r["step"]), f"{r['reward/mean']:.3f}", f"{r['reward/std']:.3f}",
                      f"{r['frac_zero_std_groups']:.2f}", f"{r.get('entropy', float('nan')):.3f}",
                      f"{r['completion_len/mean']:.0f}", f"{r['time/step']:.2f}")
    console.print(table)
    if result.eval_before or result.eval_after:
        ev = Table(title="held-out (greedy)")
        ev.add_column("metric")
        ev.add_column("before", justify="right")
        ev.add_column("after", justify="right")
        for k in result.eval_after or result.eval_before:
            ev.add_row(k, f"{result.eval_before.get(k, float('nan')):.3f}",
                       f"{result.eval_after.get(k, float('nan')):.3f}")
        console.print(ev)
    console.print(f"outputs: {out}  (final model: {Path(out) / 'final'}, "
                  f"metrics: {Path(out) / 'metrics.jsonl'})")


def cmd_eval(args) -> None:
    if args.task == "spec":
        return cmd_eval_spec(args)
    from .eval.run import EvalSettings, run_eval, write_results
    settings = EvalSettings(
        task=args.task, model=args.model, data=args.data, predictions=args.predictions, n=args.n,
        samples=args.samples, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, few_shot=args.few_shot, few_shot_data=args.few_shot_data,
        corrected=args.corrected, seed=args.seed, batch_size=args.batch_size)
    results = run_eval(settings)
    path = write_results(results, args.out)
    table = Table(title=f"{args.task}: {args.model or args.predictions}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in _flat(results["metrics"]).items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(f"results: {path}")


def cmd_eval_spec(args) -> None:
    from .eval.spec import load_draft, run_spec_eval, spec_table, write_spec_results
    from .models.load import load_model, load_tokenizer
    missing = [o for o, v in (("--target", args.target), ("--draft", args.draft),
                              ("--prompts", args.prompts)) if not v]
    if missing:
        raise ConfigError(f"eval spec needs {', '.join(missing)}")
    if args.block_size < 2:
        raise ConfigError(f"--block-size must be >= 2, got {args.block_size}")
    for f in args.prompts:
        if not Path(f).is_file():
            raise ConfigError(f"--prompts: no such file: {f}")
    cfg = ModelConfig(path=args.target)
    tokenizer, target = load_tokenizer(cfg), load_model(cfg).eval()
    drafter = load_draft(args.draft, target)
    results = run_spec_eval(target, tokenizer, drafter, args.prompts, args.block_size,
                            args.max_new_tokens, n=args.n)
    path = write_spec_results(results, args.out)
    console.print(spec_table(results, f"speculative decoding, B={args.block_size}: {args.draft}"))
    console.print(f"results: {path}")


def cmd_distill(args) -> None:
    from .eval.spec import spec_table
    from .train.distill import run_distill
    recipe = load_recipe(RECIPES["distill"], find_recipe(args.recipe), args.overrides)
    out = args.out or recipe.out
    result = run_distill(recipe, out, resume=args.resume)
    from .train import dist
    if not dist.is_main():
        return
    table = Table(title="draft distillation (last step of each stage)")
    for col in ("stage", "steps", "loss", "top1", "E[N]+1 (teacher-forced)", "greedy len"):
        table.add_column(col, justify="right")
    for name, r in result.stages:
        last = r.history[-1] if r.history else {}
        table.add_row(name, str(r.step), f"{last.get('loss', float('nan')):.4f}",
                      f"{last.get('top1', float('nan')):.3f}",
                      f"{last.get('accept/tau_expected', float('nan')):.2f}",
                      f"{last.get('accept/greedy_len', float('nan')):.2f}")
    console.print(table)
    if result.spec:
        console.print(spec_table(result.spec, f"held-out speculative decoding, B={recipe.spec_eval.block_size or recipe.draft.block_size}"))
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"outputs: {out}  (draft: {result.draft_dir}, target: {result.target_path}; {secs})")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cmd_export(args) -> None:
    from .models.export import export
    r = export(args.ckpt, args.out, merge=args.merge, gguf_file=args.gguf, dtype=args.dtype)
    if r.model_dir:
        console.print(f"merged model written to {r.model_dir}")
    if r.gguf_file:
        console.print(f"GGUF written to {r.gguf_file}")


def cmd_report(args) -> None:
    from .report import build_report
    rep = build_report(args.run_dir, args.out)
    for s in rep.stages:
        name = s.name or "run"
        console.print(f"{name}: {len(s.pngs)} plots ({', '.join(s.pngs)})", soft_wrap=True)
        if s.empty:
            console.print(f"{name}: not logged in this run: {', '.join(p.key for p in s.empty)}", soft_wrap=True)
        if s.no_finite:
            console.print(f"{name}: logged but never finite: {', '.join(s.no_finite)}", soft_wrap=True)
    console.print(f"report: {rep.html}  (PNGs in {rep.out_dir})", soft_wrap=True)


DEMO_METRICS = ("format", "schema", "type", "exact", "reward")


def cmd_demo(args) -> None:
    """SFT warm start -> SAPO + DAPO dynamic sampling + GDPO -> held-out evaluation.

    Overrides go to one stage by prefix: `sft:train.max_steps=200`, `rl:train.lr=1e-4`.
    """
    import time

    from .train.rl import run_rl
    from .train.sft import run_sft
    sft_ov, rl_ov = [], []
    for ov in args.overrides:
        stage, sep, rest = ov.partition(":")
        if not sep or stage not in ("sft", "rl"):
            raise ConfigError(f"demo override {ov!r}: prefix it with the stage, e.g. sft:{ov} or rl:{ov}")
        (sft_ov if stage == "sft" else rl_ov).append(rest)
    out = Path(args.out)
    sft_recipe = load_recipe(RECIPES["sft"], find_recipe("tiny-sft"), sft_ov)
    rl_recipe = load_recipe(RECIPES["rl"], find_recipe("tiny-rl"),
                            [f"model.path={out / 'sft' / 'final'}"] + rl_ov)
    t0 = time.perf_counter()
    sft = run_sft(sft_recipe, out / "sft")
    t_sft = time.perf_counter() - t0
    _summary("demo 1/2: sft", out / "sft", sft)
    rl = run_rl(rl_recipe, out / "rl")
    seconds = time.perf_counter() - t0
    _rl_summary("demo 2/2: rl", out / "rl", rl)
    results = {"before": {k: rl.eval_before.get(k) for k in DEMO_METRICS},
               "after": {k: rl.eval_after.get(k) for k in DEMO_METRICS},
               "steps": rl.step, "seconds": round(seconds, 1),
               "sft_steps": sft.step, "sft_seconds": round(t_sft, 1), "rl_seconds": round(seconds - t_sft, 1),
               "heldout_prompts": sum(s.n or 0 for s in rl_recipe.data.eval)}
    (out / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title=f"held-out, greedy ({results['heldout_prompts']} prompts): SFT vs SFT + RL")
    for col in ("", *DEMO_METRICS):
        table.add_column(col, justify="right")
    for name in ("before", "after"):
        table.add_row("sft" if name == "before" else "sft + rl",
                      *(f"{results[name][k]:.3f}" for k in DEMO_METRICS))
    console.print(table)
    _show_samples(out / "rl" / "final", rl_recipe)
    console.print(f"{seconds:.0f} s in all (sft {t_sft:.0f} s, rl {seconds - t_sft:.0f} s); "
                  f"results: {out / 'demo_results.json'}")


def _show_samples(model_dir: Path, recipe, n: int = 2) -> None:
    """Greedy completions of the fine-tuned model on a few held-out prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data.chat import tokenize_prompt
    from .data.sources import load_sources
    if not recipe.data.eval:
        return
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    table = Table(title="held-out samples (greedy)", show_lines=True)
    table.add_column("prompt")
    table.add_column("model")
    table.add_column("reference")
    for ex in load_sources(recipe.data.eval, seed=recipe.data.seed, key="data.eval")[:n]:
        ids = torch.tensor([tokenize_prompt(tok, ex.prompt_messages)])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=160, do_sample=False)
        table.add_row(ex.prompt_messages[-1]["content"],
                      tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True),
                      ex.completion or "")
    console.print(table)


def _summary(title: str, out, result) -> None:
    from .train import dist
    from .train.metrics import read_metrics
    if not dist.is_main():
        return
    rows = read_metrics(out)
    evals = [r for r in rows if "eval/loss" in r]
    table = Table(title=title)
    table.add_column("step", justify="right")
    table.add_column("train loss", justify="right")
    table.add_column("held-out loss", justify="right")
    shown = evals if evals else rows[-1:]
    for r in shown:
        tl = r.get("loss")
        table.add_row(str(r["step"]), "-" if tl is None else f"{tl:.4f}",
                      f"{r['eval/loss']:.4f}" if "eval/loss" in r else "-")
    console.print(table)
    console.print(f"outputs: {out}  (final model: {Path(out) / 'final'}, "
                  f"metrics: {Path(out) / 'metrics.jsonl'})")


COMMANDS = {"tiny-model": cmd_tiny_model, "sft": cmd_sft, "rl": cmd_rl, "prefer": cmd_prefer, "eval": cmd_eval,
            "export": cmd_export, "demo": cmd_demo, "report": cmd_report, "distill": cmd_distill}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come before or after --out: argparse leaves the late ones unparsed
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("transformers", "datasets", "httpx", "urllib3", "gguf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .data.chat import TemplateError
    from .data.sources import DataError
    from .report import ReportError
    from .train.loop import TrainingError
    try:
        COMMANDS[args.command](args)
    except (ConfigError, DataError, TemplateError, TrainingError, ReportError, OSError) as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; continue with --resume")
        return 130
    finally:
        import torch.distributed
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
