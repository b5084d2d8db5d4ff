"""A user's own transcribed folder as the labelled corpus: speaker-held-out splits from `prepare dir`,
and a `run` whose labelled data cannot feed fine-tuning or decoding stops right after `prepare`, not
hours later at the stage that reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import FSDD, TINY, cli_result
from test_issue21 import one_line_error

from speechbudget import sidecar
from speechbudget.data.manifests import cut_speaker, load_cuts
from speechbudget.data.sources import speaker_splits
from speechbudget.errors import SpeechBudgetError
from speechbudget.pipeline import Pipeline
from speechbudget.run_recipe import load_run_recipe

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKERS = ("george", "jackson", "nicolas", "theo")


def own_corpus(root: Path, per_speaker: int = 4, speakers=SPEAKERS, nested: bool = True) -> Path:
    """FSDD recordings laid out as a user's corpus: AUDIO/<speaker>/*.wav and a path<TAB>text file."""
    lines = []
    for spk in speakers:
        folder = root / "audio" / spk if nested else root / "audio"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_speaker):
            name = f"{i % 10}_{spk}_{i // 10}.wav"
            shutil.copy(FSDD / name, folder / name)
            lines.append(f"{(folder / name).relative_to(root / 'audio').as_posix()}\t{WORDS[i % 10]}\n")
    (root / "text.tsv").write_text("".join(lines))
    return root


def prepared_own_corpus(tmp_path: Path, capsys) -> Path:
    """:func:`own_corpus` prepared with theo held out for test and nicolas for dev."""
    root = own_corpus(tmp_path)
    code, _, err = cli_result(
        capsys, "prepare", "dir", root / "audio", "--transcripts", root / "text.tsv", "--test-speakers", "theo",
        "--dev-speakers", "nicolas", "--out", tmp_path / "data", "--no-features", "--json",
    )  # fmt: skip
    assert code == 0, err
    return tmp_path / "data" / "dir"


def _speakers(corpus: Path, split: str) -> set:
    path = corpus / f"cuts_{split}.jsonl.gz"
    return {cut_speaker(c) for c in load_cuts(path)} if path.is_file() else set()


def test_prepare_dir_holds_out_named_speakers_and_hashed_shares(tmp_path, capsys):
    corpus = prepared_own_corpus(tmp_path, capsys)
    assert _speakers(corpus, "test") == {"theo"} and _speakers(corpus, "dev") == {"nicolas"}
    assert _speakers(corpus, "train") == {"george", "jackson"}
    root = tmp_path  # own_corpus copied the audio and text.tsv here
    code, _, err = cli_result(
        capsys, "prepare", "dir", root / "audio", "--transcripts", root / "text.tsv", "--test-fraction", "0.5",
        "--out", tmp_path / "hashed", "--no-features", "--json",
    )  # fmt: skip
    assert code == 0, err
    corpus = tmp_path / "hashed" / "dir"
    test, train = _speakers(corpus, "test"), _speakers(corpus, "train")
    assert test and train and not test & train and test | train == set(SPEAKERS)
    assert test == {s for s in SPEAKERS if speaker_splits.hashed_split(s, 0.0, 0.5) == "test"}


@pytest.mark.parametrize(
    "args, nested, expect",
    [
        (
            ["--test-speakers", "bob"],
            True,
            "--test-speakers/--dev-speakers name unknown folder speakers ['bob']",
        ),
        (["--test-speakers", "theo"], False, "no speaker folders under"),
        (["--test-fraction", "0.01"], True, "--test-fraction 0.01 held out none of the 4 speakers"),
        (["--test-speakers", "theo", "--labels", "folders"], True, "labels: folders makes the first folder"),
        (["--dev-fraction", "0.6", "--test-fraction", "0.5"], True, "must leave speakers for train"),
    ],
)
def test_prepare_dir_speaker_splits_that_cannot_be_made_are_one_line(tmp_path, capsys, args, nested, expect):
    root = own_corpus(tmp_path, per_speaker=1, nested=nested)
    code, _, err = cli_result(
        capsys,
        "prepare",
        "dir",
        root / "audio",
        "--transcripts",
        root / "text.tsv",
        *args,
        "--out",
        tmp_path / "d",
    )
    one_line_error(code, err, expect)
    assert not (tmp_path / "d").exists()


