"""The RIVA model folder (flair_riva.checkpoint) through RivaModel.save/load: bit-identical round trips, no
unpickling, clear CheckpointErrors for damaged or hostile folders, frozen vectors stored once, 0.1.0 folders."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch

from flair_riva.checkpoint import VECTORS_FILE, WEIGHTS_FILE, WORD_VECTORS_KEY
from flair_riva.config import FORMAT_VERSION, RivaConfig
from flair_riva.model import CheckpointError, RivaModel
from tests.conftest import keyed_vectors, random_visual


def test_save_load_bit_identical(model, tiny_token_lists, tmp_path):
    visual = random_visual(6, [True, False, True, True, True, True])
    before, out_before = model.embed(tiny_token_lists, visual)
    model.save(tmp_path / "riva")
    assert sorted(os.listdir(tmp_path / "riva")) == ["config.json", "model.safetensors", "vocab.json"]
    loaded = RivaModel.load(tmp_path / "riva")
    assert loaded.config == model.config and loaded.vocab.words == model.vocab.words
    after, out_after = loaded.embed(tiny_token_lists, visual)
    for x, y in zip(before, after):
        assert torch.equal(x, y)
    assert torch.equal(out_before.s_g, out_after.s_g)
    # saving again over the same directory replaces it atomically
    model.save(tmp_path / "riva")
    assert RivaModel.load(tmp_path / "riva").config == model.config


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_never_executed(model, tmp_path):
    directory = tmp_path / "riva"
    model.save(directory)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    # a pickle beside the real files is ignored ...
    for name in ("pytorch_model.bin", "model.pt", "checkpoint.pt"):
        (directory / name).write_bytes(payload)
    RivaModel.load(directory)
    # ... and a pickle in place of the weights is refused, not unpickled
    (directory / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError):
        RivaModel.load(directory)
    assert not marker.exists()


def test_incompatible_format_version_is_a_clear_error(model, tmp_path):
    directory = tmp_path / "riva"
    model.save(directory)
    meta = json.loads((directory / "config.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version"):
        RivaModel.load(directory)
    with pytest.raises(CheckpointError, match="does not exist"):
        RivaModel.load(tmp_path / "nothing")


def _tamper(directory, config=None, meta=None, vocab=None):
    data = json.loads((directory / "config.json").read_text())
    data["config"].update(config or {})
    data.update(meta or {})
    (directory / "config.json").write_text(json.dumps(data))
    if vocab is not None:
        (directory / "vocab.json").write_text(json.dumps(vocab))


@pytest.mark.parametrize("changes, field", [
    ({"rgn_layers": 10**6}, "rgn_layers"),
    ({"vlcn_hidden_size": 4096}, "vlcn"),          # in range: the weights' shapes say otherwise
    ({"rgn_hidden_size": 10**9}, "rgn_hidden_size"),
    ({"num_heads": 0}, "num_heads"),
    ({"num_heads": 7}, "num_heads"),
    ({"backbone": "resnet50"}, "backbone"),
    ({"adaptive_softmax_cutoffs": [10, 5]}, "adaptive_softmax_cutoffs"),
    ({"word_dim": 16.0}, "word_dim"),
    ({"word_dim": True}, "word_dim"),
    ({"dropout": float("nan")}, "dropout"),
    ({"use_image": "yes"}, "use_image"),
])
def test_hostile_config_is_a_fast_checkpoint_error(model, tmp_path, changes, field):
    import time

    directory = tmp_path / "riva"
    model.save(directory)
    _tamper(directory, config=changes)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=field):
        RivaModel.load(directory)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("meta, words, expect", [
    ({"vocab_size": 10**7}, None, "weights do not fit"),     # checked against the header before vocab.json is read
    ({"vocab_size": 10**9}, None, "vocab_size"),
    ({"num_chars": "many"}, None, "num_chars"),
    (None, "non-string", "not a non-empty string"),
    (None, "empty", "not a non-empty string"),
    (None, "duplicate", "twice"),
])
def test_bad_vocabulary_is_a_checkpoint_error(model, tmp_path, meta, words, expect):
    directory = tmp_path / "riva"
    model.save(directory)
    vocab = None
    if words is not None:
        vocab = json.loads((directory / "vocab.json").read_text())
        vocab["words"][-1] = {"non-string": 7, "empty": "", "duplicate": vocab["words"][-2]}[words]
    _tamper(directory, meta=meta, vocab=vocab)
    with pytest.raises(CheckpointError, match=expect):
        RivaModel.load(directory)


def test_oversized_vocab_file_is_refused_before_parsing(model, tmp_path):
    directory = tmp_path / "riva"
    model.save(directory)
    with open(directory / "vocab.json", "w") as handle:  # 10**6 extra words, far beyond the recorded size
        json.dump({"words": [f"w{i}" for i in range(10**6)], "chars": ["<pad>", "<unk>"]}, handle)
    with pytest.raises(CheckpointError, match="more than"):
        RivaModel.load(directory)


#: What a 0.1.0 config.json held that the config no longer has (Table 2's training settings, the visual sizes).
RETIRED_0_1_0 = {"learning_rate": 0.02, "backbone_learning_rate": 1e-4, "optimizer": "sgd", "batch_size": 16,
                 "clip_grad_norm": 5.0, "visual_dim": 512, "num_regions": 49}


def test_a_0_1_0_model_folder_loads_without_its_retired_fields(tiny_config, tiny_vocab, tiny_token_lists, tmp_path,
                                                               caplog):
    torch.manual_seed(0)
    old = tiny_config.replace(vlcn_visual="paper", visual_norm="layer", gate_dropout=0.0)  # 0.1.0's model
    model = RivaModel(old, tiny_vocab).eval()
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    config = {k: v for k, v in meta["config"].items() if k not in ("vlcn_visual", "visual_norm", "gate_dropout")}
    meta["config"] = {**config, **RETIRED_0_1_0}
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    logger = logging.getLogger("flair")  # it does not propagate: pytest's handler is attached directly
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="flair"):
            loaded = RivaModel.load(tmp_path / "m")
    finally:
        logger.removeHandler(caplog.handler)
    assert "dropping fields flair-riva no longer uses: backbone_learning_rate, batch_size" in caplog.text
    assert loaded.config == old and (loaded.config.visual_dim, loaded.config.num_regions) == (512, 49)
    text, visual = model.encode(tiny_token_lists), random_visual(len(tiny_token_lists))
    torch.testing.assert_close(loaded(text, visual).token_states, model(text, visual).token_states)
    with pytest.raises(CheckpointError, match="visual_dim"):  # still checked before it is dropped
        meta["config"]["visual_dim"] = 2048
        (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
        RivaModel.load(tmp_path / "m")


def test_a_config_pickled_by_0_1_0_unpickles_without_its_retired_fields(tiny_config):
    """A saved 0.1.0 tagger pickles its RivaConfig with the retired fields in the instance dict."""
    legacy = {k: v for k, v in tiny_config.to_dict().items() if k not in ("vlcn_visual", "visual_norm", "gate_dropout")}
    config = RivaConfig.__new__(RivaConfig)
    config.__setstate__({**legacy, **RETIRED_0_1_0})
    assert not set(RETIRED_0_1_0) & set(vars(config))
    assert config.vlcn_visual == "paper" and config.visual_dim == 512 and config.to_dict() == RivaConfig.from_dict(
        legacy).to_dict()
    assert pickle.loads(pickle.dumps(config)) == config


def test_frozen_vectors_are_stored_once(tmp_path, tiny_config, tiny_token_lists):
    from safetensors import safe_open

    model = RivaModel.from_texts(tiny_config, tiny_token_lists, word_vectors=keyed_vectors(["jordan", "paris", "x"]))
    model.save(tmp_path / "run" / "epoch-1")
    model.vlcn.bos.data += 1.0  # another checkpoint of the same run: other weights, the same frozen vectors
    model.save(tmp_path / "run" / "best")
    a, b = (tmp_path / "run" / d / VECTORS_FILE for d in ("epoch-1", "best"))
    assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink == 2, "a hard link, not a copy"
    with safe_open(str(tmp_path / "run" / "best" / WEIGHTS_FILE), framework="pt") as handle:
        assert WORD_VECTORS_KEY not in handle.keys()  # noqa: SIM118
    loaded = RivaModel.load(tmp_path / "run" / "best")
    assert torch.equal(loaded.token_encoder.word_embedding.weight, model.token_encoder.word_embedding.weight)
    assert torch.equal(loaded.vlcn.bos, model.vlcn.bos) and loaded.vocab.output_size == model.vocab.output_size
    assert not loaded.token_encoder.word_embedding.weight.requires_grad


def test_a_0_1_0_model_folder_loads(tmp_path, tiny_config, tiny_token_lists):
    """0.1.0 layout: one vocabulary for input and output (no output_size / output_vocab_size), the word
    vectors inside model.safetensors."""
    model = RivaModel.from_texts(tiny_config.replace(use_image=False), tiny_token_lists)
    model.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["output_vocab_size"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    assert "output_size" not in json.loads((tmp_path / "old" / "vocab.json").read_text())
    loaded = RivaModel.load(tmp_path / "old")
    assert loaded.vocab.output_size == len(loaded.vocab) == len(model.vocab)
    text = model.encode([tiny_token_lists[0]])
    model.eval()
    assert torch.allclose(loaded(text).token_states, model(text).token_states)
