"""MergeParams validation, YAML configs in mergekit's vocabulary, and the CLI-style builder."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from lotavec.errors import MergeConfigError, NotFoundError
from lotavec.merge.config import (
    MergeConfig,
    MergeParams,
    load_merge_config,
    merge_config_from_args,
    parse_merge_config,
)
from lotavec.merge.registry import METHODS, PARAMS, get_method


def parse(text: str) -> MergeConfig:
    return parse_merge_config(yaml.safe_load(textwrap.dedent(text)))


# --- MergeParams -------------------------------------------------------------------------------


def test_defaults_and_resolution():
    p = MergeParams()
    assert (p.method, p.weight_of(3), p.density_of(0), p.lambda_) == ("sum", 1.0, 1.0, 1.0)
    assert p.sign_method == "total" and p.resolved_rescale == "inverse_p"
    assert not p.resolved_normalize
    mk = MergeParams(method="ties", semantics="mergekit", majority_sign_method="count")
    assert mk.resolved_normalize and mk.sign_method == "frequency"
    assert mk.resolved_rescale == "l1"
    assert MergeParams(method="ties", semantics="mergekit", normalize=False).resolved_normalize \
        is False
    assert MergeParams(method="ties", majority_sign_method="sum").majority_sign_method == "total"
    per = MergeParams(method="ties", density=[0.5, 0.25])
    assert per.density == (0.5, 0.25) and per.density_of(1) == 0.25


@pytest.mark.parametrize("kwargs,flag", [
    (dict(method="slerp"), "--method"),
    (dict(weights=()), "--weights"),
    (dict(weights=(1.0, float("nan"))), "--weights"),
    (dict(weights="0.5"), "--weights"),
    (dict(method="ties", density=0.0), "--density"),
    (dict(method="ties", density=1.5), "--density"),
    (dict(method="ties", density=(0.5, 2.0)), "--density"),
    (dict(method="ties", weights=(1.0, 1.0), density=(0.5, 0.5, 0.5)), "--density"),
    (dict(method="dare_ties"), "--density"),
    (dict(method="magnitude_prune"), "--density"),
    (dict(density=0.5), "--density"),  # sum reads no density
    (dict(scope="layer"), "--scope"),
    (dict(scope="global"), "--scope"),  # sum does not trim
    (dict(semantics="torch"), "--semantics"),
    (dict(method="ties", majority_sign_method="median"), "--majority-sign-method"),
    (dict(method="ties", normalize=True), "--normalize"),  # peft has no normalize
    (dict(method="dare_linear", density=0.5, rescale="l2"), "--rescale"),
    (dict(method="dare_linear", density=0.5, seed=-1), "--seed"),
    (dict(method="dare_linear", density=0.5, seed=1.5), "--seed"),
    (dict(lambda_=float("inf")), "--lambda"),
])
def test_invalid_params_name_the_flag(kwargs, flag):
    with pytest.raises(MergeConfigError, match=flag):
        MergeParams(**kwargs)


def test_check_tickets():
    MergeParams(weights=(1.0, 2.0)).check_tickets(2)
    with pytest.raises(MergeConfigError, match="2 weights for 3 tickets"):
        MergeParams(weights=(1.0, 2.0)).check_tickets(3)
    with pytest.raises(MergeConfigError, match="--density"):
        MergeParams(method="ties", density=(0.5, 0.4)).check_tickets(3)


def test_to_json_is_serializable():
    p = MergeParams(method="dare_ties", weights=(0.5, 0.5), density=(0.3, 0.4), seed=7)
    d = json.loads(json.dumps(p.to_json()))
    assert d["seed"] == 7 and d["lambda"] == 1.0 and d["density"] == [0.3, 0.4]
    assert d["resolved"] == {"sign_method": "total", "normalize": False, "rescale": "inverse_p"}


def test_registry_declarations_are_complete():
    names = {p.name for p in PARAMS}
    for m in METHODS:
        assert m.formula and {"peft", "mergekit"} <= m.peers.keys()
        assert ("scope" in m.peers) == (m.sparsify == "magnitude") == ("scope" in m.params)
        assert set(m.params) <= names, m.name
        assert get_method(m.name) is m
    assert [m.name for m in METHODS][0] == "sum"


# --- YAML ----------------------------------------------------------------------------------------


def test_yaml_in_mergekit_vocabulary():
    cfg = parse("""
        merge_method: ties
        base_model: org/base
        models:
          - model: org/base
          - model: ticket_a.lotavec
            parameters: {weight: 0.7, density: 0.5}
          - model: org/ticket-b@rev
            parameters: {weight: 0.3}
        parameters: {normalize: true, lambda: 0.9, int8_mask: true}
        dtype: bfloat16
    """)
    assert cfg.base == "org/base"
    assert cfg.tickets == ("ticket_a.lotavec", "org/ticket-b@rev")
    p = cfg.params
    assert (p.method, p.semantics, p.weights, p.lambda_, p.normalize) == \
        ("ties", "mergekit", (0.7, 0.3), 0.9, True)
    assert p.density == (0.5, 1.0)  # mergekit's default density is 1 (no trim)
    assert cfg.dtype == "bfloat16"
    notes = " | ".join(cfg.notes)
    assert "int8_mask" in notes and "base model" in notes and "float32" in notes


def test_yaml_global_defaults_and_lotavec_keys():
    cfg = parse("""
        merge_method: dare_ties
        base_model: base
        models: [a.lotavec, b.lotavec]
        parameters: {density: 0.4, weight: 0.5, seed: 3, semantics: peft, rescale: true,
                     majority_sign_method: count}
        out_dtype: float16
    """)
    p = cfg.params
    assert p.density == 0.4 and p.weights == (0.5, 0.5) and p.seed == 3
    assert p.semantics == "peft" and p.rescale is None and p.sign_method == "frequency"
    assert cfg.dtype == "float16"


def test_yaml_mergekit_method_names():
    cfg = parse("""
        merge_method: task_arithmetic
        base_model: base
        models: [{model: a, parameters: {weight: 2, density: 0.5}}]
        parameters: {rescale: false}
    """)
    assert cfg.params.method == "sum" and cfg.params.weights == (2.0,)
    assert cfg.params.density is None  # not read by sum: dropped, as mergekit ignores it
    assert any("density" in n for n in cfg.notes) and any("rescale" in n for n in cfg.notes)
    linear = parse("{merge_method: linear, base_model: b, models: [a, c]}")
    assert linear.params.method == "sum" and linear.params.resolved_normalize


@pytest.mark.parametrize("text,key", [
    ("{base_model: b, models: [a], slices: []}", "slices"),
    ("{base_model: b, models: [{model: a, lora: x}]}", "lora"),
    ("{base_model: b, models: [{model: a, parameters: {gamma: 0.1}}]}", "gamma"),
    ("{base_model: b, models: [a], parameters: {topk: 3}}", "topk"),
    ("{base_model: b, models: [a], merge_method: slerp}", "slerp"),
    ("{models: [a]}", "base_model"),
    ("{base_model: b, models: []}", "models"),
    ("{base_model: b, models: [b]}", "models"),
    ("{base_model: b, models: [a], dtype: int8}", "dtype"),
    ("{base_model: b, models: [{model: a, parameters: {weight: [0, 1]}}]}", "gradients"),
    ("{base_model: b, models: [a, c], parameters: {weight: x}}", "--weights"),
])
def test_yaml_errors_name_the_key(text, key):
    with pytest.raises(MergeConfigError, match=key):
        parse(text)


def test_load_merge_config(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("merge_method: sum\nbase_model: b\nmodels:\n  - model: t.lotavec\n")
    cfg = load_merge_config(str(path))
    assert cfg.source == str(path) and cfg.tickets == ("t.lotavec",)
    with pytest.raises(NotFoundError, match="--config"):
        load_merge_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a\n")
    with pytest.raises(MergeConfigError, match="not valid YAML"):
        load_merge_config(str(bad))


# --- CLI-style arguments ---------------------------------------------------------------------


def test_cli_and_yaml_build_the_same_config():
    cli = merge_config_from_args("base", ["a", "b"], method="ties", weights="0.7,0.3",
                                 density="0.5", semantics="mergekit", dtype="bf16")
    yml = parse("""
        merge_method: ties
        base_model: base
        models:
          - {model: a, parameters: {weight: 0.7}}
          - {model: b, parameters: {weight: 0.3}}
        parameters: {density: 0.5}
        dtype: bfloat16
    """)
    assert cli.params == yml.params and cli.dtype == yml.dtype == "bfloat16"
    assert (cli.base, cli.tickets) == (yml.base, yml.tickets)
    per = merge_config_from_args("base", ["a", "b"], method="ties", density="0.5, 0.2")
    assert per.params.density == (0.5, 0.2)


def test_cli_errors_name_the_flag():
    with pytest.raises(MergeConfigError, match="--weights"):
        merge_config_from_args("base", ["a", "b"], weights="0.7;0.3")
    with pytest.raises(MergeConfigError, match="--weights"):
        merge_config_from_args("base", ["a", "b"], weights="0.7")
    with pytest.raises(MergeConfigError, match="--density"):
        merge_config_from_args("base", ["a"], method="ties", density="half")
    with pytest.raises(MergeConfigError, match="at least one ticket"):
        merge_config_from_args("base", [])


def test_method_help():
    from lotavec.merge.registry import method_help

    text = method_help("ties")
    assert "peft.utils.merge_utils.ties" in text and "2306.01708" in text
    assert all(m.name in method_help() for m in METHODS)
    with pytest.raises(MergeConfigError, match="--method"):
        method_help("nope")