def _recipe(tmp_path: Path, labeled: dict, **finetune) -> Path:
    """Unlabeled and labelled corpora both from the user's folder (no synthesis: seconds to prepare)."""
    root = own_corpus(tmp_path)
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml").read_text())
    recipe["prepare"] = {"source": "dir", "path": str(root / "audio"), "name": "unlabeled", "num_jobs": 1}
    recipe["labeled"] = {"source": "dir", "path": str(root / "audio"), "transcripts": str(root / "text.tsv"),
                         "num_jobs": 1, **labeled}  # fmt: skip
    recipe["finetune"].update(finetune)
    recipe["exp_dir"] = str(tmp_path / "exp")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(
    "labeled, finetune, args, expect",
    [
        ({}, {}, [], "decode.sets names test, but the labelled corpus"),
        ({"test_speakers": ["theo"]}, {"train_speakers": 5}, [], "finetune.train_speakers is 5, but"),
        (
            {"test_speakers": ["theo", "nicolas", "jackson"]},
            {"train_speakers": None},
            ["--folds", "speakers"],
            "folds need at least 2 labelled speakers besides the test speakers (found ['george'])",
        ),
    ],
)
def test_a_run_whose_labelled_data_cannot_be_used_stops_after_prepare(
    tmp_path, capsys, labeled, finetune, args, expect
):
    recipe = _recipe(tmp_path, labeled, **finetune)
    tiny = [a for a in TINY if not a.startswith("prepare.") and "train_hours" not in a]
    code, _, err = cli_result(capsys, "run", recipe, *tiny, *args)
    one_line_error(code, err, expect)
    exp = tmp_path / "exp"
    assert (exp / ".stages" / "prepare.json").is_file()
    assert not (exp / "kmeans").exists() and not (exp / "scratch").exists()  # nothing trained, none beside


def test_a_run_that_stops_before_decoding_needs_no_split_to_decode(tmp_path, capsys):
    """A corpus without a test split can still be pretrained on (or folded) while decode.sets names
    test: decode's splits are checked only when decode is among the stages this call runs."""
    recipe = _recipe(tmp_path, {})
    tiny = [a for a in TINY if not a.startswith("prepare.") and "train_hours" not in a]
    code, _, err = cli_result(
        capsys, "run", recipe, *tiny, "scratch_baseline=false", "--stop-stage", "kmeans"
    )
    assert code == 0, err
    assert (tmp_path / "exp" / ".stages" / "kmeans.json").is_file()
    code, _, err = cli_result(capsys, "run", recipe, *tiny, "scratch_baseline=false")  # on to decode
    one_line_error(code, err, "decode.sets names test, but the labelled corpus")
    assert not (tmp_path / "exp" / "pretrain").exists()  # stopped before training, not after
    # a library caller's one Pipeline: a later call with more stages is checked for them too
    pipe = Pipeline(load_run_recipe(recipe, [*tiny, "scratch_baseline=false"]))
    pipe.check_labeled(("kmeans", "pretrain"))
    with pytest.raises(SpeechBudgetError, match="decode.sets names test"):
        pipe.check_labeled(("kmeans", "pretrain", "finetune", "decode"))


def test_a_run_on_the_users_own_transcribed_folder_ends_in_a_wer_table(tmp_path, capsys):
    recipe = _recipe(tmp_path, {"test_speakers": ["theo"], "dev_speakers": ["nicolas"]}, train_speakers=None)
    tiny = [a for a in TINY if not a.startswith("prepare.")]
    code, out, err = cli_result(capsys, "run", recipe, *tiny, "scratch_baseline=false", "--json")
    assert code == 0, err
    results = json.loads(out)
    assert results["decode"]["finetune/test"]["utterances"] == 4  # theo's four recordings, and only them
    assert _speakers(tmp_path / "exp" / "data" / "dir", "train") == {"george", "jackson"}


