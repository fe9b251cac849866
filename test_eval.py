"""eval.py's tests: the bridge to lm-evaluation-harness against direct computations with the model, local
tasks end to end through simple_evaluate (offline), perplexity, the table, compare.py's eval columns, bad input."""

import copy
import json
import math
import os
import re
import string
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("lm_eval")
import datasets
import lm_eval
from lm_eval.api.instance import Instance

import dataloader
from configurator import ConfigError
from compare import CompareConfig, compare
from eval import PAPER_TASKS, EvalConfig, GPTLM, check_tasks, columns, evaluate, export_tasks, perplexity
from model import ATTN_VARIANTS
from test_model import make_model

CHARS = sorted(set(string.printable) - set("\t\r\x0b\x0c"))  # the characters of the tasks' prompts
STOI = {c: i for i, c in enumerate(CHARS)}
META = {"vocab_size": len(CHARS), "stoi": STOI, "itos": dict(enumerate(CHARS))}
T = 16  # block_size of make_model

MC_DOCS = [{"question": q, "choices": c, "label": l} for q, c, l in [
    ("what sat on the mat", ["a cat", "the dog", "no"], 0), ("is the sky blue", ["yes", "no"], 1),
    ("which is a fruit", ["apple", "car", "stone", "a red house"], 2), ("say a long word", ["hippopotamus", "ox"], 1),
    ("pick one", ["one", "two", "three"], 2), ("where is the cat", ["on the mat", "in a tree"], 0)]]
PPL_DOCS = ["the cat sat on the mat. " * 3, "a dog ran.", "is this the end? no it is not."]


@pytest.fixture(autouse=True)
def no_environment_report(monkeypatch):
    """simple_evaluate adds pip's package list to its results, seconds of subprocesses no test here reads."""
    monkeypatch.setattr("lm_eval.evaluator.add_env_info", lambda results: None)


def model_and_ckpt(tmp_path, attn="affine", **kw):
    """A tiny character-level model (make_model: its sink, alpha and alpha_ma far from their initial values)
    saved as a checkpoint of this repo."""
    model = make_model(attn, vocab_size=len(CHARS), **kw)
    path = tmp_path / f"{attn}.pt"
    torch.save({"model_args": asdict(model.config), "model": model.state_dict(), "meta": META, "iter_num": 7}, path)
    return model, str(path)


def write_task(folder, name, docs, **yaml_lines):
    """A harness task YAML reading its documents from a jsonl file beside it; yaml_lines add or replace keys."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    lines = {"task": name, "dataset_path": "json", "dataset_kwargs": f"{{data_files: {{test: {path}}}}}",
             "test_split": "test", **yaml_lines}
    with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
        f.writelines(f"{k}: {v}\n" for k, v in lines.items())


def write_local_tasks(folder):
    """local_mc, multiple choice scored by acc and acc_norm; local_ppl, rolling perplexity of whole texts."""
    write_task(folder, "local_mc", MC_DOCS, output_type="multiple_choice", doc_to_text='"{{question}}?\\nanswer:"',
               doc_to_target="label", doc_to_choice="choices", metric_list="[{metric: acc}, {metric: acc_norm}]")
    write_task(folder, "local_ppl", [{"text": t} for t in PPL_DOCS], output_type="loglikelihood_rolling",
               doc_to_text='""', doc_to_target='"{{text}}"',
               metric_list="[{metric: word_perplexity}, {metric: byte_perplexity}, {metric: bits_per_byte}]")
    return str(folder)


# --------------------------------------------------------------------------------------------------
# direct computations, written here without the harness: characters to ids by hand, the eager path


def eager(model):
    """A copy of model on the eager path (explicit attention weights), in eval mode."""
    copied = copy.deepcopy(model).eval()
    for block in copied.transformer.h:
        block.attn.fused = False
    return copied


def direct_logprob(model, ids, n):
    """log p of the last n of ids given the ones before, from one unpadded forward over the last
    block_size + 1 of them."""
    ids = ids[-(T + 1):]
    x = torch.tensor([ids[:-1]])
    with torch.no_grad():
        logits, _ = model(x, targets=x)
    logp = F.log_softmax(logits[0, -n:], dim=-1)
    return logp[torch.arange(n), torch.tensor(ids[-n:])].sum().item()


def direct_loglikelihood(model, context, continuation):
    """The harness's convention: an empty context is the newline (this character vocabulary has no
    end-of-text token); a context's trailing spaces are scored as part of the continuation."""
    if not context:
        return direct_logprob(model, [STOI["\n"]] + [STOI[c] for c in continuation], len(continuation))
    spaces = len(context) - len(context.rstrip())
    context, continuation = context[: len(context) - spaces], context[len(context) - spaces :] + continuation
    return direct_logprob(model, [STOI[c] for c in context + continuation], len(continuation))


