"""compare.py: which teacher a student learned from, which weights a row describes, variant rows whose
settings apply (or are refused before anything trains), corrupt checkpoints, the KD-loss columns, diverged
runs and the learning-rate sweep, and the published configs."""

import json
import math
import os
import re
from dataclasses import asdict

import pytest
import torch

import compare as compare_module
from configurator import ConfigError, load_config
from compare import CompareConfig, compare, lr_sweep, markdown, name, sweep_markdown, table_rows, teacher_record
from eval import EvalConfig, evaluate
from test_model import REPO, hand_made_run, make_char_data
from train import train


def tiny_comparison(tmp_path, **kw):
    """A CompareConfig of a 1-layer teacher and 1-layer students, 8 iters each, one seed: a run takes well under a second."""
    data = make_char_data(tmp_path / "data")
    common = ("device, compile = 'cpu', False\neval_interval, eval_iters, log_interval = 4, 2, 1\n"
              "n_layer, n_head, n_embd, block_size, batch_size = 1, 2, 16, 16, 4\n"
              "learning_rate, warmup_iters, max_iters, lr_decay_iters, min_lr = 1e-2, 0, 8, 8, 1e-3\n")
    (tmp_path / "teacher.py").write_text(common)
    (tmp_path / "student.py").write_text(common + "loss, teacher = 'kd', 'set by compare.py'\n")
    settings = dict(out_dir=str(tmp_path / "cmp"), teacher_config=str(tmp_path / "teacher.py"), data_dir=data,
                    student_config=str(tmp_path / "student.py"), seeds="1", variants="softmax,affine")
    return CompareConfig(**{**settings, **kw})


def recording(monkeypatch):
    """The out_dirs compare.py trains, in order (their last folder names)."""
    trained = []
    monkeypatch.setattr(compare_module, "train", lambda run: trained.append(os.path.basename(run.out_dir)) or train(run))
    return trained


def nothing_may_train(monkeypatch):
    monkeypatch.setattr(compare_module, "train", lambda run: pytest.fail(f"{run.out_dir} may not train"))


# --------------------------------------------------------------------------------------------------
# issue 22: a student names its teacher; one row, one set of weights


