"""
The paper's evaluation (Tables 1-3): zero-shot accuracy on WinoGrande, PIQA, HellaSwag, ARC-c, ARC-e and BoolQ
through lm-evaluation-harness (the paper used v0.4.9), and perplexity on a prepared dataset's val.bin (C4 there).

    python eval.py --init_from=out-fineweb --ppl_data_dir=data/c4          # the paper's columns
    python eval.py --init_from=gpt2 --tasks=hellaswag,arc_easy --limit=200   # a quick look
    python eval.py --init_from=out-shakespeare-char-cpu --tasks= --ppl_data_dir=data/shakespeare_char
    python eval.py --export_tasks=lm_eval_tasks         # with network: the tasks' data and YAMLs, for offline use
    python eval.py --init_from=out --include_path=lm_eval_tasks             # ... then, offline

Settings are the fields of EvalConfig, given as in train.py. As a library (compare.py): evaluate(cfg) returns the
dict that `out` saves (the settings, the model, every task's metrics, the table's columns), and check_tasks(cfg)
checks the task names before anything runs.
"""

import difflib
import json
import math
import os
import shutil
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from checkpoint import load_model
from configurator import ConfigError, check_choice, check_types, check_writable, load_config
from dataloader import check_bin, read_meta, read_tokens
from tokenizer import describe_tokenizer, eot_token, get_tokenizer, hub_offline, hub_reachable, tokenizer_of

try:
    from lm_eval.api.model import TemplateLM
except ImportError:  # lm-eval is optional: perplexity works without it, the tasks say how to install it
    TemplateLM = object

# the paper's six tasks in its tables' column order, with its column names
PAPER_TASKS = {"winogrande": "Wino", "piqa": "PIQA", "hellaswag": "Hella", "arc_challenge": "ARC-c",
               "arc_easy": "ARC-e", "boolq": "BoolQ"}


