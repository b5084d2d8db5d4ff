"""The source registry: one options dataclass per source serves `prepare SOURCE` and recipes alike."""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from pathlib import Path

import pytest
import typer
import yaml
from conftest import SHARED, TINY, cli_result, copy_fsdd

from speechbudget import cli
from speechbudget.cli_prepare import CLI_ONLY
from speechbudget.data.corpus_spec import CorpusSpec, PrepareOptions
from speechbudget.data.manifests import load_cuts
from speechbudget.data.sources import registry
from speechbudget.errors import SpeechBudgetError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _prepare_commands():
    group = typer.main.get_command(cli.app).commands["prepare"]
    return group.commands


def test_every_registered_source_has_a_prepare_command():
    assert set(_prepare_commands()) == set(registry())


@pytest.mark.parametrize("name", list(registry()))
def test_every_cli_option_is_a_recipe_key_with_the_same_default(name):
    """Both directions: no flag without a recipe key, no recipe key without a flag, same defaults."""
    src = registry()[name]
    command = _prepare_commands()[name]
    cli_params = {p.name: p for p in command.params if p.name not in CLI_ONLY}
    own = {f.name: f for f in dataclasses.fields(src.options)}
    shared = {f.name: f for f in dataclasses.fields(PrepareOptions)}
    assert set(cli_params) == set(own) | set(shared)
    defaults = CorpusSpec.build(name, {"path": "/x"} if src.path_field else {})
    for key, param in cli_params.items():
        if key == src.path_field:
            assert param.required and param.param_type_name == "argument"
            continue
        recipe_default = getattr(defaults.options if key in own else defaults.common, key)
        # the flag's default, read back through the recipe machinery, is the recipe's default
        values = {key: param.default} if param.default is not None else {}
        if src.path_field:
            values["path"] = "/x"
        via_cli = CorpusSpec.build(name, values)
        assert getattr(via_cli.options if key in own else via_cli.common, key) == recipe_default, key
        help_text = (own.get(key) or shared[key]).metadata["help"]
        assert param.help == help_text and help_text, key


def test_unknown_key_names_the_sources_keys():
    with pytest.raises(SpeechBudgetError) as e:
        CorpusSpec.from_config({"source": "fsdd", "path": "/x", "hours": 2}, "labeled")
    msg = str(e.value)
    assert "labeled.hours" in msg and "for source fsdd" in msg and "test_speakers" in msg and "\n" not in msg


def test_types_are_checked_and_lists_accept_commas():
    spec = CorpusSpec.from_config(
        {"source": "fsdd", "path": "/x", "test_speakers": "theo, jackson"}, "prepare"
    )
    assert spec.options.test_speakers == ["theo", "jackson"] and isinstance(spec.options.path, Path)
    with pytest.raises(SpeechBudgetError, match="prepare.hours' must be float"):
        CorpusSpec.from_config({"source": "synthetic", "hours": "lots"}, "prepare")
    with pytest.raises(SpeechBudgetError, match="unknown source 'fsd'"):
        CorpusSpec.from_config({"source": "fsd"}, "prepare")


def test_cli_prepare_uses_the_registry_options(tmp_path, capsys):
    fsdd = copy_fsdd(tmp_path / "in", per_speaker=2)
    code, out, err = cli_result(
        capsys,
        "prepare",
        "fsdd",
        str(fsdd),
        "--test-speakers",
        "theo,george",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert {s["split"]: s["kept"] for s in summary["splits"]} == {"train": 4, "test": 4}
    recorded = json.loads((tmp_path / "o" / "fsdd" / "prepare.json").read_text())["options"]
    assert recorded["test_speakers"] == ["theo", "george"] and recorded["source"] == "fsdd"


def _dir_corpus(tmp_path: Path) -> Path:
    """FSDD clips as a plain folder with a path<TAB>text file: what the `dir` source reads."""
    src = copy_fsdd(tmp_path / "clips", per_speaker=3)
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    lines = [f"{p.name}\t{words[int(p.name.split('_')[0])]}" for p in sorted(src.glob("*.wav"))]
    (tmp_path / "text.tsv").write_text("\n".join(lines) + "\n")
    return src


def test_recipe_labeled_dir_with_transcripts_runs(tmp_path, capsys):
    """README: `labeled:` takes the keys of `prepare dir` (it used to fail with "unknown config key")."""
    clips = _dir_corpus(tmp_path)
    exp = tmp_path / "exp"
    recipe = yaml.safe_load((RECIPES / "fsdd.yaml").read_text())
    recipe["labeled"] = {
        "source": "dir",
        "path": str(clips),
        "transcripts": str(tmp_path / "text.tsv"),
        "name": "mydigits",
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, out, err = cli_result(
        capsys,
        "run",
        str(tmp_path / "r.yaml"),
        f"exp_dir={exp}",
        *[t for t in TINY if not t.startswith("prepare.speakers")],
        "finetune.train_speakers=null",
        "finetune.dev_cuts=null",
        "scratch_baseline=false",
        "decode.sets=[train]",
        "--json",
    )
    assert code == 0, err
    results = json.loads(out)
    assert results["prepare"]["labeled"]["corpus"] == "mydigits"
    cuts = list(load_cuts(exp / "data" / "mydigits" / "cuts_train.jsonl.gz"))
    assert len(cuts) == 12 and all(c.supervisions[0].text for c in cuts)
    assert results["decode"]["finetune/train"]["utterances"] == 12


def test_encoder_config_dict_gets_labels_at_its_own_frame_rate(tmp_path, capsys):
    """A 25 Hz encoder given as a config dict: labels at 25 Hz, not at the 50 Hz of zipformer-tiny."""
    exp = tmp_path / "exp"
    code, _, err = cli_result(
        capsys,
        "run",
        str(RECIPES / "quickstart.yaml"),
        f"exp_dir={exp}",
        "prepare={source: synthetic, hours: 0.01, speakers: 24, grammar: digits}",
        "pretrain.encoder={preset: zipformer-nano, output_downsampling: 2}",
        "kmeans.num_clusters=8",
        "kmeans.max_frames=5000",
        "--stop-stage",
        "kmeans",
    )
    assert code == 0, err
    cuts = list(load_cuts(exp / "kmeans" / "cuts_train.jsonl.gz"))
    for c in cuts:
        labels = c.custom["kmeans"].split()
        assert abs(len(labels) - 25 * c.duration) <= 3, (len(labels), c.duration)


def test_source_options_are_typed_dataclasses():
    """Each source declares its options once, with a type and one line of help for every field."""
    for src in registry().values():
        hints = typing.get_type_hints(src.options)
        for f in dataclasses.fields(src.options):
            assert f.metadata.get("help"), (src.name, f.name)
            assert f.name in hints


def test_commonvoice_fractions_are_checked(tmp_path):
    cv = tmp_path / "cv"
    shutil.copytree(SHARED / "commonvoice-mini", cv)
    with pytest.raises(SpeechBudgetError, match="test_fraction must be in"):
        from speechbudget.data.prepare import prepare

        prepare(CorpusSpec.build("commonvoice", {"path": str(cv), "test_fraction": 1.5}), tmp_path / "o")