def direct_rolling(model, text):
    """log p(text) in windows of block_size tokens, each after as much of the text before it as fits in
    block_size + 1 tokens (a full window after one token; the first after the newline)."""
    ids = [STOI["\n"]] + [STOI[c] for c in text]
    total = 0.0
    for s in range(0, len(ids) - 1, T):
        n = min(T, len(ids) - 1 - s)
        total += direct_logprob(model, ids[: s + n + 1], n)
    return total


def requests(kind, args):
    return [Instance(kind, {}, a, i, metadata=("t", i, 1)) for i, a in enumerate(args)]


PAIRS = [("what sat on the", " mat"), ("", "hello"), ("abc ", "de"), ("the cat sat on the mat. " * 2, " yes"),
         ("q", "a long answer."), ("x", "y")]


LLAMA_BLOCK = dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False, tie_embeddings=False)


@pytest.mark.parametrize("attn, block", [(a, {}) for a in ATTN_VARIANTS] + [("affine", LLAMA_BLOCK), ("softmax", LLAMA_BLOCK)])
def test_loglikelihood_and_rolling_match_a_direct_computation(attn, block):
    model = make_model(attn, vocab_size=len(CHARS), **block)
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # alpha_ma, and the batch means of alpha
    lm = GPTLM(model.train(), META, batch_size=4)  # 6 pairs: batches of 4 and 2, padded, longest first
    got = lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    reference = eager(model)
    want = [direct_loglikelihood(reference, c, x) for c, x in PAIRS]
    errors = [abs(g - w) for (g, _), w in zip(got, want)]
    print(f"{attn} {block}: max |loglikelihood - direct| = {max(errors):.2e}")
    assert max(errors) < 1e-4
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in PPL_DOCS]), disable_tqdm=True)
    assert rolling == pytest.approx([direct_rolling(reference, t) for t in PPL_DOCS], abs=1e-4)
    # the model ran in eval mode: alpha_ma (Eq. 9) did not move, nor did anything accumulate for its next update
    assert not model.training
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


def test_is_greedy_and_generate_until_are_greedy_decoding():
    model = make_model("affine", vocab_size=len(CHARS)).eval()
    lm = GPTLM(model, META)
    ids, greedy = [STOI[c] for c in "the cat"], ""
    with torch.no_grad():
        for _ in range(6):
            ids.append(model(torch.tensor([ids]))[0][0, -1].argmax().item())
            greedy += CHARS[ids[-1]]
    other = greedy[:-1] + ("a" if greedy[-1] != "a" else "b")
    (_, yes), (_, no) = lm.loglikelihood(requests("loglikelihood", [("the cat", greedy), ("the cat", other)]), True)
    assert yes and not no
    stop = greedy[3]
    out = lm.generate_until(requests("generate_until", [("the cat", {"until": [stop], "max_gen_toks": 6})]), True)
    assert out == [greedy[: greedy.index(stop)]]


