"""
Settings, nanoGPT-style: every script's settings are a dataclass, filled from config files (python, run with
exec) and --key=value overrides, in order; --help lists them with the comments beside them. Also the one
error every script reports in one line (ConfigError), the checks of a setting's type, choice, device and
output path, and the CPU thread count of small models.
"""

import ast
import dataclasses
import difflib
import inspect
import io
import os
import sys
import textwrap
import tokenize
import traceback
import types

import torch


class ConfigError(ValueError):
    """A bad setting, or data or a model that does not fit: the message says what and what would do."""


def first_line(error):
    """An exception's type and first sentence: the gist of library messages that run over several."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0].split('. ')[0]}"


def check_types(cfg):
    """Every field of the dataclass cfg must have its default's type; an int is taken for a float. A field
    whose default is None (rope_scaling) takes None or its annotation's type (dict)."""
    for f in dataclasses.fields(cfg):
        value, want = getattr(cfg, f.name), type(f.default) if f.default is not None else f.type
        if want is float and type(value) is int:
            setattr(cfg, f.name, float(value))
        elif type(value) is not want and not (f.default is None and value is None):
            need = {bool: "True or False", int: "an integer", float: "a number", str: "a string", dict: "a dict or None"}[want]
            raise ConfigError(f"{f.name}={value!r} must be {need} (got {type(value).__name__})")


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"unknown {name}={value!r}; allowed: {', '.join(allowed)}")


def check_device(device, name="device"):
    """device must be cpu, cuda, cuda:N or mps, and present on this machine."""
    kind, _, index = device.partition(":")
    check_choice(name, kind, ("cpu", "cuda", "mps"))
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name}={device!r} but torch sees no CUDA GPU here; use {name}=cpu")
    if kind == "cuda" and index and not (index.isdigit() and int(index) < torch.cuda.device_count()):
        raise ConfigError(f"{name}={device!r} but this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name}={device!r} but MPS is not available here; use {name}=cpu")


def check_writable(path, setting, folder=False):
    """Refuses, before the work whose results go there, an output file (or with folder=True an output folder)
    that could not be written at the end: a folder where a file must go or the reverse, a path below a file,
    or a place without write permission. Missing folders are fine: the writer makes them (os.makedirs)."""
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise ConfigError(f"{setting}={path!r} is a {'file' if folder else 'directory'}; give "
                          f"{'a directory' if folder else 'a file name'}")
    existing = nearest_existing(path)
    if not os.path.isdir(existing) and existing != os.path.abspath(path):
        raise ConfigError(f"{setting}={path!r} is below {existing}, which is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"{setting}={path!r}: {existing} is not writable")


def nearest_existing(path):
    """path, or else the nearest path above it that exists: the folder the missing ones would be made in, or a
    file where a folder would have to be."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def make_dir(path, setting):
    """os.makedirs(path), with one line for a path that is a file, lies below one, or cannot be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{setting}={path!r} is a file, not a directory; choose another {setting}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        parent = nearest_existing(os.path.dirname(os.path.abspath(path)))
        if not os.path.isdir(parent):
            raise ConfigError(f"{setting}={path!r} lies below {parent}, which is a file, not a directory") from None
        raise ConfigError(f"{setting}={path!r} cannot be made ({e.strerror}); choose another {setting}") from None


# Below this many parameters a CPU run uses one thread unless OMP_NUM_THREADS says otherwise: the operations of
# so small a model are too small to share between cores, and on a busy 2-core machine torch's default, a thread
# per core, made the main job (config/train_shakespeare_char_cpu.py) 10-22x slower to train (1151 vs 116 and
# 3845 vs 176 ms/iter) and 16x slower to sample (sample.py, 3 x 500 tokens: 233 vs 14 s).
SMALL_MODEL = 10_000_000


def cpu_threads(model, device):
    """One thread for a model of fewer than SMALL_MODEL parameters on a CPU, where OMP_NUM_THREADS is not
    set. Returns True if it set the thread count."""
    if device != "cpu" or "OMP_NUM_THREADS" in os.environ or model.get_num_params() >= SMALL_MODEL:
        return False
    torch.set_num_threads(1)
    return True


def read_config_file(path):
    """The names a config file assigns (it is python, run with exec), less dunders and imported modules."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (overrides are written --key=value)")
    if not path.endswith(".py"):  # python to run: never a data file given where a config file goes
        raise ConfigError(f"{path!r} is not a config file (python, .py); settings are written --key=value (see --help)")
    namespace = {}
    with open(path) as f:
        source = f.read()
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: SyntaxError: {e.msg}") from None
    except Exception as e:  # the line of the file itself, not of whatever it called
        line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path][-1]
        raise ConfigError(f"config file {path}, line {line}: {first_line(e)}") from None
    return {k: v for k, v in namespace.items() if not k.startswith("__") and not isinstance(v, types.ModuleType)}


def settings_help(cls):
    """The --help of a script whose settings are the dataclass cls: its module's docstring, then every field
    with its default and the comment beside it in cls's source (comment lines between fields are headings),
    so the help cannot drift from the settings."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    body = ast.parse(source).body[0].body
    fields = {node.lineno: node for node in body if isinstance(node, ast.AnnAssign)}
    end = min([node.lineno for node in body if isinstance(node, ast.FunctionDef)] + [len(source.splitlines()) + 1])
    defaults = {f.name: f"--{f.name}={f.default!r}" for f in dataclasses.fields(cls)}
    width = max(map(len, defaults.values())) + 2
    module = sys.modules[cls.__module__]
    lines = [f"usage: python {os.path.basename(module.__file__)} [config_file.py ...] [--key=value ...]", "",
             (module.__doc__ or "").strip(), "", "settings, with their defaults:"]
    in_field = {row for node in fields.values() for row in range(node.lineno, node.end_lineno + 1)}
    headings = {row for row in comments if row not in in_field and row < end}
    for row in range(1, end):
        if row in fields:
            node = fields[row]
            comment = " ".join(comments[r] for r in range(node.lineno, node.end_lineno + 1) if r in comments)
            lines.append(f"  {defaults[node.target.id]:<{width}}{comment}".rstrip())
        elif row in headings:  # a blank line before each heading; consecutive comment lines are one paragraph
            lines += [comments[row]] if row - 1 in headings else ["", comments[row]]
    return "\n".join(lines)


def load_config(argv, cls):
    """nanoGPT-style settings from the command line: config files and --key=value overrides, in order.
    An override's value is a python literal (--lr=3e-4, --bias=False); string fields also take bare text.
    -h or --help prints the settings with their defaults and comments, and exits."""
    if "-h" in argv or "--help" in argv:
        try:
            print(settings_help(cls), flush=True)
        except BrokenPipeError:  # python train.py --help | head -1: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when python flushes at exit
        sys.exit(0)
    types_ = {f.name: type(f.default) for f in dataclasses.fields(cls)}
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise ConfigError(f"override {arg!r} must be written --key=value")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            if types_.get(key) is str and not isinstance(value, str):
                value = text  # --out_dir=2024 is the folder "2024"
            settings, source = {key: value}, arg
        else:
            settings, source = read_config_file(arg), arg
        for key, value in settings.items():
            if key not in types_:
                close = difflib.get_close_matches(key, types_, n=3)
                hint = f"did you mean {' or '.join(close)}?" if close else f"see the fields of {cls.__name__}"
                raise ConfigError(f"unknown setting {key!r} (from {source}); {hint}")
            values[key] = value
    return cls(**values)