@dataclass
class EvalConfig:
    init_from: str = "out"  # an out_dir (its best.pt), a checkpoint file, or a pretrained model: gpt2, ... or a local directory
    tasks: str = ",".join(PAPER_TASKS)  # harness task names or task YAML paths, comma-separated; "" for none
    include_path: str = ""  # a folder of task YAMLs (e.g. from export_tasks): task names are looked up there only
    num_fewshot: int = 0  # the paper: zero-shot
    limit: int = 0  # documents per task, 0 for all (a quick look, not the paper's numbers)
    batch_size: int = 32
    ppl_data_dir: str = ""  # a prepared dataset's folder (val.bin, meta.json), e.g. data/c4; "" for no perplexity
    ppl_windows: int = 256  # the GPTQ/SparseGPT C4 recipe: 256 random windows of the model's context, seed 0
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: str = "bfloat16"  # autocast dtype on CUDA, "float32" for none; CPU and MPS always run float32
    out: str = ""  # a JSON file for the results
    export_tasks: str = ""  # instead of evaluating: write the tasks' data and override YAMLs to this folder

    def __post_init__(self):
        check_types(self)
        check_choice("dtype", self.dtype, ("float32", "bfloat16"))
        check_choice("device", self.device.split(":")[0], ("cpu", "cuda", "mps"))
        for name in ("batch_size", "ppl_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("num_fewshot", "limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative")

    def task_list(self):
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


class GPTLM(TemplateLM):
    """model.py's GPT as an lm-eval model. The harness tokenizes (context, continuation) pairs through
    tok_encode, moving a context's trailing spaces into the continuation; this class scores them.
    An empty context, and the first window of a rolling text, condition on prefix_token_id: the tokenizer's
    end-of-text token, or for character-level models (which have none) the newline."""

    def __init__(self, model, meta, batch_size=32, dtype="bfloat16"):
        super().__init__()
        self.model = model.eval()  # eval mode: dropout off, and an affine model's alpha_ma (Eq. 9) never moves
        self.meta, self.batch_size = meta, batch_size
        self.encode, self.decode = get_tokenizer(meta)
        self.max_length = model.config.block_size
        self._device = next(model.parameters()).device
        cuda = self._device.type == "cuda" and dtype == "bfloat16"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    @property
    def eot_token_id(self):
        eot = eot_token(self.meta)
        if eot is None:
            try:
                eot, = self.encode("\n")
            except ConfigError:
                raise ConfigError("the model's characters have no newline to start a text from") from None
        return eot

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        return self.encode(string)

    def loglikelihood(self, requests, disable_tqdm=False):
        with naming_the_task(requests, self.encode):
            return super().loglikelihood(requests, disable_tqdm)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        """(log p(continuation | context), whether it is the greedy continuation) of (_, context ids,
        continuation ids) requests. Longest first, so a batch is padded (on the right) to its first request
        and the progress bar's estimate is an upper bound."""
        T = self.max_length
        for (_, continuation), _, ids in requests:
            if len(ids) > T:
                raise ConfigError(f"a continuation of {len(ids)} tokens is longer than block_size={T}: {continuation[:40]!r}...")
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results = [None] * len(requests)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="loglikelihood", unit="batch"):
            batch = order[start : start + self.batch_size]
            # the last T + 1 tokens: a context longer than block_size is cut on the left, never the continuation
            seqs = [(requests[i][1] + requests[i][2])[-(T + 1):] for i in batch]
            x = torch.zeros(len(seqs), len(seqs[0]) - 1, dtype=torch.long)
            for row, seq in enumerate(seqs):
                x[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            x = x.to(self.device)
            with self.autocast:
                logits, _ = self.model(x, targets=x)  # targets only to get every position's logits
            for row, i in enumerate(batch):
                n, end = len(requests[i][2]), len(seqs[row]) - 1
                logp = F.log_softmax(logits[row, end - n : end].float(), dim=-1)
                target = torch.tensor(requests[i][2], device=self.device)
                results[i] = (logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all()))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """log p(text) of whole texts (the harness's perplexity tasks), as the harness's own models score them:
        disjoint windows of block_size tokens, each after as much of the text before it as fits in block_size
        (one token before a full window; the first window after prefix_token_id)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        windows, owner = [], []
        with naming_the_task(requests, self.encode):
            for k, request in enumerate(requests):
                ids = self.tok_encode(request.args[0])
                for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                        ids, self.prefix_token_id, self.max_length, context_len=1)):
                    windows.append(((None, None), context, continuation))
                    owner.append(k)
        totals = [0.0] * len(requests)
        for k, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[k] += logp
        return totals

    def generate_until(self, requests, disable_tqdm=False):
        """Greedy continuations (top_k=1) of max_gen_toks tokens, cut before the first `until` string."""
        texts = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, kwargs = request.args
            ids = self.tok_encode(context)[-self.max_length:] or [self.prefix_token_id]
            with self.autocast:
                y = self.model.generate(torch.tensor([ids], device=self.device), kwargs.get("max_gen_toks", 256), top_k=1)
            text = self.decode(y[0, len(ids):].tolist())
            until = kwargs.get("until", [])
            for stop in [until] if isinstance(until, str) else until:
                text = text.split(stop)[0]
            texts.append(text)
        return texts


@contextmanager
def naming_the_task(requests, encode):
    """Names the task and document of a text the tokenizer cannot encode (characters a character-level model
    never saw): the harness hands over the requests of every task at once."""
    try:
        yield
    except ConfigError as e:
        for r in requests:  # only after a failure: the first request that fails
            try:
                encode("".join(r.args))
            except ConfigError:
                raise ConfigError(f"task {r.task_name!r}, document {r.doc_id}: {e}") from None
        raise


@torch.no_grad()
def perplexity(model, data, windows, seed, batch_size, autocast=nullcontext()):
    """The GPTQ/SparseGPT recipe (their C4 number): `windows` windows of block_size tokens at random offsets
    (numpy's default_rng(seed)) in data; each is scored from its own start, all its block_size - 1
    next-token predictions; ppl = exp(the mean negative log-likelihood over all of them)."""
    T = model.config.block_size
    if len(data) < T:
        raise ConfigError(f"val.bin holds {len(data)} tokens, fewer than the model's block_size={T}")
    starts = np.random.default_rng(seed).integers(0, len(data) - T + 1, size=windows)
    device = next(model.parameters()).device
    nll = 0.0
    for i in tqdm(range(0, windows, batch_size), desc="perplexity", unit="batch"):
        x = torch.from_numpy(np.stack([data[s : s + T] for s in starts[i : i + batch_size]]).astype(np.int64)).to(device)
        with autocast:
            _, loss = model(x[:, :-1], targets=x[:, 1:])
        nll += loss.item() * len(x)
    return {"ppl": math.exp(nll / windows), "nll": nll / windows, "windows": windows, "window": T, "seed": seed}


def is_yaml(task):
    return task.endswith((".yaml", ".yml"))


def check_tasks(cfg):
    """lm-eval's TaskManager for cfg.tasks, once every name is known to it. Names are looked up in include_path
    when it is set, else among the harness's own tasks: indexing those ~15k files takes seconds, and the
    offline export puts all six tasks in include_path."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("the harness tasks need the optional package lm-eval: pip install lm-eval "
                          "(or set tasks='' for perplexity only)") from None
    names = [t for t in cfg.task_list() if not is_yaml(t)]
    tm = TaskManager(include_path=cfg.include_path or None, include_defaults=bool(names) and not cfg.include_path)
    where = f"include_path={cfg.include_path!r}" if cfg.include_path else "the harness's tasks"
    for name in cfg.task_list():
        if is_yaml(name):
            if not os.path.isfile(name):
                raise ConfigError(f"task file {name!r} not found")
        elif name not in tm.all_tasks:
            close = difflib.get_close_matches(name, tm.all_tasks, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"none of its {len(tm.all_tasks)} names is close"
            raise ConfigError(f"unknown task {name!r} in {where}; {hint}")
    configs = {name: task_config(tm, name) for name in cfg.task_list()}
    for name, (path, task_cfg) in configs.items():
        if task_cfg is not None:
            check_task_config(path, task_cfg)
    check_task_data({name: task_cfg for name, (_, task_cfg) in configs.items() if task_cfg is not None})
    return tm


def task_config(tm, name):
    """(its YAML's path, its config with includes merged) of a task name or YAML path; the config is None for
    a group or tag, which only name other tasks. lm-eval 0.4.9's index holds dicts, later ones Entry objects."""
    if is_yaml(name):
        return name, read_task_yaml(name)[0]
    entry = tm.task_index[name]
    kind, path = (entry["type"], entry["yaml_path"]) if isinstance(entry, dict) else (entry.kind.name, entry.yaml_path)
    return str(path), read_task_yaml(str(path))[0] if str(kind).lower() == "task" else None


def close_to(name, allowed):
    close = difflib.get_close_matches(name, allowed, n=3)
    return f"did you mean {' or '.join(close)}?" if close else f"allowed: {', '.join(allowed)}"


def check_task_config(path, task_cfg):
    """What lm-eval would fail on, with errors that name neither the file nor the field (KeyError: None for
    an unknown metric): an unknown key, output_type or metric. A task of a Python class takes what its class does."""
    from lm_eval.api.registry import METRIC_REGISTRY
    from lm_eval.api.task import ALL_OUTPUT_TYPES, TaskConfig
    if "class" in task_cfg:
        return
    keys = [f.name for f in fields(TaskConfig)] + ["group", "task_list"]  # the harness drops these two
    for key in task_cfg:
        if key not in keys:
            raise ConfigError(f"task file {path}: unknown key {key!r}; {close_to(key, keys)}")
    output_type = task_cfg.get("output_type")
    if output_type is not None and output_type not in ALL_OUTPUT_TYPES:
        raise ConfigError(f"task file {path}: unknown output_type={output_type!r}; allowed: {', '.join(ALL_OUTPUT_TYPES)}")
    for entry in task_cfg.get("metric_list") or []:
        metric = entry.get("metric") if isinstance(entry, dict) else None
        if isinstance(metric, Function) or isinstance(entry, dict) and entry.get("hf_evaluate"):
            continue  # a metric of the task's own code, or of the evaluate library
        if metric not in METRIC_REGISTRY:
            raise ConfigError(f"task file {path}: metric_list has unknown metric {metric!r}; {close_to(str(metric), sorted(METRIC_REGISTRY))}")


def check_task_data(configs):
    """Tasks whose data is on the Hugging Face hub, when it cannot be reached: fail at once, not after the
    datasets library's minute of retries."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES  # the loaders of local files: json, parquet, ...
    offline = hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    hub = {name: c["dataset_path"] for name, c in configs.items() if c.get("dataset_path") and "custom_dataset" not in c
           and c["dataset_path"] not in _PACKAGED_DATASETS_MODULES and not os.path.isdir(c["dataset_path"])}
    if hub and not offline and not hub_reachable():
        name, path = next(iter(hub.items()))
        raise ConfigError(f"task {name!r} reads {path!r} from the Hugging Face hub, which cannot be reached: connect, set "
                          f"HF_DATASETS_OFFLINE=1 if its data is in the datasets cache, or export the tasks with network "
                          f"(python eval.py --export_tasks=DIR) and evaluate offline with --include_path=DIR")


def run_tasks(lm, tm, cfg):
    """{task: {metric: value}} from the harness, metrics as in its tables (acc, acc_stderr, acc_norm, ...)."""
    import lm_eval
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=cfg.task_list(), task_manager=tm, num_fewshot=cfg.num_fewshot,
                                          limit=cfg.limit or None, batch_size=cfg.batch_size, log_samples=False)
    except ConnectionError as e:  # the datasets library offline, or no network, without the data in its cache
        raise ConfigError(f"a task's dataset is not reachable ({str(e).splitlines()[0]}); with network run `python "
                          f"eval.py --export_tasks=DIR`, then evaluate offline with --include_path=DIR (docs/evaluation.md: Evaluate offline)") from None
    return {task: {k.split(",")[0]: v for k, v in metrics.items() if k != "alias"}
            for task, metrics in results["results"].items()}


def columns(ppl, tasks):
    """The table's columns in the paper's order, {name: (value, stderr or None)}, and each task's metric:
    acc_norm where the task has it, else acc (the paper does not say which it used), in percent; a perplexity
    task shows its word perplexity. Avg is the mean accuracy, its stderr sqrt(sum of stderr^2) / n (the tasks
    are independent)."""
    cols = {"PPL": (ppl["ppl"], None)} if ppl else {}
    metric = {}
    for task in sorted(tasks, key=lambda t: list(PAPER_TASKS).index(t) if t in PAPER_TASKS else len(PAPER_TASKS)):
        name = next((k for k in ("acc_norm", "acc", "word_perplexity") if k in tasks[task]), None)
        if name is None:
            continue
        metric[task], scale, se = name, 100.0 if name.startswith("acc") else 1.0, tasks[task].get(name + "_stderr")
        cols[PAPER_TASKS.get(task, task)] = (scale * tasks[task][name], scale * se if isinstance(se, float) else None)
    accs = [cols[PAPER_TASKS.get(t, t)] for t, name in metric.items() if name.startswith("acc")]
    if accs:
        se = [s for _, s in accs]
        cols["Avg"] = (sum(v for v, _ in accs) / len(accs), None if None in se else math.sqrt(sum(s * s for s in se)) / len(se))
    return cols, metric


def table(cols, metric, ppl):
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols),
             "| " + " | ".join(f"{v:.2f}" if s is None else f"{v:.1f} +- {s:.1f}" for v, s in cols.values()) + " |"]
    if metric:
        lines.append("metric: " + ", ".join(f"{PAPER_TASKS.get(t, t)} {m}" for t, m in metric.items()) + "; +- the standard error")
    if ppl:
        lines.append(f"PPL: {ppl['windows']} random windows of {ppl['window']} tokens of {ppl['data']}, seed {ppl['seed']}")
    return "\n".join(lines)


def evaluate(cfg):
    """Perplexity on cfg.ppl_data_dir's val.bin and the harness tasks cfg.tasks, of the model cfg.init_from;
    prints the table and returns (and writes to cfg.out) the results."""
    if cfg.out:
        check_writable(cfg.out, "out")  # before the minutes of evaluation whose results it keeps
    model, meta, ckpt = load_model(cfg.init_from, cfg.device)
    tm = check_tasks(cfg) if cfg.tasks else None  # a missing lm-eval or a misspelt task: before minutes of perplexity
    lm = GPTLM(model, meta, cfg.batch_size, cfg.dtype)
    ppl = None
    if cfg.ppl_data_dir:
        if not os.path.isfile(os.path.join(cfg.ppl_data_dir, "val.bin")):
            raise ConfigError(f"ppl_data_dir={cfg.ppl_data_dir!r} has no val.bin; prepare it first (data/*/prepare.py)")
        data_meta = read_meta(cfg.ppl_data_dir)
        if tokenizer_of(data_meta) != tokenizer_of(meta):
            raise ConfigError(f"ppl_data_dir={cfg.ppl_data_dir!r} holds {describe_tokenizer(data_meta)} tokens, the model "
                              f"reads {describe_tokenizer(meta)}: prepare the data with the model's tokenizer")
        check_bin(os.path.join(cfg.ppl_data_dir, "val.bin"), data_meta, model.config.block_size)  # as train.py reads it
        ppl = perplexity(lm.model, read_tokens(cfg.ppl_data_dir, "val"), cfg.ppl_windows, cfg.seed, cfg.batch_size, lm.autocast)
        ppl["data"] = os.path.join(cfg.ppl_data_dir, "val.bin")
    tasks = run_tasks(lm, tm, cfg) if tm else {}
    cols, metric = columns(ppl, tasks)
    result = {"config": asdict(cfg), "model_args": asdict(model.config), "iter_num": ckpt["iter_num"] if ckpt else None,
              "lm_eval": version("lm_eval") if tm else None, "perplexity": ppl, "tasks": tasks,
              "columns": {k: v for k, (v, _) in cols.items()}, "metric": metric}
    print(table(cols, metric, ppl))
    if cfg.out:
        os.makedirs(os.path.dirname(cfg.out) or ".", exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


# --------------------------------------------------------------------------------------------------
# offline use: the tasks' data as parquet files, and YAMLs that read them


def read_task_yaml(path):
    """A harness task YAML with its `include`s merged in (as the harness does: the file's own keys win), its
    !function references kept as they are, and the folders of every file it read (for their helper modules)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: Function(loader.construct_scalar(node)))
    with open(path) as f:
        cfg = yaml.load(f, Loader=Loader)
    merged, folders = {}, [os.path.dirname(path)]
    for inc in [cfg.pop("include")] if isinstance(cfg.get("include"), str) else cfg.pop("include", []):
        inc_cfg, inc_folders = read_task_yaml(os.path.join(os.path.dirname(path), inc))
        merged.update(inc_cfg)
        folders += inc_folders
    return {**merged, **cfg}, folders


class Function(str):
    """A YAML `!function module.name` reference, written back as it was read."""


def export_tasks(cfg):
    """With network: for every task of cfg.tasks, its data as DIR/<task>/<split>.parquet and DIR/<task>/<task>.yaml,
    the harness's own task config (prompts, metrics, helper modules) with its data read from those files.
    The YAMLs name the files by absolute path: copy DIR to the same path on the offline machine."""
    import datasets
    import yaml
    check_writable(cfg.export_tasks, "export_tasks", folder=True)
    tm = check_tasks(cfg)
    yaml.add_representer(Function, lambda dumper, f: dumper.represent_scalar("!function", f), Dumper=yaml.SafeDumper)
    for name in cfg.task_list():
        task_cfg, folders = read_task_yaml(task_config(tm, name)[0])
        name = task_cfg["task"]
        try:
            data = datasets.load_dataset(task_cfg["dataset_path"], task_cfg.get("dataset_name"), **task_cfg.get("dataset_kwargs") or {})
        except ConnectionError as e:
            raise ConfigError(f"task {name!r}: {str(e).splitlines()[0]}; exporting needs network") from None
        folder = os.path.abspath(os.path.join(cfg.export_tasks, name))
        os.makedirs(folder, exist_ok=True)  # once there is data to put in it
        files = {split: os.path.join(folder, f"{split}.parquet") for split in data}
        for split, path in files.items():
            data[split].to_parquet(path)
        task_cfg.update(dataset_path="parquet", dataset_name=None, dataset_kwargs={"data_files": files})
        for source in folders:
            for module in (m for m in os.listdir(source) if m.endswith(".py")):
                shutil.copy(os.path.join(source, module), folder)
        with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
            yaml.safe_dump(task_cfg, f, sort_keys=False)
        print(f"{name}: {', '.join(f'{s} {len(d)}' for s, d in data.items())} documents -> {folder}")


if __name__ == "__main__":
    try:
        cfg = load_config(sys.argv[1:], EvalConfig)
        if cfg.export_tasks:
            export_tasks(cfg)
        else:
            evaluate(cfg)
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