def test_local_tasks_through_simple_evaluate_equal_accuracy_and_perplexity_by_hand(tmp_path):
    model, _ = model_and_ckpt(tmp_path)
    alpha_ma = model.transformer.h[0].attn.alpha_ma.clone()
    cfg = EvalConfig(tasks="local_mc,local_ppl", include_path=write_local_tasks(tmp_path / "tasks"))
    results = lm_eval.simple_evaluate(model=GPTLM(model, META), tasks=cfg.task_list(), task_manager=check_tasks(cfg),
                                      log_samples=False)["results"]
    assert torch.equal(model.transformer.h[0].attn.alpha_ma, alpha_ma)
    # accuracy by hand: the harness puts a space between the question and each choice; acc_norm divides the
    # loglikelihood by the choice's length in characters
    acc, acc_norm, reference = [], [], eager(model)
    for doc in MC_DOCS:
        ll = np.array([direct_loglikelihood(reference, doc["question"] + "?\nanswer:", " " + c) for c in doc["choices"]])
        acc.append(ll.argmax() == doc["label"])
        acc_norm.append((ll / [len(c) for c in doc["choices"]]).argmax() == doc["label"])
    print(f"local_mc: acc {np.mean(acc):.4f}, acc_norm {np.mean(acc_norm):.4f} (a random tiny model)")
    assert results["local_mc"]["acc,none"] == pytest.approx(np.mean(acc))
    assert results["local_mc"]["acc_norm,none"] == pytest.approx(np.mean(acc_norm))
    # word perplexity and bits per byte by hand, from the direct rolling loglikelihoods
    ll = sum(direct_rolling(reference, t) for t in PPL_DOCS)
    words = sum(len(re.split(r"\s+", t)) for t in PPL_DOCS)
    print(f"local_ppl: word_perplexity {results['local_ppl']['word_perplexity,none']:.1f}")
    assert results["local_ppl"]["word_perplexity,none"] == pytest.approx(math.exp(-ll / words), rel=1e-4)
    assert results["local_ppl"]["bits_per_byte,none"] == pytest.approx(-ll / sum(map(len, PPL_DOCS)) / math.log(2), rel=1e-4)


def char_data(folder, text="the cat sat on the mat. is it? no.\n" * 20):
    os.makedirs(folder, exist_ok=True)
    np.array([STOI[c] for c in text], dtype=np.uint16).tofile(os.path.join(folder, "val.bin"))
    dataloader.write_meta(str(folder), META)
    return str(folder)