def test_students_of_a_retrained_teacher_are_trained_again_or_refused(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    cfg = tiny_comparison(tmp_path, teacher_iters=5)
    trained = recording(monkeypatch)
    compare(cfg)
    first = teacher_record(str(out / "teacher"))
    assert first["iter_num"] == torch.load(out / "teacher" / "best.pt")["iter_num"]
    for student in ("softmax-s1", "affine-s1"):
        assert json.loads((out / student / "compare.json").read_text()) == {"teacher": first, "diverged_at": None}

    # --teacher_iters=10 retrains the teacher, so no student of the old one may stay: refused before any training
    nothing_may_train(monkeypatch)
    ten = CompareConfig(**{**asdict(cfg), "teacher_iters": 10})
    with pytest.raises(ConfigError) as refused:
        compare(ten)
    old = f"{out / 'teacher' / 'best.pt'} of iter {first['iter_num']} (sha256 {first['sha256'][:12]})"
    assert str(refused.value) == (
        f"this comparison would replace runs already in out_dir='{out}': {out / 'teacher'} ({out / 'teacher' / 'ckpt.pt'} "
        f"has other settings (max_iters: 5 -> 10; lr_decay_iters: 5 -> 10)), {out / 'softmax-s1'} (it learned from {old}, "
        f"and the teacher is trained again), {out / 'affine-s1'} (it learned from {old}, and the teacher is trained again); "
        f"delete them or pass --overwrite=True to train them again, or choose another out_dir")
    assert teacher_record(str(out / "teacher")) == first

    # ... and with --overwrite=True the teacher and then every student are trained again, from the new teacher
    trained = recording(monkeypatch)
    compare(CompareConfig(**{**asdict(ten), "overwrite": True}))
    assert trained == ["teacher", "softmax-s1", "affine-s1"]
    second = teacher_record(str(out / "teacher"))
    assert torch.load(out / "teacher" / "ckpt.pt")["iter_num"] == 10 and second["sha256"] != first["sha256"]
    for student in ("softmax-s1", "affine-s1"):
        assert json.loads((out / student / "compare.json").read_text())["teacher"] == second
    assert f"the students learned from {out / 'teacher' / 'best.pt'} of iter {second['iter_num']}" in (out / "results.md").read_text()

    # a teacher changed behind compare.py's back (same settings, other weights) is another teacher too
    nothing_may_train(monkeypatch)
    best = torch.load(out / "teacher" / "best.pt")
    best["model"] = {k: v + 0.01 for k, v in best["model"].items()}
    torch.save(best, out / "teacher" / "best.pt")
    third = teacher_record(str(out / "teacher"))
    with pytest.raises(ConfigError, match=re.escape(
            f"{out / 'softmax-s1'} (it learned from {out / 'teacher' / 'best.pt'} of iter {second['iter_num']} (sha256 "
            f"{second['sha256'][:12]}), the teacher now is {out / 'teacher' / 'best.pt'} of iter {third['iter_num']} "
            f"(sha256 {third['sha256'][:12]})), ")):
        compare(ten)


def test_a_student_that_does_not_say_its_teacher_is_not_reused(tmp_path, monkeypatch):
    """As a student trained by compare.py before it wrote compare.json: its teacher is unknown."""
    out = tmp_path / "cmp"
    cfg = tiny_comparison(tmp_path, variants="affine")
    compare(cfg)
    (out / "affine-s1" / "compare.json").unlink()
    nothing_may_train(monkeypatch)
    with pytest.raises(ConfigError) as refused:
        compare(cfg)
    assert str(refused.value) == (
        f"this comparison would replace runs already in out_dir='{out}': {out / 'affine-s1'} (no readable "
        f"{out / 'affine-s1' / 'compare.json'} says which teacher it learned from); delete them or pass "
        f"--overwrite=True to train them again, or choose another out_dir")
    trained = recording(monkeypatch)
    compare(CompareConfig(**{**asdict(cfg), "overwrite": True}))
    assert trained == ["affine-s1"]


def test_the_eval_columns_describe_the_weights_of_the_val_ce(tmp_path, monkeypatch):
    """Both come from the last checkpoint, ckpt.pt, even where best.pt holds other weights."""
    out = tmp_path / "cmp"
    cfg = tiny_comparison(tmp_path, variants="affine", eval_ppl_windows=4)
    compare(cfg)
    best = torch.load(out / "affine-s1" / "best.pt")
    best["model"] = {k: v * 0.5 for k, v in best["model"].items()}  # best.pt now differs from ckpt.pt
    torch.save(best, out / "affine-s1" / "best.pt")
    nothing_may_train(monkeypatch)
    row, = compare(cfg)
    on = {f: evaluate(EvalConfig(init_from=str(out / "affine-s1" / f), tasks="", device="cpu", ppl_windows=4,
                                 ppl_data_dir=cfg.data_dir))["columns"]["PPL"] for f in ("ckpt.pt", "best.pt")}
    assert row["eval"]["PPL"] == (pytest.approx(on["ckpt.pt"]), 0.0) and on["ckpt.pt"] != pytest.approx(on["best.pt"])
    steps, evals = compare_module.read_metrics(str(out / "affine-s1"))
    assert row["val_loss"] == evals[-1]["val_loss"] and evals[-1]["iter"] == torch.load(out / "affine-s1" / "ckpt.pt")["iter_num"]
    text = (out / "results.md").read_text()
    assert "Every row describes the students' last checkpoints (ckpt.pt, written after their last iteration)." in text
    assert "eval.py on the same weights as the val CE (every student's ckpt.pt)" in text
    assert json.loads((out / "results.json").read_text())["weights"] == "ckpt.pt"


# --------------------------------------------------------------------------------------------------
# issue 16: a row's settings apply or are refused before anything trains; corrupt checkpoints


def test_a_rows_settings_apply(tmp_path):
    out = tmp_path / "cmp"
    compare(tiny_comparison(tmp_path, variants="softmax,affine:max_iters=5,affine:learning_rate=3e-3"))
    short = torch.load(out / "affine-max_iters5-s1" / "ckpt.pt")
    assert (short["iter_num"], short["config"]["max_iters"], short["config"]["lr_decay_iters"]) == (5, 5, 5)
    steps, _ = compare_module.read_metrics(str(out / "affine-max_iters5-s1"))
    # the cosine reaches min_lr at the row's lr_decay_iters = 5, not at the config's 8
    assert [r["iter"] for r in steps] == [0, 1, 2, 3, 4]
    assert steps[-1]["lr"] == pytest.approx(1e-3 + 0.5 * (1 + math.cos(math.pi * 4 / 5)) * 9e-3)
    steps, _ = compare_module.read_metrics(str(out / "affine-learning_rate3e-3-s1"))
    assert torch.load(out / "affine-learning_rate3e-3-s1" / "ckpt.pt")["config"]["learning_rate"] == 3e-3
    assert steps[0]["lr"] == 3e-3  # no warmup: the peak learning rate at iter 0
    assert torch.load(out / "softmax-s1" / "ckpt.pt")["config"]["learning_rate"] == 1e-2
    text = (out / "results.md").read_text()
    assert "\n| affine, max_iters = 5 | " in text and "\n| affine, lr = 3e-3 | " in text


@pytest.mark.parametrize("variants, message", [
    ("affine:attn=gated", "variants: 'affine:attn=gated' sets attn=gated, but the row's name says attn=affine; "
                          "write gated:... for a gated student"),
    *[(f"affine:{key}={value}", f"variants: 'affine:{key}={value}' sets {key}, which compare.py sets for every student "
                                f"(attn, seed, loss, teacher, log_interval, init_from, out_dir, data_dir, overwrite); "
                                f"leave it out of the row")
      for key, value in (("seed", 3), ("out_dir", "elsewhere"), ("loss", "ce"), ("teacher", "gpt2"), ("log_interval", 10))],
    ("softmax,affine:block_size=32", "the affine:block_size=32 students' block_size=32 is larger than the teacher's "
                                     "block_size=16 (teacher_config='TEACHER'): the teacher must see a student's whole context"),
    ("affine:max_iter=5", "variants: 'affine:max_iter=5': unknown setting 'max_iter' (from --max_iter=5); did you mean max_iters or eval_iters or warmup_iters?"),
    ("affine:max_iters=0", "the affine:max_iters=0 students' max_iters=0 must be at least 1: the table is made of their steps"),
    ("softmax,softmax:learning_rate=0.01", "variants 'softmax', 'softmax:learning_rate=0.01' are the same students "
                                           "(the same variant and learning rate)"),
])
def test_a_row_that_cannot_apply_is_refused_before_anything_trains(tmp_path, monkeypatch, variants, message):
    cfg = tiny_comparison(tmp_path, variants=variants)
    nothing_may_train(monkeypatch)
    with pytest.raises(ConfigError) as refused:
        compare(cfg)
    assert str(refused.value) == message.replace("TEACHER", cfg.teacher_config)
    assert not (tmp_path / "cmp").exists()


def test_a_setting_without_a_value_is_refused():
    with pytest.raises(ConfigError, match=re.escape("variant 'affine:max_iters' in variants='affine:max_iters': write each "
                                                    "setting after a colon as key=value, e.g. affine:affine_n=prefix")):
        load_config(["--variants=affine:max_iters"], CompareConfig)


@pytest.mark.parametrize("broken", ["ckpt.pt", "best.pt"])
def test_a_truncated_teacher_checkpoint_is_trained_again_with_overwrite(tmp_path, monkeypatch, broken):
    out = tmp_path / "cmp"
    cfg = tiny_comparison(tmp_path, variants="affine")
    compare(cfg)
    path = out / "teacher" / broken
    path.write_bytes(path.read_bytes()[:1000])
    nothing_may_train(monkeypatch)
    with pytest.raises(ConfigError) as refused:
        compare(cfg)
    assert re.fullmatch(re.escape(f"this comparison would replace runs already in out_dir='{out}': {out / 'teacher'} ({path} "
                                  f"cannot be read, the file is corrupt or truncated (") + ".*" + re.escape(
                        f"), {out / 'affine-s1'} (it learned from ") + ".*" + re.escape(
                        ", and the teacher is trained again); delete them or pass --overwrite=True to train them again, "
                        "or choose another out_dir"), str(refused.value))
    trained = recording(monkeypatch)
    compare(CompareConfig(**{**asdict(cfg), "overwrite": True}))
    assert trained == ["teacher", "affine-s1"] and torch.load(path)["iter_num"] <= 8


# --------------------------------------------------------------------------------------------------
# issue 19: the KD loss the paper reports, diverged runs and the learning-rate sweep


def test_the_kd_loss_column_is_the_soft_target_cross_entropy():
    """soft_ce, beside KL (kd) and CE; n/a for a run logged before train.py wrote soft_ce."""
    runs = {"softmax": [hand_made_run(2.0, 3.0, [1.0, 1.1])], "affine:phi=sigmoid": [hand_made_run(2.0, 3.0, [1.0, 1.1])]}
    for row in runs["affine:phi=sigmoid"][0][0]:
        del row["soft_ce"]
    soft, old = table_rows(runs, {"softmax": 0, "affine:phi=sigmoid": 64}, early_steps=2)
    assert (soft["train_soft_ce"], soft["train_kd"], soft["train_ce"]) == (2.25, 1.5, 3.0)
    assert old["train_soft_ce"] is None and old["train_kd"] == 1.5
    text = markdown([soft, old], ["# header"])
    assert "| variant | Delta-Params | KD loss (train) | KL (train) | CE (train) | val CE |" in text
    assert "| softmax | 0 | 2.2500 +- 0.0000 | 1.5000 +- 0.0000 | 3.0000 +- 0.0000 | 3.0000 +- 0.0000 |" in text
    assert "| affine, phi = sigmoid | 64 | n/a | 1.5000 +- 0.0000 | 3.0000 +- 0.0000 |" in text


def test_rows_have_names_in_words():
    assert name("affine:affine_n=prefix") == "affine, N = prefix"
    assert name("affine:phi=sigmoid") == "affine, phi = sigmoid"
    assert name("softmax:learning_rate=0.003") == "softmax, lr = 3e-3"
    assert name("sink:learning_rate=3e-3:affine_momentum=0.99", leave_out=("learning_rate",)) == "sink, rho = 0.99"
    assert name("gated:learning_rate=1e6") == "gated, lr = 1e6"


def test_the_sweep_table_per_variant_and_learning_rate():
    rows = [{"variant": "softmax", "val_loss": 2.0, "val_loss_std": 0.1},
            {"variant": "softmax:learning_rate=0.01", "val_loss": 1.9, "val_loss_std": 0.0},
            {"variant": "affine:learning_rate=0.01", "val_loss": 1.8, "val_loss_std": 0.05}]
    rates = {"softmax": 1e-3, "softmax:learning_rate=0.01": 1e-2, "softmax:learning_rate=0.1": 0.1, "affine:learning_rate=0.01": 1e-2}
    diverged = {v: [] for v in rates} | {"softmax:learning_rate=0.1": [(1, 40), (2, 37)]}
    sweep = lr_sweep(rows, diverged, rates)
    assert sweep["learning_rates"] == [1e-3, 1e-2, 0.1]
    assert sweep["rows"] == [
        {"variant": "softmax", "cells": [{"val_loss": 2.0, "val_loss_std": 0.1}, {"val_loss": 1.9, "val_loss_std": 0.0},
                                         {"diverged_at": [(1, 40), (2, 37)]}]},
        {"variant": "affine", "cells": [None, {"val_loss": 1.8, "val_loss_std": 0.05}, None]}]
    text = sweep_markdown(sweep, seeds=2, figure="sweep.png")
    assert "| variant | lr = 1e-3 | lr = 1e-2 | lr = 1e-1 |" in text
    assert "| softmax | 2.0000 +- 0.1000 | 1.9000 +- 0.0000 | diverged: seed 1 at iter 40, seed 2 at iter 37 |" in text
    assert "| affine | - | 1.8000 +- 0.0500 | - |" in text


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    variants = "softmax,softmax:learning_rate=3e-2,softmax:learning_rate=1e6,affine,affine:learning_rate=1e6"
    cfg = tiny_comparison(tmp_path, variants=variants, results="sweep")
    rows = compare(cfg)
    assert [r["name"] for r in rows] == ["softmax", "softmax, lr = 3e-2", "affine"]  # the diverged ones have no row
    assert json.loads((out / "softmax-learning_rate1e6-s1" / "compare.json").read_text())["diverged_at"] == 1
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["diverged"] == {"softmax:learning_rate=1e6": [[1, 1]], "affine:learning_rate=1e6": [[1, 1]]}
    loss = {r["variant"]: f"{r['val_loss']:.4f}" for r in rows}
    text = (out / "sweep.md").read_text()
    assert ("Diverged (the loss stopped being finite; left out of the rows above): softmax, lr = 1e6: seed 1 at iter 1; "
            "affine, lr = 1e6: seed 1 at iter 1.") in text
    assert "| variant | lr = 1e-2 | lr = 3e-2 | lr = 1e6 |" in text
    assert (f"| softmax | {loss['softmax']} | {loss['softmax:learning_rate=3e-2']} | diverged at iter 1 |\n"
            f"| affine | {loss['affine']} | - | diverged at iter 1 |\n") in text
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (out / "results.md").exists()
    # the outcome is kept: a second call trains nothing, the diverged runs included, and tells the same
    nothing_may_train(monkeypatch)
    assert compare(cfg) == rows


# --------------------------------------------------------------------------------------------------
# the published configs


def test_the_comparison_and_the_sweep_share_their_teacher(monkeypatch):
    monkeypatch.chdir(REPO)
    main = load_config(["config/compare_shakespeare_char.py"], CompareConfig)
    sweep = load_config(["config/compare_sweep_lr_shakespeare_char.py"], CompareConfig)
    assert main.variant_list() == ["softmax", "sink", "gated", "affine", "affine_gated", "affine:affine_n=prefix", "affine:phi=sigmoid"]
    assert main.seed_list() == [1, 2, 3] and sweep.seed_list() == [1]
    for key in ("out_dir", "teacher_config", "teacher_iters", "student_config", "student_iters", "early_steps"):
        assert getattr(main, key) == getattr(sweep, key)
    assert main.results != sweep.results
    students = {v: compare_module.student_config(main, v, 1, "teacher", {}) for v in main.variant_list()}
    s = students["softmax"]
    assert (s.max_iters, s.lr_decay_iters) == (800, 800) and main.early_steps >= s.max_iters
    assert s.max_iters // s.stats_interval >= 20  # Fig. 2's statistic: at least 20 points
    rates = {}
    for v in sweep.variant_list():
        student = compare_module.student_config(sweep, v, 1, "teacher", {})
        rates.setdefault(student.attn, []).append(student.learning_rate)
        # the rows at the students' own learning rate are the main comparison's seed-1 students: reused, not trained again
        if student.learning_rate == s.learning_rate:
            assert student == students[student.attn]
    assert rates == {attn: [1e-3, 3e-3, 1e-2, 3e-2] for attn in ("softmax", "sink", "gated", "affine")}


def test_a_quick_try_keeps_the_warmup_within_its_few_iters(monkeypatch):
    """--teacher_iters=5 --student_iters=5 on the published config: the 100 warmup iters shrink to 5, else
    every run would be refused (warmup_iters must be at most max_iters); a row's own settings still win."""
    monkeypatch.chdir(REPO)
    cfg = load_config(["config/compare_shakespeare_char.py", "--teacher_iters=5", "--student_iters=5"], CompareConfig)
    teacher = compare_module.run_config(cfg.teacher_config, cfg.teacher_iters, loss="ce", teacher="")
    student = compare_module.student_config(cfg, "affine:warmup_iters=2", 1, "teacher", {})
    assert (teacher.max_iters, teacher.lr_decay_iters, teacher.warmup_iters) == (5, 5, 5)
    assert (student.max_iters, student.lr_decay_iters, student.warmup_iters) == (5, 5, 2)
    assert compare_module.run_config(cfg.student_config, 0, loss="kd", teacher="t").warmup_iters == 100
