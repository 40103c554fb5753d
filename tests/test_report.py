"""Plots and the one-page report: files, inlined images, escaping, numbers; and a real
render in headless Chromium when it is installed."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from dpokit import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY = {
    "reference": {"reward_mean": 0.12, "reward_ci95": [0.08, 0.16], "length_mean": 30.1},
    "policy": {"reward_mean": 0.45, "reward_ci95": [0.40, 0.50], "length_mean": 35.2},
    "win_rate": 0.71, "kl": 3.2, "implicit_accuracy": 0.68, "elapsed_s": 600.0, "n_heldout": 100,
}
EXAMPLES = [dict(prompt="I watched <b>this</b> film", reference="meh & <script>alert(1)</script>",
                 policy="great | fun\nsecond line", reference_reward=-0.1, policy_reward=0.8)]


def _metrics(path: Path) -> Path:
    with path.open("w") as f:
        for s in range(1, 21):
            f.write(json.dumps({"step": s, "loss": 0.69 - 0.01 * s, "rewards/margins": 0.02 * s}) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"step": s, "loss": 0.6, "rewards/margins": 0.1, "split": "eval"}) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    plots = {
        "training": report.plot_training(_metrics(d / "metrics.jsonl"), d / "training.png"),
        "reward distribution": report.plot_reward_distributions([-0.5, 0.0, 0.1, 0.3], [0.2, 0.5, 0.9, 0.6], d / "dist.png"),
        "reward vs KL": report.plot_reward_vs_kl(
            [dict(label="reference", kl=0.0, reward_mean=0.12, reward_ci95=[0.08, 0.16]),
             dict(label="beta=0.1", kl=3.2, reward_mean=0.45, reward_ci95=[0.40, 0.50])], d / "kl.png"),
    }
    md, html_path = report.write_report(d, SUMMARY, plots, EXAMPLES)
    return d, plots, md, html_path


def test_plots_are_real_pngs(run):
    _, plots, _, _ = run
    for png in plots.values():
        data = Path(png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        pixels = imread(png)
        assert pixels.shape[0] >= 300 and pixels.std() > 0.05  # drawn, not a blank canvas


def test_plot_training_without_metrics_still_writes(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"step": 1, "lr": 1e-6}) + "\n\n")
    out = report.plot_training(tmp_path / "m.jsonl", tmp_path / "sub" / "t.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_files_written_and_numbers_in_plain_sentences(run):
    d, _, md, html_path = run
    assert md == d / "report.md" and html_path == d / "report.html"
    for text in (md.read_text(), html_path.read_text()):
        assert "rose from 0.12 [0.08, 0.16] to 0.45 [0.40, 0.50] on 100 held-out prompts" in text
        assert "do not overlap" in text
        assert "71%" in text and "3.2 nats" in text and "68%" in text and "10.0 min" in text
    md_text = md.read_text()
    assert "![training](training.png)" in md_text  # relative path inside the run dir
    assert "great \\| fun<br>second line" in md_text


def test_html_self_contained_and_escaped(run):
    _, _, _, html_path = run
    text = html_path.read_text()
    assert text.count('src="data:image/png;base64,') == 3
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert "http" not in without_images
    assert not re.search(r"<link|<iframe|@import|url\(", without_images)
    assert all(src == "" for src in re.findall(r'src="([^"]*)"', without_images))
    assert "<script>alert(1)</script>" not in text
    assert "meh &amp; &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;this&lt;/b&gt;" in text


def test_headline_variants():
    flat = {"reference.reward_mean": 0.3, "reference.reward_ci95": [0.1, 0.5],
            "policy.reward_mean": 0.2, "policy.reward_ci95": [0.0, 0.4]}
    lines = report.headline(flat)
    assert lines[0].startswith("Mean ground-truth reward fell from 0.30 [0.10, 0.50] to 0.20 [0.00, 0.40]")
    assert lines[1] == "The two 95% intervals overlap."
    assert report.headline({"win_rate": 0.5}) == [
        "Win rate of the policy against the reference: 50% (same prompt, ground truth decides, ties count half)."]
    nan_ci = report.headline({"reference": {"reward_mean": 0.1, "reward_ci95": [float("nan")] * 2},
                              "policy": {"reward_mean": 0.1, "reward_ci95": [float("nan")] * 2}})
    assert nan_ci == ["Mean ground-truth reward was unchanged: 0.10 [n/a, n/a] for the reference, "
                      "0.10 [n/a, n/a] for the policy on held-out prompts (95% intervals)."]


# ------------------------------------------------------------ headless Chromium

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)


def _body_attrs(tmp_path: Path, page: Path) -> str:
    # --virtual-time-budget lets the load event (and our inline script) run before the dump.
    out = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri())
    match = re.search(r"<body[^>]*>", out.stdout)
    assert match, f"no <body> in dumped DOM; stderr: {out.stderr[-2000:]}"
    return match.group(0)


@pytest.mark.browser
@needs_chromium
def test_chromium_renders_report_and_loads_plots(run, tmp_path):
    _, _, _, html_path = run
    shot = tmp_path / "shot.png"
    out = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", html_path.resolve().as_uri())
    assert shot.exists(), out.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert shot.stat().st_size > 20_000 and pixels.std() > 0.05  # text and plots, not a blank page
    body = _body_attrs(tmp_path, html_path)
    assert 'data-images-loaded="true"' in body and 'data-image-count="3"' in body


@pytest.mark.browser
@needs_chromium
def test_chromium_image_check_detects_a_broken_image(run, tmp_path):
    """The in-page check can fail: corrupt one image and it must say so."""
    _, _, _, html_path = run
    broken = tmp_path / "broken.html"
    broken.write_text(html_path.read_text().replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    assert 'data-images-loaded="false"' in _body_attrs(tmp_path, broken)


def test_headline_reports_margin_calibration():
    cal = {"pairs": 6, "accuracy": 4 / 6, "spearman": 0.5, "by_gap": [
        {"gap_min": 0.1, "gap_max": 0.2, "pairs": 3, "accuracy": 1 / 3, "mean_margin": 0.0},
        {"gap_min": 0.5, "gap_max": 0.9, "pairs": 3, "accuracy": 1.0, "mean_margin": 1.5},
    ]}
    assert report.headline({"margin_calibration": cal}) == [
        "Implicit margin vs ground-truth gap on 6 held-out pairs: Spearman ρ = 0.50; "
        "accuracy by gap: gap 0.10–0.20: 33% of 3; gap 0.50–0.90: 100% of 3."
    ]
    assert report.headline({"margin_calibration": None}) == []
    assert report.headline({"margin_calibration": {"pairs": 0}}) == []


def test_headline_reports_likelihood_change():
    line = report.headline({"likelihood_change": {"chosen": -2.94, "rejected": -40.3}})
    assert line == ["Log-likelihood change vs the reference on held-out pairs: chosen -2.9, rejected -40.3 "
                    "nats per completion (both fell: likelihood displacement)."]
    assert report.headline({"likelihood_change": {"chosen": 1.0, "rejected": -3.0}})[0].endswith("per completion.")