def test_a_sidecar_that_fails_writes_why_to_its_log_not_a_traceback_to_the_parent(tmp_path, capfd):
    """A user's mistake is one line in the log; a bug is its traceback in the log; the parent's own
    output (progress bars, the run's messages) gets neither."""
    for args, expect in (
        ((2.0, 0.0), "error: dev_fraction must be in [0, 1), got 2.0"),
        (("a", 0.0), "TypeError"),
    ):
        log = tmp_path / f"{type(args[0]).__name__}.log"
        proc = sidecar.start(speaker_splits.check_fractions, args, 1, log)
        proc.join()
        assert proc.exitcode == 1
        assert expect in log.read_text()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "Traceback" not in (tmp_path / "float.log").read_text()


def test_a_corpus_folder_named_for_training_is_its_train_split_never_its_test(tmp_path, capsys):
    """`train_cuts=data/mine` or `tokenizer train data/mine` read every split of the folder, test
    included: training on the test speakers. A folder now stands for its train (dev_cuts: dev) split."""
    from speechbudget.data.manifests import one_manifest
    from speechbudget.errors import SpeechBudgetError
    from speechbudget.train.setup import load_train_cuts

    corpus = prepared_own_corpus(tmp_path, capsys)
    assert {cut_speaker(c) for c in load_train_cuts(str(corpus))} == {"george", "jackson"}
    assert {cut_speaker(c) for c in load_train_cuts(str(corpus), "dev_cuts")} == {"nicolas"}
    code, out, err = cli_result(capsys, "tokenizer", "train", corpus, "--out", tmp_path / "tok", "--json")
    assert code == 0, err
    assert json.loads(out)["texts"] == 8  # george's and jackson's four each; not theo's, not nicolas'
    with pytest.raises(SpeechBudgetError, match="holds 3 splits .*pass one of them"):
        one_manifest(corpus, "evaluate-retrieval")
    assert one_manifest(corpus / "cuts_test.jsonl.gz", "x") == corpus / "cuts_test.jsonl.gz"
    (corpus / "cuts_dev.jsonl.gz").unlink()
    with pytest.raises(SpeechBudgetError, match="dev_cuts: the corpus folder .* has no dev split"):
        load_train_cuts(str(corpus), "dev_cuts")


def test_train_hours_above_what_the_cuts_hold_is_said_not_silent(tmp_path, capsys, caplog):
    """The quickstart's train_hours 0.167 on a smaller corpus took every cut without a word."""
    from speechbudget.data.manifests import subset_hours

    corpus = prepared_own_corpus(tmp_path, capsys)
    cuts = load_cuts(corpus / "cuts_train.jsonl.gz").to_eager()
    with caplog.at_level("WARNING"):
        assert len(subset_hours(cuts, 0.167, seed=0)) == len(cuts)
    assert "train_hours is 0.167 h but the cuts hold only" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert 0 < len(subset_hours(cuts, 1e-4, seed=0)) < len(cuts)
    assert "train_hours" not in caplog.text


def test_recordings_to_transcribe_carry_their_speaker_folder(tmp_path):
    """`decode MODEL recordings/` normalises each speaker's mean when the model was fine-tuned with
    `ctc.speaker_cmn`: below a folder the speaker is its first subfolder (as `prepare dir` reads it); a
    file given alone, or loose in the folder, is a speaker of its own, never pooled with strangers."""
    from speechbudget.data.audio import memory_cuts

    root = own_corpus(tmp_path, per_speaker=2, speakers=("george", "theo"))
    audio = root / "audio"
    shutil.copy(FSDD / "5_jackson_3.wav", audio / "loose.wav")
    alone = FSDD / "7_nicolas_1.wav"
    cuts, skipped = memory_cuts([audio, alone])
    assert not skipped and len(cuts) == 6
    speaker = {Path(c.recording_id).name: cut_speaker(c) for c in cuts}
    assert speaker["0_george_0.wav"] == speaker["1_george_0.wav"] == str(audio / "george")
    assert speaker["0_theo_0.wav"] == str(audio / "theo")
    assert speaker["loose.wav"] == str(audio / "loose.wav") and speaker[alone.name] == str(alone)
    assert all(c.duration > 0.1 and c.supervisions[0].text is None for c in cuts)