def test_perplexity_is_the_gptq_recipe(tmp_path):
    model, _ = model_and_ckpt(tmp_path, "sink")
    data = np.fromfile(char_data(tmp_path / "data") + "/val.bin", dtype=np.uint16)
    got = perplexity(model.eval(), data, windows=10, seed=0, batch_size=3)
    starts = np.random.default_rng(0).integers(0, len(data) - T + 1, size=10)
    reference = eager(model)
    nll = [-direct_logprob(reference, data[s : s + T].tolist(), T - 1) / (T - 1) for s in starts]
    assert got["ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    assert (got["windows"], got["window"], got["seed"]) == (10, T, 0)


def test_evaluate_writes_the_table_and_json_and_exported_tasks_give_the_same(tmp_path, capsys):
    _, ckpt = model_and_ckpt(tmp_path)
    tasks = write_local_tasks(tmp_path / "tasks")
    cfg = EvalConfig(init_from=ckpt, tasks="local_ppl,local_mc", include_path=tasks, device="cpu", ppl_windows=8,
                     ppl_data_dir=char_data(tmp_path / "data"), out=str(tmp_path / "eval.json"))
    evaluate(cfg)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["config"]["init_from"] == ckpt and saved["iter_num"] == 7 and saved["perplexity"]["windows"] == 8
    mc = saved["tasks"]["local_mc"]
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(mc)  # both, whichever the table shows
    assert saved["metric"] == {"local_mc": "acc_norm", "local_ppl": "word_perplexity"}
    assert saved["columns"] == {"PPL": saved["perplexity"]["ppl"], "local_mc": 100 * mc["acc_norm"],
                                "local_ppl": saved["tasks"]["local_ppl"]["word_perplexity"], "Avg": 100 * mc["acc_norm"]}
    assert "| PPL | local_ppl | local_mc | Avg |" in capsys.readouterr().out  # the paper's tasks first, then as given


# the harness's own files of the paper's six tasks (lm-eval 0.4.9 to 0.4.13), and a few documents in the columns of
# each one's hub dataset
PAPER_YAMLS = ["winogrande/default.yaml", "piqa/piqa.yaml", "hellaswag/hellaswag.yaml", "arc/arc_challenge.yaml",
               "arc/arc_easy.yaml", "super_glue/boolq/default.yaml"]
HUB_DOCS = {
    "allenai/winogrande": [{"sentence": "The cat sat on the _ all day.", "option1": "mat", "option2": "dog", "answer": "1"},
                           {"sentence": "She ate the _ because it was ripe.", "option1": "stone", "option2": "apple", "answer": "2"}],
    "baber/piqa": [{"goal": "Open a jar.", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
                   {"goal": "Dry wet hands.", "sol1": "Use water.", "sol2": "Use a towel.", "label": 1}],
    "Rowan/hellaswag": [{"activity_label": "Cooking", "ctx_a": "A man cuts onions.", "ctx_b": "he", "label": "1",
                         "endings": ["flies away.", "puts them in a pan.", "sings [title] loudly.", "is a boat."]}],
    "allenai/ai2_arc": [{"question": "What melts ice?", "choices": {"text": ["Heat", "Cold", "Dark"], "label": ["A", "B", "C"]},
                         "answerKey": "A"}],
    "aps/super_glue": [{"passage": "Cats are animals.", "question": "is a cat an animal", "label": 1},
                       {"passage": "The sky is blue.", "question": "is the sky green", "label": 0}],
}


def test_the_six_tasks_exported_for_offline_use_score_as_the_harness_own(tmp_path, monkeypatch):
    """The offline recipe on the harness's own configs of the paper's tasks (includes, !function helpers), their hub
    data stood in for by a few documents: the exported YAMLs and parquet files give the same results."""
    yamls = [os.path.join(os.path.dirname(lm_eval.__file__), "tasks", p) for p in PAPER_YAMLS]
    if not all(map(os.path.isfile, yamls)):
        pytest.skip("this lm-eval version keeps the paper's task files elsewhere")
    load_dataset = datasets.load_dataset
    hub = lambda path, name=None, **kw: (load_dataset(path, name, **kw) if path == "parquet" else datasets.DatasetDict(
        {split: datasets.Dataset.from_list(HUB_DOCS[path]) for split in ("train", "validation", "test")}))
    monkeypatch.setattr(datasets, "load_dataset", hub)
    _, ckpt = model_and_ckpt(tmp_path, block_size=64)  # the longest continuation has 21 characters
    original = evaluate(EvalConfig(init_from=ckpt, tasks=",".join(yamls), device="cpu"))
    export_tasks(EvalConfig(tasks=",".join(yamls), export_tasks=str(tmp_path / "exported")))
    assert "dataset_path: parquet" in (tmp_path / "exported" / "hellaswag" / "hellaswag.yaml").read_text()
    offline = evaluate(EvalConfig(init_from=ckpt, include_path=str(tmp_path / "exported"), device="cpu"))
    assert offline["tasks"] == original["tasks"] and set(offline["tasks"]) == set(PAPER_TASKS)
    assert list(offline["columns"]) == ["Wino", "PIQA", "Hella", "ARC-c", "ARC-e", "BoolQ", "Avg"]


def test_columns_follow_the_paper_and_average_the_accuracies():
    tasks = {t: {"acc": 0.5 + i / 100, "acc_stderr": 0.01} for i, t in enumerate(reversed(PAPER_TASKS))}
    tasks["hellaswag"].update(acc_norm=0.6, acc_norm_stderr=0.02)
    cols, metric = columns({"ppl": 12.5}, tasks)
    assert list(cols) == ["PPL", "Wino", "PIQA", "Hella", "ARC-c", "ARC-e", "BoolQ", "Avg"]
    assert metric["hellaswag"] == "acc_norm" and metric["winogrande"] == "acc"
    accs = [cols[c][0] for c in list(cols)[1:-1]]
    assert cols["Hella"] == pytest.approx((60.0, 2.0)) and cols["PPL"] == (12.5, None)
    assert cols["Avg"] == pytest.approx((np.mean(accs), math.sqrt(5 * 1.0 + 4.0) / 6))


def test_compare_adds_the_eval_columns(tmp_path):
    data = tmp_path / "data"
    char_data(data, "the cat sat on the mat. is it? no.\n" * 40)
    np.fromfile(data / "val.bin", dtype=np.uint16).tofile(data / "train.bin")
    common = ("device, compile = 'cpu', False\neval_interval, eval_iters, log_interval = 4, 1, 1\n"
              "n_layer, n_head, n_embd, block_size, batch_size = 1, 2, 16, 16, 4\n"
              "learning_rate, warmup_iters, max_iters, lr_decay_iters, min_lr = 1e-2, 0, 4, 4, 1e-3\n")
    (tmp_path / "teacher.py").write_text(common)
    (tmp_path / "student.py").write_text(common + "loss, teacher = 'kd', 'set by compare.py'\n")
    cfg = CompareConfig(out_dir=str(tmp_path / "cmp"), teacher_config=str(tmp_path / "teacher.py"), seeds="1",
                        student_config=str(tmp_path / "student.py"), variants="affine", data_dir=str(data),
                        eval_ppl_windows=4, eval_tasks="local_mc", eval_include_path=write_local_tasks(tmp_path / "tasks"))
    row, = compare(cfg)
    alone = evaluate(EvalConfig(init_from=str(tmp_path / "cmp" / "affine-s1"), tasks="local_mc", device="cpu",
                                include_path=cfg.eval_include_path, ppl_data_dir=str(data), ppl_windows=4))
    assert row["eval"] == {k: (pytest.approx(v), 0.0) for k, v in alone["columns"].items()}
    assert "| PPL | local_mc | Avg |" in (tmp_path / "cmp" / "results.md").read_text()


# --------------------------------------------------------------------------------------------------
# bad input: one clear line


def test_bad_input_is_one_clear_line(tmp_path, monkeypatch):
    _, ckpt = model_and_ckpt(tmp_path)
    tasks = write_local_tasks(tmp_path / "tasks")
    write_task(tasks, "local_bad", MC_DOCS[:1] + [{"question": "caf\u00e9", "choices": ["a", "b"], "label": 0}],
               output_type="multiple_choice", doc_to_text='"{{question}}?"', doc_to_target="label", doc_to_choice="choices")
    write_task(tasks, "local_far", MC_DOCS, output_type="multiple_choice", doc_to_text='"{{question}}"',
               doc_to_target="label", doc_to_choice="choices", dataset_path="nobody/unreachable", dataset_kwargs="{}")
    bpe_data = char_data(tmp_path / "bpe")
    os.remove(os.path.join(bpe_data, "meta.json"))  # data without metadata is GPT-2 BPE
    for module, name in (("datasets.config", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE"),
                         ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        monkeypatch.setattr(f"{module}.{name}", True, raising=False)
    run = lambda **kw: evaluate(EvalConfig(**{"init_from": ckpt, "include_path": tasks, "device": "cpu", **kw}))
    with pytest.raises(ConfigError, match=r"^unknown task 'local_mcq' in include_path='.*'; did you mean local_mc or local_ppl or local_far\?$"):
        run(tasks="local_mcq")
    with pytest.raises(ConfigError, match=r"^task 'local_bad', document 1: the text has characters not in the model's "
                                          r"vocabulary: '\u00e9'$"):
        run(tasks="local_bad")
    with pytest.raises(ConfigError, match=r"^init_from='.*nope' is no file or directory"):
        run(init_from=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"^a task's dataset is not reachable \(Couldn't reach 'nobody/unreachable'.*"
                                          r"--export_tasks=DIR.*--include_path=DIR"):
        run(tasks="local_far")
    with pytest.raises(ConfigError, match=r"^ppl_data_dir='.*bpe' holds GPT-2 BPE tokens, the model reads character-level "
                                          r"\(96 characters\): prepare the data with the model's tokenizer$"):
        run(tasks="", ppl_data_dir=bpe_data)
    lm = GPTLM(make_model("softmax", vocab_size=len(CHARS)), META)
    with pytest.raises(ConfigError, match=f"^a continuation of 20 tokens is longer than block_size={T}"):
        lm.loglikelihood(requests("loglikelihood", [("a", "b" * 20)]), disable_tqdm=True)


@pytest.mark.parametrize("line, message", [
    (dict(output_type="multiple_choise"), "unknown output_type='multiple_choise'; allowed: loglikelihood, multiple_choice, "
                                          "loglikelihood_rolling, generate_until"),
    (dict(metric_list="[{metric: acc_nrom}]"), "metric_list has unknown metric 'acc_nrom'; did you mean acc_norm?"),
    (dict(doc_to_txt='"{{question}}"'), "unknown key 'doc_to_txt'; did you mean doc_to_text or doc_to_target or doc_to_image?"),
], ids=["output_type", "metric", "key"])
def test_a_bad_task_yaml_names_the_file_and_the_field(tmp_path, line, message):
    """lm-eval's own errors name neither (an unknown metric is `KeyError: None`): checked before the model loads."""
    fields = dict(output_type="multiple_choice", doc_to_text='"{{question}}"', doc_to_target="label", doc_to_choice="choices")
    write_task(tmp_path / "tasks", "local_typo", MC_DOCS, **{**fields, **line})
    path = str(tmp_path / "tasks" / "local_typo.yaml")
    for cfg in (EvalConfig(tasks="local_typo", include_path=str(tmp_path / "tasks")), EvalConfig(tasks=path)):
        with pytest.raises(ConfigError, match=f"^task file {re.escape(path)}: {re.escape(message)}$"):
            check_tasks(cfg)


def test_bad_perplexity_data_is_one_line_as_in_training(tmp_path):
    _, ckpt = model_and_ckpt(tmp_path)
    data = char_data(tmp_path / "data")
    val = os.path.join(data, "val.bin")
    run = lambda: evaluate(EvalConfig(init_from=ckpt, tasks="", ppl_data_dir=data, device="cpu"))
    np.array([1, 2, len(CHARS)] * 10, dtype=np.uint16).tofile(val)
    with pytest.raises(ConfigError, match=f"^{re.escape(val)} holds token id {len(CHARS)}, beyond meta\\.\\w+'s vocab_size="
                                          f"{len(CHARS)}: data of another tokenizer\\? prepare the data again$"):
        run()
    with open(val, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match=f"^{re.escape(val)} has 61 bytes, not a whole number of uint16 token ids "
                                          f"\\(meta\\.\\w+'s dtype\\); prepare the data again$"):
        run()


def test_out_is_checked_before_the_evaluation_and_its_folder_made(tmp_path, capsys):
    _, ckpt = model_and_ckpt(tmp_path)
    (tmp_path / "file").write_text("")
    run = lambda out: evaluate(EvalConfig(init_from=ckpt, tasks="", ppl_data_dir=char_data(tmp_path / "data"),
                                          ppl_windows=2, device="cpu", out=out))
    with pytest.raises(ConfigError, match=f"^out='{re.escape(str(tmp_path))}' is a directory; give a file name$"):
        run(str(tmp_path))
    with pytest.raises(ConfigError, match=f"^out='{re.escape(str(tmp_path / 'file' / 'eval.json'))}' is below "
                                          f"{re.escape(str(tmp_path / 'file'))}, which is a file, not a directory$"):
        run(str(tmp_path / "file" / "eval.json"))
    assert "init_from: loaded" not in capsys.readouterr().out  # refused before the model loaded
    run(str(tmp_path / "new" / "eval.json"))
    assert json.loads((tmp_path / "new" / "eval.json").read_text())["perplexity"]["windows"] == 2


def test_an_unreachable_hub_fails_at_once_and_an_export_leaves_no_empty_folder(tmp_path, monkeypatch):
    tasks = str(tmp_path / "tasks")
    write_task(tasks, "local_far", MC_DOCS, output_type="multiple_choice", doc_to_text='"{{question}}"',
               doc_to_target="label", doc_to_choice="choices", dataset_path="nobody/unreachable", dataset_kwargs="{}")
    write_local_tasks(tasks)
    exported = tmp_path / "exported"
    # the datasets library offline (as conftest.py sets it for every test): it fails at once by itself
    with pytest.raises(ConfigError, match="^task 'local_far': Couldn't reach 'nobody/unreachable'.*; exporting needs network$"):
        export_tasks(EvalConfig(tasks="local_far", include_path=tasks, export_tasks=str(exported)))
    assert not exported.exists()
    # no offline setting and no network: without the check, a minute of the library's retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr("eval.hub_reachable", lambda: False)
    message = ("^task 'local_far' reads 'nobody/unreachable' from the Hugging Face hub, which cannot be reached: connect, "
               "set HF_DATASETS_OFFLINE=1 if its data is in the datasets cache, or export the tasks with network "
               "\\(python eval.py --export_tasks=DIR\\) and evaluate offline with --include_path=DIR$")
    with pytest.raises(ConfigError, match=message):
        check_tasks(EvalConfig(tasks="local_mc,local_far", include_path=tasks))
    with pytest.raises(ConfigError, match=message):
        export_tasks(EvalConfig(tasks="local_far", include_path=tasks, export_tasks=str(exported)))
    assert not exported.exists()
    assert check_tasks(EvalConfig(tasks="local_mc,local_ppl", include_path=tasks))  # local files need no hub
