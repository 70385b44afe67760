"""Tests of bitjax.data: tokenizers, corpora, packing, shuffling, sharding."""

import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from bitjax import data
from bitjax.data import builders, text

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "héllo",
    "wörld",
    "naïve",
    "café",
    "東京",
    "😀",
]


def write_corpus(root, n_files=40, lines=12, seed=0):
    """n_files small text files (some non-ASCII) under root/sub{0,1}/."""
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        path = root / f"sub{i % 2}" / f"doc{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(lines))
        path.write_text(f"# file {i}\n{body}\n", encoding="utf-8")
    return str(root / "**" / "*.txt")


def make_cfg(tmp_path, **overrides):
    cfg = data.default_config()
    cfg.data_dir = str(tmp_path / "data_dir")
    cfg.name = "text_files"
    cfg.seq_len = 16
    cfg.batch_size = 8
    cfg.update(overrides)
    return cfg


def _error(tmp_path, **overrides):
    """The DataError message of get_datasets on a bad config."""
    with pytest.raises(data.DataError) as e:
        data.get_datasets(make_cfg(tmp_path, **overrides))
    return str(e.value)


@pytest.fixture(name="corpus")
def fixture_corpus(tmp_path):
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(name="datasets")
def fixture_datasets(tmp_path, corpus):
    cfg = make_cfg(tmp_path, paths=[corpus])
    return cfg, data.get_datasets(cfg)


# ----------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------


def test_byte_tokenizer_roundtrip():
    tok = data.ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 256, 257, 258)
    s = "héllo wörld 東京 😀\n\tx"
    ids = tok.encode(s)
    assert ids.dtype == np.int32 and len(ids) == len(s.encode())
    assert tok.decode(ids) == s
    # Specials are dropped; a cut multi-byte character decodes as U+FFFD.
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == s
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"
    assert tok.bytes_per_token(ids) == 1.0
    assert tok.bytes_per_token([*ids, tok.eos_id]) == len(ids) / (len(ids) + 1)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_tokenizer_roundtrip_any_text(s):
    tok = data.ByteTokenizer()
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=200, deadline=None)
@given(st.text(), st.floats(0.01, 0.99))
def test_split_tail_partitions_text(s, fraction):
    head, tail = text.split_tail(s, fraction)
    assert head + tail == s
    assert bool(head) == bool(s) and bool(tail) == (len(s) >= 2)


SPM_DOCS = [f"def f{i}(x):\n    return x * {i}  # {' '.join(WORDS[i % 9 :])}\n" for i in range(300)]


@pytest.fixture(name="spm", scope="module")
def fixture_spm(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("spm") / "spm.model")
    return data.train_sentencepiece(SPM_DOCS, path, vocab_size=400)


def test_sentencepiece_trains_roundtrips_and_is_reused(tmp_path, spm):
    assert os.path.exists(spm.model_path) and spm.vocab_size <= 400
    assert (spm.pad_id, spm.bos_id, spm.eos_id) == (0, 2, 3)
    # Lossless even for whitespace runs, newlines and unseen characters.
    for s in ["def f7(x):\n    return x * 7\n", "  two  spaces\t\ttabs\n\n", "unseen: ß Ω ✓ 😀 東京", SPM_DOCS[5]]:
        ids = spm.encode(s)
        assert ids.dtype == np.int32 and spm.decode(ids) == s
        assert spm.token_bytes[ids].sum() == len(s.encode())
    assert len(spm.encode(SPM_DOCS[5])) < len(SPM_DOCS[5].encode())  # It compresses.
    assert spm.decode([spm.bos_id, *spm.encode("ab"), spm.eos_id, spm.pad_id]) == "ab"
    # make_tokenizer reuses the saved model (texts are never needed).
    cfg = data.default_config()
    cfg.tokenizer = "sentencepiece"
    again = data.make_tokenizer(cfg, texts=None, model_path=spm.model_path)
    assert again.name == spm.name
    # Training is deterministic: the same vocabulary (hence the same caches)
    # wherever and whenever it is trained, e.g. on every host.
    elsewhere = data.train_sentencepiece(SPM_DOCS, str(tmp_path / "m.model"), vocab_size=400)
    assert elsewhere.name == spm.name


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_sentencepiece_is_lossless_on_any_text(spm, s):
    ids = spm.encode(s)
    assert spm.decode(ids) == s
    assert spm.token_bytes[ids].sum() == len(s.encode())


