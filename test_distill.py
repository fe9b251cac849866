"""Distillation from Hugging Face causal LMs: tokenizers, prepared data, teachers, the chunked loss.
Everything offline: a tiny random LLaMA and a byte-level BPE trained on the embedded corpus, made here."""

import copy
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import dataloader
import pretrained
import tokenizer
import train as train_module
from checkpoint import load_teacher
from configurator import ConfigError, load_config
from dataloader import find_data, write_data
from tokenizer import describe_tokenizer, get_tokenizer, tokenizer_of
from compare import read_metrics
from model import GPT, PAPER_SHAPES, GPTConfig, rope_frequencies
from sample import SampleConfig, sample
from train import TrainConfig, forward_loss, get_batch, train

REPO = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(REPO, "data", "shakespeare", "input.txt")
TEACHER_VOCAB = 448  # the embedding rows of the teacher: its tokenizer's 400 tokens padded, as Qwen pads its own


def load_script(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(os.path.dirname(path)), os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpt2_bpe_or_skip():
    """tiktoken downloads the GPT-2 BPE files once: without network or a TIKTOKEN_CACHE_DIR holding them, skip."""
    try:
        tokenizer.gpt2_encoding()
    except ConfigError as e:
        pytest.skip(f"needs the GPT-2 BPE files: {e}")


def save_bpe(folder, vocab_size=400, chars=200_000):
    """A byte-level BPE of vocab_size tokens trained on the start of the embedded corpus, saved in folder
    where AutoTokenizer finds it (tokenizer.json, tokenizer_config.json)."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    with open(CORPUS, encoding="utf-8") as f:
        text = f.read(chars)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([text[i:i + 10_000] for i in range(0, len(text), 10_000)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(folder)
    return str(folder)


def save_llama(folder, vocab_size=TEACHER_VOCAB, max_positions=64, seed=0):
    """A tiny random LlamaForCausalLM; initializer_range=0.5 makes its next-token distributions peaked
    (entropy about 3 nats of ln 448 = 6.1) and so worth distilling."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                                      initializer_range=0.5, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A Hugging Face teacher directory: random LLaMA weights and the tokenizer beside them."""
    folder = tmp_path_factory.mktemp("hf_teacher")
    save_bpe(folder)
    return save_llama(folder)


@pytest.fixture(scope="module")
def bpe_data(teacher_dir, tmp_path_factory):
    """The embedded corpus prepared with the teacher's tokenizer by data/shakespeare/prepare.py."""
    out = str(tmp_path_factory.mktemp("bpe_data"))
    load_script("data/shakespeare/prepare.py").main(out_dir=out, tokenizer=teacher_dir)
    return out


def make_char_data(folder, text="abcdefgh" * 300):
    os.makedirs(folder, exist_ok=True)
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    n = int(0.9 * len(text))
    write_data(str(folder), {"train": [[stoi[c] for c in text[:n]]], "val": [[stoi[c] for c in text[n:]]]},
               {"vocab_size": len(stoi), "stoi": stoi, "itos": {i: c for c, i in stoi.items()}})
    return str(folder)


def tiny(tmp_path, data, **kw):
    settings = dict(out_dir=str(tmp_path / "out"), data_dir=data, device="cpu", n_layer=2, n_head=2, n_embd=32,
                    block_size=32, batch_size=8, max_iters=10, eval_interval=100, eval_iters=1, log_interval=1,
                    learning_rate=1e-2, warmup_iters=0, lr_decay_iters=10, min_lr=1e-3)
    return TrainConfig(**{**settings, **kw})


# --------------------------------------------------------------------------------------------------
# tokenizers and prepared data


def test_prepare_with_a_hugging_face_tokenizer(teacher_dir, bpe_data):
    meta = dataloader.read_meta(bpe_data)
    assert (meta["vocab_size"], meta["tokenizer"], meta["dtype"]) == (400, teacher_dir, "uint16")
    train_ids = np.fromfile(os.path.join(bpe_data, "train.bin"), dtype=np.uint16).tolist()
    val_ids = np.fromfile(os.path.join(bpe_data, "val.bin"), dtype=np.uint16).tolist()
    assert meta["tokens"] == {"train": len(train_ids), "val": len(val_ids)} and max(train_ids) < 400
    encode, decode = get_tokenizer(meta)
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    assert decode(train_ids) + decode(val_ids) == text
    assert decode(encode("ROMEO: <|endoftext|>")) == "ROMEO: <|endoftext|>"
    assert describe_tokenizer(meta) == f"Hugging Face tokenizer {teacher_dir!r} (400 tokens)"


def test_tokenizers_compare_by_their_vocabulary(teacher_dir, tmp_path):
    meta = tokenizer.open_tokenizer(teacher_dir)[0]
    copy = shutil.copytree(teacher_dir, tmp_path / "copy")  # the same tokenizer elsewhere: the same ids
    assert tokenizer_of(tokenizer.open_tokenizer(str(copy))[0]) == tokenizer_of(meta)
    other = tokenizer.open_tokenizer(save_bpe(tmp_path / "other", vocab_size=300))[0]
    assert tokenizer_of(other) != tokenizer_of(meta) and other["vocab_size"] == 300
    assert tokenizer_of({"vocab_size": 50257, "encoding": "r50k_base"}) == tokenizer_of(None) == "gpt2"


def test_an_unknown_tokenizer_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=f"tokenizer='{tmp_path}' is a directory without a Hugging Face tokenizer \\(no "
                                          f"tokenizer.json or tokenizer_config.json, which tokenizer.save_pretrained "
                                          f"writes\\); nor is it a tiktoken encoding \\(gpt2, r50k_base, .*cl100k_base"):
        tokenizer.open_tokenizer(str(tmp_path))


