"""Config: defaults, files, --set overrides, validation messages that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertpld.config import (
    CONFIG_DIR,
    MODEL_PRESETS,
    ConfigError,
    FinetuneConfig,
    ModelConfig,
    PrepareConfig,
    PretrainConfig,
    config_differences,
    config_from_dict,
    config_to_dict,
    field_docs,
    load_config,
    parse_set,
    read_config_file,
    resolve_config_path,
)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(PretrainConfig, path)
    assert cfg.train.max_steps or cfg.train.max_samples or cfg.train.max_flops or cfg.train.time_budget
    assert config_from_dict(PretrainConfig, config_to_dict(cfg)) == cfg


def test_paper_configs_match_the_paper() -> None:
    post = load_config(PretrainConfig, resolve_config_path("bert-base-postln"))
    pre = load_config(PretrainConfig, resolve_config_path("bert-base-preln"))
    pld = load_config(PretrainConfig, resolve_config_path("bert-base-pld"))
    for cfg in (post, pre, pld):
        assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_heads) == (12, 768, 12)
        assert cfg.model.intermediate_size == 3072
        assert cfg.train.global_batch_size == 4096 and cfg.data.max_seq_len == 128
        assert cfg.train.max_steps == 200_000 and cfg.train.warmup == 0.02 and cfg.train.schedule == "exp"
        assert cfg.train.weight_decay == 0.01 and cfg.train.grad_clip == 1.0
    assert (post.model.norm, post.train.lr, post.pld.enabled) == ("post", 1e-4, False)
    assert (pre.model.norm, pre.train.lr, pre.pld.enabled) == ("pre", 1e-3, False)
    assert (pld.model.norm, pld.train.lr, pld.pld.enabled, pld.pld.theta_bar) == ("pre", 1e-3, True, 0.5)
    diff = config_differences(config_to_dict(pre), config_to_dict(pld))
    assert set(diff) == {"pld.enabled"}


def test_layers_override_in_order_and_strings_are_parsed(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[train]\nlr = 0.5\nmax_steps = 10\n[model]\npreset = "tiny"\nnum_layers = 3\n')
    cfg = load_config(
        PretrainConfig,
        f,
        parse_set(["train.lr=1e-3", "train.betas=0.9,0.98", "pld.gamma=none", "impl.compile=true"]),
        {"train": {"max_steps": 7}},
    )
    assert cfg.train.lr == 1e-3 and cfg.train.max_steps == 7 and cfg.train.betas == (0.9, 0.98)
    assert cfg.pld.gamma is None and cfg.impl.compile is True
    # the preset gives the sizes; an explicit field wins over the preset
    assert cfg.model.hidden_size == MODEL_PRESETS["tiny"]["hidden_size"] and cfg.model.num_layers == 3


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.lr=-1"], "train.lr"),
        (["train.lr=fast"], "train.lr: expected a number"),
        (["model.norm=side"], "model.norm"),
        (["model.num_heads=5"], "model.num_heads"),
        (["pld.theta_bar=1.5"], "pld.theta_bar"),
        (["pld.enabled=true"], "pld.enabled"),  # PLD with the default Post-LN arrangement
        (["train.max_steps=2.5"], "train.max_steps: expected an integer"),
        (["train.nope=1"], "unknown field 'train.nope'"),
        (["nosection.x=1"], "unknown section 'nosection'"),
        (["model.preset=huge"], "model.preset"),
    ],
)
def test_invalid_values_name_the_field(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(PretrainConfig, None, parse_set(sets))


def test_bad_set_syntax_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_set(["lr=1"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match="no such file"):
        resolve_config_path("does-not-exist")
    assert resolve_config_path("demo") == CONFIG_DIR / "demo.toml"


def test_other_commands_configs_validate() -> None:
    assert load_config(PrepareConfig).prepare.sources == ["demo"]
    with pytest.raises(ConfigError, match="prepare.text_files"):
        load_config(PrepareConfig, None, parse_set(["prepare.sources=text"]))
    with pytest.raises(ConfigError, match="finetune.warmup"):
        load_config(FinetuneConfig, None, parse_set(["finetune.warmup=1"]))


def test_every_field_has_a_docstring() -> None:
    import dataclasses

    from bertpld import config

    sections = (
        config.ModelConfig,
        config.PLDConfig,
        config.DataConfig,
        config.TrainConfig,
        config.ImplConfig,
    )
    for cls in (*sections, config.PrepareSection, config.FinetuneSection):
        docs = field_docs(cls)
        assert {f.name for f in dataclasses.fields(cls)} == set(docs), cls.__name__
    assert "Pre-LN" in field_docs(ModelConfig)["norm"]


def test_a_broken_saved_config_is_a_one_line_error(tmp_path: Path) -> None:
    from bertpld.config import read_config_json

    bad = tmp_path / "config.json"
    bad.write_text('{"model": ')
    with pytest.raises(ConfigError, match="cannot read the saved config"):
        read_config_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        read_config_json(bad)


def test_a_user_error_with_line_breaks_prints_as_one_line(monkeypatch, capsys) -> None:
    """A BertpldError quoting a multi-line message (a parser's, an OS error's) still reaches the
    user as one `error:` line, with exit code 2."""
    from bertpld import cli
    from bertpld.errors import BertpldError

    assert str(BertpldError("config.toml: bad value\n  line 3\n\n  ^ here\n")) == (
        "config.toml: bad value; line 3; ^ here"
    )

    def broken() -> None:
        raise ConfigError("data.path: no such file\nexpected a prepared data directory")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: data.path: no such file; expected a prepared data directory\n"
