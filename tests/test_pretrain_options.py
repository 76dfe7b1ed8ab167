"""pretrain.options: one declaration per option, the world defaults, the generated command line."""

from __future__ import annotations

import pytest

from flair_riva.pretrain import PretrainArgs, main, resolve_args


def test_demo_defaults_are_resolved_and_named():
    args, demo, notes = resolve_args(PretrainArgs())
    assert demo and args.backbone_weights == "none" and args.freeze_backbone is True
    assert any(n.startswith("epochs=") for n in notes)
    args, demo, notes = resolve_args(PretrainArgs(relation_data="r.tsv", unlabelled="u.jsonl"))
    assert not demo and not notes
    assert (args.epochs, args.backbone_weights, args.freeze_backbone, args.model.rgn_hidden_size) == (
        35, "IMAGENET1K_V1", False, 256)
    assert resolve_args(PretrainArgs(rgn_hidden_size=48))[0].model.rgn_hidden_size == 48


def test_cli_help_lists_every_table2_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--rgn-hidden-size", "--rgn-layers", "--vlcn-hidden-size", "--vlcn-layers", "--num-heads",
                   "--batch-size", "--dropout", "--optimizer", "--lr", "--backbone-lr", "--char-dim", "--clip",
                   "--word-dim", "--epochs", "--teacher-epochs", "--threshold", "--freeze-backbone", "--resume",
                   "--checkpoint-every", "--keep-checkpoints", "--no-image", "--no-gate", "--backbone-weights"):
        assert option in text, option


def test_the_command_line_is_generated_from_the_config_fields():
    """Every option is declared once: the parser's defaults are the config's, each field is one flag."""
    from dataclasses import fields

    from flair_riva.config import RivaConfig
    from flair_riva.pretrain import PretrainConfig, build_parser
    from flair_riva.pretrain.options import MODEL_OPTIONS, flat_options, from_namespace

    assert from_namespace(build_parser().parse_args([])) == PretrainConfig()
    flags = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert flags == {f.name for f in fields(PretrainConfig) if f.name != "model"} | set(MODEL_OPTIONS)
    assert set(MODEL_OPTIONS) <= {f.name for f in fields(RivaConfig)}
    config = from_namespace(build_parser().parse_args(["--rgn-hidden-size", "48", "--no-gate", "--epochs", "4"]))
    assert (config.model.rgn_hidden_size, config.model.gate, config.epochs) == (48, False, 4)
    assert PretrainArgs(**flat_options(config)) == config, "the flat options (run_args.json) round-trip"


def test_world_defaults_are_declared_on_the_fields():
    from flair_riva.pretrain import DEMO_DEFAULTS, PAPER_DEFAULTS

    assert (PAPER_DEFAULTS["optimizer"], PAPER_DEFAULTS["epochs"], DEMO_DEFAULTS["optimizer"]) == ("sgd", 35, "adam")
    assert PAPER_DEFAULTS["rgn_hidden_size"] == DEMO_DEFAULTS["rgn_hidden_size"] == 256  # the demo keeps Table 2
    config, demo, _ = resolve_args(PretrainArgs(lr=0.5))
    assert demo and config.lr == 0.5 and config.teacher_epochs == DEMO_DEFAULTS["teacher_epochs"]


def test_a_bad_model_option_is_named_as_its_flag():
    from flair_riva.pretrain import PretrainError

    with pytest.raises(PretrainError, match="--num-heads must be in"):
        PretrainArgs(num_heads=0)
    with pytest.raises(PretrainError, match="--gate-dropout must be a finite number in"):
        PretrainArgs(gate_dropout=1.0)