def test_a_hugging_face_tokenizer_separates_documents_with_its_eos(teacher_dir):
    meta, encode_batch, separator = tokenizer.open_tokenizer(teacher_dir)
    ids = list(dataloader.encode_docs(["To be,", "or not <|endoftext|>"], encode_batch, separator))
    eot = ids[0][0]
    assert [seq[0] for seq in ids] == [eot, eot] and eot == get_tokenizer(meta)[0]("<|endoftext|>")[0]
    assert eot not in ids[1][1:]  # the text "<|endoftext|>" inside a document stays text


def test_encoding_documents_longer_than_the_model_context_does_not_warn(tmp_path):
    """A document longer than the tokenizer's model_max_length is normal when preparing data (it is cut
    into windows later): transformers' "Token indices sequence length is longer than ..." must not show."""
    from transformers import AutoTokenizer
    folder = save_bpe(tmp_path / "bpe")
    tok = AutoTokenizer.from_pretrained(folder, model_max_length=16)
    tok.save_pretrained(folder)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        encode_batch = tokenizer.open_tokenizer(folder)[1]
        text = "To be, or not to be, that is the question. " * 20
        assert len(encode_batch([text])[0]) > 16 and records == []
        AutoTokenizer.from_pretrained(folder)([text])  # the plain call does warn: the handler sees it
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert [r.getMessage()[:70] for r in records] == ["Token indices sequence length is longer than the specified maximum seq"]


def test_uint32_data_round_trips_through_training_reads(tmp_path):
    ids = np.arange(65_500, 65_700)  # ids past uint16's 65535
    meta = write_data(str(tmp_path), {"train": [ids], "val": [ids[:50]]}, {"vocab_size": 70_000, "encoding": "made-up"})
    assert meta["dtype"] == "uint32" and os.path.getsize(tmp_path / "train.bin") == 4 * 200
    folder, meta = find_data(str(tmp_path), "", block_size=16)
    x, y = get_batch(folder, "train", 4, 16, torch.Generator().manual_seed(0), "cpu", meta)
    assert x.max() >= 65536 and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))