def test_make_tokenizer_rejects_bad_config(tmp_path):
    cfg = data.default_config()
    cfg.tokenizer = "wordpiece"
    with pytest.raises(ValueError, match="wordpiece"):
        data.make_tokenizer(cfg)
    cfg.tokenizer, cfg.vocab_size = "sentencepiece", 100
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        data.make_tokenizer(cfg, lambda: ["some text"], str(tmp_path / "m"))


def test_sentencepiece_pipeline(tmp_path, corpus):
    cfg = make_cfg(tmp_path, paths=[corpus], tokenizer="sentencepiece", vocab_size=320)
    train, evaluation, tok = data.get_datasets(cfg)
    assert isinstance(tok, data.SentencePieceTokenizer)
    batch = train.batch(0)
    assert batch["inputs"].max() < tok.vocab_size
    assert 1.0 < evaluation.bytes_per_token < 8.0
    # Reused, not retrained, by a second call.
    _, _, tok2 = data.get_datasets(cfg)
    assert tok2.name == tok.name


# ----------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------


def test_batch_format_and_shift(datasets):
    cfg, (train, _, tok) = datasets
    b = train.batch(3)
    shape = (cfg.batch_size, cfg.seq_len)
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "inputs": (shape, np.int32),
        "targets": (shape, np.int32),
        "mask": (shape, np.float32),
    }
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    assert (b["mask"] == 1).all()
    assert b["inputs"].max() < tok.vocab_size
    # Rows are windows of the token stream: the next-token pair of each row
    # continues in the stream.
    stream = train.tokens
    row = np.concatenate([b["inputs"][0], b["targets"][0, -1:]])
    starts = np.flatnonzero(np.asarray(stream[: -cfg.seq_len]) == row[0])
    assert any((stream[s : s + cfg.seq_len + 1] == row).all() for s in starts)


def test_batch_is_pure_function_of_seed_and_step(tmp_path, corpus, datasets):
    cfg, (train, _, _) = datasets
    np.testing.assert_equal(train.batch(5), train.batch(5))
    # A fresh pipeline (e.g. after a restart) gives the same batches.
    fresh, _, _ = data.get_datasets(cfg)
    np.testing.assert_equal(fresh.batch(5), train.batch(5))
    assert not np.array_equal(train.batch(5)["inputs"], train.batch(6)["inputs"])
    other, _, _ = data.get_datasets(make_cfg(tmp_path, paths=[corpus], seed=1))
    assert not np.array_equal(other.batch(5)["inputs"], train.batch(5)["inputs"])
    # Resuming at step k == iterating from step 0 and skipping k.
    from_zero = train.iterate(0)
    for _ in range(4):
        next(from_zero)
    resumed = fresh.iterate(start_step=4)
    for _ in range(3):
        np.testing.assert_equal(next(from_zero), next(resumed))


