"""The generations table and its plot."""

from __future__ import annotations

from pathlib import Path

COLUMNS = [
    ("generation", "gen"),
    ("student_arch", "student"),
    ("labeled", "labeled"),
    ("pseudo_unique", "pseudo (unique)"),
    ("pseudo_with_copies", "pseudo (with copies)"),
    ("labeled_in", "pseudo labels made in"),
    ("pseudo_acc_all", "pseudo-label acc (all)"),
    ("pseudo_acc_kept", "pseudo-label acc (kept)"),
    ("probe_precision", "probe precision (kept)"),
    ("probe_coverage", "probe coverage"),
    ("teacher_top1", "teacher top-1"),
    ("student_top1", "student top-1"),
    ("teacher_params", "teacher params"),
    ("student_params", "student params"),
    ("mce", "mCE"),
    ("seconds", "seconds"),
]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, float) and value <= 1.0:
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], path: Path) -> None:
    path.write_text(format_table(rows))


def plot_generations(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["generation"], r["student_top1"]) for r in rows if r.get("student_top1") is not None]
    if not points:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([g for g, _ in points], [100 * a for _, a in points], marker="o")
    ax.set_xlabel("generation (0 = supervised teacher)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_xticks([g for g, _ in points])
    ax.grid(alpha=0.3)
    ax.set_title("Noisy Student: accuracy per generation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