def test_write_data_refuses_too_short_input_and_keeps_earlier_files(tmp_path):
    folder = make_char_data(tmp_path / "d")
    before = {name: (tmp_path / "d" / name).read_bytes() for name in ("train.bin", "val.bin", "meta.json")}

    def interrupted():
        yield [0, 1, 2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_data(folder, {"train": interrupted(), "val": [[0, 1]]}, {"vocab_size": 3, "encoding": "x"})
    with pytest.raises(ConfigError, match="the val split has 1 tokens: the input is empty or too short"):
        write_data(folder, {"train": [[0, 1, 2]], "val": [[0]]}, {"vocab_size": 3, "encoding": "x"})
    with pytest.raises(ConfigError, match="token ids 0..5 are outside the vocabulary 0..2"):
        write_data(folder, {"train": [[0, 5]], "val": [[0, 1]]}, {"vocab_size": 3, "encoding": "x"})
    assert {name: (tmp_path / "d" / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(folder)) == ["meta.json", "train.bin", "val.bin"]  # no temporary file left
    (tmp_path / "empty.txt").write_text("")
    gpt2_bpe_or_skip()
    with pytest.raises(ConfigError, match="the train split has 0 tokens"):
        load_script("data/shakespeare/prepare.py").main(str(tmp_path / "empty.txt"), str(tmp_path / "e"), "r50k_base")


def corrupt(folder, how):
    """Breaks a prepared data folder in one way; returns the file the error must name."""
    train_bin, meta_json = os.path.join(folder, "train.bin"), os.path.join(folder, "meta.json")
    if how == "id beyond the vocabulary":
        ids = np.fromfile(train_bin, dtype=np.uint16)
        ids[-1] = 8
        ids.tofile(train_bin)
    elif how == "partial id":
        with open(train_bin, "ab") as f:
            f.write(b"\0")
    elif how == "count":
        np.fromfile(train_bin, dtype=np.uint16)[:-100].tofile(train_bin)
    elif how == "unreadable meta":
        with open(meta_json, "w") as f:
            f.write("not JSON")
        return meta_json
    elif how == "vocab beyond dtype":
        dataloader.write_meta(folder, {**dataloader.read_meta(folder), "vocab_size": 70_000})
        return meta_json
    elif how == "no meta":
        open(os.path.join(folder, "prepare.py"), "w").close()  # a dataset folder: its prepare.py writes meta.json
        os.remove(meta_json)
        return meta_json
    elif how == "empty":
        open(os.path.join(folder, "val.bin"), "w").close()
        return os.path.join(folder, "val.bin")
    return train_bin


@pytest.mark.parametrize("how, message", [
    ("id beyond the vocabulary", "holds token id 8, beyond meta.json's vocab_size=8: data of another tokenizer"),
    ("partial id", "has 4321 bytes, not a whole number of uint16 token ids"),
    ("count", "holds 2060 tokens but its meta.json counted 2160: files of two preparations"),
    ("unreadable meta", "is not readable \\(JSONDecodeError: Expecting value"),
    ("vocab beyond dtype", "says vocab_size=70000 but its .bin files are uint16, ids up to 65535"),
    ("no meta", "is missing; run python .*prepare.py again"),
    ("empty", "holds 0 tokens, too few for block_size=32"),
])
def test_bad_data_is_refused_naming_the_file(tmp_path, how, message):
    folder = make_char_data(tmp_path / "data")
    path = corrupt(folder, how)
    with pytest.raises(ConfigError, match=f"{path}.* {message}"):
        find_data(folder, "", block_size=32)


def test_c4_offline_fails_at_once_with_one_line(monkeypatch, capsys):
    pytest.importorskip("datasets")
    gpt2_bpe_or_skip()  # the tokenizer is opened first
    with pytest.raises(SystemExit) as e:
        load_script("data/c4/prepare.py").main(["--tokenizer=r50k_base", "--out_dir=/nonexistent"])
    message = str(e.value)
    assert message.startswith("could not load allenai/c4 en/c4-validation.00000-of-00008.json.gz (")
    assert "\n" not in message and message.endswith("it needs access to huggingface.co once, then it is cached")


# --------------------------------------------------------------------------------------------------
# teachers


def test_hf_teacher_logits_equal_transformers(teacher_dir, bpe_data):
    from transformers import AutoModelForCausalLM

    meta = dataloader.read_meta(bpe_data)
    teacher = load_teacher(teacher_dir, "cpu", meta, block_size=64)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert next(teacher.parameters()).dtype == torch.float32
    idx = torch.randint(400, (2, 64), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    with torch.no_grad():
        logits, expected = teacher(idx), reference(idx).logits
        hidden = teacher(idx, return_hidden=True)
    assert logits.shape == (2, 64, TEACHER_VOCAB) and torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(teacher.lm_head(hidden), logits)


def test_kd_from_a_hugging_face_teacher_lowers_the_loss(teacher_dir, bpe_data, tmp_path, capsys):
    """A LLaMA-style affine student, the paper's setting: pure KD from the Hugging Face teacher."""
    student = dict(attn="affine", pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1)
    result = train(tiny(tmp_path, bpe_data, loss="kd", teacher=teacher_dir, kd_alpha=1.0, loss_chunk=100, max_iters=20,
                        log_interval=5, **student))
    hf = pytest.importorskip("transformers").AutoModelForCausalLM.from_pretrained(teacher_dir)
    n_params = sum(p.numel() for p in hf.parameters())
    assert f"teacher: loaded the pretrained {teacher_dir} ({n_params / 1e6:.1f}M parameters, float32)\n" in capsys.readouterr().out
    steps, _ = read_metrics(result["out_dir"])
    kd = [r["kd"] for r in steps]  # measured: 3.05, 2.82, 2.66, 2.64
    assert kd == sorted(kd, reverse=True) and kd[-1] < 0.9 * kd[0] and steps[0]["loss"] == pytest.approx(kd[0])
    assert torch.load(os.path.join(result["out_dir"], "ckpt.pt"), weights_only=True)["model_args"]["vocab_size"] == 400
    # the student's checkpoint carries the data's meta: sample.py decodes with the Hugging Face tokenizer
    [text] = sample(SampleConfig(init_from=result["out_dir"], start="ROMEO:", num_samples=1, max_new_tokens=8, device="cpu"))
    assert text.startswith("ROMEO:") and len(get_tokenizer(dataloader.read_meta(bpe_data))[0](text)) >= 9


def test_bad_teachers_are_refused_before_training(teacher_dir, bpe_data, tmp_path):
    from transformers import T5Config

    def refused(teacher, message, data=bpe_data, **kw):
        with pytest.raises(ConfigError, match=message):
            train(tiny(tmp_path, data, loss="kd", teacher=teacher, **kw))
        assert not (tmp_path / "out").exists()

    T5Config().save_pretrained(tmp_path / "t5")
    refused(str(tmp_path / "t5"), "teacher=.*t5' is a Hugging Face 't5' model, not a causal LM")
    (tmp_path / "empty").mkdir()
    refused(str(tmp_path / "empty"), "teacher=.*empty' is a directory with neither a checkpoint of train.py")
    refused(teacher_dir, "another tokenizer than the data; teacher: Hugging Face tokenizer .* \\(400 tokens\\), "
                         "data: character-level \\(8 characters\\)", data=make_char_data(tmp_path / "chars"))
    refused(teacher_dir, "has max_position_embeddings=64, smaller than the student's block_size=128", block_size=128)
    small = save_llama(save_bpe(tmp_path / "small"), vocab_size=300)  # 300 logits for a 400-token tokenizer
    refused(small, "has 300 logits, fewer than the data's vocab_size=400")


def test_a_teacher_whose_logits_are_not_its_lm_head_is_refused(teacher_dir, bpe_data, monkeypatch):
    """Soft-capped or scaled logits (Gemma-2, Granite) would be lost by projecting hidden states chunk by chunk."""
    def capped(self, idx, return_hidden=False):
        return 30 * torch.tanh(self.lm_head(self.body(input_ids=idx).last_hidden_state) / 30)

    monkeypatch.setattr(pretrained.HFTeacher, "forward", capped)
    with pytest.raises(ConfigError, match=r"computes its logits otherwise than lm_head\(last hidden state\)"):
        load_teacher(teacher_dir, "cpu", dataloader.read_meta(bpe_data), block_size=32)


# --------------------------------------------------------------------------------------------------
# the chunked loss


def student_and_teacher(vocab=37, teacher_vocab=45, seed=0):
    """A student over vocab tokens and a teacher whose embedding is padded to teacher_vocab rows, whose pad
    logits are huge: a loss that let them in would differ from one over the real vocabulary."""
    torch.manual_seed(seed)
    student = GPT(GPTConfig(block_size=16, vocab_size=vocab, n_layer=2, n_head=2, n_embd=16, attn="affine"))
    teacher = GPT(GPTConfig(block_size=16, vocab_size=teacher_vocab, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        teacher.lm_head.weight.normal_(0.0, 1.0)
        teacher.lm_head.weight[vocab:] *= 50.0
    return student, teacher


@pytest.mark.parametrize("loss, reverse, kd_alpha", [("ce", False, 0.5), ("kd", False, 0.5), ("kd", True, 0.5), ("kd", False, 1.0)])
def test_chunked_loss_equals_unchunked(loss, reverse, kd_alpha):
    x = torch.randint(37, (3, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(37, (3, 16), generator=torch.Generator().manual_seed(2))
    y[:, ::3] = -1  # masked targets, in every chunk
    results = []
    for chunk in (0, 7, 48):  # 7 does not divide the 48 tokens: the last chunk is shorter
        student, teacher = student_and_teacher()
        cfg = TrainConfig(loss=loss, teacher="t" if loss == "kd" else "", kd_reverse=reverse, kd_alpha=kd_alpha,
                          kd_temperature=2.0, loss_chunk=chunk)
        values = forward_loss(student, teacher if loss == "kd" else None, x, y, cfg, 37)
        values[0].backward()
        results.append((torch.stack(values), {k: p.grad for k, p in student.named_parameters()}))
    (v0, g0), *others = results
    for v, g in others:
        assert torch.allclose(v, v0, rtol=1e-5, atol=1e-6)
        assert all(torch.allclose(g[k], g0[k], rtol=1e-4, atol=1e-7) for k in g0)
    assert v0[0] > 0 and all(g.abs().sum() > 0 for k, g in g0.items() if k.endswith("c_alpha.weight"))
    _, _, kd, soft_ce = v0
    if loss == "kd" and not reverse:  # soft_ce = kd + tau^2 H(teacher) > kd
        assert soft_ce > kd > 0
    else:  # no soft-target cross-entropy without a teacher or for the reverse KL
        assert soft_ce == 0


@pytest.mark.parametrize("reverse", [False, True])
def test_kd_is_over_the_real_vocabulary(reverse):
    """The KD term equals torch's own KL divergence on the first 37 logits of student and teacher."""
    student, teacher = student_and_teacher()
    x = torch.randint(37, (2, 16), generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(loss="kd", teacher="t", kd_reverse=reverse, kd_temperature=2.0, loss_chunk=5)
    _, _, kd, _ = forward_loss(student, teacher, x, x, cfg, 37)
    s = F.log_softmax(student(x, x)[0][..., :37] / 2.0, dim=-1).flatten(0, 1)
    t = F.log_softmax(teacher(x, x)[0][..., :37] / 2.0, dim=-1).flatten(0, 1)
    inp, target = (t, s) if reverse else (s, t)  # F.kl_div(input, target) = KL(target || input)
    expected = 4.0 * F.kl_div(inp, target, log_target=True, reduction="batchmean")
    assert kd.item() == pytest.approx(expected.item(), rel=1e-5)


def test_chunks_bound_the_logits(monkeypatch):
    """With loss_chunk=8 the student's and teacher's lm_head never see more than 8 tokens at once, forward
    or backward (where checkpointing recomputes each chunk)."""
    student, teacher = student_and_teacher()
    rows = []
    for head in (student.lm_head, teacher.lm_head):
        head.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    x = torch.randint(37, (3, 16), generator=torch.Generator().manual_seed(1))
    loss, *_ = forward_loss(student, teacher, x, x, TrainConfig(loss="kd", teacher="t", loss_chunk=8), 37)
    forward_calls = len(rows)
    loss.backward()
    assert forward_calls == 2 * 6 and len(rows) == 2 * forward_calls and max(rows) == 8


def masked_targets(shape, frac, seed, vocab=37):
    """Targets of which exactly frac are -1 (ignore_index), at seeded random places."""
    y = torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))
    masked = torch.randperm(y.numel(), generator=torch.Generator().manual_seed(seed + 1))[: round(frac * y.numel())]
    y.view(-1)[masked] = -1
    return y


def reference_losses(student, teacher, x, y, tau, vocab=37, reverse=False):
    """Over the real (not -1) targets only, by torch's own functions: the cross-entropy, tau^2 KL (KL(teacher ||
    student), or KL(student || teacher) if reverse), tau^2 H(teacher, student) and tau^2 H(teacher), at
    temperature tau on the first vocab logits."""
    real = (y != -1).flatten()
    logits = student(x, x)[0][..., :vocab].flatten(0, 1)[real]
    with torch.no_grad():
        t = F.log_softmax(teacher(x, x)[0][..., :vocab].flatten(0, 1)[real] / tau, dim=-1)
    s = F.log_softmax(logits / tau, dim=-1)
    inp, target = (t, s) if reverse else (s, t)  # F.kl_div(input, target) = KL(target || input)
    kd = tau**2 * F.kl_div(inp, target, log_target=True, reduction="batchmean")
    soft_ce = tau**2 * F.cross_entropy(logits / tau, t.exp())  # probabilities as targets: H(teacher, student)
    entropy = tau**2 * torch.distributions.Categorical(logits=t).entropy().mean()
    return F.cross_entropy(logits, y.flatten()[real]), kd, soft_ce, entropy


@pytest.mark.parametrize("chunk", [0, 7])
@pytest.mark.parametrize("reverse", [False, True])
def test_masked_targets_are_neither_distilled_nor_counted(reverse, chunk):
    """3/4 of the targets are -1: the CE and the KD term are both means over the real quarter, in value and
    gradient (issue 22; the KD term used to be summed over every position and divided by all of them)."""
    x = torch.randint(37, (4, 16), generator=torch.Generator().manual_seed(1))
    y = masked_targets(x.shape, 0.75, seed=2)
    cfg = TrainConfig(loss="kd", teacher="t", kd_reverse=reverse, kd_temperature=2.0, loss_chunk=chunk)
    student, teacher = student_and_teacher()
    loss, ce, kd, _ = forward_loss(student, teacher, x, y, cfg, 37)
    loss.backward()
    grads = {k: p.grad for k, p in student.named_parameters()}
    student, teacher = student_and_teacher()
    ref_ce, ref_kd, _, _ = reference_losses(student, teacher, x, y, 2.0, reverse=reverse)
    (0.5 * ref_kd + 0.5 * ref_ce).backward()  # kd_alpha=0.5
    print(f"reverse={reverse}, loss_chunk={chunk}: kd {kd.item():.6f}, over the real targets {ref_kd.item():.6f}")
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-5)
    assert kd.item() == pytest.approx(ref_kd.item(), rel=1e-5)
    for k, p in student.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("chunk", [0, 7])
def test_soft_ce_is_the_soft_target_cross_entropy_with_the_gradients_of_the_kl(chunk):
    """Issue 19: soft_ce = tau^2 H(teacher_tau, student_tau), the soft-target cross-entropy (torchtune's
    ForwardKLLoss; the size of the paper's "KD loss"), = kd + tau^2 H(teacher_tau). The teacher's entropy does
    not depend on the student, so the KL that training minimises and soft_ce have the same gradients."""
    x = torch.randint(37, (4, 16), generator=torch.Generator().manual_seed(1))
    y = masked_targets(x.shape, 0.75, seed=2)
    cfg = TrainConfig(loss="kd", teacher="t", kd_alpha=1.0, kd_temperature=2.0, loss_chunk=chunk)
    student, teacher = student_and_teacher()
    _, _, kd, soft_ce = forward_loss(student, teacher, x, y, cfg, 37)
    kd.backward()
    kl_grads = {k: p.grad for k, p in student.named_parameters()}
    student, teacher = student_and_teacher()
    _, _, ref_soft_ce, entropy = reference_losses(student, teacher, x, y, 2.0)
    ref_soft_ce.backward()
    print(f"loss_chunk={chunk}: kd {kd.item():.6f}, soft_ce {soft_ce.item():.6f}, tau^2 H(teacher) {entropy.item():.6f}")
    assert soft_ce.item() == pytest.approx(ref_soft_ce.item(), rel=1e-5)
    assert (soft_ce - kd).item() == pytest.approx(entropy.item(), rel=1e-5)
    for k, p in student.named_parameters():
        torch.testing.assert_close(kl_grads[k], p.grad, rtol=1e-4, atol=1e-7)


def caller():
    """The name of the function that called the function calling this: train.optimizer_step or estimate_loss."""
    return sys._getframe(2).f_code.co_name


def test_an_iteration_averages_its_micro_steps_means(tmp_path, monkeypatch):
    """The normalisation under gradient accumulation (forward_loss's docstring): an iteration's loss, and so
    its gradient, is the mean over its micro-steps of each micro-batch's mean over its real targets, not the
    mean over all the iteration's real targets. Micro-step 0 has 3/4 of its targets masked, micro-step 1 none;
    the logged loss, ce, kd, soft_ce and grad_norm are checked against torch's own functions."""
    with open(CORPUS, encoding="utf-8") as f:
        data = make_char_data(tmp_path / "data", f.read(4000))
    train(tiny(tmp_path, data, out_dir=str(tmp_path / "teacher"), seed=1, max_iters=0))  # other initial weights
    steps, first = [], {}

    def masked_get_batch(*args):
        x, y = real_get_batch(*args)
        if caller() == "optimizer_step":
            if len(steps) % 2 == 0:
                y = torch.where(masked_targets(y.shape, 0.75, seed=len(steps)) == -1, -1, y)
            steps.append((x, y))
        return x, y

    def recording_forward_loss(model, teacher, *args):
        if torch.is_grad_enabled() and not first:  # the weights of the first training step
            first.update(model=copy.deepcopy(model), teacher=teacher)
        return real_forward_loss(model, teacher, *args)

    real_get_batch, real_forward_loss = train_module.get_batch, train_module.forward_loss
    monkeypatch.setattr(train_module, "get_batch", masked_get_batch)
    monkeypatch.setattr(train_module, "forward_loss", recording_forward_loss)
    result = train(tiny(tmp_path, data, loss="kd", teacher=str(tmp_path / "teacher"), kd_temperature=2.0,
                        gradient_accumulation_steps=2, max_iters=1))
    row = read_metrics(result["out_dir"])[0][0]
    vocab = first["model"].config.vocab_size
    micro = [reference_losses(first["model"], first["teacher"], x, y, 2.0, vocab) for x, y in steps[:2]]
    ce, kd, soft_ce, _ = (torch.stack(values) for values in zip(*micro))
    losses = 0.5 * kd + 0.5 * ce
    losses.mean().backward()
    grad_norm = torch.cat([p.grad.flatten() for p in first["model"].parameters() if p.grad is not None]).norm()
    real = torch.tensor([(y != -1).sum() for _, y in steps[:2]], dtype=torch.float32)
    print(f"logged loss {row['loss']:.6f}; mean of the micro-steps' means {losses.mean().item():.6f}, "
          f"mean over all real targets {((losses * real).sum() / real.sum()).item():.6f}")
    assert real.tolist() == [64, 256]
    assert [row["loss"], row["ce"], row["kd"], row["soft_ce"]] == pytest.approx(
        [losses.mean().item(), ce.mean().item(), kd.mean().item(), soft_ce.mean().item()], rel=1e-5)
    assert row["grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-4)
    assert abs(row["loss"] - ((losses * real).sum() / real.sum()).item()) > 1e-4  # the two choices differ here


def test_evaluation_draws_train_batches_of_its_own_the_same_every_time(tmp_path, monkeypatch):
    """estimate_loss's "train" batches are not the training batches (issue 22: they were those of iterations
    0, 1, ...), and every evaluation sees the same ones; its val batches are drawn as before, from seed."""
    with open(CORPUS, encoding="utf-8") as f:
        data = make_char_data(tmp_path / "data", f.read(4000))
    drawn = []

    def recording_get_batch(*args):
        x, y = real_get_batch(*args)
        drawn.append((caller(), args[1], x))
        return x, y

    real_get_batch = train_module.get_batch
    monkeypatch.setattr(train_module, "get_batch", recording_get_batch)
    cfg = tiny(tmp_path, data, max_iters=4, eval_interval=2, eval_iters=2)
    train(cfg)
    evals = [x for who, split, x in drawn if who == "estimate_loss" and split == "train"]
    vals = [x for who, split, x in drawn if who == "estimate_loss" and split == "val"]
    steps = [x for who, _, x in drawn if who == "optimizer_step"]
    assert len(evals) == len(vals) == 3 * 2 and len(steps) == 4  # evaluations at iters 0, 2, 4
    assert all(torch.equal(evals[i], evals[i % 2]) and torch.equal(vals[i], vals[i % 2]) for i in range(6))
    assert not any(torch.equal(e, s) for e in evals[:2] for s in steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    assert all(torch.equal(vals[i], get_batch(data, "val", 8, 32, generator, "cpu", dataloader.read_meta(data))[0]) for i in range(2))


def test_bench_measures_the_loss_memory_against_loss_chunk(capsys, tmp_path):
    import bench

    out = tmp_path / "new" / "loss_chunks.json"  # its folder is made
    rows = bench.main(["--device=cpu", "--loss_chunks=0,16", "--vocab_size=2000", "--n_embd=16", "--seq_lens=128", "--iters=1",
                       f"--out={out}"])
    saved = json.loads(out.read_text())
    assert saved["results"] == rows and saved["settings"]["vocab_size"] == 2000 and saved["settings"]["loss_chunks"] == [0, 16]
    assert [r["loss_chunk"] for r in rows] == [0, 16] and rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-6)
    # unchunked: about 7 fp32 tensors of 128 x 2000 logits (1 MiB each); in chunks of 16 tokens an eighth of that
    assert rows[0]["peak_mib"] > 5 and rows[1]["peak_mib"] < 0.5 * rows[0]["peak_mib"]
    assert "loss_chunk   peak MiB" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# the paper's three runs build the published students


@pytest.mark.parametrize("config, name", [("kd_paper_qwen1.5_0.5b.py", "Qwen1.5-0.5B"),
                                          ("kd_paper_llama3.2_1b.py", "LLaMA-3.2-1B"),
                                          ("kd_paper_llama3.2_3b.py", "LLaMA-3.2-3B")])
def test_the_paper_configs_build_the_published_students(config, name):
    """Appendix B.1: the students have the architecture of the published models, RoPE scaling included;
    only block_size (the paper's sequence length, not the models' positions) and the attention differ."""
    cfg = load_config([os.path.join(REPO, "config", config)], TrainConfig)
    published = GPTConfig(**PAPER_SHAPES[name])
    student = cfg.gpt_config(published.vocab_size)
    assert (cfg.block_size, cfg.attn, cfg.sampling) == (2048, "affine", "epoch")
    assert dataclasses.replace(student, block_size=published.block_size, attn="softmax") == published
    with torch.device("meta"):
        built, reference = GPT(student), GPT(dataclasses.replace(published, attn="affine"))
    assert {k: v.shape for k, v in built.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    # samples per step and steps: the paper's 1024 x 2048 tokens x 9000
    assert (cfg.batch_size * cfg.gradient_accumulation_steps, cfg.max_iters) == (1024, 9000)


def test_llama3_rope_scaling_acts_within_2048_positions():
    """LLaMA-3's scaling is no long-context detail: on a 64-wide head it changes 17 of the 32 frequencies,
    14 of them divided by the factor 32; at position 2047 frequency 15 turns 2.64 rad instead of 4.36."""
    student = GPTConfig(**PAPER_SHAPES["LLaMA-3.2-1B"])
    scaled, plain = rope_frequencies(student), rope_frequencies(dataclasses.replace(student, rope_scaling=None))
    assert (student.n_embd // student.n_head, len(plain)) == (64, 32)
    assert (scaled != plain).nonzero().flatten().tolist() == list(range(15, 32))
    assert torch.isclose(scaled * 32, plain).sum() == 14
    assert (round(2047 * plain[15].item(), 2), round(2047 * scaled[15].item(), 2)) == (4.36, 2.64)


def test_rope_scaling_is_a_setting_a_resume_compares(tmp_path):
    from test_model import make_char_data, tiny

    rope = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8}
    assert load_config(["--pos=rope", f"--rope_scaling={rope}"], TrainConfig).rope_scaling == rope
    assert load_config(["--pos=rope", f"--rope_scaling={rope}", "--rope_scaling=None"], TrainConfig).rope_scaling is None
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, data=data, max_iters=2, pos="rope", rope_scaling=rope))
    assert torch.load(tmp_path / "out" / "ckpt.pt")["model_args"]["rope_scaling"] == rope
    with pytest.raises(ConfigError, match=re.escape(f"differ: rope_scaling={rope!r} there, None now")):
        train(tiny(tmp_path, data=data, max_iters=4, pos="rope", init_from="resume"))