def test_epochs_are_fresh_permutations(datasets):
    cfg, (train, _, _) = datasets
    n = train.num_sequences
    rows = np.concatenate([train.batch(s)["inputs"] for s in range(2 * n // cfg.batch_size + 1)])
    first = {tuple(w[:-1]) for w in train.windows}
    epoch0 = [tuple(r) for r in rows[:n]]
    epoch1 = [tuple(r) for r in rows[n : 2 * n]]
    assert set(epoch0) == first and set(epoch1) == first
    assert epoch0 != epoch1


@pytest.mark.parametrize("process_count", [2, 4, 8])
def test_host_slices_concatenate_to_global_batch(datasets, process_count):
    _, (train, evaluation, _) = datasets
    for step in (0, 7):
        parts = [train.batch(step, pi, process_count) for pi in range(process_count)]
        glob = train.batch(step)
        for k in glob:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), glob[k])
            np.testing.assert_array_equal(data.shard_batch(glob, 1, process_count)[k], parts[1][k])
    local = [list(evaluation.batches(pi, process_count)) for pi in range(process_count)]
    for i, glob in enumerate(evaluation.batches()):
        np.testing.assert_array_equal(
            np.concatenate([local[pi][i]["targets"] for pi in range(process_count)]), glob["targets"]
        )


def test_host_slice_errors():
    assert data.host_slice(16, 3, 4) == slice(12, 16)
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        data.host_slice(16, 0, 3)
    with pytest.raises(ValueError, match="process_index=4"):
        data.host_slice(16, 4, 4)


def test_eval_covers_validation_deterministically(tmp_path, corpus):
    cfg = make_cfg(tmp_path, paths=[corpus], batch_size=4)
    _, evaluation, tok = data.get_datasets(cfg)
    batches = list(evaluation.batches())
    assert len(batches) == evaluation.num_batches
    np.testing.assert_equal(batches, list(evaluation.batches()))
    targets = np.concatenate([b["targets"].reshape(-1) for b in batches])
    mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
    assert mask.sum() == evaluation.num_tokens
    # Masked-in targets are exactly the validation stream, nothing dropped.
    stream = np.asarray(evaluation.tokens)
    np.testing.assert_array_equal(targets[mask == 1], stream[1:])
    assert (targets[mask == 0] == tok.pad_id).all() and mask[-1] == 0
    assert evaluation.num_bytes == tok.token_bytes[stream[1:]].sum()
    assert np.isclose(evaluation.bits_per_byte(np.log(2)), 1 / evaluation.bytes_per_token)
    # A limited number of batches is a prefix of the full evaluation.
    _, short, _ = data.get_datasets(make_cfg(tmp_path, paths=[corpus], batch_size=4, eval_batches=2))
    np.testing.assert_equal(list(short.batches()), batches[:2])
    assert short.num_tokens == 2 * 4 * cfg.seq_len


# ----------------------------------------------------------------------------
# Corpora and splits
# ----------------------------------------------------------------------------


def _paths(source):
    return {source[i]["path"] for i in range(len(source))}


def test_validation_split_is_disjoint_by_file(tmp_path):
    glob = write_corpus(tmp_path / "c", n_files=120, lines=2)
    cfg = data.complete(make_cfg(tmp_path, paths=[glob]))
    corpus = data.load_corpus(cfg, cfg.data_dir)
    train, val = _paths(corpus.sources["train"]), _paths(corpus.sources["eval"])
    assert train and val and not train & val
    assert len(train | val) == 120
    assert val == {p for p in train | val if text.in_validation(p.decode(), cfg.validation_fraction)}


def test_single_file_is_split_by_text(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("".join(f"line {i} héllo\n" for i in range(200)))
    cfg = data.complete(make_cfg(tmp_path, paths=[str(f)]))
    corpus = data.load_corpus(cfg, cfg.data_dir)
    train, val = (list(corpus.texts(k)) for k in ("train", "eval"))
    assert len(train) == len(val) == 1 and val[0].startswith("line ")
    assert train[0] + val[0] == f.read_text()
    assert 0 < len(val[0]) < 0.1 * len(f.read_text())


def test_split_helpers():
    assert text.split_tail("ab", 0.5) == ("a", "b")
    assert text.split_tail("x", 0.5) == ("x", "")
    assert text.split_tail("l1\nl2\nl3\nl4\n", 0.3) == ("l1\nl2\nl3\n", "l4\n")
    docs = [("a", "aaa"), ("b", "bbb")]
    assert text.split_docs(docs, 0.0)["validation"] == [("a", "a"), ("b", "b")]


def test_text_files_data_dir_depends_on_files(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("aaa\n")
    b.write_text("bbb\n")
    names = {builders.text_files_config(p).name for p in ([str(a)], [str(b)], [str(a), str(b)])}
    assert len(names) == 3
    # Same files however they are spelled; a new name once a file changes.
    same = builders.text_files_config([str(tmp_path / "*.txt")])
    assert same.name == builders.text_files_config([str(b), str(a)]).name
    os.utime(a, ns=(0, 0))
    assert builders.text_files_config([str(a), str(b)]).name != same.name


def test_registered_tfds_dataset_via_mock_data(tmp_path):
    cfg = make_cfg(tmp_path, name="lm1b", seq_len=8, batch_size=4)
    with tfds.testing.mock_data(num_examples=30):
        train, evaluation, _ = data.get_datasets(cfg)
        corpus = data.load_corpus(data.complete(cfg), cfg.data_dir)
        assert corpus.identity == "lm1b/1.1.0"
        # No split metadata under mock_data: the auto eval split is
        # 'validation' (with metadata: 'test' for lm1b, which has no
        # 'validation'); the mock serves any split name.
        assert corpus.split_names == {"train": "train", "eval": "validation"}
        explicit = data.load_corpus(data.complete(make_cfg(tmp_path, name="lm1b", eval_split="test")), cfg.data_dir)
        assert explicit.split_names["eval"] == "test"
        b = train.batch(2)
        assert b["inputs"].shape == (4, 8)
        np.testing.assert_equal(b, train.batch(2))
        assert evaluation.num_batches > 0
        with pytest.raises(data.DataError, match="no feature 'sentence'"):
            data.get_datasets(make_cfg(tmp_path / "x", name="lm1b", text_key="sentence"))


def test_data_dir_config(tmp_path, monkeypatch):
    monkeypatch.delenv(data.config.ENV_DATA_DIR, raising=False)
    cfg = data.default_config()
    assert data.resolve_data_dir(cfg) == os.path.expanduser("~/.cache/bitjax/tensorflow_datasets")
    monkeypatch.setenv(data.config.ENV_DATA_DIR, str(tmp_path))
    assert data.resolve_data_dir(cfg) == str(tmp_path)
    cfg.data_dir = str(tmp_path / "explicit")
    assert data.resolve_data_dir(cfg) == str(tmp_path / "explicit")
    with pytest.raises(ValueError, match="batchsize"):
        data.complete({"batchsize": 3})
    assert data.complete({"paths": "x.txt"}).paths == ["x.txt"]


class TinyTextDs(tfds.core.GeneratorBasedBuilder):
    """A registered tfds dataset with 'train'/'test' splits (no 'validation')."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # tfds would find it with the absent importlib_resources.

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"sentence": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 50), "test": self._generate_examples(50, 60)}

    def _generate_examples(self, start, stop):
        for i in range(start, stop):
            yield i, {"sentence": f"sentence number {i} é", "label": i % 2}


def test_registered_tfds_dataset_prepared_locally(tmp_path):
    cfg = make_cfg(tmp_path, name="tiny_text_ds", text_key="sentence", seq_len=8, batch_size=4)
    msg = _error(tmp_path, name="tiny_text_ds", text_key="sentence")
    assert "could not be read" in msg
    tfds.builder("tiny_text_ds", data_dir=cfg.data_dir, file_format="array_record").download_and_prepare()
    train, _evaluation, tok = data.get_datasets(cfg)
    corpus = data.load_corpus(data.complete(cfg), cfg.data_dir)
    assert corpus.split_names == {"train": "train", "eval": "test"}
    assert min(corpus.texts("eval")) == "sentence number 50 é"
    assert "sentence number" in tok.decode(np.asarray(train.tokens))
    assert "'label' is not text" in _error(tmp_path, name="tiny_text_ds", text_key="label")
    assert "no split 'dev'" in _error(tmp_path, name="tiny_text_ds", text_key="sentence", eval_split="dev")


# ----------------------------------------------------------------------------
# Bad data: one clear error before training
# ----------------------------------------------------------------------------


def test_error_missing_path_or_glob(tmp_path):
    assert "'nope/*.txt' matches no file" in _error(tmp_path, paths=["nope/*.txt"])
    assert "missing.txt' matches no file" in _error(tmp_path, paths=[str(tmp_path / "missing.txt")])
    assert "no input files" in _error(tmp_path, paths=[])
    assert "is a directory" in _error(tmp_path, paths=[str(tmp_path)])


def test_error_empty_corpus(tmp_path):
    for i in range(3):
        (tmp_path / f"e{i}.txt").write_text(" \n" * i)
    assert "corpus is empty" in _error(tmp_path, paths=[str(tmp_path / "*.txt")])


def test_error_binary_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("text " * 100)
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    msg = _error(tmp_path, paths=[str(good), str(binary)])
    assert "image.png: not a text file" in msg


def test_non_utf8_text_is_refused_or_decoded_as_asked(tmp_path):
    f = tmp_path / "latin1.txt"
    text = "naïve café, then plain ASCII words. " * 20
    f.write_bytes(text.encode("latin-1"))  # 40 bad bytes of 740: below the binary threshold
    msg = _error(tmp_path, paths=[str(f)])
    assert "latin1.txt: not valid UTF-8" in msg and "config.data.encoding" in msg  # not mangled silently
    train, _, tok = data.get_datasets(make_cfg(tmp_path, paths=[str(f)], encoding="latin-1"))
    assert tok.decode(train.batch(0)["inputs"][0]) in text  # decoded as asked: no U+FFFD
    train, _, tok = data.get_datasets(make_cfg(tmp_path, paths=[str(f)], encoding="utf-8:replace"))
    assert "\ufffd" in tok.decode(train.batch(0)["inputs"][0])
    assert "not valid ascii text" in _error(tmp_path, paths=[str(f)], encoding="ascii")
    assert "config.data.encoding='klingon'" in _error(tmp_path, paths=[str(f)], encoding="klingon")
    g = tmp_path / "random.bin"
    g.write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 500, dtype=np.uint8)))
    assert "not UTF-8 text" in _error(tmp_path, paths=[str(g)])


def test_error_corpus_smaller_than_one_sequence(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("short text\nand more\n")
    msg = _error(tmp_path, paths=[str(f)], seq_len=64)
    assert "seq_len + 1 = 65" in msg and "config.seq_len" in msg


def test_error_unknown_dataset_name(tmp_path):
    assert "not_a_dataset_xyz" in _error(tmp_path, name="not_a_dataset_xyz")


# ----------------------------------------------------------------------------
# The real default corpus
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_python_stdlib_builds_fast_and_once(tmp_path):
    cfg = data.default_config()
    cfg.data_dir = str(tmp_path)
    start = time.time()
    train, evaluation, tok = data.get_datasets(cfg)
    assert time.time() - start < 30
    assert train.num_tokens > 1_000_000 and evaluation.num_batches > 10
    corpus = data.load_corpus(data.complete(cfg), cfg.data_dir)
    assert corpus.identity.startswith("python_stdlib/py")
    train_paths = _paths(corpus.sources["train"])
    val_paths = _paths(corpus.sources["eval"])
    assert val_paths and not train_paths & val_paths
    assert b"os.py" in train_paths | val_paths
    assert any(p.startswith(b"pydoc_data/topics/") for p in train_paths)
    assert not any(b"site-packages" in p for p in train_paths)
    assert tok.decode(train.batch(0)["inputs"][0])
    # Second call: everything cached.
    start = time.time()
    again, _, _ = data.get_datasets(cfg)
    assert time.time() - start < 5
    np.testing.assert_equal(again.batch(9), train.batch(9))
